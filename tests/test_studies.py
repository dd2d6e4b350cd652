"""The studies: the Figure 6 fit, nested subsets, the filter variants, one fixed test set, and the DVC pipeline."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from filters import REGISTRY
from filters.base import column
from pipeline import filter as filter_stage
from pipeline import manifest
from pipeline.config import Params, parse_params
from pipeline.errors import ConfigError
from pipeline.schemas import MANIFEST, read_table, table_from_rows
from studies.filter_study import train_set, variant_registries
from studies.fit import curve, fit_curve, holdout_check
from studies.variants import fraction_subset, subset_size
from tests.conftest import digests, sh
from tests.test_filters import make_params, make_tables, tiles_table

SIZES = np.array([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0])


def test_fit_recovers_known_a_b_c_from_noisy_points():
    rng = np.random.default_rng(3)
    x = SIZES.repeat(3)
    y = curve(x, 0.30, 0.10, 0.4) + rng.normal(0, 0.002, len(x))
    fit = fit_curve(x, y)
    assert fit is not None and not fit.unstable_a, fit.why_unstable
    assert abs(fit.a - 0.30) < 3 * fit.a_err + 0.01 and abs(fit.b - 0.10) < 0.01 and abs(fit.c - 0.4) < 0.05
    assert 0 < fit.a_err < 0.02 and 0 < fit.c_err < 0.05
    assert fit.per_doubling == pytest.approx(curve(2.0, fit.a, fit.b, fit.c) - curve(1.0, fit.a, fit.b, fit.c))
    assert fit.at_10x == pytest.approx(curve(10.0, fit.a, fit.b, fit.c)) and fit.at_2x < fit.at_10x < fit.a


def test_a_falling_metric_fits_with_negative_b():
    rng = np.random.default_rng(4)
    y = curve(SIZES, 50.0, -20.0, 0.6) + rng.normal(0, 0.3, len(SIZES))
    fit = fit_curve(SIZES, y)
    assert fit.b < 0 and fit.per_doubling < 0 and abs(fit.a - 50) < 3


def test_a_straight_line_in_log_size_flags_the_asymptote_unstable():
    """The seed's case: +0.5 point per doubling, no bend: any large a fits, so a must be flagged."""
    rng = np.random.default_rng(5)
    x = SIZES.repeat(2)
    y = 3.0 + 0.5 * np.log2(x) + rng.normal(0, 0.05, len(x))
    fit = fit_curve(x, y)
    assert fit.unstable_a and fit.why_unstable
    assert fit.loglinear_per_doubling == pytest.approx(0.5, abs=0.05)


def test_fit_needs_three_sizes_and_the_holdout_predicts_the_largest():
    assert fit_curve(np.array([0.5, 1.0, 1.0]), np.array([1.0, 2.0, 2.1])) is None
    x = SIZES
    check = holdout_check(x, curve(x, 0.3, 0.1, 0.5))
    assert check["size"] == 1.0 and check["error"] == pytest.approx(0.0, abs=1e-4)
    assert check["fit"]["points"] == len(SIZES) - 1


def _manifest(n: int) -> pa.Table:
    return table_from_rows([{"id": f"{7000 + 13 * k}", "split": "train"} for k in range(n)], MANIFEST)


def test_subsets_are_nested_deterministic_and_independent_of_row_order():
    table = _manifest(100)
    ids = {f: column(fraction_subset(table, f, seed=1), "id") for f in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)}
    sizes = [len(v) for v in ids.values()]
    assert sizes == [subset_size(100, f) for f in ids] == [6, 12, 25, 50, 100]
    fracs = sorted(ids)
    assert all(set(ids[a]) < set(ids[b]) for a, b in itertools.pairwise(fracs))
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(100)))
    assert column(fraction_subset(shuffled, 0.25, seed=1), "id") == ids[0.25]
    assert column(fraction_subset(table, 0.25, seed=2), "id") != ids[0.25]  # the seed draws another subset
    assert subset_size(10, 0.01) == 2  # training needs two pairs


def _drops(decisions: pa.Table) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for i, f, kept in zip(*(column(decisions, c) for c in ("id", "filter", "kept")), strict=True):
        if not kept:
            out.setdefault(i, set()).add(f)
    return out


def test_each_filter_variant_adds_back_exactly_that_filters_drops(tmp_path):
    tables, params = make_tables(), Params(filter=make_params(tmp_path))
    decisions, _ = filter_stage.run_filters(tables, params.filter)
    drops = _drops(decisions)
    eligible = {r["id"] for r in manifest.manifest_rows(tables, tiles_table(), decisions.slice(0, 0), params)
                if r["split"] == "train"}  # what has a paired, ok chip in train: all that could ever come back
    base = set(column(train_set(tables, tiles_table(), params, REGISTRY), "id"))
    assert base == eligible - set(drops)
    added_somewhere = set()
    for name, registry in variant_registries(REGISTRY, [])[1:-1]:
        got = set(column(train_set(tables, tiles_table(), params, registry), "id"))
        variant_decisions, _ = filter_stage.run_filters(tables, params.filter, registry)
        density = {i for i, fs in _drops(variant_decisions).items() if fs == {"density"}}
        sole = {i for i, fs in drops.items() if fs == {name}} & eligible
        assert got - base == sole - density, name
        assert base - got == density & base, name
        added_somewhere |= got - base
    # single band, too small, duplicate, deny list, chip nodata, curator, licence; p09 (low accuracy and on the deny
    # list) stays out whichever one filter is off
    assert added_somewhere == {"p05", "p06", "p07", "p11", "p14", "p17", "p18"}
    none = set(column(train_set(tables, tiles_table(), params, []), "id"))
    assert none == eligible


def test_density_off_adds_back_its_drops_and_is_recomputed_when_another_filter_is_off(tmp_path):
    tables, params = make_tables(), Params(filter=make_params(tmp_path))
    val = {name: set(column(train_set(tables, tiles_table(), params, reg, split="val"), "id"))
           for name, reg in variant_registries(REGISTRY, ["density", "chip_error"])}
    assert val["density"] - val["all"] == {"p13"}  # 3 m from p02: the density limit dropped it
    assert val["none"] >= val["density"]


def test_perfect_variants_drop_exactly_the_photos_the_truth_expects_a_filter_to_drop(tmp_path):
    from studies.filter_study import perfect_variants

    base = _manifest(12)
    ids = column(base, "id")
    truth = tmp_path / "truth.csv"
    expected = ["ok", "wrong_location", "relevance", "ok", "density_pair", "relevance", "wrong_location", "ok",
                "indoor", "ok", "relevance", "ok"]
    lines = ["id,case,expected"] + [f"{i},x,{e}" for i, e in zip(ids, expected, strict=True)] + ["999,x,relevance"]
    truth.write_text("\n".join(lines) + "\n")
    sets = perfect_variants(base, str(truth))
    assert sorted(sets) == ["perfect indoor", "perfect relevance", "perfect wrong_location"]  # not ok, density_pair
    for kind, table in sets.items():
        gone = set(ids) - set(column(table, "id"))
        assert gone == {i for i, e in zip(ids, expected, strict=True) if e == kind.removeprefix("perfect ")}
        assert column(table, "id") == [i for i in ids if i not in gone]  # order kept: the runs' cache keys
    assert perfect_variants(base, str(tmp_path / "missing.csv")) == {} and perfect_variants(base, None) == {}


def test_only_names_registry_filters():
    assert [n for n, _ in variant_registries(REGISTRY, ["indoor"])] == ["all", "indoor", "none"]
    with pytest.raises(ConfigError, match="nosuch"):
        variant_registries(REGISTRY, ["nosuch"])
    assert parse_params({"study": {"size": {"fractions": [0.5, 1.0]}}}).study.size.fractions == [0.5, 1.0]
    with pytest.raises(ConfigError, match="study.size.fractions"):
        parse_params({"study": {"size": {"fractions": [0, 1.0]}}})


torch = pytest.importorskip("torch")


def test_every_variant_is_trained_and_evaluated_on_the_same_test_manifest(tmp_path):
    from studies.filter_study import study
    from tests.test_train_loop import TINY, make_pairs

    train, val, test = (make_pairs(tmp_path, n, split, seed) for n, split, seed in
                        ((20, "train", 0), (6, "val", 1), (8, "test", 2)))
    full = read_table(train, MANIFEST)
    params = Params(train=TINY.model_copy(update={"epochs": 1}), evaluate={"loader_workers": 0},
                    study={"epochs": 1, "filters": {"match_min_change": 0.0, "min_change": 0.1}})
    sets = {"all": full.slice(0, 14), "more": full, "same": full.slice(0, 14), "one": full.slice(0, 15), "none": full}
    cache = tmp_path / "runs"
    cache.mkdir()
    rows = {r["variant"]: r for r in study(params, sets, str(val), str(test), cache)}
    runs = [json.loads(p.read_text()) for p in sorted(cache.glob("run-*.json"))]
    # all, more, more downsampled to 14 (= the same rows as none's downsampled) and none: 3 distinct trainings
    assert sorted(r["size"] for r in runs) == [14, 14, 20]
    sha = hashlib.sha256(Path(test).read_bytes()).hexdigest()
    assert {r["test_sha256"] for r in runs} == {sha}
    assert {r["metrics"]["pairs"] for r in runs} == {8}
    assert rows["same"]["trained"] is False and rows["same"]["delta_vs_all"] is None
    assert rows["one"]["trained"] is False and "min_change" in rows["one"]["note"]  # 1 of 14 pairs: not resolvable
    assert rows["more"]["added"] == 6 and rows["more"]["size_matched"].startswith("more-off set downsampled")
    before = sorted(p.name for p in cache.iterdir())
    study(params, sets, str(val), str(test), cache)  # a rerun trains nothing: every run is cached
    assert sorted(p.name for p in cache.iterdir()) == before


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the demo's own dvc repro first, then both studies
def test_dvc_repro_runs_both_studies_and_is_incremental(demo_repo):
    """After the demo's `dvc repro`: the studies with tiny params, a no-op rerun, one changed size."""
    params_path = demo_repo / "params.yaml"
    original = params_path.read_text()
    data = yaml.safe_load(original)
    data["study"] = {"seeds": [0], "epochs": 1, "size": {"fractions": [0.25, 0.5, 1.0], "fit_holdout": True},
                     "filters": {"only": ["deny_list", "indoor"], "match_min_change": 0.02}}
    # studies/dvc.yaml also holds the simulation study: a dozen small panoramas, three steps, one epoch
    data["panoramas"] |= {"count": 12, "width": 64, "height": 16, "overhead_px": 32, "test_fraction": 0.5}
    data["simulation"] |= {"epochs": 1, "steps": ["unmodified", "fov70", "swapped"]}
    try:
        params_path.write_text(yaml.safe_dump(data, sort_keys=False))
        sh(["dvc", "repro", "studies/dvc.yaml"], demo_repo)
        size = json.loads((demo_repo / "reports/studies/size/results.json").read_text())
        assert sorted({p["fraction"] for p in size["points"]}) == [0.25, 0.5, 1.0]
        assert size["budget"]["rule"] == "fixed epochs" and "recall_at_1pct" in size["fit"]
        filters = json.loads((demo_repo / "reports/studies/filters/results.json").read_text())
        assert [r["variant"] for r in filters["variants"]] == ["all", "deny_list", "indoor", "none"]
        trained = {r["variant"]: r["trained"] for r in filters["variants"]}
        assert trained == {"all": True, "deny_list": False, "indoor": True, "none": True}  # 1 denied photo: < 1 %
        assert (demo_repo / "reports/studies/filters/filters.png").stat().st_size > 1000
        before = digests(demo_repo, ("reports/studies/**/*.json",))
        again = sh(["dvc", "repro", "studies/dvc.yaml"], demo_repo)
        assert "Running stage" not in again
        data["study"]["size"]["fractions"] = [0.125, 0.5, 1.0]
        params_path.write_text(yaml.safe_dump(data, sort_keys=False))
        third = sh(["dvc", "repro", "studies/dvc.yaml"], demo_repo)
        ran = sorted(line.split("'")[1] for line in third.splitlines() if line.startswith("Running stage"))
        assert ran == ["studies/dvc.yaml:size", "studies/dvc.yaml:size-variant@0.125-0"]
        after = digests(demo_repo, ("reports/studies/**/*.json",))
        assert {k for k in after if after[k] != before.get(k)} == {
            "reports/studies/size/variants/f0.125-s0.json", "reports/studies/size/results.json"}
    finally:
        params_path.write_text(original)
