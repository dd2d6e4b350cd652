"""The polar transform of an overhead chip into a panorama-shaped image (as in WITW / DSM / SAFA).

Geometry, for a square chip of ``size`` pixels centred on the camera, north up:

* column ``j`` of the ``height`` x ``width`` polar image looks along bearing ``360 * j / width``
  degrees, clockwise from north (column 0 is north, ``width / 4`` east, ``width / 2`` south);
* row ``i`` samples the ring of radius ``(height - i - 0.5) / height * size / 2`` pixels: the top
  row is the chip's inscribed circle (far away, like a panorama's horizon), the bottom row is next
  to the centre (the ground at the camera's feet). Each row covers an annulus of equal width.

Pixel centres are at integer indices, so the chip centre is ``((size - 1) / 2, (size - 1) / 2)``.
Sampling is bilinear; the corners outside the inscribed circle are never used.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage


@lru_cache(maxsize=16)
def polar_coords(size: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Source (row, col) in a ``size`` x ``size`` chip for every pixel of the polar image."""
    radius = (height - np.arange(height, dtype=np.float64) - 0.5) / height * (size / 2)
    bearing = np.deg2rad(360.0 * np.arange(width, dtype=np.float64) / width)
    centre = (size - 1) / 2
    rows = centre - radius[:, None] * np.cos(bearing)[None, :]
    cols = centre + radius[:, None] * np.sin(bearing)[None, :]
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


def polar_transform(chip: np.ndarray, height: int, width: int) -> np.ndarray:
    """A square ``(size, size[, C])`` chip → its ``(height, width[, C])`` polar image, same dtype."""
    if chip.ndim not in (2, 3) or chip.shape[0] != chip.shape[1]:
        raise ValueError(f"polar_transform needs a square (size, size[, C]) array, got shape {chip.shape}")
    rows, cols = polar_coords(chip.shape[0], height, width)
    planes = chip[..., None] if chip.ndim == 2 else chip
    out = np.empty((height, width, planes.shape[2]), dtype=np.float32)
    for c in range(planes.shape[2]):
        ndimage.map_coordinates(planes[..., c].astype(np.float32), (rows, cols), out[..., c], order=1, mode="nearest")
    if np.issubdtype(chip.dtype, np.integer):
        info = np.iinfo(chip.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    out = out.astype(chip.dtype, copy=False)
    return out[..., 0] if chip.ndim == 2 else out


def bearing_of_column(column: float, width: int) -> float:
    """Bearing (degrees clockwise from north, in [0, 360)) that a polar-image column looks along."""
    return float((360.0 * column / width) % 360.0)
