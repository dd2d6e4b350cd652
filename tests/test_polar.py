"""The polar transform: where a known pattern of the overhead chip lands in the panorama-shaped image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.train.polar import bearing_of_column, polar_coords, polar_transform

SIZE, H, W = 256, 128, 512


def ray(size: int, bearing_deg: float) -> np.ndarray:
    """A chip, dark except for a thin bright ray from the centre towards ``bearing_deg`` (clockwise from north)."""
    chip = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    rad = math.radians(bearing_deg)
    for t in np.linspace(0, size / 2 - 0.5, 4 * size):  # out to the border pixels
        chip[round(c - t * math.cos(rad)), round(c + t * math.sin(rad))] = 255
    return chip


def blob(size: int, row: float, col: float, sigma: float = 1.5) -> np.ndarray:
    """A chip with one Gaussian spot centred at (row, col)."""
    r, c = np.mgrid[0:size, 0:size]
    return np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma**2)).astype(np.float32)


def circular_gap(a: float, b: float, period: float) -> float:
    d = abs(a - b) % period
    return min(d, period - d)


@pytest.mark.parametrize("bearing", [0.0, 45.0, 90.0, 137.5, 180.0, 271.0, 359.0])
def test_a_ray_at_bearing_theta_lands_in_column_theta_over_360_times_width(bearing):
    polar = polar_transform(ray(SIZE, bearing), H, W)
    expected = bearing / 360 * W
    for row in range(0, H - 16, 8):  # near the centre the ray is only a pixel or two wide in angle
        assert circular_gap(float(np.argmax(polar[row])), expected, W) <= 2, row


def test_north_is_column_zero_east_a_quarter_south_half_west_three_quarters():
    c = (SIZE - 1) / 2
    for (dr, dc), col in (((-80, 0), 0), ((0, 80), W // 4), ((80, 0), W // 2), ((0, -80), 3 * W // 4)):
        polar = polar_transform(blob(SIZE, c + dr, c + dc, 3.0), H, W)
        r, k = np.unravel_index(np.argmax(polar), polar.shape)
        assert circular_gap(k, col, W) <= 1
        assert abs(r - (H - 80 / (SIZE / 2) * H - 0.5)) <= 1  # radius 80 px → row H - r/R*H - 0.5


def test_the_centre_is_the_bottom_row_and_the_inscribed_circle_the_top_row():
    r, c = np.mgrid[0:SIZE, 0:SIZE]
    dist = np.hypot(r - (SIZE - 1) / 2, c - (SIZE - 1) / 2)
    disc = np.where(dist < 32, 200, 10).astype(np.uint8)
    polar = polar_transform(disc, H, W)
    radius = (H - np.arange(H) - 0.5) / H * SIZE / 2
    assert (polar[radius < 31].min(), polar[radius > 33].max()) == (200, 10)
    rows, cols = polar_coords(SIZE, H, W)
    assert np.hypot(rows[0] - (SIZE - 1) / 2, cols[0] - (SIZE - 1) / 2) == pytest.approx(SIZE / 2 * (1 - 0.5 / H))
    assert np.hypot(rows[-1] - (SIZE - 1) / 2, cols[-1] - (SIZE - 1) / 2) == pytest.approx(SIZE / 2 * 0.5 / H)


@settings(max_examples=40, deadline=None)
@given(bearing=st.floats(0, 359.9), radius=st.floats(20, 110))
def test_a_spot_at_radius_and_bearing_maps_to_its_row_and_column(bearing, radius):
    c = (SIZE - 1) / 2
    rad = math.radians(bearing)
    polar = polar_transform(blob(SIZE, c - radius * math.cos(rad), c + radius * math.sin(rad)), H, W)
    r, k = np.unravel_index(np.argmax(polar), polar.shape)
    assert circular_gap(k, bearing / 360 * W, W) <= max(2.0, 2 * W / (2 * math.pi * radius))
    assert abs(r - (H - radius / (SIZE / 2) * H - 0.5)) <= 1.5


def test_rgb_uint8_keeps_shape_channels_and_dtype():
    chip = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    polar = polar_transform(chip, 32, 128)
    assert polar.shape == (32, 128, 3) and polar.dtype == np.uint8
    assert np.array_equal(polar[..., 1], polar_transform(chip[..., 1], 32, 128))


def test_non_square_input_is_refused():
    with pytest.raises(ValueError, match="square"):
        polar_transform(np.zeros((10, 12, 3), np.uint8), 8, 32)


def test_bearing_of_column():
    assert bearing_of_column(0, W) == 0.0
    assert bearing_of_column(W / 4, W) == 90.0
    assert bearing_of_column(W + 10, W) == pytest.approx(360 * 10 / W)


def test_mirrored_polar_image_is_the_polar_image_of_the_mirrored_chip():
    from pipeline.train.data import ViewSpec, chip_tensor

    chip = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    spec = ViewSpec(16, 16, 64, polar=(16, 64))
    mirrored = chip_tensor(polar_transform(chip, 16, 64), spec, mirror=True)
    direct = chip_tensor(polar_transform(np.ascontiguousarray(chip[:, ::-1]), 16, 64), spec)
    assert np.abs((mirrored - direct).numpy()).max() < 1e-5
