"""The heat map's scoring core: a grid over a search area, a chip at each point, the model's score (WITW Fig. 3).

A grid of points every ``heatmap.step_m`` (56.25 m) covers the search area (a bbox or polygon, in
lon/lat, a tile's UTM CRS or any EPSG code) in the CRS of the tile that holds it: points are cell
centres, the first cell's corner is the area's (minx, maxy). At each point inside the area a
``chip.edge_m`` chip is cut from the tile COG exactly as the chip stage cuts them (windowed reads),
chips are scored in batches against the photo, and each point gets:

* a score, WITW's ``exp(10 (1 - d))`` on WITW's distance ``d = 2 (1 - cos)`` of the features
  (0..4, so the score runs from e^10 for a perfect fit down to e^-30);
* for models that find one (``witw_fov``), the best-fit viewing direction of the photo's centre
  in degrees clockwise from north (``bearing_deg``) and of its left edge (``left_edge_deg``,
  WITW's printout convention). ``timm_contrastive`` finds none: both stay NaN.

Points whose chip does not lie wholly inside a tile's valid footprint get no score (NaN).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from affine import Affine
from PIL import Image
from shapely.geometry.base import BaseGeometry

from pipeline import chipgeom
from pipeline.config import S3Params
from pipeline.errors import CrossviewError
from pipeline.geo import transformer
from pipeline.schemas import TILES, read_table
from pipeline.store import gdal_path, rasterio_env

log = logging.getLogger(__name__)

SCORE_SCALE = 10.0  # WITW's heat map: exp(10 (1 - d))
SCORE_FORMULA = "exp(10 (1 - d)), d = 2 (1 - cos) of the L2-normalised features (WITW)"
BEARING_CONVENTION = ("bearing_deg: viewing direction of the photo's centre; left_edge_deg: of its left edge "
                      "(WITW's printout); degrees clockwise from north")


class HeatmapError(CrossviewError, ValueError):
    """The search area, photo or tiles do not allow a heat map."""


@dataclass(frozen=True)
class Tile:
    """What the heat map needs of a ``tiles`` row."""

    tile_id: str
    uri: str
    epsg: int
    gsd_m: float
    footprint: BaseGeometry


@dataclass(frozen=True)
class Grid:
    """``rows`` x ``cols`` cells of ``step_m`` in EPSG ``epsg``, top-left corner (minx, maxy); points at cell centres."""

    epsg: int
    minx: float
    maxy: float
    step_m: float
    rows: int
    cols: int

    @property
    def transform(self) -> Affine:
        return Affine(self.step_m, 0.0, self.minx, 0.0, -self.step_m, self.maxy)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.minx, self.maxy - self.rows * self.step_m, self.minx + self.cols * self.step_m, self.maxy)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """x and y of every cell centre, each ``(rows, cols)``."""
        x = self.minx + (np.arange(self.cols) + 0.5) * self.step_m
        y = self.maxy - (np.arange(self.rows) + 0.5) * self.step_m
        return np.meshgrid(x, y)


@dataclass(frozen=True)
class HeatmapResult:
    """Scores, distances and bearings on the grid (NaN where no point or no full chip), and each point's tile."""

    grid: Grid
    score: np.ndarray  # float64 (rows, cols): exp(10 (1 - distance))
    distance: np.ndarray  # float64 (rows, cols): WITW's 2 (1 - cos), 0..4
    bearing_deg: np.ndarray  # float32 (rows, cols): the photo centre's; NaN everywhere without orientation
    left_edge_deg: np.ndarray  # float32 (rows, cols): the photo's left edge (WITW's convention)
    tile_id: np.ndarray  # object (rows, cols); None where unscored
    orientation: bool = True  # False: the model finds no viewing direction (timm_contrastive)


def witw_score(distance: np.ndarray) -> np.ndarray:
    """WITW's heat-map score of a distance ``d = 2 (1 - cos)``: ``exp(10 (1 - d))``."""
    return np.exp(SCORE_SCALE * (1.0 - np.asarray(distance, np.float64)))


def left_edge(bearing_deg: np.ndarray, view_deg: float) -> np.ndarray:
    """The left edge's bearing of a photo ``view_deg`` wide whose centre looks along ``bearing_deg``."""
    return np.mod(np.asarray(bearing_deg) - view_deg / 2, 360.0)


def load_tiles(path: str) -> list[Tile]:
    """The usable (status ok) tiles of a ``tiles`` table, sorted by id."""
    rows = read_table(path, TILES, columns=["tile_id", "uri", "epsg", "gsd_m", "footprint_wkb", "status"]).to_pylist()
    tiles = [Tile(r["tile_id"], r["uri"], r["epsg"], r["gsd_m"], shapely.from_wkb(r["footprint_wkb"]))
             for r in rows if r["status"] == "ok" and r["footprint_wkb"] is not None]
    return sorted(tiles, key=lambda t: t.tile_id)


def to_crs(geom: BaseGeometry, src_epsg: int, dst_epsg: int) -> BaseGeometry:
    """``geom`` re-projected (no-op when the CRSs agree); edges are densified first so they may bend."""
    if src_epsg == dst_epsg:
        return geom
    minx, miny, maxx, maxy = geom.bounds
    dense = shapely.segmentize(geom, max(maxx - minx, maxy - miny, 1e-9) / 64)
    return shapely.transform(dense, lambda x, y: transformer(src_epsg, dst_epsg).transform(x, y), interleaved=False)


def grid_epsg(area: BaseGeometry, area_epsg: int | None, tiles: list[Tile]) -> int:
    """The EPSG of the first tile whose footprint holds the area's centre (``area_epsg`` None: the tile's own CRS)."""
    for tile in tiles:
        centre = area.centroid if area_epsg is None else to_crs(area, area_epsg, tile.epsg).centroid
        if tile.footprint.covers(centre):
            return tile.epsg
    raise HeatmapError("the search area's centre is not inside any tile's footprint: "
                       "check the coordinates and --crs (lon/lat by default)")


def make_grid(area: BaseGeometry, epsg: int, step_m: float) -> tuple[Grid, np.ndarray]:
    """The grid over ``area`` (already in ``epsg``) and which of its points lie in the area."""
    minx, miny, maxx, maxy = area.bounds
    grid = Grid(epsg, minx, maxy, step_m, max(1, math.ceil((maxy - miny) / step_m)),
                max(1, math.ceil((maxx - minx) / step_m)))
    x, y = grid.centres()
    inside = shapely.covers(area, shapely.points(x, y)) if area.area > 0 else np.ones_like(x, bool)
    return grid, inside


def assign_tiles(x: np.ndarray, y: np.ndarray, epsg: int, edge_m: float, tiles: list[Tile]) -> list[Tile | None]:
    """For each point, the first tile (by id) in ``epsg`` whose footprint covers its whole chip."""
    squares = chipgeom.squares(x, y, edge_m)
    out: list[Tile | None] = [None] * len(x)
    for tile in (t for t in tiles if t.epsg == epsg):
        covered = shapely.covers(tile.footprint, squares)
        for k in np.flatnonzero(covered):
            out[k] = out[k] or tile
    return out


def chip_inputs(src, tile: Tile, x: np.ndarray, y: np.ndarray, edge_m: float, spec):
    """Model inputs ``(n, C, H, W)`` of the ``edge_m`` chips centred on (x, y), cut from the open tile ``src``
    exactly as the chip stage cuts them (windowed reads), then resized as training resizes chips."""
    import torch

    from pipeline.raster import read_chip
    from pipeline.train.data import chip_pixels, chip_tensor

    windows = [chipgeom.pixel_window(chipgeom.ChipSquare(float(cx), float(cy), edge_m, tile.epsg), src.transform,
                                     tile.gsd_m) for cx, cy in zip(x, y, strict=True)]
    c0, r0 = min(w.col_off for w in windows), min(w.row_off for w in windows)
    union = chipgeom.PixelWindow(c0, r0, max(w.col_off + w.width for w in windows) - c0,
                                 max(w.row_off + w.height for w in windows) - r0)
    # Overlapping chips (a small grid, a row of points): one read of their union, then each chip's
    # pixels sliced from it -- the same pixels as one read per chip (a plain windowed read, nodata 0).
    whole = read_chip(src, union)[0] if union.width * union.height <= sum(w.width * w.height for w in windows) else None
    chips = []
    for w in windows:
        if whole is not None:
            data = whole[:, w.row_off - r0 : w.row_off - r0 + w.height, w.col_off - c0 : w.col_off - c0 + w.width]
        else:
            data = read_chip(src, w)[0]
        chips.append(chip_tensor(chip_pixels(Image.fromarray(np.ascontiguousarray(data.transpose(1, 2, 0))), spec),
                                 spec))
    return torch.stack(chips)


def score_points(model, photo: Image.Image, x: np.ndarray, y: np.ndarray, owners: list[Tile | None],
                 edge_m: float, batch_size: int, s3: S3Params, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Distance and bearing at each point (NaN where no tile); chips read tile by tile, scored in batches."""
    import torch

    from pipeline.train.data import photo_pixels, photo_tensor

    dist, bearing = np.full(len(x), np.nan), np.full(len(x), np.nan, np.float32)
    with torch.no_grad():
        anchor = model.embed_photo(photo_tensor(photo_pixels(photo, model.spec))[None].to(device))
        for tile in sorted({t for t in owners if t is not None}, key=lambda t: t.tile_id):
            todo = [k for k, t in enumerate(owners) if t is tile]
            with rasterio_env(s3), rasterio.open(gdal_path(tile.uri)) as src:
                for b0 in range(0, len(todo), batch_size):
                    batch = todo[b0 : b0 + batch_size]
                    chips = chip_inputs(src, tile, x[batch], y[batch], edge_m, model.spec)
                    d, bear = model.distances(anchor, model.embed_chip(chips.to(device)))
                    dist[batch] = d[0].double().cpu().numpy()
                    if bear is not None:
                        bearing[batch] = bear[0].cpu().numpy().astype(np.float32)
    return dist, bearing


def compute(model, photo: Image.Image, tiles: list[Tile], area: BaseGeometry, area_epsg: int | None,
            step_m: float, edge_m: float, *, batch_size: int = 32, max_points: int = 40_000,
            s3: S3Params | None = None, device: str = "cpu") -> HeatmapResult:
    """Grid over the area, chips, distances, WITW scores and bearings (the heat map's core)."""
    epsg = grid_epsg(area, area_epsg, tiles)
    area = area if area_epsg is None else to_crs(area, area_epsg, epsg)
    grid, inside = make_grid(area, epsg, step_m)
    if inside.sum() > max_points:
        raise HeatmapError(f"the grid has {int(inside.sum())} points, more than heatmap.max_points "
                           f"({max_points}): use a smaller area or a larger heatmap.step_m")
    x, y = (a[inside] for a in grid.centres())
    owners = assign_tiles(x, y, epsg, edge_m, tiles)
    log.info("heat map: %d x %d grid (%d points in the area, %d with a full chip) in EPSG:%d",
             grid.rows, grid.cols, len(x), sum(o is not None for o in owners), epsg)
    d, b = score_points(model, photo, x, y, owners, edge_m, batch_size, s3 or S3Params(), device)
    distance, bearing = np.full(inside.shape, np.nan), np.full(inside.shape, np.nan, np.float32)
    tile_id = np.full(inside.shape, None, object)
    distance[inside], bearing[inside] = d, b
    tile_id[inside] = [o.tile_id if o is not None else None for o in owners]
    view = getattr(model, "view_deg", None)
    edge = left_edge(bearing, view).astype(np.float32) if view else np.full(inside.shape, np.nan, np.float32)
    return HeatmapResult(grid, witw_score(distance), distance, bearing, edge, tile_id, model.has_orientation)
