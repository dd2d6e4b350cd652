"""The seed's Figure 4 as dataset transforms: from a north-aligned panorama to an ordinary photo.

Pure functions over numpy arrays (panoramas and chips are HWC). A panorama's ``W`` columns cover
360 degrees of azimuth, column ``j`` centred at ``(j + 0.5) * 360 / W`` degrees from its column 0
(north for a north-aligned source). The steps (``config.PANORAMA_STEPS``) are cumulative in the
seed's order; :func:`apply_step` applies every step up to the one named:

- ``panorama``: north dropped (the panorama rolled by a random azimuth, re-drawn every epoch);
- ``fov180`` / ``fov90`` / ``fov70``: a random horizontal slice of that angular width, re-drawn every epoch;
- ``one_view``: the 70 degree slice drawn once per image (seeded by the image id and the seed), fixed across
  epochs and runs;
- ``photo_frame``: instead, one crop per image from the photo-like distribution (``catalogs/photo_frames.yaml``);
- ``overhead_centre``: the overhead reduced by 27 % (750 -> 550 px in CVUSA), centred crop;
- ``overhead_random``: the reduced crop anywhere inside instead (simulated geotag error), fixed per image;
- ``swapped``: 6 % of the overhead images swapped between pairs (wrong geotags; :func:`swap_map`, no self-swap).

Random draws per epoch come from the caller's ``(seed, epoch, index)`` generator; the per-image ones
from :func:`image_rng`, so they do not depend on the epoch, the row order or the number of workers.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from catalogs import PhotoFrames
from pipeline.config import PANORAMA_STEPS

STEP_LABELS = {  # the seed's names for the steps of its Figure 4
    "unmodified": "Unmodified", "panorama": "Panorama", "fov180": "FOV 180°", "fov90": "FOV 90°",
    "fov70": "FOV 70°", "one_view": "One View Only", "photo_frame": "Realistic Photo Frame",
    "overhead_centre": "Reduced Overhead (centred)", "overhead_random": "Reduced Overhead (random)",
    "swapped": "Fully-Modified",
}
FOV_OF_STEP = {"fov180": 180.0, "fov90": 90.0, "fov70": 70.0, "one_view": 70.0}
OVERHEAD_KEEP = 550 / 750  # "reduced by 27 %": CVUSA's 750 px overhead -> a 550 px crop
SWAP_RATE = 0.06


def level(step: str) -> int:
    """Position of ``step`` in the chain (0: unmodified)."""
    return PANORAMA_STEPS.index(step)


def image_rng(image_id: str, seed: int, what: int = 0) -> np.random.Generator:
    """A generator for draws made once per image: the same for an id and seed in every epoch and run."""
    return np.random.default_rng([seed, zlib.crc32(image_id.encode()), what])


def slice_columns(width: int, fov_deg: float) -> int:
    """Columns of a ``width``-column 360 degree panorama that a ``fov_deg`` slice covers (at least 1)."""
    return max(1, min(width, round(fov_deg / 360 * width)))


def roll(pano: np.ndarray, shift: int) -> np.ndarray:
    """The panorama rotated so that its column ``shift`` becomes column 0."""
    return np.roll(pano, -int(shift), axis=1)


def random_roll(pano: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """North thrown away: the panorama rolled by a uniformly random number of columns."""
    return roll(pano, int(rng.integers(pano.shape[1])))


def azimuth_slice(pano: np.ndarray, start: int, cols: int, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Columns ``start .. start + cols`` (wrapping past 360 degrees) and rows ``rows`` of a panorama."""
    idx = (int(start) + np.arange(cols)) % pano.shape[1]
    part = pano if rows is None else pano[rows[0]:rows[1]]
    return part[:, idx]


def random_slice(pano: np.ndarray, fov_deg: float, rng: np.random.Generator) -> np.ndarray:
    """A ``fov_deg`` wide slice at a uniformly random azimuth."""
    return azimuth_slice(pano, int(rng.integers(pano.shape[1])), slice_columns(pano.shape[1], fov_deg))


@dataclass(frozen=True)
class Frame:
    """A photo-like crop of a panorama: first column, columns, first row, rows."""

    col: int
    cols: int
    row: int
    rows: int


def draw_frame(pano_hw: tuple[int, int], frames: PhotoFrames, rng: np.random.Generator) -> Frame:
    """A crop from the photo-frame distribution: angle of view, layout (aspect), azimuth and tilt."""
    height, width = pano_hw
    cols = slice_columns(width, float(rng.uniform(*frames.hfov_deg)))
    p = np.array([f.p for f in frames.layouts])
    aspect = frames.layouts[int(rng.choice(len(p), p=p / p.sum()))].aspect
    rows = max(1, min(height, round(cols * aspect)))
    jitter = frames.tilt * min(rows / 3, height - rows)
    centre = height / 2 + float(rng.uniform(-jitter, jitter))
    row = int(np.clip(round(centre - rows / 2), 0, height - rows))
    return Frame(int(rng.integers(width)), cols, row, rows)


def crop_frame(pano: np.ndarray, frame: Frame) -> np.ndarray:
    """The pixels of ``frame`` (wrapping in azimuth)."""
    return azimuth_slice(pano, frame.col, frame.cols, (frame.row, frame.row + frame.rows))


def overhead_crop_px(size: int, keep: float = OVERHEAD_KEEP) -> int:
    """Side of the reduced overhead crop of a ``size`` px overhead image."""
    return max(1, round(size * keep))


def centre_crop(chip: np.ndarray, side: int) -> np.ndarray:
    """The centred ``side`` x ``side`` crop of a square overhead image."""
    top, left = (chip.shape[0] - side) // 2, (chip.shape[1] - side) // 2
    return chip[top:top + side, left:left + side]


def random_crop_offset(size: int, side: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left (row, col) of a ``side`` crop anywhere inside a ``size`` image (uniform, both inclusive)."""
    return int(rng.integers(size - side + 1)), int(rng.integers(size - side + 1))


def swap_map(n: int, rate: float, seed: int) -> np.ndarray:
    """Which overhead each pair gets: ``round(rate * n)`` pairs (at least 2, or none) swapped, none with itself."""
    k = round(rate * n)
    out = np.arange(n)
    if k < 2 or n < 2:
        return out
    chosen = np.random.default_rng([seed, 0x5A9]).choice(n, size=k, replace=False)
    out[chosen] = np.roll(chosen, 1)  # a cycle through the chosen pairs: every one gets another's overhead
    return out


def photo_view(pano: np.ndarray, step: str, image_id: str, seed: int, rng: np.random.Generator,
               frames: PhotoFrames) -> np.ndarray:
    """The street-level input the chain up to ``step`` makes of a panorama."""
    lv = level(step)
    if lv >= level("photo_frame"):
        return crop_frame(pano, draw_frame(pano.shape[:2], frames, image_rng(image_id, seed, 1)))
    if lv >= level("one_view"):
        fixed = image_rng(image_id, seed, 0)
        return azimuth_slice(pano, int(fixed.integers(pano.shape[1])), slice_columns(pano.shape[1], 70.0))
    if step in FOV_OF_STEP:
        return random_slice(pano, FOV_OF_STEP[step], rng)
    if lv >= level("panorama"):
        return random_roll(pano, rng)
    return pano


def overhead_view(chip: np.ndarray, step: str, image_id: str, seed: int) -> np.ndarray:
    """The overhead input the chain up to ``step`` makes of a (square, north-up) overhead image."""
    lv = level(step)
    if lv < level("overhead_centre"):
        return chip
    side = overhead_crop_px(chip.shape[0])
    if lv < level("overhead_random"):
        return centre_crop(chip, side)
    top, left = random_crop_offset(chip.shape[0], side, image_rng(image_id, seed, 2))
    return chip[top:top + side, left:left + side]
