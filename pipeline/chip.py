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
import simplejpeg
from PIL import Image
from rasterio.enums import MaskFlags
from rasterio.env import set_gdal_config
from rasterio.windows import Window

from pipeline import chipgeom
from pipeline.config import ChipParams, Params, S3Params
from pipeline.errors import StoreError, describe
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
from pipeline.store import Store, add_store_out, gdal_options, gdal_path, make_store_out, read_bytes

log = logging.getLogger(__name__)

POLICY_VERSION = "chipgeom-v1"  # bump when the chip arithmetic changes, so chips land in a new folder
# The JPEG encoder, in the chip folder's hash: another encoder writes other bytes, so its chips land in a new folder.
JPEG_ENCODER = "simplejpeg-420-islow"
CHUNK = 256  # chips per task at least: one tile open serves this many chips
MAX_CHUNK = 4096  # ... and at most (a task's rows stay small, progress stays visible)
REGION_PX = 2048  # neighbouring chips within a square this big are cut from one read (3 x 4 MB)
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
        spec["encoder"] = JPEG_ENCODER
    return "chips/" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def chip_stats(chip: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """(nodata fraction, standard deviation of the valid pixels' values over all bands).

    Nodata pixels are 0 in every band (see :func:`pipeline.raster.read_chip`), so they add nothing to the sums:
    exact integer sums over the whole chip give the valid pixels' moments without copying them.
    """
    hist = [n for band in chip for n in Image.fromarray(np.ascontiguousarray(band)).histogram()]
    return _moments(hist, len(chip), int(np.count_nonzero(valid)), valid.size)


def _moments(hist: list[int], bands: int, n_valid: int, size: int) -> tuple[float, float]:
    """:func:`chip_stats` from the bands' 256-bin histograms, one after another or already summed
    (Pillow's, in C: exact, and half the time of numpy's widening sums)."""
    nodata = (size - n_valid) / size
    if not n_valid:
        return nodata, 0.0
    counts = np.asarray(hist, np.int64).reshape(-1, 256).sum(axis=0)
    s1, s2 = int(counts @ _LEVELS), int(counts @ (_LEVELS * _LEVELS))
    n = n_valid * bands
    return nodata, float(np.sqrt(max(s2 * n - s1 * s1, 0) / (n * n)))


_LEVELS = np.arange(256, dtype=np.int64)


def encode(chip: np.ndarray, params: ChipParams) -> bytes:
    """The (3, h, w) chip as JPEG (``jpeg_quality``) or PNG bytes."""
    return _encode_rgb(_interleaved(chip), params)


def _interleaved(bands: np.ndarray) -> np.ndarray:
    """(3, h, w) bands (views of a larger read are fine) as a contiguous (h, w, 3) array: one numpy copy per
    band, which releases the GIL (a transposed ``ascontiguousarray`` costs five times as much)."""
    out = np.empty((*bands.shape[1:], 3), np.uint8)
    for k in range(3):
        out[..., k] = bands[k]
    return out


def _encode_rgb(rgb: np.ndarray, params: ChipParams) -> bytes:
    """A contiguous (h, w, 3) uint8 chip as JPEG or PNG bytes.

    JPEG: libjpeg-turbo through simplejpeg, 4:2:0 chroma subsampling and the accurate DCT (what Pillow's
    encoder does by default), straight from the array. simplejpeg releases the GIL while it encodes;
    Pillow's JPEG encoder holds it, so with Pillow the workers' threads took turns encoding (encoding is
    most of a chip's CPU). Deterministic: the same pixels give the same bytes, on any thread.
    """
    if params.format == "jpeg":
        return simplejpeg.encode_jpeg(rgb, quality=params.jpeg_quality, colorspace="RGB", colorsubsampling="420",
                                      fastdct=False)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
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
    except (ValueError, StoreError):  # an unreadable sidecar (or store) marks nothing: the chip is cut again
        return None


def _cut_one(src, task: ChipTask, k: int, store: Store, chip: ChipParams) -> dict:
    """Cut, encode and write one chip, then its sidecar; return its row."""
    square = chipgeom.ChipSquare(task.x_m[k], task.y_m[k], chip.edge_m, task.epsg)
    window = chipgeom.pixel_window(square, src.transform, task.gsd_m)
    data, valid = read_chip(src, window)
    nodata, std = chip_stats(data, valid)
    return _write(task, k, window, encode(data, chip), nodata, std, store, chip)


def _write(
    task: ChipTask, k: int, window, payload: bytes, nodata: float, std: float, store: Store, chip: ChipParams
) -> dict:
    """Write one encoded chip, then its sidecar (the mark that it is finished); return its row."""
    pid = task.ids[k]
    key = f"{task.folder}/{pid}.{_EXT[chip.format]}"
    store.put_bytes(key, payload)
    row = {"id": pid, "tile_id": task.tile_id, "uri": store.uri(key), "width": window.width,
           "height": window.height, "nodata_fraction": nodata, "std": std, "status": "ok", "error": None}
    store.put_json(f"{task.folder}/{pid}.json", row)
    return row


def _cut_many(src, task: ChipTask, todo: list[int], store: Store, chip: ChipParams) -> dict[int, dict]:
    """Rows of the ``todo`` chips: neighbours cut from one read of the window around them, the rest one by one.

    A chip read on its own costs a GDAL window read (block cache lookups, a copy per band); chips
    of one task are neighbours (Z-order), so one read of their union serves a group of them, each
    cut from it as one interleaved (h, w, 3) copy that the histogram and the encoder both read. Every
    step but the bookkeeping runs without the GIL (GDAL's read, numpy's copies, Pillow's histogram,
    simplejpeg's encoder), so the workers' threads cut chips on every core at once.
    Tiles with a mask band, and chips reaching past the tile's edge, take :func:`read_chip`'s path,
    which handles both.
    """
    windows = {}
    for k in todo:
        square = chipgeom.ChipSquare(task.x_m[k], task.y_m[k], chip.edge_m, task.epsg)
        windows[k] = chipgeom.pixel_window(square, src.transform, task.gsd_m)
    flags = src.mask_flag_enums[0]
    plain = src.count >= 3 and src.dtypes[0] == "uint8" and not ({MaskFlags.per_dataset, MaskFlags.alpha} & set(flags))
    inside = [k for k in todo if plain and windows[k].clip(src.width, src.height) == windows[k]]
    rows: dict[int, dict] = {}
    for group in _groups(inside, windows, REGION_PX):
        try:
            region, r0, c0 = _read_union(src, [windows[k] for k in group])
        except Exception:  # noqa: BLE001 - the chips go one by one below, each recording its own error
            continue
        flat, stride = region.base.reshape(-1), 3 * region.shape[1]  # the buffer, spare row included
        for k in group:
            w = windows[k]
            row, col = w.row_off - r0, w.col_off - c0
            rgb = region[row : row + w.height, col : col + w.width]  # a view: rows of the region, no copy
            try:  # nodata is 0 in every band, as read_chip has it
                # One histogram of the chip's interleaved bytes (the bands' histograms summed: all _moments
                # needs), read in place: Pillow maps the region's buffer from the chip's first byte, a row
                # of the region apart (the spare row keeps the mapping inside the buffer).
                start = memoryview(flat)[row * stride + 3 * col :]
                hist = Image.frombuffer("L", (3 * w.width, w.height), start, "raw", "L", stride, 1).histogram()
                n_valid = w.width * w.height  # no 0 in any band: every pixel is valid, no mask needed
                if hist[0]:
                    n_valid = int(np.count_nonzero(rgb.any(axis=2)))
                nodata, std = _moments(hist, 3, n_valid, w.width * w.height)
                rows[k] = _write(task, k, w, _encode_rgb(rgb, chip), nodata, std, store, chip)
            except Exception as err:  # noqa: BLE001 - recorded as data; the rest go on
                rows[k] = _error(task.ids[k], task.tile_id, describe(err))
    for k in todo:
        if k not in rows:
            try:
                rows[k] = _cut_one(src, task, k, store, chip)
            except Exception as err:  # noqa: BLE001 - recorded as data; the rest go on
                rows[k] = _error(task.ids[k], task.tile_id, describe(err))
    return rows


def _groups(ks: list[int], windows: dict, limit: int) -> list[list[int]]:
    """Consecutive chips grouped while the window around them stays within ``limit`` px a side."""
    groups: list[list[int]] = []
    box = (0, 0, 0, 0)
    for k in ks:
        w = windows[k]
        if groups:
            r0, c0 = min(box[0], w.row_off), min(box[1], w.col_off)
            r1, c1 = max(box[2], w.row_off + w.height), max(box[3], w.col_off + w.width)
            if r1 - r0 <= limit and c1 - c0 <= limit:
                groups[-1].append(k)
                box = (r0, c0, r1, c1)
                continue
        groups.append([k])
        box = (w.row_off, w.col_off, w.row_off + w.height, w.col_off + w.width)
    return groups


def _read_union(src, windows: list) -> tuple[np.ndarray, int, int]:
    """Bands 1-3 of the window around ``windows``, pixel-interleaved (rows, cols, 3), and its top-left (row, col).

    GDAL interleaves the bands as it copies them out of its block cache (cheaper than numpy's strided
    copies); the array is a view of a buffer one spare row longer (its ``base``), see :func:`_cut_many`.
    """
    r0, c0 = min(w.row_off for w in windows), min(w.col_off for w in windows)
    r1 = max(w.row_off + w.height for w in windows)
    c1 = max(w.col_off + w.width for w in windows)
    buf = np.empty((r1 - r0 + 1, c1 - c0, 3), np.uint8)
    region = buf[:-1]
    src.read((1, 2, 3), window=Window(c0, r0, c1 - c0, r1 - r0), out=region.transpose(2, 0, 1))
    return region, r0, c0


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
                rows.update(_cut_many(src, task, todo, store, chip))
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


def plan_tasks(
    pairs: pa.Table, tiles: pa.Table, chip: ChipParams, chunk: int = CHUNK, workers: int = 1
) -> tuple[list[ChipTask], list[dict]]:
    """Group paired rows by tile into spatially ordered chunks; rows whose tile is unusable become errors.

    A tile's chips are split into about ``workers`` equal chunks of at least ``chunk`` (at most
    MAX_CHUNK) chips: each chunk opens the tile once and decodes the blocks under it, so fewer,
    larger chunks decode fewer blocks twice (1.25 instead of 1.7 ms per chip on the benchmark).
    """
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
        size = min(MAX_CHUNK, max(chunk, -(-len(mine) // max(1, workers))))
        for part in np.array_split(mine, -(-len(mine) // size)) if len(mine) else []:
            tasks.append(ChipTask(str(tile_id), t["uri"], t["gsd_m"], t["epsg"], folder, tuple(ids[k] for k in part),
                                  tuple(float(v) for v in x[part]), tuple(float(v) for v in y[part])))
    return tasks, errors


def chip_pairs(pairs: pa.Table, tiles: pa.Table, params: Params) -> pa.Table:
    """Cut (or reuse) every paired row's chip; one CHIPS row per paired photo, sorted by id."""
    tasks, errors = plan_tasks(pairs, tiles, params.chip, workers=params.workers)
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
