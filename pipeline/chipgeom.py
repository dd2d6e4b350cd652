"""Pure chip-window arithmetic: the square around a photo, its pixel window in a tile, containment.

A chip is the ``edge_m`` x ``edge_m`` square of overhead imagery centred on a photo's position in
its tile's UTM CRS (WITW: 225 m, i.e. 750 x 750 px at 0.3 m).

Edge policy (how the continuous square snaps to the tile's pixel grid):

* The chip has exactly ``n = round(edge_m / gsd_m)`` pixels on a side, whatever the position
  (so it covers ``n * gsd_m`` metres, which is ``edge_m`` when the gsd divides it, as 0.3 m does 225 m).
* The tile pixel that *contains* the photo (half-open pixels: a point on a pixel edge belongs to
  the pixel to its right/below) becomes the chip's centre pixel, index ``n // 2`` on both axes.
  So the centre of the chip's centre pixel is within half a pixel (per axis) of the photo: that
  is the only rounding, and it is the largest error there is.
* The window therefore starts ``n // 2`` pixels left of/above the photo's pixel. For odd ``n`` its
  edges are within half a pixel of those of the ``n``-pixel square centred on the photo; for even
  ``n`` (750) the chip holds one more pixel east/south of the centre pixel than west/north of it,
  so its edges are within one pixel of them (no even-sized grid window can both centre the photo's
  pixel and keep every edge within half a pixel).
* The window may leave the raster; readers fill what lies outside with nodata (0). Pairing only
  keeps photos whose continuous square lies inside a tile's valid-data footprint, so such fill is
  at most a pixel wide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import Polygon

# Points this close (in pixels) below a pixel edge count as on it, so that positions computed in
# floating point from an exact pixel edge do not flip to the neighbouring pixel.
_EDGE_EPS_PX = 1e-9
# Relative tolerance when checking that a tile's pixel size is the gsd it claims.
_GSD_RTOL = 1e-3


@dataclass(frozen=True)
class ChipSquare:
    """An axis-aligned square of ``edge_m`` metres centred on (``x_m``, ``y_m``) in EPSG ``epsg``."""

    x_m: float
    y_m: float
    edge_m: float
    epsg: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.x_m) and math.isfinite(self.y_m)):
            raise ValueError(f"chip centre must be finite, got ({self.x_m}, {self.y_m})")
        if not (math.isfinite(self.edge_m) and self.edge_m > 0):
            raise ValueError(f"chip edge_m must be > 0, got {self.edge_m}")

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in metres."""
        h = self.edge_m / 2
        return (self.x_m - h, self.y_m - h, self.x_m + h, self.y_m + h)


@dataclass(frozen=True)
class PixelWindow:
    """A window of a raster in pixels: offsets may be negative or run past the raster's edge."""

    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def centre(self) -> tuple[int, int]:
        """(col, row) of the chip's centre pixel, relative to the window."""
        return (self.width // 2, self.height // 2)

    def clip(self, raster_width: int, raster_height: int) -> PixelWindow | None:
        """The part of this window inside a raster of the given size, or None when they do not overlap."""
        c0, r0 = max(self.col_off, 0), max(self.row_off, 0)
        c1 = min(self.col_off + self.width, raster_width)
        r1 = min(self.row_off + self.height, raster_height)
        if c1 <= c0 or r1 <= r0:
            return None
        return PixelWindow(c0, r0, c1 - c0, r1 - r0)


def chip_px(edge_m: float, gsd_m: float) -> int:
    """Pixels on a chip's side: ``round(edge_m / gsd_m)`` (750 for 225 m at 0.3 m)."""
    if not (edge_m > 0 and gsd_m > 0):
        raise ValueError(f"edge_m and gsd_m must be > 0, got {edge_m} and {gsd_m}")
    return max(1, round(edge_m / gsd_m))


def square_polygon(square: ChipSquare) -> Polygon:
    """The chip square as a shapely polygon in its EPSG's metres."""
    return shapely.box(*square.bounds)


def squares(x_m: np.ndarray, y_m: np.ndarray, edge_m: float) -> np.ndarray:
    """Vectorised :func:`square_polygon`: an array of chip squares centred on the given points."""
    h = edge_m / 2
    x_m, y_m = np.asarray(x_m, dtype=float), np.asarray(y_m, dtype=float)
    return shapely.box(x_m - h, y_m - h, x_m + h, y_m + h)


def _check_grid(transform: Affine, gsd_m: float) -> None:
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise ValueError(f"tile transform must be north-up without rotation, got {tuple(transform)[:6]}")
    for size in (transform.a, -transform.e):
        if abs(size - gsd_m) > _GSD_RTOL * gsd_m:
            raise ValueError(f"tile pixel size {size} m differs from its gsd_m {gsd_m} m")


def containing_pixel(transform: Affine, x_m: float, y_m: float) -> tuple[int, int]:
    """(col, row) of the tile pixel that contains the point (half-open pixels)."""
    col, row = ~transform * (x_m, y_m)
    return (math.floor(col + _EDGE_EPS_PX), math.floor(row + _EDGE_EPS_PX))


def pixel_window(square: ChipSquare, transform: Affine, gsd_m: float) -> PixelWindow:
    """The chip's window in a north-up tile: ``chip_px`` on a side, the photo's pixel at its centre."""
    _check_grid(transform, gsd_m)
    n = chip_px(square.edge_m, gsd_m)
    col, row = containing_pixel(transform, square.x_m, square.y_m)
    return PixelWindow(col - n // 2, row - n // 2, n, n)


def pixel_centre_xy(transform: Affine, window: PixelWindow, col: int, row: int) -> tuple[float, float]:
    """Map coordinates of the centre of pixel (col, row) of a window."""
    return transform * (window.col_off + col + 0.5, window.row_off + row + 0.5)


def contains(footprint: Polygon, square: ChipSquare) -> bool:
    """True when the whole chip square lies inside the footprint (touching its boundary counts)."""
    return bool(shapely.covers(footprint, square_polygon(square)))


def margin(footprint: Polygon, square: ChipSquare) -> float:
    """Distance from a contained square to the footprint's boundary (metres); -inf when not contained."""
    poly = square_polygon(square)
    if not shapely.covers(footprint, poly):
        return -math.inf
    return float(shapely.distance(footprint.boundary, poly))
