"""Property tests for the chip-window arithmetic in pipeline.chipgeom."""

from __future__ import annotations

import math

import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.chipgeom import (
    ChipSquare,
    PixelWindow,
    chip_px,
    containing_pixel,
    contains,
    margin,
    pixel_centre_xy,
    pixel_window,
    square_polygon,
    squares,
)

ORIGIN = (448_000.0, 5_412_000.0)  # a UTM 31N corner, realistic magnitudes for float error
GSDS = st.sampled_from([0.3, 0.5, 1.0, 0.25, 2.0])
EDGES = st.floats(1.0, 500.0)
OFFSETS = st.floats(-5_000.0, 5_000.0, allow_nan=False)


def _grid(gsd: float) -> Affine:
    return Affine(gsd, 0.0, ORIGIN[0], 0.0, -gsd, ORIGIN[1])


@given(x=OFFSETS, y=OFFSETS, edge=EDGES)
def test_square_contains_its_centre(x, y, edge):
    sq = ChipSquare(ORIGIN[0] + x, ORIGIN[1] + y, edge, 32631)
    poly = square_polygon(sq)
    assert poly.contains(shapely.Point(sq.x_m, sq.y_m))
    assert poly.area == pytest.approx(edge * edge, rel=1e-6)


@given(x=OFFSETS, y=OFFSETS, edge=EDGES, gsd=GSDS)
def test_window_size_is_constant_wherever_the_photo_is(x, y, edge, gsd):
    w = pixel_window(ChipSquare(ORIGIN[0] + x, ORIGIN[1] + y, edge, 32631), _grid(gsd), gsd)
    assert w.width == w.height == chip_px(edge, gsd) == max(1, round(edge / gsd))


@settings(max_examples=300)
@given(x=OFFSETS, y=OFFSETS, edge=EDGES, gsd=GSDS)
def test_centre_pixel_maps_back_to_the_photo_within_half_a_pixel(x, y, edge, gsd):
    sq = ChipSquare(ORIGIN[0] + x, ORIGIN[1] + y, edge, 32631)
    t = _grid(gsd)
    w = pixel_window(sq, t, gsd)
    cx, cy = pixel_centre_xy(t, w, *w.centre)
    assert abs(cx - sq.x_m) <= gsd / 2 + 1e-6
    assert abs(cy - sq.y_m) <= gsd / 2 + 1e-6
    # and the window's edges stay within one pixel of those of the n-pixel square centred on the
    # photo (half a pixel when n is odd)
    half = w.width * gsd / 2
    wx, wy = t * (w.col_off, w.row_off)
    tol = (0.5 if w.width % 2 else 1.0) * gsd + 1e-6
    assert abs(wx - (sq.x_m - half)) <= tol and abs(wy - (sq.y_m + half)) <= tol


def test_witw_chip_is_750_px():
    assert chip_px(225.0, 0.3) == 750
    w = pixel_window(ChipSquare(ORIGIN[0] + 150.15, ORIGIN[1] - 150.15, 225.0, 32631), _grid(0.3), 0.3)
    # the point is the centre of pixel (500, 500), which becomes chip pixel (375, 375)
    assert (w.col_off, w.row_off, w.width, w.height) == (125, 125, 750, 750)


def test_point_on_a_pixel_edge_belongs_to_the_pixel_right_and_below():
    t = _grid(0.5)
    assert containing_pixel(t, ORIGIN[0] + 10.0, ORIGIN[1] - 10.0) == (20, 20)
    assert containing_pixel(t, ORIGIN[0] + 9.999, ORIGIN[1] - 9.999) == (19, 19)


def test_rotated_or_mismatched_grid_is_rejected():
    sq = ChipSquare(ORIGIN[0], ORIGIN[1], 30.0, 32631)
    with pytest.raises(ValueError, match="north-up"):
        pixel_window(sq, Affine(0.3, 0.1, ORIGIN[0], 0.0, -0.3, ORIGIN[1]), 0.3)
    with pytest.raises(ValueError, match="differs from its gsd_m"):
        pixel_window(sq, _grid(0.5), 0.3)


def test_bad_square_is_rejected():
    with pytest.raises(ValueError):
        ChipSquare(math.nan, 0.0, 10.0, 32631)
    with pytest.raises(ValueError):
        ChipSquare(0.0, 0.0, 0.0, 32631)


@given(x=st.floats(-300, 1300), y=st.floats(-300, 1300), edge=st.floats(1.0, 600.0))
def test_containment_matches_the_square_lying_inside_the_footprint(x, y, edge):
    footprint = shapely.Polygon([(0, 0), (1000, 0), (1000, 1000), (500, 1000), (500, 600), (0, 600)])
    sq = ChipSquare(x, y, edge, 32631)
    minx, miny, maxx, maxy = sq.bounds
    corners = [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy)]
    inside = contains(footprint, sq)
    if inside:
        assert all(footprint.covers(shapely.Point(c)) for c in corners)
        assert 0 <= margin(footprint, sq) <= edge + 1000
    else:
        assert margin(footprint, sq) == -math.inf
    if not all(footprint.covers(shapely.Point(c)) for c in corners):
        assert not inside


def test_margin_is_distance_to_the_nearest_footprint_edge():
    footprint = shapely.box(0, 0, 1000, 1000)
    assert margin(footprint, ChipSquare(500, 500, 200, 32631)) == pytest.approx(400)
    assert margin(footprint, ChipSquare(150, 500, 200, 32631)) == pytest.approx(50)


def test_vectorised_squares_match_the_scalar_square():
    polys = squares([10.0, 20.0], [30.0, 40.0], 5.0)
    assert polys[1].equals(square_polygon(ChipSquare(20.0, 40.0, 5.0, 32631)))


def test_window_clip_to_the_raster():
    w = PixelWindow(-10, 90, 30, 30)
    assert w.clip(100, 100) == PixelWindow(0, 90, 20, 10)
    assert PixelWindow(100, 0, 5, 5).clip(100, 100) is None
