"""The density limit: WITW's rule (pure), and its place in the filter stage, after every other rule.

A photo is only ever dropped for density in favour of a photo that every other filter kept, so the
photo its reason names is in the manifest.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters import REGISTRY
from filters.base import Filter, Tables, decisions_table
from pipeline import filter as stage
from pipeline.config import FilterParams, parse_params
from pipeline.errors import ConfigError
from pipeline.neighbours import density_limit, seeded_order
from pipeline.schemas import CHIPS, DOWNLOADS, PAIRS, PHOTOS, table_from_rows

EPSG = 32631
X0, Y0 = 448_000.0, 5_411_000.0


# --- WITW's rule, pure ------------------------------------------------------------------------


def limit(points: list[tuple[float, float]], seed: int = 0, density_m: float = 10.0):
    ids = pa.array([f"p{k:03d}" for k in range(len(points))])
    x, y = (np.array([p[i] for p in points], float) for i in (0, 1))
    return ids, x, y, density_limit(ids, x, y, density_m, seed)


def test_two_photos_5_m_apart_keep_one_and_two_15_m_apart_keep_both():
    _, _, _, (kept, neighbour, dist) = limit([(0, 0), (5, 0), (100, 100), (115, 100)])
    assert sorted(kept[:2].tolist()) == [False, True] and kept[2:].all()
    dropped = int(np.flatnonzero(~kept)[0])
    assert neighbour[dropped] == 1 - dropped and dist[dropped] == pytest.approx(5.0)


def test_the_limit_is_deterministic_independent_of_row_order_and_seeded():
    rng = random.Random(3)
    points = [(rng.uniform(0, 60), rng.uniform(0, 60)) for _ in range(120)]
    ids, x, y, (kept, _, _) = limit(points)
    chosen = set(np.asarray(ids)[kept].tolist())
    assert 5 < len(chosen) < 120
    perm = np.random.default_rng(1).permutation(len(points))
    again = density_limit(ids.take(pa.array(perm)), x[perm], y[perm], 10.0, 0)[0]
    assert set(np.asarray(ids)[perm][again].tolist()) == chosen
    other_seed = density_limit(ids, x, y, 10.0, 1)[0]
    assert set(np.asarray(ids)[other_seed].tolist()) != chosen


def test_a_zero_limit_keeps_everything():
    _, _, _, (kept, _, _) = limit([(0, 0), (0, 0)], density_m=0)
    assert kept.all()


@settings(max_examples=40, deadline=None)
@given(pts=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=60), seed=st.integers(0, 5))
def test_the_limit_equals_witw_sequential_rule_in_the_seeded_order(pts, seed):
    ids, x, y, (kept, neighbour, dist) = limit(pts, seed)
    naive, chosen = np.zeros(len(pts), bool), []
    for i in seeded_order(ids, seed):
        if all(math.hypot(x[i] - x[j], y[i] - y[j]) >= 10.0 for j in chosen):
            naive[i] = True
            chosen.append(i)
    assert (kept == naive).all()
    for i in np.flatnonzero(~kept):
        j = neighbour[i]
        assert kept[j] and dist[i] == pytest.approx(math.hypot(x[i] - x[j], y[i] - y[j]))
        assert dist[i] < 10.0


# --- in the filter stage ------------------------------------------------------------------------


def world(points: dict[str, tuple[float, float]]) -> Tables:
    """Photos paired at ``points`` (UTM metres in one zone), downloaded and chipped."""
    ids = sorted(points)
    photos = [{"id": i, "source": "custom", "lat": 48.85, "lon": 2.35} for i in ids]
    pairs = [{"id": i, "aoi": "a", "city": "Lyon", "tile_id": "t1", "epsg": EPSG, "x_m": X0 + points[i][0],
              "y_m": Y0 + points[i][1], "split": "train", "status": "paired", "reason": ""} for i in ids]  # fmt: skip
    chips = [{"id": i, "tile_id": "t1", "uri": f"c/{i}.jpg", "status": "ok"} for i in ids]
    return Tables(
        table_from_rows(photos, PHOTOS),
        table_from_rows([{"id": i, "status": "ok"} for i in ids], DOWNLOADS),
        table_from_rows(pairs, PAIRS),
        table_from_rows(chips, CHIPS),
    )


def planted(dropped: set[str], name: str = "indoor", kind: str = "model") -> Filter:
    """A filter that drops ``dropped`` (a stand-in for the indoor vote, a curator verdict, ...)."""

    def fn(tables: Tables, params: FilterParams) -> pa.Table:
        ids = tables.photos["id"].to_pylist()
        rows = ((i, i not in dropped, f"{name}: planted" if i in dropped else "", None) for i in ids)
        return decisions_table(name, rows)

    return Filter(name, fn, kind)


DENSITY = next(f for f in REGISTRY if f.name == "density")


def manifest_ids(decisions: pa.Table, tables: Tables) -> set[str]:
    return set(stage.survivors(tables.photos, decisions).to_pylist())


def test_a_photo_dropped_by_another_filter_does_not_knock_out_its_neighbour():
    # six outdoor photos 100 m apart, each with an "indoor" photo 3 m away (issue 12's real-photo case)
    points = {f"o{k}": (100.0 * k, 0.0) for k in range(6)} | {f"i{k}": (100.0 * k + 3.0, 0.0) for k in range(6)}
    tables = world(points)
    indoor = {f"i{k}" for k in range(6)}
    decisions, _ = stage.run_filters(tables, FilterParams(), [planted(indoor), DENSITY])
    assert manifest_ids(decisions, tables) == {f"o{k}" for k in range(6)}
    rows = [r for r in decisions.to_pylist() if r["filter"] == "density"]
    assert {r["id"] for r in rows} == {f"o{k}" for k in range(6)}  # density judges the survivors only
    # the same world with the indoor photos kept: the limit then drops one of each close couple
    decisions, _ = stage.run_filters(tables, FilterParams(), [planted(set()), DENSITY])
    assert len(manifest_ids(decisions, tables)) == 6


def test_a_curator_drop_and_a_curator_keep_are_seen_by_the_density_limit(tmp_path):
    tables = world({"a": (0.0, 0.0), "b": (3.0, 0.0)})
    order = [i for i in np.asarray(["a", "b"])[seeded_order(pa.array(["a", "b"]), 0)]]
    first, second = order  # with both kept, the limit keeps `first`
    decisions, _ = stage.run_filters(tables, FilterParams(), [planted({first}, "curator", "rule"), DENSITY])
    assert manifest_ids(decisions, tables) == {second}
    # a model drop of `first` that a curator keep overrides: `first` is back, and `second` yields to it
    verdicts = tmp_path / "verdicts.csv"
    verdicts.write_text(f"id,verdict,curator,timestamp,note\n{first},keep,ann,2026-01-01T00:00:00Z,\n")
    curator = next(f for f in REGISTRY if f.name == "curator")
    params = FilterParams(verdicts=str(verdicts), deny_list=str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("ids: []\n")
    decisions, overrides = stage.run_filters(tables, params, [planted({first}), curator, DENSITY])
    assert overrides == 1 and manifest_ids(decisions, tables) == {first}
    reason = next(r["reason"] for r in decisions.to_pylist() if r["filter"] == "density" and not r["kept"])
    assert reason == f"density: 3.00 m from kept photo {first} (density limit 10 m)"


@settings(max_examples=40, deadline=None)
@given(
    pts=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=1, max_size=50),
    dropped=st.sets(st.integers(0, 49)),
    seed=st.integers(0, 3),
)
def test_every_density_drop_names_a_manifest_photo_within_the_limit(pts, dropped, seed):
    points = {f"p{k:02d}": (float(x), float(y)) for k, (x, y) in enumerate(pts)}
    tables = world(points)
    params = FilterParams(density_seed=seed)
    decisions, _ = stage.run_filters(tables, params, [planted({f"p{k:02d}" for k in dropped}), DENSITY])
    kept = manifest_ids(decisions, tables)
    for r in decisions.to_pylist():
        if r["filter"] == "density" and not r["kept"]:
            other = r["reason"].split("from kept photo ")[1].split(" ")[0]
            assert other in kept
            (x1, y1), (x2, y2) = points[r["id"]], points[other]
            assert math.hypot(x1 - x2, y1 - y2) == pytest.approx(float(r["reason"].split()[1]), abs=0.01)
            assert math.hypot(x1 - x2, y1 - y2) < 10.0
    for a in kept:
        for b in kept:
            if a < b:
                assert math.dist(points[a], points[b]) >= 10.0


def test_the_old_pair_density_param_says_where_it_moved():
    with pytest.raises(ConfigError, match=r"pair\.density_m and pair\.seed moved to filter\.density_m"):
        parse_params({"pair": {"density_m": 10}})
    assert parse_params({"filter": {"density_m": 25, "density_seed": 3}}).filter.density_m == 25
