"""The density limit's core: exact fixed-radius neighbour pairs of 2-D points, a seeded order, WITW's rule.

Points closer than ``d`` lie in the same or adjacent cells of a grid of side (slightly more than)
``d``, so sorting the points by cell and pairing each occupied cell with itself and four of its
neighbours (the other four are the same pairs seen from the other side) finds every close pair
exactly, with about three candidate pairs per true pair. For a million Flickr-like positions this
is about 3x faster than building a KD-tree and querying its pairs; both are quadratic in the points
of one dense spot, which is why duplicate positions are collapsed first (:func:`distinct`) and why
:func:`greedy_keep` thins dense spots (thousands of distinct positions within ``d`` of each other, as
at a landmark) before it lists pairs: time and memory stay linear in the photos however they cluster.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.tablestream import KeySorter, value_runs
from pipeline.threads import cpu_threads

_HALF_NEIGHBOURHOOD = ((0, 1), (1, -1), (1, 0), (1, 1))  # with the cell itself: each adjacent pair once
_CELL_SLACK = 1 + 1e-9  # a pair just under d apart must not land two cells apart through rounding of x / cell
_HASH_BITS = 24  # low bits of the sort key that hash the exact position inside its cell


def _grid_frame(x: np.ndarray, y: np.ndarray, d: float) -> tuple[float, float, float, int]:
    """(x0, y0, cell side, rows) of a grid of side >= d over the points, one spare row each side."""
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("positions must be finite: NaN or infinite x/y given")
    extent = max(float(x.max() - x.min()), float(y.max() - y.min()))
    cell = max(d * _CELL_SLACK, extent / 2**30)  # cells of side >= d stay exact; at most 2^30 a side: no overflow
    x0, y0 = float(x.min()), float(y.min())
    return x0, y0, cell, int((float(y.max()) - y0) / cell) + 3


def _keys(x: np.ndarray, y: np.ndarray, frame: tuple[float, float, float, int]) -> np.ndarray:
    """Integer cell key of each point in ``frame`` (column-major)."""
    x0, y0, cell, rows = frame
    return ((x - x0) / cell).astype(np.int64) * rows + ((y - y0) / cell).astype(np.int64) + 1


def _cells(x: np.ndarray, y: np.ndarray, d: float) -> tuple[np.ndarray, int]:
    """Integer cell key of each point (column-major, one spare row each side) and the number of rows."""
    frame = _grid_frame(x, y, d)
    return _keys(x, y, frame), frame[3]


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def distinct(x: np.ndarray, y: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per distinct position: (first, group).

    ``first`` holds, for each distinct position, the lowest index of the points there, ordered by
    grid cell (so :func:`close_pairs` on them sorts already sorted keys); ``group[i]`` is the
    position in ``first`` of point i's position. Positions compare exactly (``-0.0 == 0.0``).
    """
    n = len(x)
    x, y = np.asarray(x, np.float64) + 0.0, np.asarray(y, np.float64) + 0.0  # + 0.0: -0.0 gets 0.0's bits
    cells, _ = _cells(x, y, d)
    if int(cells.max()) >= 1 << (64 - _HASH_BITS):  # too many cells to share the key with a hash
        return _distinct_lexsort(x, y, cells)
    h = _mix(x.view(np.uint64) ^ _mix(y.view(np.uint64) ^ np.uint64(0x9E3779B97F4A7C15)))
    key = (cells.astype(np.uint64) << np.uint64(_HASH_BITS)) | (h >> np.uint64(64 - _HASH_BITS))
    order = np.argsort(key)
    skey, sx, sy = key[order], x[order], y[order]
    same_key = skey[1:] == skey[:-1]
    same_pos = (sx[1:] == sx[:-1]) & (sy[1:] == sy[:-1])
    if (same_key & ~same_pos).any():  # two positions of one cell share a hash: rare, so take the slow path
        return _distinct_lexsort(x, y, cells)
    starts = np.flatnonzero(np.r_[True, ~same_key])
    first = np.minimum.reduceat(order, starts)
    group = np.empty(n, np.int64)
    group[order] = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    return first, group


def _distinct_lexsort(x: np.ndarray, y: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`distinct` by a lexicographic sort on (cell, x, y, index): slower, no hash."""
    n = len(x)
    order = np.lexsort((np.arange(n), y, x, cells))
    sx, sy = x[order], y[order]
    new = np.r_[True, (sx[1:] != sx[:-1]) | (sy[1:] != sy[:-1])]
    group = np.empty(n, np.int64)
    group[order] = np.cumsum(new) - 1
    return order[new], group


class _Grid:
    """Points sorted by grid cell (keys from :func:`_keys`, ``rows`` per column).

    ``order`` sorts the points; ``starts``/``ends`` bound each occupied cell's points in that order;
    ``cell_of`` is each sorted point's occupied-cell index.
    """

    def __init__(self, keys: np.ndarray):
        self.order = np.argsort(keys)
        skey = keys[self.order]
        new = np.r_[True, skey[1:] != skey[:-1]]
        self.starts = np.flatnonzero(new)
        self.ends = np.r_[self.starts[1:], len(keys)]
        self.occupied = skey[self.starts]
        self.cell_of = np.cumsum(new) - 1
        self.find = _cell_finder(self.occupied)  # each key's occupied-cell index, or -1
        self._starts, self._ends = np.r_[self.starts, 0], np.r_[self.ends, 0]  # index -1: an empty range

    def ranges(self, keys: np.ndarray, offsets) -> tuple[np.ndarray, np.ndarray]:
        """[low, high) in sorted order of the points in the cells ``keys + offset``, one column per offset."""
        at = np.column_stack([self.find(keys + off) for off in offsets])
        return self._starts[at], self._ends[at]


def _expand(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, position) with low[row, k] <= position < high[row, k], row by row."""
    count = high - low
    owner = np.repeat(np.arange(len(low)), count.sum(axis=1))
    low, count = low.ravel(), count.ravel()
    return owner, np.arange(int(count.sum())) + np.repeat(low - (np.cumsum(count) - count), count)


def _half_ranges(g: _Grid, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Each occupied cell's ranges in the 4 neighbour cells that, with itself, see each adjacent pair once."""
    return g.ranges(g.occupied, [dx * rows + dy for dx, dy in _HALF_NEIGHBOURHOOD])


def _grid_pairs(g: _Grid, x: np.ndarray, y: np.ndarray, d: float, low: np.ndarray, high: np.ndarray,
                block: int = 1 << 16):  # fmt: skip
    """:func:`close_pairs` on a built grid and its :func:`_half_ranges`, ``block`` points at a time (the
    candidate pairs, ~10 a point, are what takes memory; only the close ones are kept). The blocks run on
    every core (numpy releases the GIL: 1.6-1.8x on 2 cores at 1M points) and join in block order."""
    n = len(g.order)
    sx, sy = x[g.order], y[g.order]

    def pairs_from(a: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.arange(a, min(a + block, n))
        cells = g.cell_of[rows]
        # Candidates of each (cell-sorted) point: the later points of its cell, then all points of 4 neighbour cells.
        i, j = _expand(np.column_stack([rows + 1, low[cells]]), np.column_stack([g.ends[cells], high[cells]]))
        i += a
        dx, dy = sx[i] - sx[j], sy[i] - sy[j]
        near = np.flatnonzero(dx * dx + dy * dy < d * d * _CELL_SLACK)  # cheap, generous; hypot decides below
        i, j, dist = i[near], j[near], np.hypot(dx[near], dy[near])
        close = dist < d
        return g.order[i[close]], g.order[j[close]], dist[close]

    starts = range(0, n, block)
    if len(starts) < 2:
        parts = [pairs_from(a) for a in starts]
    else:
        with ThreadPoolExecutor(min(cpu_threads(), len(starts)), thread_name_prefix="pairs") as pool:
            parts = list(pool.map(pairs_from, starts))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def close_pairs(x: np.ndarray, y: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of points less than ``d`` apart, once each: (i, j, Euclidean distance), i != j."""
    if len(x) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    frame = _grid_frame(x, y, d)
    g = _Grid(_keys(x, y, frame))
    return _grid_pairs(g, x, y, d, *_half_ranges(g, frame[3]))


def _cell_finder(occupied: np.ndarray):
    """A function mapping cell keys to their index in the sorted ``occupied`` keys, or -1."""
    base = int(occupied[0]) - 1  # slot 0 and the last slot are empty: keys out of the table's range land there
    span = int(occupied[-1]) + 2 - base
    if span <= 16 * len(occupied) + 1024:  # a dense table: one gather instead of a binary search per lookup
        table = np.full(span, -1, np.int64)
        table[occupied - base] = np.arange(len(occupied))
        return lambda keys: table[np.clip(keys - base, 0, span - 1)]

    def search(keys: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(occupied, keys), len(occupied) - 1)
        return np.where(occupied[at] == keys, at, -1)

    return search


# --- WITW's rule on distinct positions: dense spots thinned first, then the exact rounds ----------

_PAIRS_PER_POINT = 16  # more candidate pairs than this per point (a dense spot): thin before listing pairs
_MAX_THINNING_ROUNDS = 64


def _neighbourhood(rows: int) -> list[int]:
    """Key offsets of a cell and its 8 neighbours."""
    return [dx * rows + dy for dx in (-1, 0, 1) for dy in (-1, 0, 1)]


def _candidates(g: _Grid, low: np.ndarray, high: np.ndarray) -> int:
    """How many candidate pairs listing the close pairs would test."""
    count = g.ends - g.starts
    return int((count * (count - 1) // 2).sum() + (count[:, None] * (high - low)).sum())


def _thin(
    g: _Grid, x: np.ndarray, y: np.ndarray, rank: np.ndarray, d: float, rows: int, can_lead: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One thinning round on undecided points: (kept, dropped) as indices into them.

    Keeps every point whose rank is the lowest of all undecided points in its 3 x 3 cells (a superset
    of its d-disk, so no earlier photo can knock it out: WITW's rule keeps it) and drops every point
    within ``d`` of one of those (an earlier kept photo is that close). Listing costs the kept points'
    neighbourhoods, not the pairs of a dense spot, which are quadratic in its points.
    """
    sorted_rank = rank[g.order]
    lowest = np.minimum.reduceat(sorted_rank, g.starts)  # per occupied cell
    lowest_ext = np.r_[lowest, np.iinfo(np.int64).max]  # index -1: no cell
    around = np.column_stack([lowest_ext[g.find(g.occupied + off)] for off in _neighbourhood(rows)]).min(axis=1)
    leaders = np.flatnonzero(sorted_rank == around[g.cell_of])  # sorted positions
    if can_lead is not None:  # (a point whose 3 x 3 cells reach unseen points may not lead)
        leaders = leaders[can_lead[g.order[leaders]]]
    owner, pos = _expand(*g.ranges(g.occupied[g.cell_of[leaders]], _neighbourhood(rows)))
    k, q = g.order[leaders[owner]], g.order[pos]
    near = (np.hypot(x[k] - x[q], y[k] - y[q]) < d) & (k != q)
    return g.order[leaders], np.unique(q[near])


def _lowest_kept_within(
    x, y, rank, kept: np.ndarray, query: np.ndarray, d: float, frame
) -> tuple[np.ndarray, np.ndarray]:
    """For each ``query`` point, the lowest-ranked ``kept`` point less than ``d`` away and its distance.

    Kept points are at least ``d`` apart, so a cell holds a handful of them: linear in the queries.
    """
    g = _Grid(_keys(x[kept], y[kept], frame))
    owner, pos = _expand(*g.ranges(_keys(x[query], y[query], frame), _neighbourhood(frame[3])))
    k, q = kept[g.order[pos]], query[owner]
    dist = np.hypot(x[k] - x[q], y[k] - y[q])
    near = dist < d
    owner, k, dist = owner[near], k[near], dist[near]
    first = _lowest(owner, rank[k], len(query))
    if len(first) != len(query):
        raise AssertionError("a dropped photo has no kept photo within the limit")
    first = first[np.argsort(owner[first])]  # in query order (one entry per query)
    return k[first], dist[first]


def _lowest(owner: np.ndarray, value: np.ndarray, owners: int) -> np.ndarray:
    """For each of ``owners`` present in ``owner``, the index of its entry of lowest ``value`` (in entry order).

    Values are distinct within an owner (ranks of distinct points). ``np.minimum.at`` then one
    comparison: ~5x faster than sorting the entries by (owner, value) at 1M entries.
    """
    best = np.full(owners, np.iinfo(np.int64).max)
    np.minimum.at(best, owner, value)
    return np.flatnonzero(value == best[owner])


def _thin_dense(
    x: np.ndarray, y: np.ndarray, rank: np.ndarray, d: float, frame, kept: np.ndarray, can_lead: np.ndarray | None = None
) -> tuple[np.ndarray, list[np.ndarray], _Grid, np.ndarray, np.ndarray]:
    """Thinning rounds (:func:`_thin`) until listing the close pairs of what is left is cheap.

    Sets ``kept`` for the leaders; returns (the undecided points, the thinned ones by round, and the
    undecided points' grid and :func:`_half_ranges`).
    """
    live, thinned = np.arange(len(x)), []
    for round_ in range(_MAX_THINNING_ROUNDS + 1):
        lx, ly = (x, y) if round_ == 0 else (x[live], y[live])
        g = _Grid(_keys(lx, ly, frame))
        low, high = _half_ranges(g, frame[3])
        if round_ == _MAX_THINNING_ROUNDS or _candidates(g, low, high) <= _PAIRS_PER_POINT * len(live) + 100_000:
            break
        leaders, dropped = _thin(g, lx, ly, rank[live], d, frame[3], None if can_lead is None else can_lead[live])
        if not len(leaders):  # every dense point waits for unseen ones (a strip's edge): list what is left
            break
        kept[live[leaders]] = True
        thinned.append(live[dropped])
        undecided = np.ones(len(live), bool)
        undecided[leaders], undecided[dropped] = False, False
        live = live[undecided]
        if not len(live):
            break
    return live, thinned, g, low, high


def greedy_keep(x: np.ndarray, y: np.ndarray, rank: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WITW's rule on points at distinct positions: keep in ``rank`` order unless a kept point is < ``d`` away.

    Returns (kept, for each dropped point its lowest-ranked kept point within ``d``, their distance).
    Dense spots (many points within ``d`` of each other) are thinned in rounds (:func:`_thin`) until
    listing the remaining close pairs is cheap; the rest is solved exactly by :func:`greedy_rounds`.
    Time and memory stay linear in the points however they cluster.
    """
    n = len(x)
    kept, cause, cause_d = np.zeros(n, bool), np.full(n, -1), np.full(n, np.nan)
    if n == 0:
        return kept, cause, cause_d
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    frame = _grid_frame(x, y, d)
    live, thinned, g, low, high = _thin_dense(x, y, rank, d, frame, kept)
    if len(live):
        i, j, dist = _grid_pairs(g, x[live], y[live], d, low, high)
        k, c, cd = greedy_rounds(rank[live], i, j, dist)
        kept[live], cause_d[live] = k, cd
        cause[live] = np.where(c >= 0, live[np.maximum(c, 0)], -1)
    if thinned:
        q = np.concatenate(thinned)
        cause[q], cause_d[q] = _lowest_kept_within(x, y, rank, np.flatnonzero(kept), q, d, frame)
    return kept, cause, cause_d


def _decide(x: np.ndarray, y: np.ndarray, rank: np.ndarray, d: float, frame, edge: np.ndarray | None) -> np.ndarray:
    """The state (0 undecided, 1 kept, 2 dropped) of each point that WITW's rule decides whatever lies beyond.

    As :func:`greedy_keep`, except that ``edge`` points (in the grid column next to unseen points,
    which may be less than ``d`` from them and rank before them) are never kept and never lead a
    thinning round; what waits on them stays undecided. Kept and dropped are final.
    """
    kept = np.zeros(len(x), bool)
    live, thinned, g, low, high = _thin_dense(x, y, rank, d, frame, kept, None if edge is None else ~edge)
    state = kept.astype(np.int8)
    for q in thinned:
        state[q] = 2
    if len(live):
        i, j, _ = _grid_pairs(g, x[live], y[live], d, low, high, block=1 << 14)
        live_rank = rank[live]
        state[live] = _round_states(live_rank, *_oriented(live_rank, i, j), None if edge is None else edge[live])
    return state


def _oriented(rank: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The edges (i, j) as (lo, hi): each edge's lower-ranked end first."""
    swap = rank[i] > rank[j]
    return np.where(swap, j, i), np.where(swap, i, j)


def _round_states(rank: np.ndarray, lo: np.ndarray, hi: np.ndarray, blocked: np.ndarray | None = None) -> np.ndarray:
    """The state (0 undecided, 1 kept, 2 dropped) of each node after :func:`greedy_rounds`' rounds on the edges
    (lo, hi), lo ranked before hi. ``blocked`` nodes are never kept (they may have neighbours not given):
    they and what waits on them stay undecided."""
    n = len(rank)
    state = np.zeros(n, np.int8)
    while True:
        has_lower = np.zeros(n, bool) if blocked is None else blocked.copy()
        has_lower[hi] = True
        newly = (state == 0) & ~has_lower
        if not newly.any():
            return state
        state[newly] = 1
        state[hi[newly[lo]]] = 2  # hi is undecided (edges keep only undecided ends), so it is dropped
        live = (state[lo] == 0) & (state[hi] == 0)
        lo, hi = lo[live], hi[live]


def greedy_rounds(
    rank: np.ndarray, i: np.ndarray, j: np.ndarray, d: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep nodes in rank order unless a kept node shares an edge (i, j, d): the greedy, in parallel rounds.

    Returns (kept, for each dropped node its lowest-ranked kept neighbour, the d of that edge).
    Each round keeps every undecided node with no undecided lower-ranked neighbour and drops their
    neighbours (:func:`_round_states`); it yields the lexicographically-first independent set, as the
    one-by-one loop does.
    """
    n = len(rank)
    lo0, hi0 = _oriented(rank, i, j)
    state = _round_states(rank, lo0, hi0)
    kept = state == 1
    cause, cause_d = np.full(n, -1), np.full(n, np.nan)
    by = kept[lo0] & ~kept[hi0]
    h, l, dd = hi0[by], lo0[by], d[by]
    first = _lowest(h, rank[l], n)  # each dropped node's lowest-ranked kept neighbour
    cause[h[first]], cause_d[h[first]] = l[first], dd[first]
    return kept, cause, cause_d


# --- seeded order (vectorised, platform-independent) ----------------------------------------------


def hash_ids(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A seeded uint64 per string id (FNV-1a over its UTF-8 bytes, then mixed)."""
    arr = (ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids).cast(pa.large_binary())
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(arr), np.uint64(0xCBF29CE484222325) ^ _mix(np.array([seed], dtype=np.int64).astype(np.uint64))[0])
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        if len(arr) and (lengths == lengths[0]).all():  # ids of one length (Flickr's): bytes as a matrix, no masks
            width = int(lengths[0])
            matrix = data[offsets[0] : offsets[0] + len(arr) * width].reshape(len(arr), width)
            for k in range(width):
                h ^= matrix[:, k]
                h *= prime
            return _mix(h)
        for k in range(int(lengths.max(initial=0))):
            live = lengths > k
            h[live] = (h[live] ^ data[starts[live] + k].astype(np.uint64)) * prime
    return _mix(h)


def unit_hash(seed: int, *keys: np.ndarray) -> np.ndarray:
    """Seeded uniform numbers in [0, 1) from integer key arrays (the same keys give the same number)."""
    h = _mix(np.full(len(keys[0]), seed, dtype=np.int64).astype(np.uint64))
    for key in keys:
        h = _mix(h ^ np.asarray(key, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def seeded_order(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A reproducible random permutation of the rows (by seeded id hash, ties by id), independent of row order."""
    keys = hash_ids(ids, seed)
    order = np.argsort(keys)
    if not (keys[order][1:] == keys[order][:-1]).any():  # no tie to break by id (the usual case)
        return order
    t = pa.table({"k": keys, "id": ids})
    return pc.sort_indices(t, sort_keys=[("k", "ascending"), ("id", "ascending")]).to_numpy()


# --- the density limit (WITW's limit_density) -----------------------------------------------------


# Up to WHOLE_POINTS photos are solved at once (fastest there: 1M in 0.8-0.9 s, ~280 bytes a photo while it
# runs); more are swept in strips of about STRIP_POINTS (at 4M: 5.9 s and a working set of a strip, against
# 6.9 s and 1.1 GB at once), so the working set stops growing past a million photos.
WHOLE_POINTS = 1 << 20
STRIP_POINTS = 1 << 16


def density_limit(
    ids: pa.Array,
    x: np.ndarray,
    y: np.ndarray,
    density_m: float,
    seed: int,
    whole_points: int = WHOLE_POINTS,
    strip_points: int = STRIP_POINTS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WITW's limit_density with a seeded order: keep a photo unless an earlier kept one is < density_m away.

    Returns (kept, index of the earliest kept photo within density_m of a dropped one or -1, its
    distance in metres). Up to ``whole_points`` photos are solved at once; more are swept in strips
    of about ``strip_points`` (:func:`_density_strips`), with the same result.
    """
    n = len(x)
    if n == 0 or density_m <= 0:
        return np.ones(n, bool), np.full(n, -1), np.full(n, np.nan)
    order = seeded_order(ids, seed)  # position in this order = rank
    if n > whole_points:
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        del order
        return _density_strips(np.asarray(x, np.float64), np.asarray(y, np.float64), rank, density_m, strip_points)
    xs, ys = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    # Photos at identical positions stand or fall with the earliest of them: solve on distinct positions.
    first, group = distinct(xs, ys, density_m)
    keep_u, cause_u, d_u = greedy_keep(xs[first], ys[first], first, density_m)
    cause_g = cause_u[group]
    cause_r = np.where(cause_g >= 0, first[np.maximum(cause_g, 0)], -1)
    kept_r, neighbour_r, distance_r = _by_position(np.arange(n), first[group], keep_u[group], cause_r, d_u[group])
    kept, neighbour, distance = np.empty(n, bool), np.empty(n, np.int64), np.empty(n)
    kept[order], distance[order] = kept_r, distance_r
    neighbour[order] = np.where(neighbour_r >= 0, order[np.maximum(neighbour_r, 0)], -1)
    return kept, neighbour, distance


def _by_position(
    photos: np.ndarray, rep: np.ndarray, rep_kept: np.ndarray, rep_cause: np.ndarray, rep_distance: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept, neighbour, distance) of ``photos`` from their position's earliest photo ``rep`` and its fate:
    the earliest of a kept position is kept; the others there are dropped for it at 0 m; the photos at a
    dropped position are dropped as it was (``rep_cause``, ``rep_distance``)."""
    kept = rep_kept & (rep == photos)
    neighbour = np.where(rep_kept, rep, rep_cause)
    distance = np.where(rep_kept, 0.0, rep_distance)
    neighbour[kept], distance[kept] = -1, np.nan
    return kept, neighbour, distance


def _columns(x: np.ndarray, frame) -> np.ndarray:
    """Grid column of each x (as :func:`_keys` computes it)."""
    return ((x - frame[0]) / frame[2]).astype(np.int64)


def _strips(cols: np.ndarray, size: int) -> list[tuple[int, int]]:
    """[start, end) ranges of about ``size`` (``size / 2`` to ``3 size / 2``) of sorted grid columns ``cols``.

    Each range ends at a column boundary, where the column before it holds the fewest points: those
    points wait for the next range (:func:`density_sweep`), so a dense spot is not cut.
    """
    ucols, starts = np.unique(cols, return_index=True)
    n, bounds = len(cols), [0]
    while n - bounds[-1] > size:
        a = bounds[-1]
        lo, hi = np.searchsorted(starts, [a + size // 2, a + 3 * size // 2], side="left")
        nxt = int(np.searchsorted(starts, a, side="right"))  # and the next few boundaries (past a dense column)
        cand = np.union1d(np.arange(lo, hi), np.arange(nxt, min(nxt + 4, len(starts))))  # >= 1: column 0 starts at 0
        if not len(cand):  # the rest is one column
            break
        before = np.where(ucols[cand - 1] == ucols[cand] - 1, starts[cand] - starts[cand - 1], 0)  # in the column before
        best = cand[np.lexsort((np.abs(starts[cand] - (a + size)), before))[0]]
        bounds.append(int(starts[best]))
    bounds.append(n)
    return list(itertools.pairwise(bounds))


SWEPT = pa.schema([("row", pa.int64()), ("id", pa.string()), ("rank", pa.int64()), ("x", pa.float64()),
                   ("y", pa.float64())])  # what the density sweep reads of a photo (one zone, in x order)
SWEEP_OUT = pa.schema([("row", pa.int64()), ("id", pa.string()), ("kept", pa.bool_()), ("neighbour_row", pa.int64()),
                       ("neighbour_id", pa.string()), ("distance", pa.float64())])  # fmt: skip


class _Window:
    """The photos a density sweep holds: a run of the x-sorted stream, from position ``base`` on."""

    def __init__(self) -> None:
        self.base = 0
        self.x, self.y, self.rank = np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
        self.row, self.ids = np.zeros(0, np.int64), pa.array([], pa.string())
        self.rep = np.zeros(0, np.int64)  # each photo's position's earliest photo (a stream position)
        self.state = np.zeros(0, np.int8)  # of representatives: 1 kept, 2 dropped
        self.neighbour, self.distance = np.zeros(0, np.int64), np.zeros(0)  # of dropped representatives
        self._new: list[pa.Table] = []  # blocks added, not yet in the arrays
        self._new_rows = 0

    @property
    def end(self) -> int:
        return self.base + len(self.x) + self._new_rows

    def add(self, block: pa.Table) -> None:
        self._new.append(block)
        self._new_rows += block.num_rows

    def take_in(self) -> None:
        """Append the blocks added since the last call to the arrays (once a strip, not a block)."""
        if not self._new:
            return
        new, n = pa.concat_tables(self._new), self._new_rows
        self._new, self._new_rows = [], 0
        self.x, self.y = np.concatenate([self.x, new["x"].to_numpy()]), np.concatenate([self.y, new["y"].to_numpy()])
        self.rank = np.concatenate([self.rank, new["rank"].to_numpy()])
        self.row = np.concatenate([self.row, new["row"].to_numpy()])
        self.ids = pa.concat_arrays([self.ids, new["id"].combine_chunks()])
        self.rep, self.state = np.concatenate([self.rep, np.full(n, -1)]), np.concatenate([self.state, np.zeros(n, np.int8)])
        self.neighbour = np.concatenate([self.neighbour, np.full(n, -1)])
        self.distance = np.concatenate([self.distance, np.full(n, np.nan)])

    def drop_before(self, position: int) -> None:
        k = position - self.base
        if k > 0:
            for name in ("x", "y", "rank", "row", "rep", "state", "neighbour", "distance"):
                setattr(self, name, getattr(self, name)[k:])
            self.ids = self.ids.slice(k)
            self.base = position


def density_sweep(blocks: Iterable[pa.Table], d: float, frame, size: int = STRIP_POINTS) -> Iterator[pa.Table]:
    """WITW's density limit over one zone's photos streamed in x order (``SWEPT`` blocks sorted by x, then
    row; ``rank``: the seeded order, distinct): ``SWEEP_OUT`` rows, a strip at a time, each photo once.

    The photos are swept in strips of about ``size`` across x. First the decisions: each strip's
    distinct positions, with those still undecided from earlier strips, are decided as far as WITW's
    rule allows without the strips to come (:func:`_decide`: the positions in the grid column just before
    the next strip wait for it; strips end at the quietest column boundary near ``size``, :func:`_strips`,
    so a dense spot is not cut). Kept positions are then in columns not adjacent to anything unseen, so
    farther than ``d`` from it: a strip never needs an earlier strip's decided positions. Then, once every
    position within ``d`` of a strip is decided, its causes: each dropped position's lowest-ranked kept
    position within ``d``, and the photos at repeated positions (:func:`_by_position`). What it holds: the
    strips not yet settled, ``d`` behind them and the undecided positions, not the photos before.
    ``frame`` (:func:`_grid_frame` of the whole zone) fixes the grid columns.
    """
    w, stream = _Window(), iter(blocks)
    waiting = np.zeros(0, np.int64)  # stream positions of representatives not decided yet
    pending: deque[tuple[int, int]] = deque()  # strips whose causes are not worked out yet
    a, exhausted = 0, False

    def columns(pos: np.ndarray | slice) -> np.ndarray:
        return _columns(w.x[pos], frame)

    def causes(a: int, b: int) -> pa.Table:
        photos = np.arange(a - w.base, b - w.base)
        r = w.rep[photos] - w.base
        reps = photos[r == photos]
        dropped = reps[w.state[reps] == 2]
        if len(dropped):
            lo, hi = np.searchsorted(w.x, [w.x[photos[0]] - d, w.x[photos[-1]] + d], side="left")
            near = np.arange(lo, hi)
            near = near[(w.state[near] == 1) & (w.rep[near] - w.base == near)]
            nb, w.distance[dropped] = _lowest_kept_within(w.x, w.y, w.rank, near, dropped, d, frame)
            w.neighbour[dropped] = nb + w.base
        kept, neighbour, distance = _by_position(photos + w.base, r + w.base, w.state[r] == 1, w.neighbour[r],
                                                 w.distance[r])  # fmt: skip
        local = np.where(neighbour >= 0, neighbour - w.base, 0)
        return pa.table({"row": w.row[photos], "id": w.ids.slice(photos[0], len(photos)), "kept": kept,
                         "neighbour_row": pa.array(w.row[local], mask=neighbour < 0),
                         "neighbour_id": w.ids.take(pa.array(local, mask=neighbour < 0)), "distance": distance},
                        schema=SWEEP_OUT)  # fmt: skip

    need = 2 * size + 2  # photos to hold past the strip's start: the strip, its choice of end and the next photo
    while True:
        while not exhausted and w.end - a < need:
            block = next(stream, None)
            if block is None:
                exhausted = True
            elif block.num_rows:
                w.add(block)
        if a == w.end:
            break
        w.take_in()
        cols = columns(slice(a - w.base, None))
        # _strips' choice needs the rows to a + 3 size / 2 and the next four column boundaries (past a dense column)
        if not exhausted and (len(cols) <= 3 * size // 2 or np.count_nonzero(np.diff(cols)) < 5):
            need = w.end - a + size
            continue
        ends = _strips(cols, size)
        need = 2 * size + 2
        b = a + ends[0][1]
        last = b == w.end and exhausted
        o = np.arange(a, b) - w.base
        o = o[np.argsort(w.rank[o], kind="stable")]  # the strip in rank order
        first, group = distinct(w.x[o], w.y[o], d)
        w.rep[o] = o[first][group] + w.base
        live = np.r_[waiting - w.base, o[first]]
        edge = None if last else columns(live) >= columns(slice(b - w.base, b - w.base + 1))[0] - 1
        st = _decide(w.x[live], w.y[live], w.rank[live], d, frame, edge)
        w.state[live] = st
        waiting = live[st == 0] + w.base
        pending.append((a, b))
        a = b
        # A strip's causes need every position within d of it decided.
        settled = np.inf if last else w.x[b - w.base]
        if len(waiting):
            settled = min(settled, float(w.x[waiting - w.base].min()))
        while pending and w.x[pending[0][1] - 1 - w.base] + d < settled:
            yield causes(*pending.popleft())
        if last:
            break
        # Still needed: the first strip whose causes are open (it holds every undecided position, which keeps
        # its strip's causes open) and the kept positions up to d before it.
        first_open = pending[0][0] if pending else a
        w.drop_before(min(first_open, w.base + int(np.searchsorted(w.x, w.x[first_open - w.base] - d, side="left"))))
    if len(waiting):
        raise AssertionError("the last strip left positions undecided")
    while pending:
        yield causes(*pending.popleft())


def _density_strips(
    x: np.ndarray, y: np.ndarray, rank: np.ndarray, d: float, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`density_limit` by :func:`density_sweep` over the photos sorted by x: what it holds beyond one
    strip's working set is the inputs and outputs (against ~280 bytes a photo solving all at once)."""
    n = len(x)
    by_x = np.lexsort((np.arange(n), x))
    swept = pa.table({"row": by_x, "id": pa.nulls(n, pa.string()), "rank": rank[by_x], "x": x[by_x], "y": y[by_x]},
                     schema=SWEPT)  # fmt: skip
    kept, neighbour, distance = np.zeros(n, bool), np.full(n, -1), np.full(n, np.nan)
    for part in density_sweep([swept.slice(k, size) for k in range(0, n, size)], d, _grid_frame(x, y, d), size):
        rows = part["row"].to_numpy()
        kept[rows], distance[rows] = part["kept"].to_numpy(zero_copy_only=False), part["distance"].to_numpy()
        neighbour[rows] = part["neighbour_row"].fill_null(-1).to_numpy()
    return kept, neighbour, distance


class DensityLimit:
    """WITW's density limit over photos given a part at a time, each UTM zone on its own, with memory that does
    not grow with them: the same kept photos, neighbours and distances as :func:`density_limit` per zone.

    :meth:`add` takes parts in id order (ties of the seeded hash are broken by id, as :func:`seeded_order`
    does); :meth:`results` then gives ``SWEEP_OUT`` rows (``row``: the photo's place in the order added),
    each photo once, in no promised order. Between the two the photos are sorted twice on disk
    (:class:`~pipeline.tablestream.KeySorter`): by seeded hash, which numbers them in the seeded order,
    then by zone and x for :func:`density_sweep`. Use as a context manager.
    """

    _BY_HASH = pa.schema([("hash", pa.uint64()), ("row", pa.int64()), ("id", pa.string()), ("epsg", pa.int32()),
                          ("x", pa.float64()), ("y", pa.float64())])  # fmt: skip
    _BY_X = pa.schema([("epsg", pa.int32()), *SWEPT])

    def __init__(self, density_m: float, seed: int, size: int = STRIP_POINTS) -> None:
        self.d, self.seed, self.size = density_m, seed, size
        self.rows = 0
        self._bounds: dict[int, list[float]] = {}  # zone -> x min, x max, y min, y max

    def __enter__(self) -> Self:
        self._by_hash = KeySorter(self._BY_HASH, ["hash", "row"]).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._by_hash.__exit__(*exc)

    def add(self, ids: pa.Array, epsg: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Photos after every photo added so far in id order: ids, zones and UTM positions (finite)."""
        x, y, epsg = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(epsg, np.int32)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("positions must be finite: NaN or infinite x/y given")
        for zone in np.unique(epsg).tolist():
            at = epsg == zone
            box = [x[at].min(), x[at].max(), y[at].min(), y[at].max()]
            old = self._bounds.setdefault(zone, box)
            self._bounds[zone] = [min(old[0], box[0]), max(old[1], box[1]), min(old[2], box[2]), max(old[3], box[3])]
        rows = np.arange(self.rows, self.rows + len(x), dtype=np.int64)
        self._by_hash.write(pa.table({"hash": hash_ids(ids, self.seed), "row": rows, "id": ids, "epsg": epsg, "x": x,
                                      "y": y}, schema=self._BY_HASH))  # fmt: skip
        self.rows += len(x)

    def results(self) -> Iterator[pa.Table]:
        """``SWEEP_OUT`` rows of every photo added."""
        with KeySorter(self._BY_X, ["epsg", "x", "row"]) as by_x:
            rank = 0
            for block in self._by_hash.blocks():
                by_x.write(block.append_column("rank", pa.array(np.arange(rank, rank + block.num_rows, dtype=np.int64))))
                rank += block.num_rows
            self._by_hash.__exit__(None, None, None)  # its runs are read: let them go
            for zone, parts in itertools.groupby(value_runs(by_x.blocks(), "epsg"), key=lambda run: run[0]):
                blocks = (part.select(SWEPT.names) for _, part in parts)
                if self.d <= 0:
                    yield from (_all_kept(block) for block in blocks)
                    continue
                x0, x1, y0, y1 = self._bounds[zone]
                frame = _grid_frame(np.array([x0, x1]), np.array([y0, y1]), self.d)
                yield from density_sweep(blocks, self.d, frame, self.size)


def _all_kept(block: pa.Table) -> pa.Table:
    n = block.num_rows
    return pa.table({"row": block["row"], "id": block["id"], "kept": np.ones(n, bool),
                     "neighbour_row": pa.nulls(n, pa.int64()), "neighbour_id": pa.nulls(n, pa.string()),
                     "distance": np.full(n, np.nan)}, schema=SWEEP_OUT)  # fmt: skip
