"""A CVUSA-format folder -> panorama manifests (pipeline/panoramas.py), read by the training loader with the Figure-4 chain."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalogs import load_photo_frames
from pipeline.cli import main as cli_main
from pipeline.config import Params
from pipeline.errors import StageInputError
from pipeline.panoramas import write_manifests
from pipeline.schemas import MANIFEST, read_table
from pipeline.train.data import ManifestPairs, PanoramaChain, ViewSpec
from studies.simulation import run_step


def make_cvusa(root: Path, n_train: int = 12, n_test: int = 6, pano_wh: tuple[int, int] = (96, 24),
               overhead_px: int = 40, splits_dir: bool = True) -> Path:
    """A tiny CVUSA-layout folder: bingmap/19/N.jpg, streetview/panos/N.jpg, splits/{train,val}-19zl.csv.

    Panorama ``k`` is a hue ramp over azimuth offset by ``k`` (column 0 = north) and its overhead a
    matching colour, so pairs are distinguishable; everything is seeded and deterministic.
    """
    (root / "bingmap/19").mkdir(parents=True)
    (root / "streetview/panos").mkdir(parents=True)
    rng = np.random.default_rng(3)
    lines: dict[str, list[str]] = {"train-19zl.csv": [], "val-19zl.csv": []}
    for k in range(n_train + n_test):
        number = f"{k:07d}"
        w, h = pano_wh
        pano = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        pano[..., k % 3] += np.uint8(150)
        Image.fromarray(pano).save(root / f"streetview/panos/{number}.jpg", quality=95)
        over = np.full((overhead_px, overhead_px, 3), (40 * k) % 255, np.uint8)
        Image.fromarray(over).save(root / f"bingmap/19/{number}.jpg", quality=95)
        name = "train-19zl.csv" if k < n_train else "val-19zl.csv"
        lines[name].append(f"bingmap/19/{number}.jpg,streetview/panos/{number}.jpg,streetview/panos/{number}.jpg")
    where = root / "splits" if splits_dir else root
    where.mkdir(exist_ok=True)
    for name, rows in lines.items():
        (where / name).write_text("\n".join(rows) + "\n")
    return root


def test_a_cvusa_folder_becomes_panorama_manifests(tmp_path):
    root = make_cvusa(tmp_path / "cvusa")
    counts = write_manifests(root, tmp_path / "m")
    assert counts == {"train": 12, "test": 6}
    train = read_table(tmp_path / "m" / "train.parquet", MANIFEST).to_pylist()
    assert len(train) == 12 and all(r["panorama"] is True and r["split"] == "train" for r in train)
    row = next(r for r in train if r["id"] == "train-0000003")
    assert (row["photo_width"], row["photo_height"], row["chip_px"]) == (96, 24, 40)
    assert row["photo_uri"].endswith("streetview/panos/0000003.jpg") and row["chip_uri"].endswith("bingmap/19/0000003.jpg")
    assert row["photo_sha256"] == hashlib.sha256(Path(row["photo_uri"]).read_bytes()).hexdigest()
    test = pq.read_table(tmp_path / "m" / "test.parquet").column("split").to_pylist()
    assert test == ["test"] * 6
    before = (tmp_path / "m" / "train.parquet").read_bytes()
    write_manifests(root, tmp_path / "m")
    assert (tmp_path / "m" / "train.parquet").read_bytes() == before  # byte-deterministic


def test_split_files_beside_the_data_are_read_as_witw_expects(tmp_path):
    root = make_cvusa(tmp_path / "cvusa", splits_dir=False)
    assert write_manifests(root, tmp_path / "m") == {"train": 12, "test": 6}


def test_a_missing_image_or_split_file_is_named(tmp_path):
    root = make_cvusa(tmp_path / "cvusa")
    (root / "bingmap/19/0000002.jpg").unlink()
    with pytest.raises(StageInputError, match="0000002.jpg"):
        write_manifests(root, tmp_path / "m")
    with pytest.raises(StageInputError, match="19zl.csv not found"):
        write_manifests(tmp_path / "nothing", tmp_path / "m")


def test_the_cli_reads_a_cvusa_folder(tmp_path):
    root = make_cvusa(tmp_path / "cvusa")
    assert cli_main(["--params", str(tmp_path / "none.yaml"), "panoramas", "--cvusa", str(root),
                     "--out", str(tmp_path / "m")]) == 0
    assert pq.read_table(tmp_path / "m" / "train.parquet").num_rows == 12


def test_the_loader_applies_the_chain_to_panorama_rows(tmp_path):
    root = make_cvusa(tmp_path / "cvusa", n_train=40)
    write_manifests(root, tmp_path / "m")
    path = str(tmp_path / "m" / "train.parquet")
    spec = ViewSpec(16, 24, 20)
    frames = load_photo_frames()
    plain = ManifestPairs(path, spec)
    assert not plain.is_pano.any()  # no chain asked: panoramas are resized as they are
    fov = ManifestPairs(path, spec, chain=PanoramaChain("fov70", frames))
    assert fov.is_pano.all()
    _, p1, c1 = fov[(0, 5)]
    _, p2, _ = fov[(1, 5)]
    assert p1.shape == (3, 16, 24) and c1.shape == (3, 20, 20)
    assert not np.allclose(p1.numpy(), p2.numpy())  # re-drawn every epoch
    one = ManifestPairs(path, spec, chain=PanoramaChain("one_view", frames))
    assert np.allclose(one[(0, 5)][1].numpy(), one[(3, 5)][1].numpy())  # drawn once per image
    swapped = ManifestPairs(path, spec, chain=PanoramaChain("swapped", frames))
    moved = np.flatnonzero(swapped.chip_of != np.arange(len(swapped)))
    assert len(moved) == round(0.06 * 40) and np.all(swapped.chip_of[moved] != moved)
    i = int(moved[0])
    crop = ManifestPairs(path, spec, chain=PanoramaChain("overhead_random", frames))
    j = int(swapped.chip_of[i])
    assert np.allclose(swapped[(0, i)][2].numpy(), crop[(0, j)][2].numpy())  # pair i gets pair j's overhead


@pytest.mark.slow  # ~10 s alone, ~50 s on a loaded 2-core machine (timm import, a model, one epoch)
def test_a_step_variant_trains_and_evaluates_on_cvusa_manifests(tmp_path):
    root = make_cvusa(tmp_path / "cvusa", n_train=8, n_test=8)
    write_manifests(root, tmp_path / "m")
    tiny = {"embed_dim": 16, "photo_height": 16, "photo_width": 16, "chip_px": 16}
    params = Params.model_validate({
        "train": {"epochs": 1, "loader_workers": 0, "batch_size": 8, "timm_contrastive": tiny},
        "evaluate": {"loader_workers": 0}, "simulation": {"epochs": 1}})
    metrics = run_step(params, "fov90", tmp_path / "m", tmp_path / "models", tmp_path / "rep")
    assert metrics["pairs"] == 8 and 1 <= metrics["mean_rank"] <= 8
    assert (tmp_path / "models" / "model.pt").exists() and (tmp_path / "rep" / "eval_pairs.parquet").exists()
