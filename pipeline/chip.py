"""chip stage: cut the overhead chip around each paired photo from its tile -> chips table.

Chips are read with windows from the tile COG (local or ``/vsis3/``), ``round(edge_m / gsd_m)``
pixels on a side (see :mod:`pipeline.chipgeom` for the edge policy), and written to
``<store>/chips/<h>/<id>.<ext>`` where ``<h>`` hashes the chip params and the tile's sha256, so new
params or a new tile give new chips and leave old ones untouched. A small JSON sidecar written after
the chip marks it finished; a rerun skips finished chips.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rasterio
from PIL import Image
from rasterio.env import set_gdal_config

from pipeline import chipgeom
from pipeline.config import ChipParams, Params, S3Params
from pipeline.errors import RasterError, describe
from pipeline.executor import local_paths, run
from pipeline.raster import read_chip
from pipeline.schemas import (
    CHIPS,
    PAIRS,
    TILES,
    read_table,
    table_from_rows,
    write_table,
)
from pipeline.store import Store, add_store_out, make_store_out, gdal_options, gdal_path, read_bytes

log = logging.getLogger(__name__)

POLICY_VERSION = "chipgeom-v1"  # bump when the chip arithmetic changes, so chips land in a new folder
CHUNK = 256  # chips per task: one tile open serves this many chips
# Bounds GDAL's block cache (its default is 5 % of RAM), in bytes as rasterio's set_gdal_config takes it.
GDAL_CACHE_BYTES = 256 * 1024 * 1024
_EXT = {"jpeg": "jpg", "png": "png"}


@dataclass(frozen=True)
class ChipTask:
    """Chips to cut from one tile: one open of the tile serves them all."""

    tile_id: str
    tile_uri: str
    gsd_m: float
    epsg: int
    folder: str  # store key prefix: chips/<h>
    ids: tuple[str, ...]
    x_m: tuple[float, ...]
    y_m: tuple[float, ...]


def chip_folder(chip: ChipParams, tile_sha256: str) -> str:
    """``chips/<h>``: ``<h>`` is a short hash of the chip params, the edge policy and the tile's content."""
    spec = {"policy": POLICY_VERSION, "edge_m": chip.edge_m, "format": chip.format, "tile": tile_sha256}
    if chip.format == "jpeg":
        spec["jpeg_quality"] = chip.jpeg_quality
    return "chips/" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def chip_stats(chip: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """(nodata fraction, standard deviation of the valid pixels' values over all bands).

    Nodata pixels are 0 in every band (see :func:`pipeline.raster.read_chip`), so they add nothing to the sums:
    exact integer sums over the whole chip give the valid pixels' moments without copying them.
    """
    n_valid = int(np.count_nonzero(valid))
    nodata = (valid.size - n_valid) / valid.size
    if not n_valid:
        return nodata, 0.0
    s1 = int(chip.sum(dtype=np.uint64))
    s2 = int(np.square(chip, dtype=np.uint16).sum(dtype=np.uint64))
    n = n_valid * chip.shape[0]
    return nodata, float(np.sqrt(max(s2 * n - s1 * s1, 0) / (n * n)))


def encode(chip: np.ndarray, params: ChipParams) -> bytes:
    """The chip as JPEG (``jpeg_quality``) or PNG bytes."""
    img = Image.merge("RGB", [Image.fromarray(band) for band in chip])
    buf = io.BytesIO()
    if params.format == "jpeg":
        img.save(buf, "JPEG", quality=params.jpeg_quality)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def _error(pid: str, tile_id: str, message: str) -> dict:
    return {"id": pid, "tile_id": tile_id, "status": "error", "error": message}


def _finished(store: Store, key: str, s3: S3Params) -> dict | None:
    """The sidecar row of a finished chip, or None."""
    try:
        if not store.remote:
            path = Path(store.uri(key))
            return json.loads(path.read_text()) if path.is_file() else None
        if not store.exists(key):
            return None
        return json.loads(read_bytes(store.uri(key), s3.model_copy(update={"anonymous": False})))
    except ValueError:  # an unreadable sidecar marks nothing: the chip is cut again
        return None


def _cut_one(src, task: ChipTask, k: int, store: Store, chip: ChipParams) -> dict:
    """Cut, encode and write one chip, then its sidecar; return its row."""
    pid = task.ids[k]
    square = chipgeom.ChipSquare(task.x_m[k], task.y_m[k], chip.edge_m, task.epsg)
    window = chipgeom.pixel_window(square, src.transform, task.gsd_m)
    data, valid = read_chip(src, window)
    nodata, std = chip_stats(data, valid)
    key = f"{task.folder}/{pid}.{_EXT[chip.format]}"
    with store.writer(key) as tmp:
        Path(tmp).write_bytes(encode(data, chip))
    row = {"id": pid, "tile_id": task.tile_id, "uri": store.uri(key), "width": window.width,
           "height": window.height, "nodata_fraction": nodata, "std": std, "status": "ok", "error": None}
    store.put_json(f"{task.folder}/{pid}.json", row)
    return row


def process_task(task: ChipTask, store_root: str, s3: S3Params, chip: ChipParams) -> list[dict]:
    """Cut every chip of a task not finished before; one row per chip (status ok or error)."""
    store = Store(store_root, s3)
    rows: dict[int, dict] = {}
    for k, pid in enumerate(task.ids):
        done = _finished(store, f"{task.folder}/{pid}.json", s3)
        if done is not None:  # tile_id and uri as this run names them; the rest as measured
            key = f"{task.folder}/{pid}.{_EXT[chip.format]}"
            rows[k] = {**done, "id": pid, "tile_id": task.tile_id, "uri": store.uri(key)}
    todo = [k for k in range(len(task.ids)) if k not in rows]
    if todo:
        in_store = task.tile_uri.startswith(store.root + "/")
        try:
            # Process-wide, not in the Env: an Env restores the old limit on exit, under other threads' feet.
            set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_BYTES)
            env = gdal_options(s3, anonymous=False if in_store else None)
            with rasterio.Env(**env), rasterio.open(gdal_path(task.tile_uri)) as src:
                for k in todo:
                    try:
                        rows[k] = _cut_one(src, task, k, store, chip)
                    except Exception as err:  # noqa: BLE001 - recorded as data; the rest go on
                        rows[k] = _error(task.ids[k], task.tile_id, describe(err))
        except Exception as err:  # noqa: BLE001 - an unreadable tile fails its chips, not the stage
            msg = f"cannot read tile {task.tile_id} ({task.tile_uri}): {describe(err)}"
            for k in todo:
                rows.setdefault(k, _error(task.ids[k], task.tile_id, msg))
    return [rows[k] for k in range(len(task.ids))]


def z_order(x_m: np.ndarray, y_m: np.ndarray, cell_m: float) -> np.ndarray:
    """Morton (Z-order) keys of the ``cell_m`` grid cells holding the points: near keys are near cells."""
    key = np.zeros(len(x_m), np.uint64)
    cx = (np.floor(np.asarray(x_m) / cell_m).astype(np.int64) & 0xFFFFFFFF).astype(np.uint64)
    cy = (np.floor(-np.asarray(y_m) / cell_m).astype(np.int64) & 0xFFFFFFFF).astype(np.uint64)
    for bit in range(32):
        b = np.uint64(bit)
        key |= ((cx >> b) & np.uint64(1)) << np.uint64(2 * bit) | ((cy >> b) & np.uint64(1)) << np.uint64(2 * bit + 1)
    return key


def plan_tasks(pairs: pa.Table, tiles: pa.Table, chip: ChipParams, chunk: int = CHUNK) -> tuple[list[ChipTask], list[dict]]:
    """Group paired rows by tile into spatially ordered chunks; rows whose tile is unusable become errors."""
    pairs = pairs.filter(pc.equal(pairs["status"], "paired")).select(["id", "tile_id", "x_m", "y_m"])
    tile_rows = {t["tile_id"]: t for t in tiles.to_pylist() if t["status"] == "ok" and t["uri"]}
    usable = pc.is_in(pairs["tile_id"], value_set=pa.array(sorted(tile_rows), pa.string()))
    errors = [_error(p["id"], p["tile_id"], f"tile {p['tile_id']} has no usable row (status ok) in the tiles table")
              for p in pairs.filter(pc.invert(usable)).to_pylist()]
    pairs = pairs.filter(usable)
    ids, tile_ids = pairs["id"].to_pylist(), pairs["tile_id"].to_pylist()
    x, y = (pairs[c].to_numpy(zero_copy_only=False) for c in ("x_m", "y_m"))
    # Per tile in Z-order: consecutive chips (and each chunk) are neighbours sharing the tile's cached blocks.
    names, code = np.unique(np.array(tile_ids, dtype=str), return_inverse=True)
    order = np.lexsort((np.array(ids, dtype=str), z_order(x, y, chip.edge_m / 4), code))
    bounds = np.searchsorted(code[order], np.arange(len(names) + 1))
    tasks = []
    for t_code, tile_id in enumerate(names):
        mine = order[bounds[t_code] : bounds[t_code + 1]]
        t = tile_rows[str(tile_id)]
        folder = chip_folder(chip, t["sha256"] or t["uri"])
        for part in (mine[i : i + chunk] for i in range(0, len(mine), chunk)):
            tasks.append(ChipTask(str(tile_id), t["uri"], t["gsd_m"], t["epsg"], folder, tuple(ids[k] for k in part),
                                  tuple(float(v) for v in x[part]), tuple(float(v) for v in y[part])))
    return tasks, errors


def chip_pairs(pairs: pa.Table, tiles: pa.Table, params: Params) -> pa.Table:
    """Cut (or reuse) every paired row's chip; one CHIPS row per paired photo, sorted by id."""
    tasks, errors = plan_tasks(pairs, tiles, params.chip)
    fn = functools.partial(process_task, store_root=params.store, s3=params.s3, chip=params.chip)
    parts = [table_from_rows(errors, CHIPS)]  # rows become Arrow as they come: memory stays small per chip
    reach = local_paths([params.store, *(t.tile_uri for t in tasks)])
    for result in run(fn, tasks, scheduler=params.scheduler, workers=params.workers, desc="chip", reach=reach):
        parts.append(table_from_rows(result, CHIPS))
    table = pa.concat_tables(parts).combine_chunks()
    return table.take(pc.sort_indices(table, sort_keys=[("id", "ascending")]))


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the stage's path arguments."""
    parser.add_argument("--pairs", required=True, help="pairs table (tables/pairs.parquet)")
    parser.add_argument("--tiles", required=True, help="tiles table (tables/tiles.parquet)")
    parser.add_argument("--out", required=True, help="chips table to write (tables/chips.parquet)")
    add_store_out(parser)


def main(params: Params, args: argparse.Namespace) -> int:
    """Read pairs and tiles, cut the chips into the store, write the chips table."""
    store = Store(params.store, params.s3)
    removed = store.clean_partial("chips")
    if removed:
        log.info("removed %d partial file(s) an interrupted run left under chips/", removed)
    if not store.remote:
        Path(store.uri("chips")).mkdir(parents=True, exist_ok=True)  # a DVC out even when nothing is paired
    pairs = read_table(args.pairs, PAIRS)
    tiles = read_table(args.tiles, TILES, columns=["tile_id", "uri", "epsg", "gsd_m", "sha256", "status"])
    chips = chip_pairs(pairs, tiles, params)
    make_store_out(args.store_out)
    write_table(chips, args.out, CHIPS)
    counts = Counter(chips["status"].to_pylist())
    log.info("chips: %d rows %s", chips.num_rows, dict(sorted(counts.items())))
    for row in chips.filter(pc.equal(chips["status"], "error")).slice(0, 5).to_pylist():
        log.warning("chip %s: %s", row["id"], row["error"])
    return 0
