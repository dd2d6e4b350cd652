"""The heat map's outputs: a GeoTIFF of scores and bearings, GeoJSON points, and the PNG (WITW Fig. 3).

* ``OUT.tif``: band 1 score, band 2 bearing of the photo's centre, band 3 bearing of its left edge
  (float32, NaN = no data), the grid's CRS and transform; the score formula and the bearing
  convention are in the file's tags.
* ``OUT.geojson``: one point per scored cell (lon/lat) with score, distance, rank and both bearings;
  every feature names the conventions too, so a GIS user sees them beside the numbers.
* ``OUT.png``: tile imagery, a red heat overlay (stronger red = better fit), arrows along the photo
  centre's best-fit viewing direction (longer = better fit) for models that find one, the true
  location when known, and a legend that states the score and the bearing convention. For a model
  without orientation the legend says so and no direction marks are drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from PIL import Image, ImageDraw, ImageFont
from rasterio.windows import from_bounds

from pipeline.config import S3Params
from pipeline.geo import transformer
from pipeline.heatmap_score import BEARING_CONVENTION, SCORE_FORMULA, Grid, HeatmapResult, Tile
from pipeline.store import atomic_file, gdal_path, rasterio_env

NO_ORIENTATION = "this model finds no viewing direction (timm_contrastive): no direction is drawn"


def _atomic(path: str | Path, write) -> None:
    with atomic_file(path) as tmp:
        write(tmp)


def write_geotiff(result: HeatmapResult, path: str | Path) -> None:
    """Bands score, bearing_deg (photo centre), left_edge_deg; float32, NaN nodata; conventions as tags."""
    g = result.grid
    profile = {"driver": "GTiff", "width": g.cols, "height": g.rows, "count": 3, "dtype": "float32",
               "crs": f"EPSG:{g.epsg}", "transform": g.transform, "nodata": float("nan")}

    def write(tmp: str) -> None:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(np.stack([result.score, result.bearing_deg, result.left_edge_deg]).astype(np.float32))
            dst.descriptions = ("score", "bearing_deg", "left_edge_deg")
            dst.update_tags(SCORE=SCORE_FORMULA, BEARING=BEARING_CONVENTION if result.orientation else NO_ORIENTATION)

    _atomic(path, write)


def _degrees(value: float) -> float | None:
    return round(float(value), 2) if math.isfinite(value) else None


def feature_rows(result: HeatmapResult) -> list[dict]:
    """One GeoJSON point feature (lon/lat) per scored grid point: score, distance, rank, bearings, conventions."""
    x, y = result.grid.centres()
    ok = np.isfinite(result.score)
    order = np.argsort(-result.score[ok], kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    lon, lat = transformer(result.grid.epsg, 4326).transform(x[ok], y[ok])
    convention = BEARING_CONVENTION if result.orientation else NO_ORIENTATION
    feats = []
    for k, (r, c) in enumerate(zip(*np.nonzero(ok))):
        props = {"row": int(r), "col": int(c), "x_m": float(x[r, c]), "y_m": float(y[r, c]),
                 "epsg": result.grid.epsg, "score": float(result.score[r, c]),
                 "distance": float(result.distance[r, c]), "rank": int(rank[k]),
                 "bearing_deg": _degrees(result.bearing_deg[r, c]),
                 "left_edge_deg": _degrees(result.left_edge_deg[r, c]),
                 "score_formula": SCORE_FORMULA, "bearing_convention": convention, "tile_id": result.tile_id[r, c]}
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


def legend_lines(result: HeatmapResult, truth: bool) -> list[str]:
    """What the PNG's legend says: the score, the direction marks (or their absence), the truth marker."""
    lines = [f"red: score {SCORE_FORMULA}; stronger red = better fit"]
    if result.orientation:
        lines.append("arrows: best-fit viewing direction of the photo's CENTRE (clockwise from north); "
                     "longer = better fit")
    else:
        lines.append(NO_ORIENTATION)
    if truth:
        lines.append("cyan cross: the photo's recorded location")
    return lines


def _legend(out: Image.Image, lines: list[str]) -> None:
    """A white box with black text along the bottom of the image."""
    w, h = out.size
    font = ImageFont.load_default(size=max(10, round(w / 80)))
    draw = ImageDraw.Draw(out)
    line_h = font.getbbox("Ag")[3] + 4
    top = h - line_h * len(lines) - 8
    draw.rectangle([0, top, w, h], fill=(255, 255, 255, 220))
    for k, text in enumerate(lines):
        draw.text((6, top + 4 + k * line_h), text, fill=(0, 0, 0), font=font)


def _truth_marker(draw: ImageDraw.ImageDraw, g: Grid, size: tuple[int, int], true_xy: tuple[float, float],
                  cell: float) -> None:
    w, h = size
    tx, ty = ~Affine.scale(g.step_m * g.cols / w, g.step_m * g.rows / h) * (true_xy[0] - g.minx, g.maxy - true_xy[1])
    r = max(6.0, cell / 5)
    draw.ellipse([tx - r, ty - r, tx + r, ty + r], outline=(0, 255, 255), width=3)
    draw.line([(tx - 2 * r, ty), (tx + 2 * r, ty)], fill=(0, 255, 255), width=2)
    draw.line([(tx, ty - 2 * r), (tx, ty + 2 * r)], fill=(0, 255, 255), width=2)


def render_png(result: HeatmapResult, imagery: Image.Image, path: str | Path,
               true_xy: tuple[float, float] | None = None) -> None:
    """Imagery, a red heat overlay (opacity by normalised score), arrows when the model has them, truth, legend."""
    g = result.grid
    w, h = imagery.size
    s = result.score
    ok = np.isfinite(s)
    lo, hi = (float(s[ok].min()), float(s[ok].max())) if ok.any() else (0.0, 1.0)
    norm = np.where(ok, (s - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
    alpha = Image.fromarray((norm * 190).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    red = Image.new("RGBA", (w, h), (255, 0, 0, 0))
    red.putalpha(alpha)
    out = Image.alpha_composite(imagery.convert("RGBA"), red)
    draw = ImageDraw.Draw(out)
    cell = w / g.cols
    if result.orientation:
        for r, c in zip(*np.nonzero(ok & np.isfinite(result.bearing_deg))):
            px, py = (c + 0.5) * cell, (r + 0.5) * h / g.rows
            _arrow(draw, px, py, float(result.bearing_deg[r, c]), cell * (0.15 + 0.55 * norm[r, c]),
                   max(1, round(cell / 25)))
    if true_xy is not None:
        _truth_marker(draw, g, (w, h), true_xy, cell)
    _legend(out, legend_lines(result, true_xy is not None))
    _atomic(path, lambda tmp: out.convert("RGB").save(tmp, format="PNG"))


def png_size(grid: Grid, max_px: int) -> tuple[int, int]:
    """PNG (w, h) with the grid's aspect and the longer side ``max_px``."""
    scale = max_px / max(grid.rows, grid.cols)
    return max(1, round(grid.cols * scale)), max(1, round(grid.rows * scale))
