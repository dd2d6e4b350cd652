"""``crossview heatmap``: where in a search area a photo was taken, by the model's score on a grid (WITW Fig. 3).

The command line: the search area (``--bbox`` or ``--polygon``, in ``--crs``), the photo (a file or
a manifest pair ``--id``, whose position is then marked as the truth), the trained model and the
tiles table (both default to what ``dvc repro`` writes). Scoring is :mod:`pipeline.heatmap_score`
(WITW's ``exp(10 (1 - d))`` per grid point, the photo centre's bearing); the GeoTIFF, GeoJSON and
PNG are :mod:`pipeline.heatmap_draw`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from pipeline import heatmap_draw as draw
from pipeline import heatmap_score
from pipeline.config import Params
from pipeline.geo import transformer
from pipeline.heatmap_score import HeatmapError
from pipeline.store import read_bytes
from pipeline.vectors import is_vector_file, read_area

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models/geoloc/model.pt"  # where the train stage (dvc.yaml) writes it


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
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"trained model (default: {DEFAULT_MODEL})")
    parser.add_argument("--tiles", default="tables/tiles.parquet", help="tiles table")
    parser.add_argument("--out", required=True, help="output prefix: writes PREFIX.png, PREFIX.tif, PREFIX.geojson")


def _photo_and_truth(args: argparse.Namespace, area_epsg: int | None) -> tuple[str, tuple[float, float, int | None] | None]:
    if args.id is not None:
        row = manifest_row(args.manifest, args.id)
        return row["photo_uri"], (row["x_m"], row["y_m"], row["epsg"])
    return args.photo, (args.true[0], args.true[1], area_epsg) if args.true else None


def main(params: Params, args: argparse.Namespace) -> int:
    from pipeline.device import resolve_device
    from pipeline.train.data import decode
    from pipeline.train.loop import load_model

    hp = params.heatmap
    device = resolve_device(hp.device, "heatmap.device")
    if device == "cpu":
        import torch

        torch.set_num_threads(hp.threads)
    area_epsg = parse_crs(args.crs)
    area = read_area(args.polygon, area_epsg) if is_vector_file(args.polygon) else parse_area(args.bbox, args.polygon)
    photo_uri, truth = _photo_and_truth(args, area_epsg)
    model, _ = load_model(args.model, device)
    photo = decode(read_bytes(photo_uri, params.s3), (model.spec.photo_width, model.spec.photo_height))
    tiles = heatmap_score.load_tiles(args.tiles)
    result = heatmap_score.compute(model, photo, tiles, area, area_epsg, hp.step_m, params.chip.edge_m,
                                   batch_size=hp.batch_size, max_points=hp.max_points, s3=params.s3, device=device)
    true_xy = None
    if truth is not None:
        src = result.grid.epsg if truth[2] is None else truth[2]
        true_xy = transformer(src, result.grid.epsg).transform(truth[0], truth[1])
    draw.write_geotiff(result, f"{args.out}.tif")
    draw.write_geojson(result, f"{args.out}.geojson")
    size = draw.png_size(result.grid, hp.png_max_px)
    draw.render_png(result, draw.background(tiles, result.grid.epsg, result.grid.bounds, size, params.s3),
                    f"{args.out}.png", true_xy)
    log.info("wrote %s.png, %s.tif and %s.geojson", args.out, args.out, args.out)
    return 0
