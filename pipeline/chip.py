"""chip stage: cut the overhead chip around each paired photo from its tile -> chips table.

Chips are read with windows from the tile COG (local or ``/vsis3/``), ``round(edge_m / gsd_m)``
pixels on a side (see :mod:`pipeline.chipgeom` for the edge policy), and written to
``<store>/chips/<h>/<id>.<ext>`` where ``<h>`` hashes the chip params and the tile's sha256, so new
params or a new tile give new chips and leave old ones untouched. A small JSON sidecar written after
the chip marks it finished; a rerun skips finished chips. JPEG chips are encoded by libjpeg-turbo
through simplejpeg (4:2:0, accurate DCT), whose name is in ``<h>`` too.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import heapq
import io
import itertools
import json
import logging
import os
import threading
from collections import Counter, deque
from collections.abc import Iterator, Sequence
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
    sort_rows,
    table_from_rows,
)
from pipeline.store import Store, add_store_out, gdal_options, gdal_path, make_store_out, read_bytes
from pipeline.tablestream import SortingWriter

log = logging.getLogger(__name__)

POLICY_VERSION = "chipgeom-v1"  # bump when the chip arithmetic changes, so chips land in a new folder
# The JPEG encoder, in the chip folder's hash: another encoder writes other bytes, so its chips land in a new folder.
JPEG_ENCODER = "simplejpeg-420-islow"
CHUNK = 256  # chips per task at least: one tile open serves this many chips
MAX_CHUNK = 4096  # ... and at most (a task's rows stay small, progress stays visible)
CELL_MIN_PX = 512  # chips are cut from the tile decoded in cells of whole blocks, at least this many px a side
CELL_CACHE_BYTES = 96 * 1024 * 1024  # decoded cells each task keeps (32 cells of 1024 x 1024 RGB)
# Bounds GDAL's block cache (its default is 5 % of RAM), in bytes as rasterio's set_gdal_config takes it.
GDAL_CACHE_BYTES = 256 * 1024 * 1024
_EXT = {"jpeg": "jpg", "png": "png"}


class Ids(Sequence[str]):
    """Photo ids as one Arrow string array: ~15 bytes an id where a tuple of str took ~70."""

    def __init__(self, ids: pa.Array):
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, k):
        return Ids(self._ids[k]) if isinstance(k, slice) else self._ids[k].as_py()

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids.to_pylist())


@dataclass(frozen=True, eq=False)
class ChipTask:
    """Chips to cut from one tile: one open of the tile serves them all."""

    tile_id: str
    tile_uri: str
    gsd_m: float
    epsg: int
    folder: str  # store key prefix: chips/<h>
    ids: Sequence[str]  # (Ids in a plan)
    x_m: Sequence[float]  # (float64 arrays in a plan: 8 bytes a chip)
    y_m: Sequence[float]
    group: str = ""  # the tile's tasks of one plan: threads of a process take work from each other within it


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
    the largest part of a chip's CPU). Deterministic: the same pixels give the same bytes, on any thread.
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
    square = chipgeom.ChipSquare(float(task.x_m[k]), float(task.y_m[k]), chip.edge_m, task.epsg)
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


def _cut_many(
    src, task: ChipTask, todo: list[int], store: Store, chip: ChipParams, rows: dict[int, dict], elsewhere: set[int]
) -> list[dict]:
    """Cut the ``todo`` chips into ``rows`` (k -> row); return the rows of other tasks' chips cut here.

    Chips inside the tile are cut from its decoded cells (:class:`_Cells`), the rest one by one
    (:func:`_cut_one`: tiles with a mask band, chips reaching past the tile's edge). The inside chips
    are a :class:`_Share` of the tile's work: this task cuts them front to back, and a thread whose
    own share is done takes the back half of the largest share left on the same tile (the rows it
    cuts there are returned, not put in ``rows``; ``elsewhere`` gets this task's chips another thread
    took). One task per worker keeps each share's cells decoded once; without taking work, a worker
    that finished early sat idle for up to 15 % of the stage's time on the benchmark (one tile, two workers).
    """
    windows = {}
    for k in todo:
        square = chipgeom.ChipSquare(float(task.x_m[k]), float(task.y_m[k]), chip.edge_m, task.epsg)
        windows[k] = chipgeom.pixel_window(square, src.transform, task.gsd_m)
    flags = src.mask_flag_enums[0]
    plain = src.count >= 3 and src.dtypes[0] == "uint8" and not ({MaskFlags.per_dataset, MaskFlags.alpha} & set(flags))
    inside = [k for k in todo if plain and windows[k].clip(src.width, src.height) == windows[k]]
    others: list[dict] = []
    if inside:
        own = _SHARES.join(task, [(k, windows[k]) for k in inside])
        try:
            _cut_share(src, own, store, chip, rows)
            while (taken := _SHARES.take(task.group)) is not None:
                out: dict[int, dict] = {}
                try:
                    _cut_share(src, taken, store, chip, out)
                finally:
                    _SHARES.leave(taken)
                    others.extend(out.values())
        finally:
            _SHARES.leave(own)
            elsewhere.update(k for k, _ in own.items[own.back :])
    for k in todo:
        if k not in rows and k not in elsewhere:
            rows[k] = _cut_alone(src, task, k, store, chip)
    return others


def _cut_alone(src, task: ChipTask, k: int, store: Store, chip: ChipParams) -> dict:
    """:func:`_cut_one`'s row, or an error row: a chip's failure is recorded as data and the rest go on."""
    try:
        return _cut_one(src, task, k, store, chip)
    except Exception as err:  # noqa: BLE001 - recorded as data; the rest go on
        return _error(task.ids[k], task.tile_id, describe(err))


def _cut_share(src, share: _Share, store: Store, chip: ChipParams, rows: dict[int, dict]) -> None:
    """Cut the share's chips from the front until it is done (or the rest was taken) into ``rows`` (k -> row).

    Each chip is copied, pixel-interleaved, out of the (at most four) cells under it; that one array
    serves the histogram and the encoder. Every step but the bookkeeping runs without the GIL
    (GDAL's decoding, numpy's copies, Pillow's histogram, simplejpeg's encoder), so the workers'
    threads cut chips on every core at once. Where a chip's time goes on the benchmark (one worker,
    profiled, 7.8 ms a chip): JPEG encoding 37 %, decoding and interleaving the cells 24 %, the two
    atomic file writes 10-14 %, the histogram 13 %, the copy out of the cells 5 %. A chip whose cut
    fails is left for :func:`_cut_one`.
    """
    task = share.task
    try:
        # Cells of whole blocks, at least min(CELL_MIN_PX, a chip's side) a side: a lone chip reads little more than its blocks.
        cells = _Cells(src, [w for _, w in share.items], CELL_CACHE_BYTES, min(CELL_MIN_PX, share.items[0][1].height))
    except Exception:  # noqa: BLE001 - every chip goes one by one, recording its own error
        cells = None
    while (i := _SHARES.claim(share)) is not None:  # in Z-order: neighbours follow each other and find their cells decoded
        k, w = share.items[i]
        try:
            rgb = cells.cut(i, w)
        except Exception:  # noqa: BLE001, S112 - the chip goes one by one below, recording its own error
            continue
        try:  # nodata is 0 in every band, as read_chip has it
            # One histogram of the chip's interleaved bytes: the bands' histograms summed, all _moments needs.
            hist = Image.frombuffer("L", (3 * w.width, w.height), rgb, "raw", "L", 0, 1).histogram()
            n_valid = w.width * w.height  # no 0 in any band: every pixel is valid, no mask needed
            if hist[0]:
                n_valid = int(np.count_nonzero(rgb.any(axis=2)))
            nodata, std = _moments(hist, 3, n_valid, w.width * w.height)
            rows[k] = _write(task, k, w, _encode_rgb(rgb, chip), nodata, std, store, chip)
        except Exception as err:  # noqa: BLE001 - recorded as data; the rest go on
            rows[k] = _error(task.ids[k], task.tile_id, describe(err))
    for k, _ in share.items[: share.front]:  # a failed cut: one by one, on this thread
        if k not in rows:
            rows[k] = _cut_alone(src, task, k, store, chip)


MIN_TAKE = 8  # chips a thread takes from another's share at least (each take decodes its own cells)


@dataclass(eq=False)
class _Share:
    """Chips of one task (``items``: (k, window) in Z-order): ``items[front:back]`` are still to cut."""

    task: ChipTask
    items: list
    front: int = 0
    back: int = 0


class _Shares:
    """The shares being cut in this process, by tile group; one lock for claims and takes.

    A share's owner claims its chips one at a time from the front; a thread with nothing left takes
    the back half of the group's largest share as a new share of its own (which others may take
    from in turn). A chip is claimed exactly once, so each gets exactly one row. Tasks in other
    processes (a dask.distributed cluster) do not see each other: each cuts its own share.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.groups: dict[str, list[_Share]] = {}

    def join(self, task: ChipTask, items: list) -> _Share:
        share = _Share(task, items, 0, len(items))
        with self.lock:
            self.groups.setdefault(task.group, []).append(share)
        return share

    def leave(self, share: _Share) -> None:
        with self.lock:
            group = self.groups.get(share.task.group, [])
            if share in group:
                group.remove(share)
            if not group:
                self.groups.pop(share.task.group, None)

    def claim(self, share: _Share) -> int | None:
        with self.lock:
            if share.front >= share.back:
                return None
            share.front += 1
            return share.front - 1

    def take(self, group: str) -> _Share | None:
        with self.lock:
            shares = self.groups.get(group, [])
            victim = max(shares, key=lambda s: s.back - s.front, default=None)
            if victim is None or victim.back - victim.front < 2 * MIN_TAKE:
                return None
            n = (victim.back - victim.front) // 2
            victim.back -= n
            taken = _Share(victim.task, victim.items[victim.back : victim.back + n], 0, n)
            shares.append(taken)
            return taken


_SHARES = _Shares()
_GROUPS = itertools.count()


class _Cells:
    """The tile's bands 1-3 decoded in cells, pixel-interleaved, for a known sequence of chip windows.

    A cell is a whole number of the tile's blocks (at least ``min_px`` a side, so strip-organised
    files read in few calls), copied out of GDAL's cache once, interleaved; a chip is then row copies
    out of the cells under it. The windows are known before the first cut, so each cell is kept
    exactly while a later chip still needs it, and past ``limit_bytes`` the kept cell needed furthest
    ahead is dropped (Belady's rule: the fewest decodes any cache of that size can do). On the
    benchmark's 2,000 chips an LRU of the same size decoded 1.33 cells per cell (~0.65 ms a chip).
    Reading the union of neighbouring chips instead copied ~1.5 chips' pixels per chip through
    GDAL's strided interleaving, and a chip read on its own costs more still.
    """

    def __init__(self, src, windows: list[Window], limit_bytes: int, min_px: int = CELL_MIN_PX) -> None:
        self.src, self.limit = src, limit_bytes
        bh, bw = src.block_shapes[0]
        self.ch = min(src.height, bh * -(-min_px // bh))
        self.cw = min(src.width, bw * -(-min_px // bw))
        self._scratch = np.empty(3 * self.ch * self.cw, np.uint8)
        self.kept: dict[tuple[int, int], np.ndarray] = {}
        self.size = 0
        self.decoded = 0  # cells decoded (a cell dropped and needed again is decoded again)
        self.uses: dict[tuple[int, int], deque[int]] = {}  # cell -> the windows still to cut that need it, in order
        for i, w in enumerate(windows):
            for key in self._keys(w):
                self.uses.setdefault(key, deque()).append(i)

    def _keys(self, w) -> list[tuple[int, int]]:
        r1, c1 = w.row_off + w.height, w.col_off + w.width
        return [(r, c) for r in range(w.row_off // self.ch, (r1 - 1) // self.ch + 1)
                for c in range(w.col_off // self.cw, (c1 - 1) // self.cw + 1)]

    def _next_use(self, key: tuple[int, int]) -> float:
        uses = self.uses.get(key)
        return uses[0] if uses else float("inf")

    def cell(self, r: int, c: int) -> np.ndarray:
        """Cell (r, c): rows r * ch .. and columns c * cw .. of bands 1-3, (h, w, 3)."""
        got = self.kept.get((r, c))
        if got is not None:
            return got
        r0, c0 = r * self.ch, c * self.cw
        h, w = min(self.ch, self.src.height - r0), min(self.cw, self.src.width - c0)
        # Decoded band by band into a scratch buffer, then interleaved by numpy: GDAL's own strided
        # interleaving (out=got.transpose(2, 0, 1)) cost ~4 ms more a 1024 x 1024 cell (~25 % of its decoding).
        planes = self._scratch[: 3 * h * w].reshape(3, h, w)
        self.src.read((1, 2, 3), window=Window(c0, r0, w, h), out=planes)
        got = _interleaved(planes)
        self.decoded += 1
        while self.kept and self.size + got.nbytes > self.limit:
            self.size -= self.kept.pop(max(self.kept, key=self._next_use)).nbytes
        self.kept[(r, c)] = got
        self.size += got.nbytes
        return got

    def cut(self, i: int, w) -> np.ndarray:
        """Window ``i`` of the sequence, ``w`` (inside the tile), as a contiguous (h, w, 3) array."""
        out = np.empty((w.height, w.width, 3), np.uint8)
        r1, c1 = w.row_off + w.height, w.col_off + w.width
        keys = self._keys(w)
        try:
            for r, c in keys:
                cell = self.cell(r, c)
                top, left = r * self.ch, c * self.cw
                y0, y1 = max(w.row_off, top), min(r1, top + cell.shape[0])
                x0, x1 = max(w.col_off, left), min(c1, left + cell.shape[1])
                out[y0 - w.row_off : y1 - w.row_off, x0 - w.col_off : x1 - w.col_off] = cell[y0 - top : y1 - top, x0 - left : x1 - left]
        finally:  # window i is done with its cells (cut or failed): a cell no later window needs goes now
            for key in keys:
                uses = self.uses.get(key)
                while uses and uses[0] <= i:
                    uses.popleft()
                if not uses and key in self.kept:
                    self.size -= self.kept.pop(key).nbytes
        return out


def process_task(task: ChipTask, store_root: str, s3: S3Params, chip: ChipParams) -> list[dict]:
    """Cut every chip of a task not finished before; one row per chip (status ok or error).

    The rows, in no set order, are this task's chips but those another task on the same tile took,
    and the chips this task took from others (see :func:`_cut_many`): over a plan's tasks, each
    chip has exactly one row.
    """
    store = Store(store_root, s3)
    rows: dict[int, dict] = {}
    for k, pid in enumerate(task.ids):
        done = _finished(store, f"{task.folder}/{pid}.json", s3)
        if done is not None:  # tile_id and uri as this run names them; the rest as measured
            key = f"{task.folder}/{pid}.{_EXT[chip.format]}"
            rows[k] = {**done, "id": pid, "tile_id": task.tile_id, "uri": store.uri(key)}
    todo = [k for k in range(len(task.ids)) if k not in rows]
    others: list[dict] = []  # chips of other tasks (on the same tile) this one took and cut
    elsewhere: set[int] = set()  # chips of this task another one took
    if todo:
        in_store = task.tile_uri.startswith(store.root + "/")
        try:
            # Process-wide, not in the Env: an Env restores the old limit on exit, under other threads' feet.
            set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_BYTES)
            env = gdal_options(s3, anonymous=False if in_store else None)
            with rasterio.Env(**env), rasterio.open(gdal_path(task.tile_uri)) as src:
                others = _cut_many(src, task, todo, store, chip, rows, elsewhere)
        except Exception as err:  # noqa: BLE001 - an unreadable tile fails its chips, not the stage
            msg = f"cannot read tile {task.tile_id} ({task.tile_uri}): {describe(err)}"
            for k in todo:
                if k not in elsewhere:
                    rows.setdefault(k, _error(task.ids[k], task.tile_id, msg))
    return [rows[k] for k in range(len(task.ids)) if k in rows] + others


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
    x, y = (pairs[c].to_numpy(zero_copy_only=False) for c in ("x_m", "y_m"))
    # Per tile (in tile id order) in Z-order: consecutive chips (and each chunk) are neighbours sharing the
    # tile's cached blocks; ids break ties. Sorted by Arrow: no Python string a chip.
    ids, tile_ids = pairs["id"].combine_chunks(), pairs["tile_id"].combine_chunks()
    keys = pa.table({"tile_id": tile_ids, "z": z_order(x, y, chip.edge_m / 4), "id": ids})
    order = pc.sort_indices(keys, sort_keys=[("tile_id", "ascending"), ("z", "ascending"), ("id", "ascending")])
    tile_of = tile_ids.take(order)
    order = order.to_numpy()
    starts = np.flatnonzero(pc.not_equal(tile_of[1:], tile_of[:-1]).to_numpy(zero_copy_only=False)) + 1
    tasks = []
    for mine in np.split(order, starts) if len(order) else []:
        tile_id = tile_ids[int(mine[0])].as_py()
        t = tile_rows[tile_id]
        folder = chip_folder(chip, t["sha256"] or t["uri"])
        size = min(MAX_CHUNK, max(chunk, -(-len(mine) // max(1, workers))))
        group = f"{os.getpid()}-{next(_GROUPS)}"  # this plan's tasks on this tile, apart from any other plan's
        for part in np.array_split(mine, -(-len(mine) // size)):
            tasks.append(ChipTask(tile_id, t["uri"], t["gsd_m"], t["epsg"], folder, Ids(ids.take(part)),
                                  x[part], y[part], group))  # fmt: skip
    return tasks, errors


def chip_parts(pairs: pa.Table, tiles: pa.Table, params: Params) -> Iterator[pa.Table]:
    """Cut (or reuse) every paired row's chip; CHIPS rows a task at a time, in no set order (one per paired photo)."""
    tasks, errors = plan_tasks(pairs, tiles, params.chip, workers=params.workers)
    pa.default_memory_pool().release_unused()  # the plan's sort is done: give its pages back before cutting
    fn = functools.partial(process_task, store_root=params.store, s3=params.s3, chip=params.chip)
    yield table_from_rows(errors, CHIPS)
    reach = local_paths([params.store, *(t.tile_uri for t in tasks)])
    for result in run(fn, tasks, scheduler=params.scheduler, workers=params.workers, desc="chip", reach=reach):
        yield table_from_rows(result, CHIPS)  # rows become Arrow as they come: memory stays small per chip


def chip_pairs(pairs: pa.Table, tiles: pa.Table, params: Params) -> pa.Table:
    """Cut (or reuse) every paired row's chip; one CHIPS row per paired photo, sorted by id."""
    return sort_rows(pa.concat_tables(chip_parts(pairs, tiles, params)).combine_chunks())


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the stage's path arguments."""
    parser.add_argument("--pairs", required=True, help="pairs table (tables/pairs.parquet)")
    parser.add_argument("--tiles", required=True, help="tiles table (tables/tiles.parquet)")
    parser.add_argument("--out", required=True, help="chips table to write (tables/chips.parquet)")
    add_store_out(parser)


def main(params: Params, args: argparse.Namespace) -> int:
    """Read pairs and tiles, cut the chips into the store, write the chips table (sorted on disk as rows come)."""
    store = Store(params.store, params.s3)
    removed = store.clean_partial("chips")
    if removed:
        log.info("removed %d partial file(s) an interrupted run left under chips/", removed)
    if not store.remote:
        Path(store.uri("chips")).mkdir(parents=True, exist_ok=True)  # a DVC out even when nothing is paired
    pairs = read_table(args.pairs, PAIRS, columns=["id", "tile_id", "x_m", "y_m", "status"])
    tiles = read_table(args.tiles, TILES, columns=["tile_id", "uri", "epsg", "gsd_m", "sha256", "status"])
    counts: Counter = Counter()
    errors: list[dict] = []
    with SortingWriter(args.out, CHIPS) as writer:
        for part in chip_parts(pairs, tiles, params):
            writer.write(part)
            counts.update(part["status"].to_pylist())
            failed = part.filter(pc.equal(part["status"], "error")).select(["id", "error"]).to_pylist()
            errors = heapq.nsmallest(5, errors + failed, key=lambda r: r["id"])  # the first 5 by id, as the table has them
        make_store_out(args.store_out)
    log.info("chips: %d rows %s", writer.rows, dict(sorted(counts.items())))
    for row in errors:
        log.warning("chip %s: %s", row["id"], row["error"])
    return 0
