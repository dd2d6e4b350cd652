"""Geometry of the seed's Figure-4 transforms (pipeline/train/pano_views.py)."""

from __future__ import annotations

import numpy as np
import pytest

from catalogs import load_photo_frames
from pipeline.config import PANORAMA_STEPS
from pipeline.train import pano_views as pv

W, H = 512, 128


def column_pano(width: int = W, height: int = H) -> np.ndarray:
    """A panorama whose pixel (r, j) holds its column j (channel 0, 1: j split in bytes) and row r (channel 2)."""
    j = np.broadcast_to(np.arange(width), (height, width))
    r = np.broadcast_to(np.arange(height)[:, None], (height, width))
    return np.stack([j % 256, j // 256, r], axis=-1).astype(np.uint8)


def columns_of(view: np.ndarray) -> np.ndarray:
    return view[0, :, 0].astype(int) + 256 * view[0, :, 1].astype(int)


def assert_consecutive(cols: np.ndarray, width: int = W) -> None:
    assert np.all((np.diff(cols) % width) == 1), "a slice must be consecutive azimuths (wrapping at 360 degrees)"


@pytest.mark.parametrize(("step", "fov"), [("fov180", 180), ("fov90", 90), ("fov70", 70), ("one_view", 70)])
def test_fov_slices_cover_their_angle_in_degrees(step, fov):
    pano = column_pano()
    for epoch in range(20):
        view = pv.photo_view(pano, step, "img-1", 0, np.random.default_rng([0, epoch]), load_photo_frames())
        cols = columns_of(view)
        assert view.shape[:2] == (H, round(fov / 360 * W))
        assert abs(len(cols) * 360 / W - fov) <= 360 / W / 2
        assert_consecutive(cols)


def test_fov_slices_are_redrawn_every_epoch_but_one_view_is_fixed_per_image():
    pano, frames = column_pano(), load_photo_frames()
    starts = {int(columns_of(pv.photo_view(pano, "fov70", "a", 0, np.random.default_rng([0, e]), frames))[0])
              for e in range(30)}
    assert len(starts) > 20
    fixed = {int(columns_of(pv.photo_view(pano, "one_view", "a", 0, np.random.default_rng([0, e]), frames))[0])
             for e in range(30)}
    assert len(fixed) == 1
    other_ids = {int(columns_of(pv.photo_view(pano, "one_view", f"id{k}", 0, np.random.default_rng(0), frames))[0])
                 for k in range(30)}
    assert len(other_ids) > 20  # drawn per image
    again = pv.photo_view(pano, "one_view", "a", 0, np.random.default_rng(99), frames)
    assert int(columns_of(again)[0]) in fixed  # same id and seed: same view in another run
    other_seed = {int(columns_of(pv.photo_view(pano, "one_view", "a", s, np.random.default_rng(0), frames))[0])
                  for s in range(10)}
    assert len(other_seed) > 5


def test_north_dropped_is_a_pure_rotation_and_unmodified_keeps_north():
    pano = column_pano()
    frames = load_photo_frames()
    assert np.array_equal(pv.photo_view(pano, "unmodified", "a", 0, np.random.default_rng(1), frames), pano)
    shifts = set()
    for e in range(20):
        view = pv.photo_view(pano, "panorama", "a", 0, np.random.default_rng([1, e]), frames)
        cols = columns_of(view)
        assert view.shape == pano.shape
        assert_consecutive(cols)
        shift = int(cols[0])
        assert np.array_equal(view, np.roll(pano, -shift, axis=1))
        shifts.add(shift)
    assert len(shifts) > 15


def test_slices_of_a_rolled_panorama_are_slices_of_the_original():
    pano = column_pano()
    rolled = pv.roll(pano, 200)
    view = pv.azimuth_slice(rolled, 400, 100)
    assert_consecutive(columns_of(view))
    assert np.array_equal(view, pv.azimuth_slice(pano, (400 + 200) % W, 100))


def test_photo_frames_follow_the_catalog_distribution():
    frames = load_photo_frames()
    assert abs(sum(f.p for f in frames.layouts) - 1) < 1e-9 and frames.hfov_deg == (30.0, 60.0)
    big_h, big_w = 4000, 8000  # tall enough that no layout is clipped
    rng = np.random.default_rng(5)
    draws = [pv.draw_frame((big_h, big_w), frames, rng) for _ in range(8000)]
    hfov = np.array([d.cols * 360 / big_w for d in draws])
    assert hfov.min() >= 30 - 0.05 and hfov.max() <= 60 + 0.05
    assert abs(np.mean(hfov) - 45) < 0.5
    aspects = np.array([d.rows / d.cols for d in draws])
    for layout in frames.layouts:
        freq = np.mean(np.abs(aspects - layout.aspect) < 0.01)
        assert abs(freq - layout.p) < 0.02, (layout.name, freq, layout.p)  # ~4 sigma at 8000 draws
    for d in draws[:2000]:  # tilt: the centre stays within half of min(h / 3, H - h) of the middle
        jitter = frames.tilt * min(d.rows / 3, big_h - d.rows)
        assert abs(d.row + d.rows / 2 - big_h / 2) <= jitter + 1
        assert 0 <= d.col < big_w


def test_photo_frames_are_fixed_per_image_and_stay_inside_the_panorama():
    pano, frames = column_pano(), load_photo_frames()
    views = [pv.photo_view(pano, "photo_frame", "x", 0, np.random.default_rng(e), frames) for e in range(5)]
    assert all(np.array_equal(v, views[0]) for v in views)
    for k in range(300):
        view = pv.photo_view(pano, "photo_frame", f"id{k}", 0, np.random.default_rng(0), frames)
        assert 1 <= view.shape[0] <= H
        assert_consecutive(columns_of(view))
        rows = view[:, 0, 2].astype(int)
        assert np.all(np.diff(rows) == 1) and rows[0] >= 0 and rows[-1] < H


def test_overhead_is_reduced_by_27_percent_centred_then_anywhere_inside():
    chip = np.zeros((750, 750, 3), np.uint8)
    chip[..., 0] = np.arange(750)[:, None] % 256
    assert pv.overhead_crop_px(750) == 550
    assert pv.overhead_view(chip, "photo_frame", "a", 0).shape == (750, 750, 3)
    centred = pv.overhead_view(chip, "overhead_centre", "a", 0)
    assert centred.shape == (550, 550, 3) and int(centred[0, 0, 0]) == 100
    offsets = [pv.random_crop_offset(750, 550, np.random.default_rng(k)) for k in range(3000)]
    arr = np.array(offsets)
    assert arr.min() == 0 and arr.max() == 200  # up to +-100 px from the centre, both ends reached
    for step in ("overhead_random", "swapped"):
        a = pv.overhead_view(chip, step, "a", 0)
        assert a.shape == (550, 550, 3)
        assert np.array_equal(a, pv.overhead_view(chip, step, "a", 0))  # fixed per image (a geotag error)
    tops = {int(pv.overhead_view(chip, "overhead_random", f"id{k}", 0)[0, 0, 0]) for k in range(50)}
    assert len(tops) > 20


def test_swap_map_swaps_six_percent_never_with_itself():
    for n, seed in ((1000, 0), (1000, 1), (333, 7)):
        m = pv.swap_map(n, pv.SWAP_RATE, seed)
        moved = np.flatnonzero(m != np.arange(n))
        assert len(moved) == round(0.06 * n)
        assert sorted(m.tolist()) == list(range(n))  # every overhead is used once
        assert np.all(m[moved] != moved)
    assert np.array_equal(pv.swap_map(1000, 0.06, 3), pv.swap_map(1000, 0.06, 3))
    assert np.array_equal(pv.swap_map(10, 0.06, 0), np.arange(10))  # 0.6 pairs: nothing to swap with


def test_steps_are_the_seeds_order_and_all_labelled():
    assert PANORAMA_STEPS[0] == "unmodified" and PANORAMA_STEPS[-1] == "swapped"
    assert set(pv.STEP_LABELS) == set(PANORAMA_STEPS)
    assert [pv.level(s) for s in PANORAMA_STEPS] == list(range(len(PANORAMA_STEPS)))
