"""The relevance head on synthetic embeddings: training from verdicts, skipping, determinism, the filter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from filters.relevance_rules import relevance as relevance_filter
from pipeline import relevance
from pipeline.config import parse_params
from pipeline.embeddings import EmbeddingCache, shard_schema
from pipeline.schemas import RELEVANCE, SCORES, read_table, table_from_rows, write_table

KEY = "0123456789abcdef"
DIM = 24


def make_world(root: Path, n: int = 40, seed: int = 3) -> list[str]:
    """Two clusters of float16 embeddings in a cache (``rel*`` and ``irr*``) and their scores table."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(0, 1, DIM)
    ids = [f"rel{k:03d}" for k in range(n)] + [f"irr{k:03d}" for k in range(n)]
    emb = np.concatenate([centre + rng.normal(0, 0.6, (n, DIM)), -centre + rng.normal(0, 0.6, (n, DIM))]).astype(
        np.float16
    )
    schema = shard_schema(DIM)
    shard = pa.table(
        {
            "id": ids,
            "sha256": [f"sha-{i}" for i in ids],
            "top_index": pa.array([[0]] * len(ids), schema.field("top_index").type),
            "top_prob": pa.array([[1.0]] * len(ids), schema.field("top_prob").type),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float16()), DIM),
        },
        schema=schema,
    )
    EmbeddingCache(root / "emb", KEY).write(shard)
    rows = [
        {"id": i, "sha256": f"sha-{i}", "model": "m", "model_key": KEY, "vote_key": "v", "status": "ok", "error": ""}
        for i in ids
    ]
    rows.append(
        {
            "id": "broken",
            "sha256": "x",
            "model": "m",
            "model_key": KEY,
            "vote_key": "v",
            "status": "error",
            "error": "OSError: bad",
        }
    )
    write_table(table_from_rows(rows, SCORES), root / "scores.parquet", SCORES)
    return ids


def write_verdicts(path: Path, verdicts: list[tuple[str, str]]) -> None:
    lines = ["id,verdict,curator,timestamp,note"]
    lines += [f"{i},{v},ann,2026-01-01T10:{k // 60:02d}:{k % 60:02d}Z," for k, (i, v) in enumerate(verdicts)]
    path.write_text("\n".join(lines) + "\n")


def run_stage(root: Path, **relevance_params) -> tuple[dict, pa.Table]:
    params = parse_params({"relevance": relevance_params})
    args = argparse.Namespace(
        scores=str(root / "scores.parquet"),
        embeddings=str(root / "emb"),
        verdicts=str(root / "verdicts.csv"),
        model=str(root / "models" / "relevance.json"),
        out=str(root / "relevance.parquet"),
    )
    assert relevance.main(params, args) == 0
    return json.loads((root / "models" / "relevance.json").read_text()), read_table(
        root / "relevance.parquet", RELEVANCE
    )


def labels_for(k: int) -> list[tuple[str, str]]:
    return [(f"rel{j:03d}", "keep") for j in range(k)] + [(f"irr{j:03d}", "drop_irrelevant") for j in range(k)]


@pytest.fixture()
def world(tmp_path) -> Path:
    make_world(tmp_path)
    return tmp_path


def test_head_trained_on_enough_labels_separates_the_clusters(world):
    write_verdicts(world / "verdicts.csv", labels_for(12) + [("rel030", "drop_indoor")])  # drop_indoor says nothing
    model, table = run_stage(world, min_labels=20)
    assert model["status"] == "trained" and model["labels"] == {"total": 24, "keep": 12, "drop_irrelevant": 12}
    assert model["cv"]["folds"] == 5 and model["cv"]["accuracy"] == 1.0
    rows = {r["id"]: r for r in table.to_pylist()}
    unlabelled = [f"rel{j:03d}" for j in range(12, 40)], [f"irr{j:03d}" for j in range(12, 40)]
    assert all(rows[i]["relevance_score"] > 0.9 and rows[i]["is_relevant"] for i in unlabelled[0])
    assert all(rows[i]["relevance_score"] < 0.1 and rows[i]["is_relevant"] is False for i in unlabelled[1])
    assert rows["broken"]["status"] == "no_embedding" and "OSError" in rows["broken"]["note"]
    assert {r["model_version"] for r in rows.values()} == {model["version"]}


def test_the_filter_drops_irrelevant_photos_with_the_score(world):
    write_verdicts(world / "verdicts.csv", labels_for(12))
    _, table = run_stage(world)
    tables = argparse.Namespace(photos=table.select(["id"]), relevance=table)
    decisions = {r["id"]: r for r in relevance_filter(tables, parse_params({}).filter).to_pylist()}
    assert decisions["rel020"]["kept"] and decisions["rel020"]["reason"] == ""
    assert not decisions["irr020"]["kept"] and decisions["irr020"]["reason"].startswith("irrelevant: score 0.0")
    assert decisions["broken"]["kept"] and decisions["broken"]["reason"].startswith("relevance: not classified")


def test_too_few_labels_skip_the_head_and_say_so(world):
    write_verdicts(
        world / "verdicts.csv", [("rel000", "keep"), ("irr000", "drop_irrelevant"), ("irr001", "drop_irrelevant")]
    )
    model, table = run_stage(world, min_labels=20)
    assert model["status"] == "skipped" and model["reason"] == "skipped: 3 labels < min_labels 20"
    assert "weights" not in model
    assert set(table.column("status").to_pylist()) == {"skipped"}
    assert table.column("relevance_score").null_count == table.num_rows
    tables = argparse.Namespace(photos=table.select(["id"]), relevance=table)
    decisions = relevance_filter(tables, parse_params({}).filter).to_pylist()
    assert all(d["kept"] and d["reason"] == "relevance: skipped: 3 labels < min_labels 20" for d in decisions)


def test_one_kind_of_label_is_not_enough(world):
    write_verdicts(world / "verdicts.csv", [(f"rel{j:03d}", "keep") for j in range(25)])
    model, _ = run_stage(world, min_labels=20)
    assert model["status"] == "skipped" and "none drop_irrelevant" in model["reason"]


def test_training_is_deterministic_and_versioned_by_its_inputs(world, tmp_path_factory):
    write_verdicts(world / "verdicts.csv", labels_for(12))
    first, _ = run_stage(world)
    model_bytes = (world / "models" / "relevance.json").read_bytes()
    table_bytes = (world / "relevance.parquet").read_bytes()
    again = tmp_path_factory.mktemp("again")
    make_world(again)
    write_verdicts(again / "verdicts.csv", labels_for(12))
    run_stage(again)
    assert (again / "models" / "relevance.json").read_bytes() == model_bytes
    assert (again / "relevance.parquet").read_bytes() == table_bytes
    write_verdicts(world / "verdicts.csv", labels_for(12) + [("rel013", "keep")])
    changed, _ = run_stage(world)
    assert changed["version"] != first["version"]


def test_the_latest_verdict_is_the_label(world):
    write_verdicts(world / "verdicts.csv", labels_for(12) + [("rel000", "drop_irrelevant")])
    model, _ = run_stage(world)
    assert model["labels"] == {"total": 24, "keep": 11, "drop_irrelevant": 13}


def test_retraining_reads_stored_embeddings_and_never_runs_the_backbone(world, monkeypatch):
    from pipeline import device
    from pipeline.scene import backbone

    monkeypatch.setattr(device, "import_torch", lambda: pytest.fail("torch was needed"))
    monkeypatch.setattr(backbone, "load_backbone", lambda spec: pytest.fail("the backbone ran"))
    write_verdicts(world / "verdicts.csv", labels_for(12))
    model, table = run_stage(world)
    assert model["status"] == "trained" and table.num_rows == 81
    head = relevance.load_head(world / "models" / "relevance.json")
    _, x = EmbeddingCache(world / "emb", KEY).embeddings([("rel039", "sha-rel039")])
    assert head.predict(x.astype(np.float64))[0] == pytest.approx(
        {r["id"]: r for r in table.to_pylist()}["rel039"]["relevance_score"], abs=1e-6
    )


def test_fit_logistic_balances_classes():
    x = np.array([[0.0], [0.1], [0.2], [0.3], [2.0]])
    y = np.array([0, 0, 0, 0, 1])
    w, b = relevance.fit_logistic(x, y, c=10.0)
    assert w[0] > 0 and (x @ w + b)[-1] > 0  # the lone positive is not drowned by the majority
