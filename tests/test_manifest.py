"""The manifest stage: who reaches a manifest, attribution on every row, the invariant, counts and the card."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from filters import REGISTRY
from filters.base import decisions_table
from filters.funnel import filter_order
from pipeline import filter as filter_stage
from pipeline import manifest
from pipeline.config import Params
from pipeline.schemas import DECISIONS, MANIFEST, TILES, read_table, table_from_rows, write_table
from tests.test_filter_stage import run_stage, write_inputs
from tests.test_filters import CASES, EXPECTED_KEPT, make_params, make_tables, tiles_table


@pytest.fixture()
def built(tmp_path):
    tables = make_tables()
    decisions, _ = filter_stage.run_filters(tables, make_params(tmp_path))
    return tables, decisions


def test_only_kept_pairs_reach_the_manifests_in_their_splits(built):
    tables, decisions = built
    manifests, report, _ = manifest.build(tables, tiles_table(), decisions, Params())
    assert list(manifests) == ["train", "val", "test"]
    assert {s: t["id"].to_pylist() for s, t in manifests.items()} == {
        "train": ["p01", "p19"],
        "val": ["p02"],
        "test": ["p03"],
    }
    assert report["rows"] == {"train": 2, "val": 1, "test": 1, "total": len(EXPECTED_KEPT)}
    assert report["by_city"] == {
        "Alderport": {"train": 2, "val": 1, "test": 0},
        "Brimvale": {"train": 0, "val": 0, "test": 1},
    }
    assert report["photos_found"] == len(CASES) and report["dropped"] == len(CASES) - len(EXPECTED_KEPT)
    assert report["dropped_by_reason"]["corrupt"] == 1 and report["dropped_by_reason"]["chip_nodata"] == 1


def test_every_manifest_row_carries_full_attribution_and_chip_geometry(built):
    tables, decisions = built
    manifests, _, _ = manifest.build(tables, tiles_table(), decisions, Params())
    rows = [r for t in manifests.values() for r in t.to_pylist()]
    for row in rows:
        for col in manifest.ATTRIBUTION:
            assert row[col], (row["id"], col)
        assert (row["chip_edge_m"], row["chip_px"], row["gsd_m"]) == (225.0, 750, 0.3)
        assert row["photo_uri"] == f"data/store/photos/{row['id']}.jpg" and row["chip_uri"].endswith(
            f"/{row['id']}.jpg"
        )
    p19 = next(r for r in rows if r["id"] == "p19")
    assert p19["owner_name"] == p19["owner"]  # no owner name: credit the NSID
    assert p19["overhead_licence"] == "CC BY-SA 4.0" and p19["satellite"] == "WorldView-3 (simulated)"
    assert p19["photo_licence"] == "CC BY 2.0" and p19["page_url"].endswith("/p19")


def test_a_photo_neither_in_a_manifest_nor_dropped_raises_naming_it(built):
    tables, decisions = built
    planted = decisions.filter(pc.invert(pc.equal(decisions["id"], "p12")))  # lose p12's reasons
    with pytest.raises(manifest.InvariantError, match=r"1 photo\(s\) are in no manifest .*: p12;"):
        manifest.build(tables, tiles_table(), planted, Params())


def test_missing_overhead_attribution_raises(built):
    tables, decisions = built
    rows = tiles_table().to_pylist()
    rows[0]["licence"] = None
    with pytest.raises(manifest.InvariantError, match="without overhead_licence: p01, p02, p19"):
        manifest.build(tables, table_from_rows(rows, TILES), decisions, Params())


def test_a_pair_whose_tile_is_unknown_raises(built):
    tables, decisions = built
    with pytest.raises(manifest.InvariantError, match="names tile 'alderport_r1c1'"):
        manifest.build(tables, tiles_table().slice(1), decisions, Params())


def test_dataset_card_has_counts_funnel_licences_and_params(built):
    tables, decisions = built
    _, _, card = manifest.build(tables, tiles_table(), decisions, Params())
    assert "| train | `train.parquet` | 2 |" in card and "| all |  | 4 |" in card
    assert "| Alderport | 2 | 1 | 0 | 3 |" in card
    assert "| found |  | 21 |" in card and "| `download` | 1 | 20 |" in card and "| kept |  | 4 |" in card
    assert "| `outside_tiles` | 1 |" in card
    assert "| CC BY 2.0 | https://creativecommons.org/licenses/by/2.0/ | 4 |" in card
    assert "| CC BY-SA 4.0 | https://creativecommons.org/licenses/by-sa/4.0/ | WorldView-3 (simulated) |" in card
    assert "IQTLabs/WITW" in card and '"edge_m": 225.0' in card and '"min_accuracy": 16' in card


def test_the_card_funnel_and_counts_agree_with_the_filter_stage_report(built):
    tables, decisions = built
    _, counts, card = manifest.build(tables, tiles_table(), decisions, Params())
    order = filter_order(REGISTRY, decisions)
    report = filter_stage.funnel(tables.photos, tables.pairs, decisions, order)
    assert counts["dropped_by_reason"] == report["by_reason"] and counts["dropped"] == sum(report["removed"].values())
    for name in order:
        assert f"| `{name}` | {report['removed'][name]} | {report['remaining'][name]} |" in card
    assert f"| kept |  | {report['kept']} |" in card and f"| found |  | {report['found']} |" in card


def test_stage_writes_all_three_files_even_when_empty_and_reruns_byte_identical(tmp_path):
    paths = write_inputs(tmp_path)
    decisions = tmp_path / "tables" / "decisions.parquet"
    run_stage(filter_stage, [a for n in ("photos", "downloads", "pairs", "chips") for a in (f"--{n}", str(paths[n]))]
              + ["--out", str(decisions), "--funnel", str(tmp_path / "funnel.json")], paths["params"])  # fmt: skip
    extra = decisions_table("curator_test", [("p02", False, "drop_irrelevant: test", None)])  # empties val
    write_table(
        pa.concat_tables([read_table(decisions, DECISIONS), extra]), decisions, DECISIONS, sort_by=["id", "filter"]
    )
    write_table(tiles_table(), tmp_path / "tables" / "tiles.parquet", TILES, sort_by=["tile_id"])
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        argv = [a for n in ("photos", "downloads", "pairs", "chips") for a in (f"--{n}", str(paths[n]))]
        argv += ["--tiles", str(tmp_path / "tables" / "tiles.parquet"), "--decisions", str(decisions)]
        argv += [
            "--out-dir",
            str(out / "manifests"),
            "--card",
            str(out / "manifests" / "DATASET_CARD.md"),
            "--metrics",
            str(out / "counts.json"),
        ]
        assert run_stage(manifest, argv, paths["params"]) == 0
        outputs.append(sorted(p for p in out.rglob("*") if p.is_file()))
    names = [p.relative_to(tmp_path / "a").as_posix() for p in outputs[0]]
    assert names == [
        "counts.json",
        "manifests/DATASET_CARD.md",
        "manifests/test.parquet",
        "manifests/train.parquet",
        "manifests/val.parquet",
    ]
    for a, b in zip(*outputs, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert read_table(tmp_path / "a" / "manifests" / "val.parquet", MANIFEST).num_rows == 0
    assert read_table(tmp_path / "a" / "manifests" / "train.parquet", MANIFEST)["id"].to_pylist() == ["p01", "p19"]
    counts = json.loads((tmp_path / "a" / "counts.json").read_text())
    assert counts["rows"] == {"train": 2, "val": 0, "test": 1, "total": 3}
    assert counts["dropped_by_reason"]["drop_irrelevant"] == 1
    assert yaml.safe_load((paths["params"]).read_text())["filter"]  # the params file drove the deny list
