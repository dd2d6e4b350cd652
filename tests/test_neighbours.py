"""Grid neighbour pairs, duplicate positions and the parallel greedy, each against a brute-force loop."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import neighbours, tablestream


def brute_pairs(x, y, d):
    return {
        (min(a, b), max(a, b)): math.hypot(x[a] - x[b], y[a] - y[b])
        for a, b in itertools.combinations(range(len(x)), 2)
        if math.hypot(x[a] - x[b], y[a] - y[b]) < d
    }


def as_dict(i, j, dist):
    out = {(min(a, b), max(a, b)): v for a, b, v in zip(i.tolist(), j.tolist(), dist.tolist())}
    assert len(out) == len(i), "a pair came back twice"
    return out


coords = st.lists(st.tuples(st.integers(-30, 30), st.integers(-30, 30)), min_size=0, max_size=80)


@settings(max_examples=60, deadline=None)
@given(pts=coords, d=st.sampled_from([0.5, 1.0, 3.0, 5.0, 10.0]), scale=st.sampled_from([1.0, 0.5, 2.5]))
def test_close_pairs_are_exactly_the_pairs_closer_than_d(pts, d, scale):
    x = np.array([p[0] * scale for p in pts], float)
    y = np.array([p[1] * scale for p in pts], float)
    got = as_dict(*neighbours.close_pairs(x, y, d)) if len(x) else {}
    want = brute_pairs(x, y, d)
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k]) for k in want)


def test_pairs_exactly_d_apart_are_not_close_and_just_under_are():
    x = np.array([440_000.0, 440_010.0, 440_000.0, 440_000.0])
    y = np.array([5_400_000.0, 5_400_000.0, 5_400_000.0 + 9.999999, 5_400_000.0 - 10.0])
    got = as_dict(*neighbours.close_pairs(x, y, 10.0))
    assert set(got) == {(0, 2)}


def test_far_apart_clusters_use_the_binary_search_path_and_agree():
    rng = np.random.default_rng(4)
    centres = np.array([[0.0, 0.0], [5e6, 1e6], [-3e6, 7e6]])  # a key span far larger than the point count
    pts = np.concatenate([c + rng.uniform(0, 30, (40, 2)) for c in centres])
    got = as_dict(*neighbours.close_pairs(pts[:, 0], pts[:, 1], 4.0))
    assert got.keys() == brute_pairs(pts[:, 0], pts[:, 1], 4.0).keys() and got


def test_distinct_groups_equal_positions_and_keeps_the_lowest_index():
    x = np.array([1.0, 2.0, 1.0, -0.0, 0.0, 2.0, 1.0])
    y = np.array([1.0, 2.0, 1.0, 5.0, 5.0, 2.5, 1.0])
    first, group = neighbours.distinct(x, y, 10.0)
    assert sorted(first.tolist()) == [0, 1, 3, 5]
    assert first[group].tolist() == [0, 1, 0, 3, 3, 5, 0]


def test_distinct_by_hash_and_by_lexsort_agree():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 50, (3000, 2)).astype(float) * 0.7
    x, y = base[:, 0], base[:, 1]
    first, group = neighbours.distinct(x, y, 10.0)
    cells, _ = neighbours._cells(x, y, 10.0)
    first2, group2 = neighbours._distinct_lexsort(x, y, cells)
    assert sorted(first.tolist()) == sorted(first2.tolist())
    assert (first[group] == first2[group2]).all()


def test_hash_ids_fast_path_for_ids_of_one_length_matches_the_general_path():
    same = pa.array(["51000000001", "51000000002", "99"[:2] * 5 + "9"])
    mixed = pa.concat_arrays([same, pa.array(["x"])])
    assert (neighbours.hash_ids(same, 3) == neighbours.hash_ids(mixed, 3)[:3]).all()
    assert len(set(neighbours.hash_ids(same, 3).tolist())) == 3


def test_greedy_rounds_equals_the_one_by_one_loop():
    rng = np.random.default_rng(2)
    n = 300
    rank = rng.permutation(n)
    edges = {tuple(sorted(e)) for e in rng.integers(0, n, (900, 2)) if e[0] != e[1]}
    i, j = (np.array(v) for v in zip(*edges))
    d = rng.uniform(0, 1, len(i))
    kept, cause, _ = neighbours.greedy_rounds(rank, i, j, d)
    adj = {k: set() for k in range(n)}
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    loop_kept = set()
    for v in np.argsort(rank):
        if not adj[v] & loop_kept:
            loop_kept.add(int(v))
    assert set(np.flatnonzero(kept).tolist()) == loop_kept
    for v in np.flatnonzero(~kept):  # named: the lowest-ranked of its kept neighbours (ranked before it)
        assert cause[v] == min(adj[v] & loop_kept, key=lambda k: rank[k]) and rank[cause[v]] < rank[v]


def sequential_rule(x, y, rank, d):
    """WITW's loop: each point in rank order against every kept point; the first one too close is named."""
    kept, cause = np.zeros(len(x), bool), np.full(len(x), -1)
    chosen = []
    for v in np.argsort(rank):
        cause[v] = next((k for k in chosen if math.hypot(x[v] - x[k], y[v] - y[k]) < d), -1)
        if cause[v] < 0:
            kept[v] = True
            chosen.append(v)
    return kept, cause


@pytest.mark.parametrize("pairs_per_point", [0, 2, 16])  # 0: thin whatever the density; 16: the default
@pytest.mark.parametrize("seed", range(12))
def test_greedy_keep_thinning_dense_spots_equals_the_sequential_rule(monkeypatch, pairs_per_point, seed):
    monkeypatch.setattr(neighbours, "_PAIRS_PER_POINT", pairs_per_point)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    spot = np.c_[rng.uniform(0, 30, n), rng.uniform(0, 25, n)]  # a landmark: most points within d of many
    spread = rng.uniform(-100, 130, (n // 2, 2))
    pts = np.unique(np.round(np.r_[spot, spread], int(rng.integers(0, 3))), axis=0)  # distinct positions
    x, y, rank = pts[:, 0], pts[:, 1], rng.permutation(len(pts))
    kept, cause, dist = neighbours.greedy_keep(x, y, rank, 10.0)
    want_kept, want_cause = sequential_rule(x, y, rank, 10.0)
    assert (kept == want_kept).all()
    assert (cause == want_cause).all()
    dropped = ~kept
    assert np.allclose(dist[dropped], np.hypot(x[dropped] - x[cause[dropped]], y[dropped] - y[cause[dropped]]))


def counting_pairs(monkeypatch) -> list[int]:
    """The number of close pairs each listing returns (the part that is quadratic in a dense spot)."""
    listed: list[int] = []
    real = neighbours._grid_pairs

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        listed.append(len(out[0]))
        return out

    monkeypatch.setattr(neighbours, "_grid_pairs", wrapped)
    return listed


def test_a_dense_spot_is_thinned_without_listing_its_pairs(monkeypatch):
    """40,000 distinct positions in a 15 x 22 m square: 800 million pairs if listed; thinned, a few rounds."""
    listed = counting_pairs(monkeypatch)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 15, 40_000), rng.uniform(0, 22, 40_000)
    rank = rng.permutation(40_000)
    kept, cause, _ = neighbours.greedy_keep(x, y, rank, 10.0)
    assert sum(listed) < 1_000  # the exact rounds see only what thinning left
    want_kept, want_cause = sequential_rule(x, y, rank, 10.0)  # cheap here: a handful of kept points
    assert (kept == want_kept).all() and (cause == want_cause).all()


def test_non_finite_positions_are_a_clear_error():
    with pytest.raises(ValueError, match="finite"):
        neighbours.close_pairs(np.array([0.0, np.nan]), np.array([0.0, 1.0]), 10.0)
    with pytest.raises(ValueError, match="finite"):
        neighbours.density_limit(pa.array(["a", "b"]), np.array([0.0, np.inf]), np.array([0.0, 1.0]), 10.0, 0)


def landmark_city(n: int, seed: int) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Photos over 2 km, a quarter in one 15 x 22 m spot, a tenth at one repeated position, some on one x."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 2000, n), rng.uniform(0, 2000, n)
    hot = rng.random(n) < 0.25
    x[hot], y[hot] = 700 + rng.uniform(0, 15, hot.sum()), 900 + rng.uniform(0, 22, hot.sum())
    same = rng.random(n) < 0.1
    x[same], y[same] = x[0], y[0]
    line = rng.random(n) < 0.05
    x[line] = 1234.5  # many photos with one x: a strip boundary must not split them
    return pa.array([f"{i:011d}" for i in rng.permutation(n)]), x, y


@pytest.mark.parametrize("strip_points", [23, 300, 2_000])
@pytest.mark.parametrize("seed", range(4))
def test_sweeping_strips_gives_the_whole_result(strip_points, seed):
    """Strips across x (memory of one strip) decide, name and measure every photo as one solve of all does."""
    ids, x, y = landmark_city(6_000, seed)
    whole = neighbours.density_limit(ids, x, y, 10.0, 7, whole_points=10**9)
    strips = neighbours.density_limit(ids, x, y, 10.0, 7, whole_points=0, strip_points=strip_points)
    assert np.array_equal(whole[0], strips[0])
    assert np.array_equal(whole[1], strips[1])
    assert np.array_equal(whole[2], strips[2], equal_nan=True)
    assert 0 < whole[0].sum() < len(x)


def test_sweeping_strips_follows_the_sequential_rule():
    ids, x, y = landmark_city(1_500, 11)
    kept, neighbour, dist = neighbours.density_limit(ids, x, y, 10.0, 3, whole_points=0, strip_points=97)
    rank = np.empty(len(x), np.int64)
    rank[neighbours.seeded_order(ids, 3)] = np.arange(len(x))
    want_kept, want_cause = sequential_rule(x, y, rank, 10.0)
    assert (kept == want_kept).all() and (neighbour == want_cause).all()
    assert np.allclose(dist[~kept], np.hypot(x[~kept] - x[neighbour[~kept]], y[~kept] - y[neighbour[~kept]]))


def test_strips_end_where_no_dense_spot_is_cut(monkeypatch):
    """A strip's last grid column waits for the next strip; ends are chosen where it is quiet, so the
    landmark (10,000 photos within 22 m) is thinned, not listed pair by pair (~50 million pairs)."""
    listed = counting_pairs(monkeypatch)
    ids, x, y = landmark_city(40_000, 0)
    kept, _, _ = neighbours.density_limit(ids, x, y, 10.0, 0, whole_points=0, strip_points=3_000)
    assert sum(listed) < 5 * len(x)
    assert np.array_equal(kept, neighbours.density_limit(ids, x, y, 10.0, 0, whole_points=10**9)[0])


@pytest.mark.parametrize(("strip_points", "seed"), [(23, 0), (300, 1), (2_000, 2), (10**6, 3)])
def test_the_streamed_limit_gives_each_zones_whole_result(strip_points, seed, monkeypatch):
    """Photos in two UTM zones (the same coordinates in each, which must not meet) added a part at a time
    and sorted on disk in small runs: each zone's kept set, neighbours and distances are one solve's."""
    monkeypatch.setattr(tablestream, "RUN_ROWS", 1_000)
    monkeypatch.setattr(tablestream, "MERGE_MIN_ROWS", 16)
    ids, x, y = landmark_city(6_000, seed)
    epsg = np.where(np.random.default_rng(seed).random(len(x)) < 0.5, 32631, 32632)
    by_id = np.argsort(np.array(ids.to_pylist()))
    ids, x, y, epsg = ids.take(pa.array(by_id)), x[by_id], y[by_id], epsg[by_id]
    with neighbours.DensityLimit(10.0, 7, strip_points) as limit:
        for a in range(0, len(x), 777):
            limit.add(ids.slice(a, 777), epsg[a : a + 777], x[a : a + 777], y[a : a + 777])
        out = pa.concat_tables(limit.results()).sort_by("row")
    assert out["row"].to_pylist() == list(range(len(x)))
    assert out["id"].combine_chunks().equals(ids)
    for zone in (32631, 32632):
        at = np.flatnonzero(epsg == zone)
        kept, neighbour, dist = neighbours.density_limit(ids.take(pa.array(at)), x[at], y[at], 10.0, 7)
        assert np.array_equal(out["kept"].to_numpy(zero_copy_only=False)[at], kept)
        names = [ids[int(at[k])].as_py() if k >= 0 else None for k in neighbour]
        assert out["neighbour_id"].take(pa.array(at)).to_pylist() == names
        assert np.array_equal(out["distance"].to_numpy()[at], dist, equal_nan=True)
        assert 0 < kept.sum() < len(at)
