"""`crossview picture`: a PNG grid of photo | chip pairs from a small manifest of generated images."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipeline import picture
from pipeline.errors import StageInputError
from pipeline.schemas import MANIFEST, table_from_rows, write_table
from tests.test_filter_stage import run_stage

ROWS = [("a1", "Alderport", "train"), ("a2", "Alderport", "train"), ("a3", "Alderport", "val"),
        ("b1", "Brimvale", "test"), ("a4", "Alderport", "train")]  # fmt: skip


def make_manifests(tmp_path: Path) -> Path:
    """Three manifests whose rows point at generated JPEGs: a landscape photo and a square chip each."""
    images = tmp_path / "store"
    images.mkdir()
    rows = []
    for k, (i, city, split) in enumerate(ROWS):
        photo, chip = images / f"{i}.jpg", images / f"{i}_chip.jpg"
        Image.new("RGB", (320, 240), (40 * k, 120, 200)).save(photo)
        Image.new("RGB", (300, 300), (30, 160, 40 * k)).save(chip)
        rows.append({"id": i, "split": split, "city": city, "photo_uri": str(photo), "chip_uri": str(chip)})
    out = tmp_path / "manifests"
    for split in picture.SPLITS:
        write_table(
            table_from_rows([r for r in rows if r["split"] == split], MANIFEST), out / f"{split}.parquet", MANIFEST
        )
    return out


def draw(tmp_path: Path, manifests: Path, name: str, *extra: str) -> Image.Image:
    params = tmp_path / "params.yaml"
    params.touch()
    out = tmp_path / name
    assert run_stage(picture, ["--manifests", str(manifests), "--out", str(out), *extra], params) == 0
    return Image.open(out)


def test_picture_is_a_png_grid_of_the_expected_size_with_centre_markers(tmp_path):
    manifests = make_manifests(tmp_path)
    image = draw(tmp_path, manifests, "grid.png", "--n", "3")
    assert image.format == "PNG"
    width, height = picture.PANEL
    assert image.size == picture.grid_size(3) == (2 * width, 2 * height)
    centre = (2 * picture.PAD + picture.CELL + picture.CELL // 2, picture.PAD + picture.CELL // 2)
    assert image.getpixel((centre[0] + 10, centre[1])) == picture.MARKER  # on the ring, right of centre
    photo_pixel = image.convert("RGB").getpixel((picture.PAD + picture.CELL // 2, picture.PAD + picture.CELL // 2))
    assert abs(photo_pixel[1] - 120) < 8  # the photo is drawn on the left
    assert image.getpixel((width + 5, height + 5)) == picture.BACKGROUND  # fourth slot left empty


def test_choice_is_deterministic_and_spread_and_split_filter_works(tmp_path):
    manifests = make_manifests(tmp_path)
    rows = picture.read_rows(manifests)
    assert [r["id"] for r in rows] == ["a1", "a2", "a4", "a3", "b1"]  # train, val, test; then city, id
    assert [r["id"] for r in picture.choose(rows, 2)] == ["a1", "a4"]
    assert [r["id"] for r in picture.choose(rows, 9)] == [r["id"] for r in rows]
    assert [r["id"] for r in picture.read_rows(manifests, "test")] == ["b1"]
    first = draw(tmp_path, manifests, "one.png", "--split", "train", "--n", "6")
    assert first.size == picture.grid_size(3)
    draw(tmp_path, manifests, "two.png", "--split", "train")  # default --n 6
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()


def test_unreadable_image_is_drawn_grey_and_empty_manifests_raise(tmp_path):
    manifests = make_manifests(tmp_path)
    (tmp_path / "store" / "b1.jpg").write_bytes(b"not a jpeg")
    image = draw(tmp_path, manifests, "grey.png", "--split", "test").convert("RGB")
    assert image.getpixel((picture.PAD + 5, picture.PAD + 5)) == picture.EMPTY
    empty = tmp_path / "empty"
    write_table(table_from_rows([], MANIFEST), empty / "train.parquet", MANIFEST)
    with pytest.raises(StageInputError, match="no manifest rows"):
        picture.read_rows(empty)
