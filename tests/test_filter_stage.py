"""The filter stage: every registered filter, the curator override, decisions + funnel, byte-identical reruns."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from filters import REGISTRY
from filters.base import Filter, Tables, decisions_table
from filters.funnel import filter_notes, filter_order, first_drops
from pipeline import filter as stage
from pipeline.config import FilterParams, load_params
from pipeline.schemas import CHIPS, DECISIONS, DOWNLOADS, PAIRS, PHOTOS, read_table, write_table
from tests.test_filters import CASES, EXPECTED_KEPT, make_params, make_tables


def indoor(tables: Tables, params: FilterParams) -> pa.Table:
    """A stand-in model filter: 'indoor' scores p01, p02 and p17 high."""
    high = {"p01": 0.9, "p02": 0.8, "p17": 0.95}
    return decisions_table(
        "indoor",
        (
            (i, i not in high, f"indoor: score {high[i]:.2f}" if i in high else "", high.get(i, 0.1))
            for i in tables.photos["id"].to_pylist()
        ),
    )


def write_inputs(tmp_path: Path) -> dict[str, Path]:
    """The world's tables as Parquet, a params.yaml pointing at its deny list and verdicts; their paths."""
    tables = make_tables()
    params = make_params(tmp_path)
    paths = {name: tmp_path / "tables" / f"{name}.parquet" for name in ("photos", "downloads", "pairs", "chips")}
    for (name, path), schema in zip(paths.items(), (PHOTOS, DOWNLOADS, PAIRS, CHIPS), strict=True):
        write_table(getattr(tables, name), path, schema)
    paths["params"] = tmp_path / "params.yaml"
    paths["params"].write_text(yaml.safe_dump({"filter": {"deny_list": params.deny_list, "verdicts": params.verdicts}}))
    return paths


def run_stage(module, argv: list[str], params_path: Path) -> int:
    """Run a stage as `crossview STAGE` does: its own argument parser, then main(params, args)."""
    parser = argparse.ArgumentParser()
    module.configure(parser)
    return module.main(load_params(params_path), parser.parse_args(argv))


def run_cli(paths: dict[str, Path], out: Path) -> tuple[Path, Path]:
    decisions, funnel = out / "decisions.parquet", out / "funnel.json"
    argv = [arg for name in ("photos", "downloads", "pairs", "chips") for arg in (f"--{name}", str(paths[name]))]
    assert run_stage(stage, [*argv, "--out", str(decisions), "--funnel", str(funnel)], paths["params"]) == 0
    return decisions, funnel


def test_each_planted_case_is_attributed_to_its_first_filter(tmp_path):
    decisions, overrides = stage.run_filters(make_tables(), make_params(tmp_path))
    first = first_drops(decisions, filter_order(REGISTRY))
    assert {i: name for i, (name, _) in first.items()} == {i: c[2] for i, c in CASES.items() if c[2]}
    assert set(CASES) - set(first) == EXPECTED_KEPT
    assert overrides == 0
    rows = decisions.to_pylist()
    assert [(r["id"], r["filter"]) for r in rows] == sorted((r["id"], r["filter"]) for r in rows)


def test_funnel_adds_up_and_counts_reasons_cities_splits(tmp_path):
    tables = make_tables()
    decisions, overrides = stage.run_filters(tables, make_params(tmp_path))
    notes = filter_notes(decisions, REGISTRY)
    report = stage.funnel(tables.photos, tables.pairs, decisions, filter_order(REGISTRY, decisions), overrides, notes)
    assert list(report) == [
        "found",
        "removed",
        "remaining",
        "kept",
        "dropped",
        "curator_overrides",
        "not_run",
        "by_reason",
        "by_city",
        "by_split",
    ]
    assert report["found"] == len(CASES) == report["kept"] + sum(report["removed"].values())
    assert report["kept"] == len(EXPECTED_KEPT) == list(report["remaining"].values())[-1]
    assert list(report["removed"]) == [f.name for f in REGISTRY]
    assert report["removed"]["deny_list"] == 2 and report["dropped"]["deny_list"] == 3  # p09 went first to accuracy
    assert report["removed"]["pairing"] == 2 and report["dropped"]["pairing"] == 3  # p04 went first to download
    assert report["by_reason"]["corrupt"] == 1 and report["by_reason"]["outside_tiles"] == 1
    assert report["by_reason"]["drop_indoor"] == 1 and sum(report["by_reason"].values()) == len(CASES) - len(
        EXPECTED_KEPT
    )
    assert report["by_city"]["Brimvale"] == {"found": 4, "removed": 3, "kept": 1}
    assert report["by_split"]["unassigned"] == {"found": 5, "removed": 5, "kept": 0}
    assert report["by_split"]["test"] == {"found": 3, "removed": 2, "kept": 1}
    # no scores or relevance tables were given: the model filters say they did not run
    assert set(report["not_run"]) == {"indoor", "relevance"}


def test_a_skipped_relevance_head_is_named_in_the_funnel(tmp_path):
    import pyarrow as pa

    from pipeline.schemas import RELEVANCE, table_from_rows

    base = make_tables()
    ids = base.photos.column("id").to_pylist()
    skipped = table_from_rows(
        [{"id": i, "model_version": "v0", "status": "skipped", "note": "skipped: 3 labels < min_labels 20"} for i in ids],
        RELEVANCE,
    )
    tables = stage.Tables(base.photos, base.downloads, base.pairs, base.chips, None, skipped)
    decisions, _ = stage.run_filters(tables, make_params(tmp_path))
    assert filter_notes(decisions, REGISTRY)["relevance"] == "skipped: 3 labels < min_labels 20"
    assert isinstance(decisions, pa.Table)


def test_curator_keep_overrides_a_model_drop_but_not_a_rule_drop(tmp_path):
    registry = [*REGISTRY[:-2], Filter("indoor", indoor, "model"), *REGISTRY[-2:]]  # before curator and density
    tables = make_tables()
    decisions, overrides = stage.run_filters(tables, make_params(tmp_path), registry)
    rows = {(r["id"], r["filter"]): r for r in decisions.to_pylist()}
    assert overrides == 1
    assert rows[("p02", "indoor")]["kept"] is True
    assert rows[("p02", "indoor")]["reason"] == "overridden by curator keep (was: indoor: score 0.80)"
    assert rows[("p02", "indoor")]["score"] == 0.8
    assert rows[("p01", "indoor")]["kept"] is False  # no curator verdict
    assert rows[("p17", "indoor")]["kept"] is False  # the latest verdict for p17 is drop_indoor
    assert rows[("p09", "accuracy")]["kept"] is False  # a keep does not undo a rule drop
    first = first_drops(decisions, filter_order(registry))
    assert first["p01"][0] == "indoor" and first["p17"][0] == "indoor" and "p02" not in first
    report = stage.funnel(tables.photos, tables.pairs, decisions, filter_order(registry), overrides)
    assert report["curator_overrides"] == 1 and report["removed"]["indoor"] == 2 and report["kept"] == 3


def test_stage_writes_sorted_decisions_and_funnel_byte_identical_on_rerun(tmp_path):
    paths = write_inputs(tmp_path)
    decisions, funnel = run_cli(paths, tmp_path / "a")
    table = read_table(decisions, DECISIONS)
    assert table.num_rows > len(CASES) * 8
    keys = list(zip(table["id"].to_pylist(), table["filter"].to_pylist(), strict=True))
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    report = json.loads(funnel.read_text())
    assert report["found"] == len(CASES) and report["kept"] == len(EXPECTED_KEPT)
    again = run_cli(paths, tmp_path / "b")
    assert decisions.read_bytes() == again[0].read_bytes()
    assert funnel.read_bytes() == again[1].read_bytes()


def test_filter_returning_a_wrong_table_is_rejected(tmp_path):
    def sloppy(tables, params):
        return decisions_table("other", [("p01", True, "", None)])

    with pytest.raises(ValueError, match="filter sloppy returned rows named"):
        stage.run_filters(make_tables(), make_params(tmp_path), [Filter("sloppy", sloppy, "rule")])


def test_empty_tables_give_empty_decisions_and_a_zero_funnel(tmp_path):
    tables = Tables(PHOTOS.empty_table(), DOWNLOADS.empty_table(), PAIRS.empty_table(), CHIPS.empty_table())
    decisions, overrides = stage.run_filters(tables, make_params(tmp_path))
    report = stage.funnel(tables.photos, tables.pairs, decisions, filter_order(REGISTRY, decisions), overrides)
    assert decisions.num_rows == 0 and decisions.schema.equals(DECISIONS)
    assert report["found"] == report["kept"] == 0 and set(report["removed"].values()) == {0}


def test_funnel_csv_and_png_follow_the_report(tmp_path):
    import csv as csvmod

    from PIL import Image

    from pipeline import funnel_chart

    tables = make_tables()
    decisions, overrides = stage.run_filters(tables, make_params(tmp_path))
    report = stage.funnel(tables.photos, tables.pairs, decisions, filter_order(REGISTRY, decisions), overrides)
    funnel_chart.write_csv(report, tmp_path / "reports" / "funnel.csv")
    funnel_chart.write_png(report, tmp_path / "reports" / "funnel.png")
    rows = list(csvmod.DictReader((tmp_path / "reports" / "funnel.csv").open()))
    assert rows[0] == {"step": "found", "removed": "0", "remaining": str(report["found"])}
    assert rows[-1]["step"] == "kept" and int(rows[-1]["remaining"]) == report["kept"]
    remaining = [int(r["remaining"]) for r in rows]
    assert remaining == sorted(remaining, reverse=True)
    assert sum(int(r["removed"]) for r in rows) == report["found"] - report["kept"]
    with Image.open(tmp_path / "reports" / "funnel.png") as img:
        assert img.format == "PNG" and img.height > 20 * len(rows)
    again = funnel_chart.render_png(report)
    assert again == (tmp_path / "reports" / "funnel.png").read_bytes()


def odd_ids(places, params):
    """A second thinning filter: drops the candidates whose id ends in 7 or 9 (it sees only places)."""
    for part in places:
        yield decisions_table("odd_ids", ((i, i[-1] not in "79", "" if i[-1] not in "79" else "odd_ids: 7 or 9", None)
                                          for i in part["id"].to_pylist()))  # fmt: skip


@pytest.mark.parametrize("first", [True, False])
def test_thinning_filters_in_the_stage_are_the_whole_table_run(tmp_path, monkeypatch, first):
    """Two thinning filters, in either order, streamed from disk in chunks of 2 ids and sorted in runs of 3
    rows: each judges only what the earlier one kept, as on whole tables (run_filters)."""
    from pipeline import tablestream

    monkeypatch.setattr(tablestream, "CHUNK_ROWS", 2)
    monkeypatch.setattr(tablestream, "RUN_ROWS", 3)
    extra = Filter("odd_ids", odd_ids, "rule", thins=True)
    registry = [f for f in REGISTRY if not f.thins]
    registry += [extra, *(f for f in REGISTRY if f.thins)] if first else [*(f for f in REGISTRY if f.thins), extra]
    paths = write_inputs(tmp_path)
    parser = argparse.ArgumentParser()
    stage.configure(parser)
    argv = [arg for name in ("photos", "downloads", "pairs", "chips") for arg in (f"--{name}", str(paths[name]))]
    args = parser.parse_args([*argv, "--out", str(tmp_path / "d.parquet"), "--funnel", str(tmp_path / "f.json")])
    assert stage.main(load_params(paths["params"]), args, registry) == 0
    whole, _ = stage.run_filters(make_tables(), make_params(tmp_path), registry)
    got = read_table(tmp_path / "d.parquet", DECISIONS)
    assert got.to_pylist() == whole.to_pylist()
    dropped = {(r["filter"], r["id"]) for r in got.to_pylist() if not r["kept"]}
    assert {f for f, _ in dropped} >= {"odd_ids", "density"}
    judged = {r["id"] for r in got.to_pylist() if r["filter"] == ("density" if first else "odd_ids")}
    assert not judged & {i for f, i in dropped if f == ("odd_ids" if first else "density")}


def test_the_stage_reads_the_verdicts_once_however_many_parts(tmp_path, monkeypatch):
    """In parts of 2 photos the curator filter sees the verdicts read once at the start of the run (it read the
    file for every part: 122 reads, and 122 log lines without a file, at 2M photos), with the same decisions."""
    from pipeline import tablestream, verdicts

    paths = write_inputs(tmp_path)
    whole, _ = run_cli(paths, tmp_path / "whole")
    reads = []
    real = verdicts.read
    monkeypatch.setattr(verdicts, "read", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(tablestream, "CHUNK_ROWS", 2)
    parts, _ = run_cli(paths, tmp_path / "parts")
    assert len(reads) == 1
    assert parts.read_bytes() == whole.read_bytes()
    assert any(r["filter"] == "curator" for r in read_table(parts, DECISIONS).to_pylist())
