"""What the review page shows: the latest tables indexed once per change, queues, pages, thumbnails.

The index is built with pyarrow/numpy when a table's mtime or size changes (never per request):
one position per photo (photos-table order), the other tables aligned to it, decision rows
grouped by position, per-model scores and the queue groups (reason, city, split) precomputed.
A queue is a sorted array of positions, cached per index version; a page is a slice of it.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from filters import REGISTRY
from filters.curator_rules import OVERRIDE
from pipeline.config import S3Params
from pipeline.schemas import CHIPS, DECISIONS, DOWNLOADS, GEOTAG_AUDIT, PAIRS, PHOTOS, TILES, read_table
from pipeline.store import is_http, is_s3, read_bytes

log = logging.getLogger(__name__)

FALLBACK_MODELS = ("indoor", "relevance")  # model-kind filters when Settings names no kinds
QUEUES = ("model_dropped", "low_confidence", "kept_sample", "reason", "city", "split", "all", "suspect_location")
SIZES = {"thumb": 320, "large": 1200}
IMAGE_KINDS = ("photo", "chip", "best", "heat")  # best: the chip at the audit's best point; heat: its score grid
HEAT_CELL_PX = {"thumb": 24, "large": 80}
EMPTY = np.empty(0, np.int64)


def _none() -> np.ndarray:
    return np.empty(0)


def filter_kinds() -> dict[str, str]:
    """``{filter name: "rule" | "model"}`` in registry order."""
    return {f.name: f.kind for f in REGISTRY}


@dataclass(frozen=True)
class Settings:
    """What the page needs from params: chip scale, model thresholds, S3 access, the repo root."""

    root: Path
    edge_m: float = 225.0
    thresholds: Mapping[str, float] = field(default_factory=dict)  # model filter -> score threshold
    kinds: Mapping[str, str] = field(default_factory=dict)  # filter -> rule | model, registry order
    s3: S3Params = field(default_factory=S3Params)

    def is_model(self, name: str) -> bool:
        return self.kinds[name] == "model" if name in self.kinds else name in FALLBACK_MODELS

    def threshold(self, name: str) -> float:
        return float(self.thresholds.get(name, 0.5))


@dataclass(frozen=True)
class TablePaths:
    photos: Path
    downloads: Path
    pairs: Path
    chips: Path
    decisions: Path
    audit: Path | None = None  # the geotag audit (suspect-location queue); optional
    tiles: Path | None = None  # where the audit's best-point chips are cut from

    @classmethod
    def under(cls, folder: str | Path) -> TablePaths:
        folder = Path(folder)
        names = ("photos", "downloads", "pairs", "chips", "decisions", "geotag_audit", "tiles")
        return cls(*(folder / f"{name}.parquet" for name in names))

    def stamp(self) -> tuple:
        """Changes whenever any table does (path, mtime, size)."""
        out = []
        for p in (self.photos, self.downloads, self.pairs, self.chips, self.decisions, self.audit, self.tiles):
            if p is None:
                continue
            st = p.stat() if p.exists() else None
            out.append((str(p), st and st.st_mtime_ns, st and st.st_size))
        return tuple(out)


@dataclass(frozen=True)
class QueueSpec:
    """Which pairs a queue holds; all but the random sample are ordered most uncertain first."""

    queue: str = "model_dropped"
    value: str = ""  # reason code, city or split; for model_dropped an optional model filter name
    margin: float = 0.2  # low_confidence: |score - threshold| at most this
    seed: int = 0  # kept_sample
    sample: int = 200  # kept_sample size


@dataclass
class Index:
    """Every table aligned to photo positions; arrays have one entry per photo."""

    stamp: tuple
    ids: list[str]
    pos: dict[str, int]
    tables: dict[str, pa.Table]  # photos, pairs, downloads, chips, decisions
    rows: dict[str, np.ndarray]  # table -> its row for each position (-1: none)
    city: np.ndarray
    split: np.ndarray
    pair_status: np.ndarray
    photo_uri: np.ndarray
    chip_uri: np.ndarray
    kept: np.ndarray = field(default_factory=_none)
    first_drop: np.ndarray = field(default_factory=_none)  # "filter: reason" of the first drop in registry order
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # model -> score (nan: not judged)
    model_drop: dict[str, np.ndarray] = field(default_factory=dict)  # model -> dropped (before curator keep)
    judged: dict[str, np.ndarray] = field(default_factory=dict)  # model -> has a decision for the photo
    margin: np.ndarray = field(default_factory=_none)  # min over models of |score - threshold| (inf: no score)
    groups: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # reason/city/split -> value -> positions
    dec_order: np.ndarray = field(default_factory=_none)  # decision rows sorted by position
    dec_pos: np.ndarray = field(default_factory=_none)  # their positions, sorted
    applied: dict[str, str] = field(default_factory=dict)  # id -> curator verdict the last filter run applied
    suspect: np.ndarray = field(default_factory=_none)  # the geotag audit flags the pair (suspect location)
    audit_margin: np.ndarray = field(default_factory=_none)  # its margin ln(best score / geotag score); nan: none


def _np(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False) if isinstance(col, pa.Array) else col.to_numpy()


def _read(path: Path, schema: pa.Schema) -> pa.Table:
    return read_table(path, schema) if path.exists() else schema.empty_table()


def _aligned(table: pa.Table, rows: np.ndarray, name: str, ok: np.ndarray | None = None) -> np.ndarray:
    """Column ``name`` of ``table`` at ``rows`` (None where the row is missing or not ``ok``)."""
    out = np.full(len(rows), None, dtype=object)
    have = rows >= 0
    if ok is not None:
        have &= np.concatenate([ok, [False]])[rows]
    out[have] = _np(table.column(name)).astype(object)[rows[have]]
    return out


def _groups(values: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """``{value: sorted unique positions}``; None and empty values left out."""
    enc = pa.array(values, pa.string()).dictionary_encode()
    codes, names = _np(enc.indices.fill_null(-1)).astype(np.int64), enc.dictionary.to_pylist()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return {names[k]: np.unique(positions[order[bounds[k] : bounds[k + 1]]]) for k in range(len(names)) if names[k]}


def _model_arrays(ix: Index, settings: Settings, dpos: np.ndarray, names: np.ndarray) -> None:
    """Per model filter: its score and whether it dropped the photo; the overall uncertainty margin."""
    dec, n = ix.tables["decisions"], len(ix.ids)
    kept = _np(dec["kept"]).astype(bool)
    score = _np(dec["score"].fill_null(np.nan)).astype(float)
    overridden = _np(pc.starts_with(dec["reason"].fill_null(""), OVERRIDE)).astype(bool)
    ix.margin = np.full(n, np.inf)
    for name in sorted(set(names[dpos >= 0])):
        if not settings.is_model(name):
            continue
        m = (dpos >= 0) & (names == name)
        ix.scores[name] = np.full(n, np.nan)
        ix.scores[name][dpos[m]] = score[m]
        ix.model_drop[name] = np.zeros(n, bool)
        ix.model_drop[name][dpos[m]] = ~kept[m] | overridden[m]
        ix.judged[name] = np.zeros(n, bool)
        ix.judged[name][dpos[m]] = True
        ix.margin = np.fmin(ix.margin, np.nan_to_num(np.abs(ix.scores[name] - settings.threshold(name)), nan=np.inf))


def _decision_arrays(ix: Index, settings: Settings) -> None:
    """Kept/dropped, reason groups, first drop and per-position decision lookup from the decisions."""
    dec, n = ix.tables["decisions"], len(ix.ids)
    dpos = _np(pc.index_in(dec["id"], value_set=pa.array(ix.ids, pa.string())).fill_null(-1)).astype(np.int64)
    names = _np(dec["filter"]).astype(object)
    drop = (dpos >= 0) & ~_np(dec["kept"]).astype(bool)
    if dec.num_rows:
        ix.kept = np.ones(n, bool)
        ix.kept[dpos[drop]] = False
    else:  # the filter stage has not run: pairs that paired are all there is
        ix.kept = ix.pair_status == "paired"
    _model_arrays(ix, settings, dpos, names)
    reasons = dec["reason"].fill_null("")
    codes = _np(pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(reasons, ":", max_splits=1), 0)))
    codes = np.where(codes.astype(object) == "", names, codes.astype(object))
    ix.groups["reason"] = _groups(codes[drop], dpos[drop])
    rank = {f: k for k, f in enumerate(settings.kinds)}
    d = np.flatnonzero(drop)
    d = d[np.lexsort((np.array([rank.get(x, len(rank)) for x in names[d]], np.int64), dpos[d]))]
    first_pos, first = np.unique(dpos[d], return_index=True)
    texts = _np(reasons).astype(object)
    ix.first_drop = np.full(n, "", dtype=object)
    if len(d):
        ix.first_drop[first_pos] = [f"{names[r]}: {texts[r]}" for r in d[first]]
    keyed = np.where(dpos >= 0, dpos, n)
    ix.dec_order = np.argsort(keyed, kind="stable")
    ix.dec_pos = keyed[ix.dec_order]
    cur = np.flatnonzero((dpos >= 0) & (names == "curator"))
    ix.applied = {ix.ids[dpos[r]]: ("keep" if not drop[r] else str(codes[r])) for r in cur}


def _audit_arrays(ix: Index, paths: TablePaths) -> None:
    """The geotag audit's rows aligned to positions: the suspect flag and margin (none without the table)."""
    audit = _read(paths.audit, GEOTAG_AUDIT) if paths.audit else GEOTAG_AUDIT.empty_table()
    ix.tables["geotag_audit"] = audit
    ix.rows["geotag_audit"] = _np(pc.index_in(pa.array(ix.ids, pa.string()), value_set=audit["id"]).fill_null(-1)
                                  ).astype(np.int64)
    ix.suspect = _aligned(audit, ix.rows["geotag_audit"], "suspect").astype(bool)
    ix.audit_margin = np.array(_aligned(audit, ix.rows["geotag_audit"], "margin"), float)


def audit_row(ix: Index, p: int) -> dict | None:
    """The geotag audit's row for position ``p`` (None: not audited)."""
    r = int(ix.rows["geotag_audit"][p]) if "geotag_audit" in ix.rows else -1
    return ix.tables["geotag_audit"].slice(r, 1).to_pylist()[0] if r >= 0 else None


def heat_png(scores: list[float], size: int, cell: int, best: tuple[float, float] | None, step_m: float) -> bytes:
    """The audit's small heat map: one cell per grid point, ln(score) from dark (low) to yellow (high), grey where
    unscored; the geotag (centre) outlined in white, the best point in red."""
    from PIL import ImageDraw

    s = np.log(np.array(scores, float).reshape(size, size))  # 10 (1 - d)
    ok = np.isfinite(s)
    lo, hi = (float(s[ok].min()), float(s[ok].max())) if ok.any() else (0.0, 1.0)
    t = np.where(ok, (s - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
    rgb = np.stack([40 + 215 * t, 20 + 200 * t ** 1.5, 90 * (1 - t)], axis=-1)
    rgb[~ok] = 110
    im = Image.fromarray(rgb.astype(np.uint8)).resize((size * cell, size * cell), Image.Resampling.NEAREST)
    draw, c = ImageDraw.Draw(im), size // 2
    draw.rectangle([c * cell, c * cell, (c + 1) * cell - 1, (c + 1) * cell - 1], outline=(255, 255, 255), width=2)
    if best is not None:
        col, row = c + round(best[0] / step_m), c - round(best[1] / step_m)
        draw.rectangle([col * cell + 3, row * cell + 3, (col + 1) * cell - 4, (row + 1) * cell - 4],
                       outline=(255, 0, 0), width=2)
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def build_index(paths: TablePaths, settings: Settings) -> Index:
    """Read the tables once and precompute what queues, pages and the summary need."""
    stamp = paths.stamp()
    photos = read_table(paths.photos, PHOTOS)
    ids = photos.column("id").to_pylist()
    tables = {
        "photos": photos,
        "pairs": _read(paths.pairs, PAIRS),
        "downloads": _read(paths.downloads, DOWNLOADS),
        "chips": _read(paths.chips, CHIPS),
        "decisions": _read(paths.decisions, DECISIONS),
    }
    id_array = pa.array(ids, pa.string())
    rows = {
        k: _np(pc.index_in(id_array, value_set=tables[k]["id"]).fill_null(-1)).astype(np.int64)
        for k in ("pairs", "downloads", "chips")
    }
    pairs, downloads, chips = tables["pairs"], tables["downloads"], tables["chips"]
    ix = Index(
        stamp=stamp,
        ids=ids,
        pos={i: k for k, i in enumerate(ids)},
        tables=tables,
        rows=rows,
        city=_np(photos["city"]).astype(object),
        split=_aligned(pairs, rows["pairs"], "split"),
        pair_status=_aligned(pairs, rows["pairs"], "status"),
        photo_uri=_aligned(downloads, rows["downloads"], "uri", _np(downloads["status"]).astype(object) == "ok"),
        chip_uri=_aligned(chips, rows["chips"], "uri", _np(chips["status"]).astype(object) == "ok"),
    )
    _decision_arrays(ix, settings)
    _audit_arrays(ix, paths)
    everyone = np.arange(len(ids))
    ix.groups["city"] = _groups(ix.city, everyone)
    ix.groups["split"] = _groups(ix.split, everyone)
    log.info("review index: %d photos, %d decisions, %d kept", len(ids), tables["decisions"].num_rows, ix.kept.sum())
    return ix


def queue_positions(ix: Index, spec: QueueSpec, settings: Settings) -> np.ndarray:
    """The positions in a queue in review order: most uncertain first (smallest margin), then by id."""
    if spec.queue not in QUEUES:
        raise KeyError(f"unknown queue {spec.queue!r}: use one of {', '.join(QUEUES)}")
    margin = ix.margin
    if spec.queue == "model_dropped":
        mask, margin = np.zeros(len(ix.ids), bool), np.full(len(ix.ids), np.inf)
        for m in [spec.value] if spec.value else sorted(ix.model_drop):
            if m in ix.model_drop:  # order by the margin of the model(s) that dropped it
                mask |= ix.model_drop[m]
                own = np.nan_to_num(np.abs(ix.scores[m] - settings.threshold(m)), nan=np.inf)
                margin = np.where(ix.model_drop[m], np.fmin(margin, own), margin)
        found = np.flatnonzero(mask)
    elif spec.queue == "low_confidence":
        found = np.flatnonzero(ix.kept & (ix.margin <= spec.margin))
    elif spec.queue == "kept_sample":  # random order on purpose: an unbiased look at what is kept
        return np.random.default_rng(spec.seed).permutation(np.flatnonzero(ix.kept))[: max(spec.sample, 0)]
    elif spec.queue == "suspect_location":  # the clearest suspects (largest audit margin) first
        found = np.flatnonzero(ix.suspect)
        margin = -np.nan_to_num(ix.audit_margin, nan=0.0)
    elif spec.queue in ("reason", "city", "split"):
        found = ix.groups[spec.queue].get(spec.value, EMPTY)
    else:
        found = np.arange(len(ix.ids))
    return found[np.lexsort((found, margin[found]))]


class Thumbnails:
    """JPEG renditions of dataset images, made with Pillow on first request and kept in a bounded LRU."""

    def __init__(self, settings: Settings, max_bytes: int = 96 * 2**20) -> None:
        self.settings = settings
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _resolve(self, uri: str) -> str:
        if is_s3(uri) or is_http(uri) or Path(uri).is_absolute():
            return uri
        return str(self.settings.root / uri)

    def get(self, uri: str, size: str) -> bytes:
        """The ``size`` rendition of the image at ``uri`` (a URI from the tables, never from a request)."""
        key = (uri, size)
        with self._lock:
            if key in self._cache:
                self.hits += 1
                self._cache.move_to_end(key)
                return self._cache[key]
            self.misses += 1
        data = self._render(uri, SIZES[size])
        with self._lock:
            if key not in self._cache:
                self._cache[key] = data
                self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._cache) > 1:
                self._bytes -= len(self._cache.popitem(last=False)[1])
        return data

    def _render(self, uri: str, edge: int) -> bytes:
        with Image.open(io.BytesIO(read_bytes(self._resolve(uri), self.settings.s3))) as im:
            im.draft("RGB", (edge, edge))  # JPEG: decode at a reduced scale when it can
            rgb = im.convert("RGB")
        rgb.thumbnail((edge, edge), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        rgb.save(out, "JPEG", quality=85)
        return out.getvalue()

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._bytes = 0


class Dataset:
    """The review page's view of the pipeline output: the index (rebuilt when a table changes) and queues."""

    def __init__(self, paths: TablePaths, settings: Settings) -> None:
        self.paths = paths
        self.settings = settings
        self.thumbnails = Thumbnails(settings)
        self._index: Index | None = None
        self._queues: dict[tuple, np.ndarray] = {}
        self._best: dict[tuple, bytes] = {}  # chips at the audit's best points, by (best, id, size)
        self._lock = threading.Lock()

    def index(self) -> Index:
        """The current index; rebuilt (once, under a lock) when any table's mtime or size changed."""
        stamp = self.paths.stamp()
        ix = self._index
        if ix is not None and ix.stamp == stamp:
            return ix
        with self._lock:
            if self._index is None or self._index.stamp != self.paths.stamp():
                self._index = build_index(self.paths, self.settings)
                self._queues = {}
                self._best = {}
                self.thumbnails.clear()
            return self._index

    def queue(self, spec: QueueSpec) -> tuple[Index, np.ndarray]:
        """The index and a queue's positions (computed once per index version)."""
        ix = self.index()
        key = (ix.stamp, spec)
        positions = self._queues.get(key)
        if positions is None:
            positions = queue_positions(ix, spec, self.settings)
            if len(self._queues) >= 64:  # many seeds or margins: start over rather than grow
                self._queues.clear()
            self._queues[key] = positions
        return ix, positions

    def image(self, kind: str, photo_id: str, size: str) -> bytes | None:
        """A rendition of a dataset image looked up by photo id; None when there is no such image."""
        ix = self.index()
        p = ix.pos.get(photo_id)
        if p is None or kind not in IMAGE_KINDS or size not in SIZES:
            return None
        if kind in ("best", "heat"):
            return self._audit_image(ix, p, kind, size)
        uri = (ix.photo_uri if kind == "photo" else ix.chip_uri)[p]
        return self.thumbnails.get(uri, size) if uri else None

    def _audit_image(self, ix: Index, p: int, kind: str, size: str) -> bytes | None:
        """The geotag audit's heat map (PNG) or the chip at its best point (JPEG), cut as the chip stage cuts."""
        row = audit_row(ix, p)
        if row is None or row["best_x_m"] is None:
            return None
        best = (row["best_x_m"] - row["x_m"], row["best_y_m"] - row["y_m"])
        if kind == "heat":
            return heat_png(row["scores"], row["grid_size"], HEAT_CELL_PX[size], best, row["step_m"])
        key = ("best", ix.ids[p], size)
        with self.thumbnails._lock:
            if key in self._best:
                return self._best[key]
        data = self._best_chip(row, SIZES[size])
        if data is not None:
            with self.thumbnails._lock:
                self._best[key] = data
        return data

    def _best_chip(self, row: dict, edge: int) -> bytes | None:
        import rasterio

        from pipeline import chipgeom
        from pipeline.raster import read_chip
        from pipeline.store import gdal_path, rasterio_env

        if self.paths.tiles is None or not self.paths.tiles.exists():
            return None
        tiles = read_table(self.paths.tiles, TILES, columns=["tile_id", "uri", "gsd_m"]).to_pylist()
        tile = next((t for t in tiles if t["tile_id"] == row["best_tile_id"]), None)
        if tile is None:
            return None
        uri = tile["uri"]
        if not (is_s3(uri) or is_http(uri) or Path(uri).is_absolute()):
            uri = str(self.settings.root / uri)
        square = chipgeom.ChipSquare(row["best_x_m"], row["best_y_m"], self.settings.edge_m, row["epsg"])
        with rasterio_env(self.settings.s3), rasterio.open(gdal_path(uri)) as src:
            data, _ = read_chip(src, chipgeom.pixel_window(square, src.transform, tile["gsd_m"]))
        im = Image.fromarray(data.transpose(1, 2, 0))
        im.thumbnail((edge, edge), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=85)
        return out.getvalue()
