"""pair stage: pair each photo with a tile that holds its whole chip, assign splits.

One ``pairs`` row per photo, sorted by id: ``status`` is ``paired`` or the reason code of the step
that dropped it (``bad_coordinates``, ``not_downloaded``, ``outside_tiles``, ``near_tile_edge``,
``split_buffer``), with a human-readable ``reason``. The density limit is not applied here: it
chooses among the photos that pass every other rule, so it runs last in the filter stage
(:func:`filters.location_rules.density`). The stage reads its tables a range of ids at a time
(pipeline/tablestream.py); the split buffer, the one step across photos, sweeps the paired photos'
places in position order (sorted on disk), so memory does not grow with the photos. A split-buffer drop
names the nearest chip it overlaps; among equally near ones, the earliest by id.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from scipy.spatial import cKDTree

from pipeline import chipgeom
from pipeline.config import Params, SplitParams
from pipeline.errors import SchemaError
from pipeline.geo import transformer
from pipeline.neighbours import unit_hash
from pipeline.schemas import DOWNLOADS, PAIRS, PHOTOS, TILES, read_table
from pipeline.tablestream import Cursor, KeySorter, SortingWriter, TableWriter, id_chunks, value_runs

log = logging.getLogger(__name__)

SPLIT_PRIORITY = ("test", "val", "train")  # an overlap between splits keeps the earlier one
SWAPPED = "lat and lon look swapped"
SWAP_FIX = "where a photo table has them swapped, swap its lat and lon columns (lat is north-south, lon east-west)"


@dataclass(frozen=True)
class TileSet:
    """Usable tiles sorted by tile_id (so a lower row index breaks ties by tile_id)."""

    tile_id: np.ndarray  # str
    aoi: np.ndarray  # object
    city: np.ndarray  # object
    epsg: np.ndarray  # int
    footprint: np.ndarray  # shapely polygons in each tile's UTM CRS

    @classmethod
    def from_table(cls, tiles: pa.Table) -> TileSet:
        """Tiles with a footprint, sorted by tile_id."""
        tiles = tiles.filter(pc.is_valid(tiles["footprint_wkb"]))
        tiles = tiles.take(pc.sort_indices(tiles, sort_keys=[("tile_id", "ascending")]))
        tile_id, aoi, city, wkb = (np.array(tiles[c].to_pylist(), dtype=object) for c in ("tile_id", "aoi", "city", "footprint_wkb"))
        epsg = np.asarray(tiles["epsg"].to_numpy(zero_copy_only=False), dtype=np.int64)
        return cls(tile_id=tile_id, aoi=aoi, city=city, epsg=epsg, footprint=shapely.from_wkb(wkb))


@dataclass(frozen=True)
class Match:
    """Per photo: chosen tile row (-1 none), position in its CRS, and a footprint holding the point (-1 none)."""

    tile: np.ndarray
    x: np.ndarray
    y: np.ndarray
    inside: np.ndarray


# --- checks before geometry ----------------------------------------------------------------------


def coordinate_problems(photos: pa.Table) -> dict[int, str]:
    """Row index -> what is wrong with its lat/lon (null, NaN or out of range)."""
    problems: dict[int, str] = {}
    for name, limit in (("lat", 90.0), ("lon", 180.0)):
        col = photos[name]
        null = pc.is_null(col).to_numpy(zero_copy_only=False)
        val = col.to_numpy(zero_copy_only=False).astype(float)
        with np.errstate(invalid="ignore"):
            bad = null | np.isnan(val) | (np.abs(val) > limit)
        for i in np.flatnonzero(bad):
            what = "is null" if null[i] else "is NaN" if np.isnan(val[i]) else f"{float(val[i])!r} is outside [-{limit:g}, {limit:g}]"
            problems[i] = f"{problems[i]}; " if i in problems else ""
            problems[i] += f"{name} {what}"
    lat, lon = (photos[c].to_numpy(zero_copy_only=False).astype(float) for c in ("lat", "lon"))
    with np.errstate(invalid="ignore"):
        swapped = (np.abs(lat) > 90) & (np.abs(lat) <= 180) & (np.abs(lon) <= 90)
    for i in np.flatnonzero(swapped):
        problems[i] += f"; {SWAPPED} (lat {float(lon[i])!r}, lon {float(lat[i])!r} would be valid): {SWAP_FIX}"
    return problems


def download_problems(ids: pa.Array, downloads: pa.Table) -> dict[int, str]:
    """Row index -> why the photo has no usable download (missing row or status != ok)."""
    at = pc.index_in(ids, value_set=downloads["id"])
    status = downloads["status"].take(at)
    bad = pc.fill_null(pc.not_equal(status, "ok"), True).to_numpy(zero_copy_only=False)
    problems = {}
    for i in np.flatnonzero(bad):
        j = at[int(i)].as_py()
        if j is None:
            problems[int(i)] = "no row in the downloads table"
        else:
            st, err = downloads["status"][j].as_py(), downloads["error"][j].as_py()
            problems[int(i)] = f"download status {st}" + (f": {err}" if err else "")
    return problems


# --- tile matching ---------------------------------------------------------------------------


def _lonlat_mask(lon: np.ndarray, lat: np.ndarray, footprints: np.ndarray, epsg: int) -> np.ndarray:
    """Photos within the lon/lat bounding box of a group's footprints (a cheap pre-filter)."""
    b = shapely.bounds(footprints)
    w, s, e, n = transformer(epsg, 4326).transform_bounds(b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max(), densify_pts=21)
    pad = 0.01
    lat_ok = (lat >= s - pad) & (lat <= n + pad)
    lon_ok = (lon >= w - pad) & (lon <= e + pad) if w <= e else (lon >= w - pad) | (lon <= e + pad)
    return lat_ok & lon_ok


def match_tiles(lon: np.ndarray, lat: np.ndarray, tiles: TileSet, edge_m: float) -> Match:
    """Choose, per photo, the tile whose footprint holds its whole chip square with the most margin."""
    n = len(lon)
    cand: list[tuple[np.ndarray, ...]] = []
    inside = np.full(n, np.iinfo(np.int64).max)
    for epsg in np.unique(tiles.epsg):
        rows = np.flatnonzero(tiles.epsg == epsg)
        fps = tiles.footprint[rows]
        sel = np.flatnonzero(_lonlat_mask(lon, lat, fps, int(epsg)))
        if not len(sel):
            continue
        x, y = transformer(4326, int(epsg)).transform(lon[sel], lat[sel])
        ok = np.isfinite(x) & np.isfinite(y)
        sel, x, y = sel[ok], x[ok], y[ok]
        # Trees over the photos, queried with the few footprints: GEOS prepares each footprint once.
        ti, pi = shapely.STRtree(shapely.points(x, y)).query(fps, predicate="intersects")
        np.minimum.at(inside, sel[pi], rows[ti])
        sq = chipgeom.squares(x, y, edge_m)
        ti, pi = shapely.STRtree(sq).query(fps, predicate="contains")
        cand.append((sel[pi], rows[ti], sq[pi], x[pi], y[pi]))
    tile, bx, by = np.full(n, -1), np.full(n, np.nan), np.full(n, np.nan)
    if cand:
        photo, row, square, cx, cy = (np.concatenate(c) for c in zip(*cand))
        margin = np.zeros(len(photo))
        many = np.bincount(photo, minlength=n)[photo] > 1  # margins matter only where tiles compete
        margin[many] = shapely.distance(shapely.boundary(tiles.footprint)[row[many]], square[many])
        order = np.lexsort((row, -margin, photo))  # per photo: most margin, then lowest tile_id
        first = order[np.unique(photo[order], return_index=True)[1]]
        tile[photo[first]], bx[photo[first]], by[photo[first]] = row[first], cx[first], cy[first]
    inside[inside == np.iinfo(np.int64).max] = -1
    return Match(tile=tile, x=bx, y=by, inside=inside)


# --- splits ------------------------------------------------------------------------------------


def assign_splits(city: np.ndarray, epsg: np.ndarray, x: np.ndarray, y: np.ndarray, split: SplitParams) -> np.ndarray:
    """Whole test cities -> test; elsewhere seeded ``block_m`` UTM blocks -> val with ``val_fraction``, else train."""
    test_cities = {c.casefold() for c in split.test_cities}
    test = np.array([c is not None and c.casefold() in test_cities for c in city], dtype=bool)
    bx = np.floor(np.asarray(x) / split.block_m).astype(np.int64)
    by = np.floor(np.asarray(y) / split.block_m).astype(np.int64)
    val = unit_hash(split.seed, epsg, bx, by) < split.val_fraction
    return np.where(test, "test", np.where(val, "val", "train")).astype(object)


def nearest_within(tx: np.ndarray, ty: np.ndarray, trow: np.ndarray, qx: np.ndarray, qy: np.ndarray, edge_m: float):
    """For each query point, the target point nearest to it in Chebyshev distance if closer than ``edge_m``:
    (its index in the targets or -1, that distance or inf). Among equally near targets the one with the
    lowest ``trow``, so the answer depends only on the targets within reach, not on which others are given.
    """
    n = len(qx)
    index, dist = np.full(n, -1), np.full(n, np.inf)
    if not len(tx) or not n:
        return index, dist
    o = np.lexsort((trow, ty, tx))
    o = o[np.r_[True, (np.diff(tx[o]) != 0) | (np.diff(ty[o]) != 0)]]  # one target a position: its lowest row
    ux, uy, urow = tx[o], ty[o], trow[o]
    tree = cKDTree(np.c_[ux, uy])
    k = min(2, len(o))
    d, j = tree.query(np.c_[qx, qy], k=k, p=np.inf, distance_upper_bound=edge_m)
    d, j = d.reshape(n, k), j.reshape(n, k)
    hit = d[:, 0] < edge_m
    index[hit], dist[hit] = o[j[hit, 0]], d[hit, 0]
    tied = np.flatnonzero(hit & (d[:, -1] == d[:, 0])) if k == 2 else np.zeros(0, np.int64)
    if len(tied):  # a second target as near: the lowest row of all those as near
        reach = np.nextafter(d[tied, 0], np.inf)
        for i, near in zip(tied, tree.query_ball_point(np.c_[qx[tied], qy[tied]], r=reach, p=np.inf), strict=True):
            near = np.asarray(near, np.int64)
            near = near[np.maximum(np.abs(ux[near] - qx[i]), np.abs(uy[near] - qy[i])) == dist[i]]
            index[i] = o[near[np.argmin(urow[near])]]
    return index, dist


# --- the core ----------------------------------------------------------------------------------


def _from_tile(per_tile: np.ndarray, src: np.ndarray, own: list) -> np.ndarray:
    """The tile's value where the photo has a tile and the tile has a value, else the photo's own."""
    return np.array([per_tile[s] if s >= 0 and per_tile[s] is not None else o for s, o in zip(src, own)], dtype=object)


def _label_unmatched(rows: np.ndarray, inside: np.ndarray, ts: TileSet, edge_m: float, status, reason) -> None:
    for i, t in zip(rows, inside):
        if t >= 0:
            status[i] = "near_tile_edge"
            reason[i] = f"inside tile {ts.tile_id[t]} but no tile footprint holds the whole {edge_m:g} m chip square"
        else:
            status[i], reason[i] = "outside_tiles", "position is inside no tile footprint"


def _hint_swaps(rows: np.ndarray, lon: np.ndarray, lat: np.ndarray, ts: TileSet, edge_m: float, reason) -> int:
    """Add a swap hint to the reason of each photo in ``rows`` (outside every tile) that lies inside a tile
    footprint once its lat and lon are swapped; return how many do (the caller warns once a run)."""
    if not len(rows) or not len(ts.tile_id):
        return 0
    hit = match_tiles(lat, lon, ts, edge_m).inside  # lon and lat exchanged
    for i, t, y, x in zip(rows[hit >= 0], hit[hit >= 0], lat[hit >= 0], lon[hit >= 0]):
        reason[i] += f"; with lat {float(x)!r}, lon {float(y)!r} it lies inside tile {ts.tile_id[t]}: {SWAPPED}; {SWAP_FIX}"
    return int((hit >= 0).sum())


def _warn_swaps(swapped: int, outside: int) -> None:
    if swapped:
        log.warning("%d of %d photos outside every tile lie inside one with lat and lon swapped: %s", swapped, outside,
                    SWAP_FIX)  # fmt: skip


def pair_part(photos: pa.Table, downloads: pa.Table, ts: TileSet, params: Params) -> tuple[pa.Table, tuple[int, int]]:
    """PAIRS rows for id-sorted ``photos`` and their downloads, every step but the split buffer: a photo with a
    tile is ``paired``, with its split. Also (photos given a swap hint, photos outside every tile). A photo's
    row depends only on its own rows, so parts of the tables give parts of the pairs."""
    id_arr = photos["id"].combine_chunks()
    ids = id_arr.to_pylist()
    if len(set(ids)) != len(ids):
        dup = next(i for i, j in itertools.pairwise(ids) if i == j)
        raise SchemaError(f"photos table has photo id {dup!r} more than once; rerun the search stage")
    n, edge_m = len(ids), params.chip.edge_m
    status, reason = np.full(n, "", dtype=object), np.full(n, "", dtype=object)
    for i, why in coordinate_problems(photos).items():
        status[i], reason[i] = "bad_coordinates", why
    for i, why in download_problems(id_arr, downloads).items():
        if not status[i]:
            status[i], reason[i] = "not_downloaded", why
    todo = np.flatnonzero(status == "")
    lon, lat = (photos[c].to_numpy(zero_copy_only=False).astype(float)[todo] for c in ("lon", "lat"))
    m = match_tiles(lon, lat, ts, edge_m)
    tile, inside, x, y = np.full(n, -1), np.full(n, -1), np.full(n, np.nan), np.full(n, np.nan)
    tile[todo], inside[todo], x[todo], y[todo] = m.tile, m.inside, m.x, m.y
    _label_unmatched(todo[m.tile < 0], m.inside[m.tile < 0], ts, edge_m, status, reason)
    out = (m.tile < 0) & (m.inside < 0)
    swapped = _hint_swaps(todo[out], lon[out], lat[out], ts, edge_m, reason)
    has_tile = tile >= 0
    epsg = np.where(has_tile, ts.epsg[np.maximum(tile, 0)], 0) if len(ts.epsg) else np.zeros(n, np.int64)
    src = np.where(has_tile, tile, inside)
    aoi, city = _from_tile(ts.aoi, src, photos["aoi"].to_pylist()), _from_tile(ts.city, src, photos["city"].to_pylist())
    rows = np.flatnonzero(has_tile)
    split = np.full(n, None, dtype=object)
    split[rows] = assign_splits(city[rows], epsg[rows], x[rows], y[rows], params.split)
    status[rows] = "paired"
    table = pa.table(
        {
            "id": id_arr,
            "aoi": aoi.tolist(),
            "city": city.tolist(),
            "tile_id": [ts.tile_id[t] if t >= 0 else None for t in tile],
            "epsg": pa.array(epsg, pa.int32(), mask=~has_tile),
            "x_m": pa.array(x, pa.float64(), mask=~has_tile),
            "y_m": pa.array(y, pa.float64(), mask=~has_tile),
            "split": split.tolist(),
            "status": status.tolist(),
            "reason": reason.tolist(),
        },
        schema=PAIRS,
    )
    return table, (swapped, int(out.sum()))


# What the split buffer reads of a paired row: its row number in the id-sorted pairs (the tie rule of
# :func:`nearest_within`), id, split as its position in SPLIT_PRIORITY, zone and position.
BUFFER_PLACES = pa.schema([("row", pa.int64()), ("id", pa.string()), ("rank", pa.int8()), ("epsg", pa.int32()),
                    ("x_m", pa.float64()), ("y_m", pa.float64())])  # fmt: skip
PLACE_ORDER = ["epsg", "x_m", "row"]  # the order the split buffer sweeps places in
DROPS = pa.schema([("id", pa.string()), ("reason", pa.string())])  # the split buffer's drops
SWEEP_POINTS = 1 << 17  # places the split buffer takes in before it decides what it can


def paired_places(pairs: pa.Table, first_row: int = 0) -> pa.Table:
    """The ``BUFFER_PLACES`` of the paired rows of id-sorted ``pairs``, whose first row is row ``first_row`` of the
    whole table: all the split buffer needs."""
    rank = pc.index_in(pairs["split"], value_set=pa.array(SPLIT_PRIORITY)).cast(pa.int8())
    places = pa.table({"row": pa.array(np.arange(first_row, first_row + pairs.num_rows, dtype=np.int64)),
                       "id": pairs["id"], "rank": rank, "epsg": pairs["epsg"], "x_m": pairs["x_m"], "y_m": pairs["y_m"]},
                      schema=BUFFER_PLACES)  # fmt: skip
    return places.filter(pc.equal(pairs["status"], "paired"))


class _SplitSweep:
    """The split buffer over one UTM zone's places, taken in in x order (:func:`split_sweep`).

    A chip overlaps another when their centres are < ``edge_m`` apart in Chebyshev distance. Test chips
    are kept; a val chip is dropped when it overlaps a test chip; a train chip when it overlaps a test chip
    or a kept val chip. With every place of x < X taken in, a place of rank r (its split's position in
    SPLIT_PRIORITY) can be decided once x + r * edge_m <= X: every chip its fate depends on (ranks below r
    within edge_m, and theirs within edge_m of those) is then in and decided. Places more than edge_m behind
    every undecided place (and behind X) can no longer matter and are let go.
    """

    def __init__(self, edge_m: float) -> None:
        self.edge_m = edge_m
        self._reset()

    def _reset(self) -> None:
        self.added, self._new = 0, []
        self.row, self.rank = np.zeros(0, np.int64), np.zeros(0, np.int8)
        self.x, self.y, self.state = np.zeros(0), np.zeros(0), np.zeros(0, np.int8)  # state: 0 open, 1 kept, 2 dropped
        self.ids = pa.array([], pa.string())

    def add(self, places: pa.Table) -> None:
        self._new.append(places)
        self.added += places.num_rows

    def _take_in(self) -> None:
        """Append the places added since the last call to the arrays (once a decision, not a block)."""
        if not self._new:
            return
        new, self._new = pa.concat_tables(self._new), []
        rank = new["rank"].to_numpy()
        self.row = np.concatenate([self.row, new["row"].to_numpy()])
        self.rank = np.concatenate([self.rank, rank])
        self.x, self.y = np.concatenate([self.x, new["x_m"].to_numpy()]), np.concatenate([self.y, new["y_m"].to_numpy()])
        self.state = np.concatenate([self.state, np.where(rank == 0, 1, 0).astype(np.int8)])
        self.ids = pa.concat_arrays([self.ids, new["id"].combine_chunks()])

    def decide(self, done: bool) -> Iterator[pa.Table]:
        """Decide every place that can be (all of them when ``done``); yield the drops, then let go what
        no later place can overlap."""
        self._take_in()
        e, x, y = self.edge_m, self.x, self.y
        frontier = x[-1] if len(x) else -np.inf
        for r in range(1, len(SPLIT_PRIORITY)):
            c = np.flatnonzero((self.state == 0) & (self.rank == r) & ((x + r * e <= frontier) | done))
            if not len(c):
                continue
            a, b = np.searchsorted(x, [x[c[0]] - e, x[c[-1]] + e], side="left")
            t = a + np.flatnonzero((self.state[a:b] == 1) & (self.rank[a:b] < r))  # kept chips of higher priority
            j, dist = nearest_within(x[t], y[t], self.row[t], x[c], y[c], e)
            hit = j >= 0
            self.state[c] = np.where(hit, 2, 1)
            yield from self._drops(c[hit], t[j[hit]], dist[hit])
        self.added = 0
        if done:
            self._reset()
            return
        open_ = np.flatnonzero(self.state == 0)
        keep = int(np.searchsorted(x, (x[open_[0]] if len(open_) else frontier) - e, side="left"))  # x is sorted
        self.row, self.rank, self.x, self.y, self.state = (v[keep:] for v in (self.row, self.rank, x, y, self.state))
        self.ids = self.ids.slice(keep)

    def _drops(self, dropped: np.ndarray, other: np.ndarray, dist: np.ndarray) -> Iterator[pa.Table]:
        for a in range(0, len(dropped), REASON_CHUNK):  # the text, REASON_CHUNK drops at a time
            i, j, d = dropped[a : a + REASON_CHUNK], other[a : a + REASON_CHUNK], dist[a : a + REASON_CHUNK]
            names = self.ids.take(pa.array(j)).to_pylist()
            reasons = [
                f"{SPLIT_PRIORITY[ri]} chip overlaps the {SPLIT_PRIORITY[rj]} chip of photo {name} "
                f"(centres {di:.1f} m apart, Chebyshev < {self.edge_m:g} m)"
                for ri, rj, name, di in zip(self.rank[i].tolist(), self.rank[j].tolist(), names, d.tolist(), strict=True)
            ]  # fmt: skip
            yield pa.table({"id": self.ids.take(pa.array(i)), "reason": pa.array(reasons, pa.string())}, schema=DROPS)


REASON_CHUNK = 65_536  # drops whose reasons are Python strings at once


def split_sweep(blocks: Iterable[pa.Table], edge_m: float, points: int | None = None) -> Iterator[pa.Table]:
    """The split buffer: ``DROPS`` rows (not in id order) for the paired places whose chip overlaps a chip of
    a higher-priority split in the same zone (:class:`_SplitSweep`), from ``BUFFER_PLACES`` blocks that come in
    ``PLACE_ORDER``. It holds the places of about ``points`` (``SWEEP_POINTS``) photos and ``edge_m`` either
    side, so its memory does not grow with the photos unless they crowd into one narrow band of x.
    """
    sweep, zone, points = _SplitSweep(edge_m), None, points or SWEEP_POINTS
    for epsg, part in value_runs(blocks, "epsg"):
        if epsg != zone:
            yield from sweep.decide(done=True)
            zone = epsg
        sweep.add(part)
        if sweep.added >= points:
            yield from sweep.decide(done=False)
    yield from sweep.decide(done=True)


def split_buffer_drops(places: pa.Table, edge_m: float) -> pa.Table:
    """:func:`split_sweep` over whole ``BUFFER_PLACES`` (any order): DROPS rows in id order."""
    drops = list(split_sweep([places.sort_by([(k, "ascending") for k in PLACE_ORDER])], edge_m))
    drops = pa.concat_tables(drops) if drops else DROPS.empty_table()
    return drops.sort_by([("id", "ascending")])


def apply_drops(pairs: pa.Table, drops: pa.Table) -> pa.Table:
    """``pairs`` with the rows in ``drops`` turned into ``split_buffer`` rows (their reason, no split)."""
    if not drops.num_rows:
        return pairs
    at = pc.index_in(pairs["id"], value_set=drops["id"])
    hit = pc.is_valid(at)
    changes = {"split": pc.if_else(hit, pa.scalar(None, pa.string()), pairs["split"]),
               "status": pc.if_else(hit, "split_buffer", pairs["status"]),
               "reason": pc.if_else(hit, drops["reason"].take(at), pairs["reason"])}  # fmt: skip
    for name, values in changes.items():
        pairs = pairs.set_column(PAIRS.get_field_index(name), PAIRS.field(name), values)
    return pairs


def pair_photos(photos: pa.Table, downloads: pa.Table, tiles: pa.Table, params: Params) -> pa.Table:
    """One PAIRS row per photo, sorted by id: paired (tile, position, split) or the reason it is not."""
    photos = photos.take(pc.sort_indices(photos, sort_keys=[("id", "ascending")]))
    pairs, swaps = pair_part(photos, downloads, TileSet.from_table(tiles), params)
    _warn_swaps(*swaps)
    return apply_drops(pairs, split_buffer_drops(paired_places(pairs), params.chip.edge_m))


# --- CLI ---------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the stage's path arguments."""
    parser.add_argument("--photos", required=True, help="photos table (tables/photos.parquet)")
    parser.add_argument("--downloads", required=True, help="downloads table (tables/downloads.parquet)")
    parser.add_argument("--tiles", required=True, help="tiles table (tables/tiles.parquet); rows with status ok are used")
    parser.add_argument("--out", required=True, help="pairs table to write (tables/pairs.parquet)")


def main(params: Params, args: argparse.Namespace) -> int:
    """Pair the photos a part at a time (pipeline/tablestream.py) into a temp table, sorting the paired rows'
    places by position on disk (``KeySorter``); sweep the split buffer across them in that order into an
    id-sorted drops table (``SortingWriter``); then write the pairs with its drops applied. Memory does not
    grow with the photos (unless they crowd into one narrow band of x, which the sweep holds at once)."""
    tiles = read_table(args.tiles, TILES, columns=["tile_id", "aoi", "city", "epsg", "footprint_wkb", "status"])
    tiles = tiles.filter(pc.equal(tiles["status"], "ok"))
    if tiles.num_rows == 0:
        log.warning("%s has no tile with status ok: every photo will be outside_tiles", args.tiles)
    ts, swapped, outside = TileSet.from_table(tiles), 0, 0
    status, splits = Counter(), Counter()
    with tempfile.TemporaryDirectory(prefix="crossview-pair-") as tmp, KeySorter(BUFFER_PLACES, PLACE_ORDER) as places:
        part_path, drops_path = Path(tmp) / "pairs.parquet", Path(tmp) / "drops.parquet"
        with TableWriter(part_path, PAIRS, geometry=False) as writer:
            for photos, rest in id_chunks(Cursor(args.photos, PHOTOS, ["id", "aoi", "city", "lat", "lon"]),
                                          {"downloads": Cursor(args.downloads, DOWNLOADS, ["id", "status", "error"])}):
                pairs, (hits, outs) = pair_part(photos, rest["downloads"], ts, params)
                places.write(paired_places(pairs, writer.rows))
                writer.write(pairs)
                swapped, outside = swapped + hits, outside + outs
        _warn_swaps(swapped, outside)
        with SortingWriter(drops_path, DROPS) as writer:
            for drops in split_sweep(places.blocks(), params.chip.edge_m):
                writer.write(drops)
        with TableWriter(args.out, PAIRS) as writer:
            for pairs, rest in id_chunks(Cursor(part_path, PAIRS, geometry=False), {"drops": Cursor(drops_path, DROPS)}):
                pairs = apply_drops(pairs, rest["drops"])
                writer.write(pairs)
                status.update(pairs["status"].to_pylist())
                splits.update(s for s in pairs["split"].to_pylist() if s)
    log.info("pairs: %d photos -> %s; splits %s", status.total(), dict(sorted(status.items())), dict(sorted(splits.items())))
    return 0
