"""``crossview heatmap``: where in a search area a photo was taken, by the model's score on a grid (WITW Fig. 3).

A grid of points every ``heatmap.step_m`` (56.25 m) covers the search area (a bbox or polygon, in
lon/lat, a tile's UTM CRS or any EPSG code) in the CRS of the tile that holds it: points are cell
centres, the first cell's corner is the area's (minx, maxy). At each point inside the area a
``chip.edge_m`` chip is cut from the tile COG exactly as the chip stage cuts them (windowed reads),
chips are scored in batches against the photo, and each point gets a score (cosine similarity of
the features, 1 - d²/2) and, for models that find one, the best-fit viewing direction. Points whose
chip does not lie wholly inside a tile's valid footprint get no score (NaN).

Outputs: ``OUT.tif`` (band 1 score, band 2 bearing; the grid's CRS and transform; NaN = no data),
``OUT.geojson`` (points in lon/lat with score, rank, bearing) and ``OUT.png`` (tile imagery, a red
heat overlay, arrows along the best-fit viewing direction whose length grows with the score, the
true location when known).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import rasterio
import shapely
from affine import Affine
from PIL import Image, ImageDraw
from rasterio.windows import from_bounds
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from pipeline import chipgeom
from pipeline.config import Params, S3Params
from pipeline.errors import CrossviewError
from pipeline.geo import transformer
from pipeline.schemas import TILES, read_table
from pipeline.store import gdal_path, rasterio_env, read_bytes
from pipeline.vectors import is_vector_file, read_area

log = logging.getLogger(__name__)


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
    """Scores and bearings on the grid (NaN where no point or no full chip), and the tile of each scored point."""

    grid: Grid
    score: np.ndarray  # float32 (rows, cols)
    bearing_deg: np.ndarray  # float32 (rows, cols); NaN everywhere for models without orientation
    tile_id: np.ndarray  # object (rows, cols); None where unscored


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


def score_points(model, photo: Image.Image, x: np.ndarray, y: np.ndarray, owners: list[Tile | None],
                 edge_m: float, batch_size: int, s3: S3Params, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Score and bearing at each point (NaN where no tile); chips read tile by tile, scored in batches."""
    import torch

    from pipeline.chip import read_chip
    from pipeline.train.data import chip_pixels, chip_tensor, photo_pixels, photo_tensor

    score, bearing = np.full(len(x), np.nan, np.float32), np.full(len(x), np.nan, np.float32)
    with torch.no_grad():
        anchor = model.embed_photo(photo_tensor(photo_pixels(photo, model.spec))[None].to(device))
        for tile in sorted({t for t in owners if t is not None}, key=lambda t: t.tile_id):
            todo = [k for k, t in enumerate(owners) if t is tile]
            with rasterio_env(s3), rasterio.open(gdal_path(tile.uri)) as src:
                for b0 in range(0, len(todo), batch_size):
                    batch = todo[b0 : b0 + batch_size]
                    chips = []
                    for k in batch:
                        square = chipgeom.ChipSquare(float(x[k]), float(y[k]), edge_m, tile.epsg)
                        data, _ = read_chip(src, chipgeom.pixel_window(square, src.transform, tile.gsd_m))
                        chips.append(chip_tensor(chip_pixels(Image.fromarray(data.transpose(1, 2, 0)), model.spec),
                                                 model.spec))
                    dist, bear = model.distances(anchor, model.embed_chip(torch.stack(chips).to(device)))
                    score[batch] = (1 - dist[0].double().cpu().numpy() ** 2 / 2).astype(np.float32)
                    if bear is not None:
                        bearing[batch] = bear[0].cpu().numpy().astype(np.float32)
    return score, bearing


def compute(model, photo: Image.Image, tiles: list[Tile], area: BaseGeometry, area_epsg: int | None,
            step_m: float, edge_m: float, *, batch_size: int = 32, max_points: int = 40_000,
            s3: S3Params | None = None, device: str = "cpu") -> HeatmapResult:
    """The heat map's pure core: grid over the area, chips, scores and bearings."""
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
    s, b = score_points(model, photo, x, y, owners, edge_m, batch_size, s3 or S3Params(), device)
    score, bearing = np.full(inside.shape, np.nan, np.float32), np.full(inside.shape, np.nan, np.float32)
    tile_id = np.full(inside.shape, None, object)
    score[inside], bearing[inside] = s, b
    tile_id[inside] = [o.tile_id if o is not None else None for o in owners]
    return HeatmapResult(grid, score, bearing, tile_id)


# ---------------------------------------------------------------- outputs


def _atomic(path: str | Path, write) -> None:
    from pipeline.store import atomic_file

    with atomic_file(path) as tmp:
        write(tmp)


def write_geotiff(result: HeatmapResult, path: str | Path) -> None:
    """Band 1 score, band 2 bearing (degrees from north), float32, NaN nodata, the grid's CRS and transform."""
    g = result.grid
    profile = {"driver": "GTiff", "width": g.cols, "height": g.rows, "count": 2, "dtype": "float32",
               "crs": f"EPSG:{g.epsg}", "transform": g.transform, "nodata": float("nan")}

    def write(tmp: str) -> None:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(np.stack([result.score, result.bearing_deg]))
            dst.descriptions = ("score", "bearing_deg")

    _atomic(path, write)


def feature_rows(result: HeatmapResult) -> list[dict]:
    """One GeoJSON point feature (lon/lat) per scored grid point, with score, rank and bearing."""
    x, y = result.grid.centres()
    ok = np.isfinite(result.score)
    order = np.argsort(-result.score[ok], kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    lon, lat = transformer(result.grid.epsg, 4326).transform(x[ok], y[ok])
    feats = []
    for k, (r, c) in enumerate(zip(*np.nonzero(ok))):
        bearing = float(result.bearing_deg[r, c])
        props = {"row": int(r), "col": int(c), "x_m": float(x[r, c]), "y_m": float(y[r, c]),
                 "epsg": result.grid.epsg, "score": float(result.score[r, c]), "rank": int(rank[k]),
                 "bearing_deg": round(bearing, 2) if math.isfinite(bearing) else None,
                 "tile_id": result.tile_id[r, c]}
        feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(lon[k]), float(lat[k])]},
                      "properties": props})
    return feats


def write_geojson(result: HeatmapResult, path: str | Path) -> None:
    """The scored points as a GeoJSON FeatureCollection (RFC 7946: lon/lat)."""
    text = json.dumps({"type": "FeatureCollection", "features": feature_rows(result)}, indent=1)
    _atomic(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def background(tiles: list[Tile], epsg: int, bounds: tuple[float, float, float, float], size: tuple[int, int],
               s3: S3Params) -> Image.Image:
    """Tile imagery over ``bounds`` at ``size`` (w, h): decimated reads of every tile in the CRS, mosaicked."""
    w, h = size
    canvas = np.zeros((3, h, w), np.uint8)
    area = shapely.box(*bounds)
    with rasterio_env(s3):
        for tile in (t for t in tiles if t.epsg == epsg and t.footprint.intersects(area)):
            with rasterio.open(gdal_path(tile.uri)) as src:
                window = from_bounds(*bounds, transform=src.transform)
                data = src.read((1, 2, 3), window=window, out_shape=(3, h, w), boundless=True, fill_value=0)
            valid = data.any(axis=0) & ~canvas.any(axis=0)
            canvas[:, valid] = data[:, valid]
    return Image.fromarray(canvas.transpose(1, 2, 0))


def _arrow(draw: ImageDraw.ImageDraw, x: float, y: float, bearing: float, length: float, width: int) -> None:
    rad = math.radians(bearing)
    tip = (x + length * math.sin(rad), y - length * math.cos(rad))
    for colour, w in (((0, 0, 0), width + 2), ((255, 230, 0), width)):
        draw.line([(x, y), tip], fill=colour, width=w)
        for side in (150, -150):
            back = math.radians(bearing + side)
            head = min(length * 0.45, 10 + 2 * width)
            draw.line([tip, (tip[0] + head * math.sin(back), tip[1] - head * math.cos(back))], fill=colour, width=w)


def render_png(result: HeatmapResult, imagery: Image.Image, path: str | Path,
               true_xy: tuple[float, float] | None = None) -> None:
    """Imagery, a red heat overlay (opacity by normalised score), arrows (direction, length by score), the truth."""
    g = result.grid
    w, h = imagery.size
    s = result.score
    ok = np.isfinite(s)
    lo, hi = (float(s[ok].min()), float(s[ok].max())) if ok.any() else (0.0, 1.0)
    norm = np.where(ok, (s - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
    alpha = Image.fromarray((norm**2 * 190).astype(np.uint8)).resize((w, h), Image.BILINEAR)  # the best stand out
    red = Image.new("RGBA", (w, h), (255, 0, 0, 0))
    red.putalpha(alpha)
    out = Image.alpha_composite(imagery.convert("RGBA"), red)
    draw = ImageDraw.Draw(out)
    cell = w / g.cols
    for r, c in zip(*np.nonzero(ok)):
        px, py = (c + 0.5) * cell, (r + 0.5) * h / g.rows
        size = cell * (0.15 + 0.55 * norm[r, c])
        if math.isfinite(result.bearing_deg[r, c]):
            _arrow(draw, px, py, float(result.bearing_deg[r, c]), size, max(1, round(cell / 25)))
        else:
            draw.ellipse([px - size / 3, py - size / 3, px + size / 3, py + size / 3], outline=(255, 230, 0), width=2)
    if true_xy is not None:
        tx, ty = ~Affine.scale(g.step_m * g.cols / w, g.step_m * g.rows / h) * (true_xy[0] - g.minx, g.maxy - true_xy[1])
        r = max(6.0, cell / 5)
        draw.ellipse([tx - r, ty - r, tx + r, ty + r], outline=(0, 255, 255), width=3)
        draw.line([(tx - 2 * r, ty), (tx + 2 * r, ty)], fill=(0, 255, 255), width=2)
        draw.line([(tx, ty - 2 * r), (tx, ty + 2 * r)], fill=(0, 255, 255), width=2)
    _atomic(path, lambda tmp: out.convert("RGB").save(tmp, format="PNG"))


def png_size(grid: Grid, max_px: int) -> tuple[int, int]:
    """PNG (w, h) with the grid's aspect and the longer side ``max_px``."""
    scale = max_px / max(grid.rows, grid.cols)
    return max(1, round(grid.cols * scale)), max(1, round(grid.rows * scale))


# ---------------------------------------------------------------- command line


def parse_crs(text: str) -> int | None:
    """``lonlat`` / ``EPSG:4326`` → 4326, ``EPSG:n`` or ``n`` → n, ``tile`` → None (the CRS of the tile holding it)."""
    text = text.strip().lower()
    if text in ("lonlat", "wgs84"):
        return 4326
    if text == "tile":
        return None
    try:
        return int(text.removeprefix("epsg:"))
    except ValueError:
        raise HeatmapError(f"--crs must be lonlat, tile or EPSG:<code>, got {text!r}") from None


def parse_area(bbox: list[float] | None, polygon: str | None) -> BaseGeometry:
    """The search area from ``--bbox minx miny maxx maxy`` or ``--polygon`` (a GeoJSON/WKT file or WKT text)."""
    if bbox is not None:
        minx, miny, maxx, maxy = bbox
        if not (minx < maxx and miny < maxy):
            raise HeatmapError(f"--bbox must be minx miny maxx maxy with min < max, got {bbox}")
        return shapely.box(minx, miny, maxx, maxy)
    text = Path(polygon).read_text() if Path(polygon).is_file() else polygon
    try:
        if text.lstrip().startswith("{"):
            data = json.loads(text)
            items = data.get("features", [data])
            geom = shapely.union_all([shape(f.get("geometry", f)) for f in items])
        else:
            geom = shapely.from_wkt(text)
    except Exception as err:  # noqa: BLE001 - any parse failure: say what was expected
        raise HeatmapError(f"--polygon is neither GeoJSON nor WKT: {type(err).__name__}: {err}") from None
    if geom.is_empty or geom.area <= 0:
        raise HeatmapError("--polygon must be a polygon with an area")
    return geom


def manifest_row(path: str, pair_id: str) -> dict:
    """The manifest row of ``pair_id`` (photo URI and true position)."""
    table = pq.read_table(path, columns=["id", "photo_uri", "x_m", "y_m", "epsg"], filters=[("id", "=", pair_id)])
    if table.num_rows == 0:
        raise HeatmapError(f"{path} has no pair with id {pair_id!r}")
    return table.to_pylist()[0]


def configure(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--bbox", nargs=4, type=float, metavar=("MINX", "MINY", "MAXX", "MAXY"), help="search area")
    where.add_argument("--polygon", help="search area: a vector file (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, "
                       "GeoParquet; any CRS, converted to --crs), a WKT file, or WKT text")
    parser.add_argument("--crs", default="lonlat", help="CRS of the area and --true: lonlat (default), tile, EPSG:n")
    photo = parser.add_mutually_exclusive_group(required=True)
    photo.add_argument("--photo", help="the photo (path, s3:// or http(s):// URI)")
    photo.add_argument("--id", help="a pair id of --manifest: its photo, and its position as the true location")
    parser.add_argument("--manifest", default="manifests/test.parquet", help="manifest for --id")
    parser.add_argument("--true", nargs=2, type=float, metavar=("X", "Y"), help="true location (in --crs)")
    parser.add_argument("--model", default="models/model.pt", help="trained model (models/model.pt)")
    parser.add_argument("--tiles", default="tables/tiles.parquet", help="tiles table")
    parser.add_argument("--out", required=True, help="output prefix: writes PREFIX.png, PREFIX.tif, PREFIX.geojson")


def _photo_and_truth(args: argparse.Namespace, area_epsg: int | None) -> tuple[str, tuple[float, float, int | None] | None]:
    if args.id is not None:
        row = manifest_row(args.manifest, args.id)
        return row["photo_uri"], (row["x_m"], row["y_m"], row["epsg"])
    return args.photo, (args.true[0], args.true[1], area_epsg) if args.true else None


def main(params: Params, args: argparse.Namespace) -> int:
    from pipeline.train.data import decode
    from pipeline.train.loop import load_model, resolve_device

    hp = params.heatmap
    device = resolve_device(hp.device)
    if device == "cpu":
        import torch

        torch.set_num_threads(hp.threads)
    area_epsg = parse_crs(args.crs)
    area = read_area(args.polygon, area_epsg) if is_vector_file(args.polygon) else parse_area(args.bbox, args.polygon)
    photo_uri, truth = _photo_and_truth(args, area_epsg)
    model, _ = load_model(args.model, device)
    photo = decode(read_bytes(photo_uri, params.s3), (model.spec.photo_width, model.spec.photo_height))
    tiles = load_tiles(args.tiles)
    result = compute(model, photo, tiles, area, area_epsg, hp.step_m, params.chip.edge_m, batch_size=hp.batch_size,
                     max_points=hp.max_points, s3=params.s3, device=device)
    true_xy = None
    if truth is not None:
        src = result.grid.epsg if truth[2] is None else truth[2]
        true_xy = transformer(src, result.grid.epsg).transform(truth[0], truth[1])
    write_geotiff(result, f"{args.out}.tif")
    write_geojson(result, f"{args.out}.geojson")
    imagery = background(tiles, result.grid.epsg, result.grid.bounds, png_size(result.grid, hp.png_max_px), params.s3)
    render_png(result, imagery, f"{args.out}.png", true_xy)
    log.info("wrote %s.png, %s.tif and %s.geojson", args.out, args.out, args.out)
    return 0
