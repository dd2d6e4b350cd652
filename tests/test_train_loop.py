"""The training loop and the train/evaluate stages: deterministic loading, resume, outputs, the demo.

The fixture manifest is made in code (:func:`make_pairs`): each pair's photo and chip share a
colour and a stripe pattern, so a tiny model can learn it in a few steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from pipeline.config import EvaluateParams, Params, S3Params, TimmParams, TrainParams, WitwFovParams, witw_differences
from pipeline.errors import StageInputError
from pipeline.schemas import EVAL_PAIRS, MANIFEST, read_table, table_from_rows, write_table
from pipeline.train import stage
from pipeline.train.data import ManifestPairs, ViewSpec, make_loader
from pipeline.train.loop import CHECKPOINT, MODEL, learning_rate

TINY = TrainParams(
    epochs=2, batch_size=4, loader_workers=0, threads=1, cache_mb=0,
    timm_contrastive=TimmParams(backbone="test_byobnet", embed_dim=16, photo_height=24, photo_width=32, chip_px=24),
)
TINY_WITW = TINY.model_copy(update={"model": "witw_fov", "witw_fov": WitwFovParams(
    vgg_convs=2, polar_height=8, polar_width=32, chip_px=16, channels=4, lr=1e-3)})


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def make_pairs(root: Path, n: int, split: str = "train", seed: int = 0) -> Path:
    """``n`` pairs (photo JPEG 64x48, chip PNG 64x64 sharing a colour and stripes) and their manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour = rng.integers(30, 226, 3)
        period = int(rng.integers(3, 12))
        stripes = (np.arange(64) // period % 2 * 40)[None, :, None]
        photo = np.clip(colour + stripes[:, :64] + rng.normal(0, 8, (48, 64, 3)), 0, 255).astype(np.uint8)
        chip = np.clip(colour + stripes + rng.normal(0, 8, (64, 64, 3)), 0, 255).astype(np.uint8)
        pid = f"{split}{i:03d}"
        (root / "photos").mkdir(parents=True, exist_ok=True)
        (root / "chips").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(root / "photos" / f"{pid}.jpg", quality=95)
        Image.fromarray(chip).save(root / "chips" / f"{pid}.png")
        rows.append({"id": pid, "split": split, "photo_uri": str(root / "photos" / f"{pid}.jpg"),
                     "chip_uri": str(root / "chips" / f"{pid}.png"), "chip_edge_m": 225.0, "chip_px": 64})
    path = root / f"{split}.parquet"
    write_table(table_from_rows(rows, MANIFEST), path, MANIFEST)
    return path


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return make_pairs(root, 16, "train"), make_pairs(root, 8, "val", seed=1)


def outputs(root: Path) -> dict[str, str]:
    return {"models_dir": str(root / "models"), "metrics_path": str(root / "train.json"),
            "loss_csv": str(root / "loss.csv"), "epochs_csv": str(root / "epochs.csv")}


def train(params: TrainParams, manifests, root: Path, on_step=None):
    return stage.run_training(params, S3Params(), str(manifests[0]), str(manifests[1]), on_step=on_step,
                              **outputs(root))


def test_loader_order_and_augmentation_depend_only_on_seed_and_epoch(manifests):
    spec = ViewSpec(24, 32, 24).training(True)
    ds = ManifestPairs(str(manifests[0]), spec, seed=5)
    loader, sampler = make_loader(ds, 4, 0, train=True, seed=5)
    parallel, psampler = make_loader(ManifestPairs(str(manifests[0]), spec, seed=5), 4, 2, train=True, seed=5)
    epochs = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        psampler.set_epoch(epoch)
        batches = list(loader)
        for (i, p, c), (j, q, d) in zip(batches, parallel, strict=True):  # 2 decode workers: same batches
            assert torch.equal(i, j) and torch.equal(p, q) and torch.equal(c, d)
        epochs[epoch] = torch.cat([b[0] for b in batches]).tolist()
    sampler.set_epoch(0)
    assert torch.cat([b[0] for b in loader]).tolist() == epochs[0]
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == list(range(16))
    assert ds[(0, 3)][2].shape == (3, 24, 24) and ds[(0, 3)][1].shape == (3, 24, 32)
    assert any(not torch.equal(ds[(e, 3)][2], ds[(0, 3)][2]) for e in range(1, 6))  # augmentations differ by epoch


def test_evaluation_order_is_row_order_and_cache_gives_the_same_pixels(manifests):
    plain = ManifestPairs(str(manifests[1]), ViewSpec(24, 32, 24, polar=(8, 32)))
    cached = ManifestPairs(str(manifests[1]), ViewSpec(24, 32, 24, polar=(8, 32)), cache_mb=1)
    loader, _ = make_loader(cached, 3, 0, train=False)
    assert torch.cat([b[0] for b in loader]).tolist() == list(range(8))
    assert len(cached._cache) == 8 and torch.equal(plain[5][2], cached[5][2])
    assert plain.id(0) == "val000" and plain[0][2].shape == (3, 8, 32)


def test_a_missing_manifest_says_which_stage_to_run(tmp_path):
    with pytest.raises(StageInputError, match="manifest stage"):
        ManifestPairs(str(tmp_path / "nope.parquet"), ViewSpec(8, 8, 8))


def test_resume_after_an_interruption_gives_the_same_weights_and_metrics(manifests, tmp_path):
    train(TINY, manifests, tmp_path / "a")

    def interrupt(epoch: int, step: int) -> None:
        if (epoch, step) == (1, 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TINY, manifests, tmp_path / "b", on_step=interrupt)
    assert torch.load(tmp_path / "b" / "models" / CHECKPOINT, weights_only=True)["epoch"] == 1
    assert not (tmp_path / "b" / "models" / MODEL).exists()
    train(TINY, manifests, tmp_path / "b")
    a = torch.load(tmp_path / "a" / "models" / MODEL, weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "models" / MODEL, weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "train.json").read_bytes() == (tmp_path / "b" / "train.json").read_bytes()
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()


def test_a_finished_run_is_not_retrained_but_changed_params_start_afresh(manifests, tmp_path, caplog):
    train(TINY, manifests, tmp_path)
    before = (tmp_path / "models" / MODEL).read_bytes()
    with caplog.at_level(logging.INFO, logger="pipeline.train.loop"):
        train(TINY, manifests, tmp_path)
        assert "resuming" in caplog.text and "epoch 1/2" not in caplog.text
        assert (tmp_path / "models" / MODEL).read_bytes() == before  # untouched: evaluate need not rerun
        caplog.clear()
        train(TINY.model_copy(update={"seed": 1}), manifests, tmp_path)
    assert "starts afresh" in caplog.text and "epoch 1/2" in caplog.text and "from scratch" in caplog.text


def test_train_writes_metrics_and_curves_and_the_loss_goes_down(manifests, tmp_path):
    params = TINY.model_copy(update={"epochs": 6})
    train(params, manifests, tmp_path)
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["epoch"] == 6 and metrics["model"] == "timm_contrastive" and metrics["backbone"] == "test_byobnet"
    assert metrics["val_pairs"] == 8 and metrics["steps"] == 6 * 4
    steps = list(csv.DictReader((tmp_path / "loss.csv").open()))
    assert list(steps[0]) == ["step", "epoch", "loss"] and len(steps) == 24
    epochs = list(csv.DictReader((tmp_path / "epochs.csv").open()))
    assert [int(r["epoch"]) for r in epochs] == list(range(1, 7))
    assert float(epochs[-1]["train_loss"]) < float(epochs[0]["train_loss"])


@pytest.mark.parametrize("params", [TINY, TINY_WITW], ids=["timm_contrastive", "witw_fov"])
def test_evaluate_writes_metrics_recall_curve_and_pairs_with_orientation(params, manifests, tmp_path):
    train(params.model_copy(update={"epochs": 1}), manifests, tmp_path)
    parser = argparse.ArgumentParser(prog="crossview evaluate")
    stage.configure(parser)
    args = parser.parse_args(["--manifest", str(manifests[1]), "--model", str(tmp_path / "models" / MODEL),
                              "--metrics", str(tmp_path / "eval.json"), "--pairs", str(tmp_path / "pairs.parquet"),
                              "--recall-plot", str(tmp_path / "recall.csv")])
    params_all = Params().model_copy(update={"evaluate": EvaluateParams(threads=1, loader_workers=0, chunk=3)}) \
        if "evaluate" in Params.model_fields else Params()
    assert stage.main(params_all, args) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["pairs"] == 8 and metrics["orientation"] == (params.model == "witw_fov")
    assert 1 <= metrics["mean_rank"] <= 8 and metrics["chance_mean_rank"] == 4.5
    curve = list(csv.DictReader((tmp_path / "recall.csv").open()))
    assert [int(r["k"]) for r in curve] == list(range(1, 9)) and float(curve[-1]["recall"]) == 1.0
    pairs = pq.read_table(tmp_path / "pairs.parquet")
    assert pairs.schema.equals(EVAL_PAIRS) and pairs.num_rows == 8
    assert all(1 <= r <= 8 for r in pairs.column("rank").to_pylist())
    assert set(pairs.column("top1_id").to_pylist()) <= set(pairs.column("id").to_pylist())
    bearings = pairs.column("predicted_bearing_deg").to_pylist()
    if params.model == "witw_fov":
        assert all(0 <= b < 360 for b in bearings)
    else:
        assert bearings == [None] * 8


# ---------------------------------------------------------------- WITW's training setup


def test_model_defaults_witw_batch_64_no_augmentation_best_checkpoint_timm_32_augmented_last():
    witw, timm = TrainParams(model="witw_fov"), TrainParams()
    assert (witw.batch, witw.augmentation, witw.keep_rule) == (64, False, "best_val_loss")
    assert (timm.batch, timm.augmentation, timm.keep_rule) == (32, True, "last")
    told = TrainParams(model="witw_fov", batch_size=8, augment=True, keep="last")
    assert (told.batch, told.augmentation, told.keep_rule) == (8, True, "last")


def test_witw_differences_list_every_departure_from_cvig_fov():
    assert witw_differences(TrainParams(model="witw_fov", witw_fov=WitwFovParams(pretrained="vgg16.pth"))) == []
    plain = witw_differences(TrainParams(model="witw_fov"))
    assert len(plain) == 1 and "no ImageNet VGG16 weights" in plain[0]
    changed = witw_differences(TrainParams(model="witw_fov", batch_size=32, augment=True, witw_fov=WitwFovParams(
        pretrained="vgg16.pth", dropout=0.0, freeze_below=0, alpha=5)))
    assert len(changed) == 5 and any("batch size 32" in d for d in changed)
    assert any("freeze_below is 0" in d for d in changed) and any("augmentation on" in d for d in changed)
    assert "not WITW's model" in witw_differences(TrainParams())[0]


def test_timm_lr_decays_on_a_cosine_to_zero_and_witw_keeps_it_constant():
    timm, witw = TrainParams(), TrainParams(model="witw_fov")
    assert (timm.schedule, witw.schedule) == ("cosine", "constant")
    base = timm.timm_contrastive.lr
    lrs = [learning_rate(timm, step, 100) for step in (0, 50, 100)]
    assert lrs == pytest.approx([base, base / 2, 0.0], abs=1e-12)
    assert [learning_rate(witw, step, 100) for step in (0, 99)] == [1e-5, 1e-5]
    assert "cosine" in " ".join(witw_differences(witw.model_copy(update={"lr_schedule": "cosine"})))


def swapped_val(manifest: Path, root: Path) -> Path:
    """The val manifest with every photo given the next pair's chip: learning the train pairs makes its loss rise."""
    rows = read_table(manifest, MANIFEST).to_pylist()  # the declared columns, without the GeoParquet geometry
    chips = [r["chip_uri"] for r in rows]
    rows = [{**r, "chip_uri": chips[(i + 1) % len(rows)]} for i, r in enumerate(rows)]
    path = root / "val_swapped.parquet"
    write_table(table_from_rows(rows, MANIFEST), path, MANIFEST)
    return path


def test_witw_fov_keeps_the_weights_of_the_epoch_with_the_lowest_validation_loss(manifests, tmp_path):
    val = swapped_val(manifests[1], tmp_path)
    params = TINY_WITW.model_copy(update={"epochs": 4})
    train(params, (manifests[0], val), tmp_path / "best")
    epochs = list(csv.DictReader((tmp_path / "best" / "epochs.csv").open()))
    losses = [float(r["val_loss"]) for r in epochs]
    best = 1 + losses.index(min(losses))
    assert best < 4 and losses[-1] > min(losses), "the val loss must rise for this test to mean anything"
    metrics = json.loads((tmp_path / "best" / "train.json").read_text())
    assert (metrics["keep"], metrics["kept_epoch"], metrics["epoch"], metrics["epochs_run"]) == (
        "best_val_loss", best, best, 4)
    kept = torch.load(tmp_path / "best" / "models" / MODEL, weights_only=True)
    assert kept["epoch"] == best
    # the same run stopped at the best epoch ends with exactly those weights
    train(params.model_copy(update={"epochs": best, "keep": "last"}), (manifests[0], val), tmp_path / "short")
    short = torch.load(tmp_path / "short" / "models" / MODEL, weights_only=True)["model"]
    assert all(torch.equal(kept["model"][k], short[k]) for k in short)
    last = torch.load(tmp_path / "best" / "models" / CHECKPOINT, weights_only=True)["model"]
    assert not all(torch.equal(last[k], short[k]) for k in short)


def test_witw_fov_cpu_smoke_run_at_tiny_size_trains_only_conv4_and_the_head(manifests, tmp_path, caplog):
    from pipeline.train.models import vgg_trunk

    torch.manual_seed(7)
    donor, _ = vgg_trunk(10)
    weights = tmp_path / "vgg16-397923af.pth"
    torch.save({f"features.{k}": v for k, v in donor.state_dict().items()}, weights)
    small = WitwFovParams(polar_height=32, polar_width=64, chip_px=32, lr=1e-3, pretrained=str(weights))
    params = TINY.model_copy(update={"model": "witw_fov", "batch_size": None, "epochs": 2, "witw_fov": small})
    with caplog.at_level(logging.INFO):
        train(params, manifests, tmp_path)
    model = torch.load(tmp_path / "models" / MODEL, weights_only=True)["model"]
    for branch in ("photo_net", "overhead_net"):
        for k, v in donor.state_dict().items():
            same = torch.equal(model[f"{branch}.0.{k}"], v)
            assert same == (int(k.split(".")[0]) < 17), f"{branch}.0.{k}: frozen below index 17 only"
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["batch_size"] == 64 and metrics["augment"] is False and metrics["keep"] == "best_val_loss"
    assert metrics["pretrained"] == str(weights) and metrics["steps"] == 2  # 16 pairs: one batch an epoch
    assert not metrics["comparable_to_witw"] and not any("VGG16 weights" in d for d in metrics["witw_differences"])
    assert "polar_height is 32" in " ".join(metrics["witw_differences"])


def test_witw_fov_without_vgg16_weights_says_its_results_are_not_comparable(manifests, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        train(TINY_WITW.model_copy(update={"epochs": 1}), manifests, tmp_path)
    assert "not comparable to WITW" in caplog.text and "no ImageNet VGG16 weights" in caplog.text
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["comparable_to_witw"] is False and metrics["pretrained"] is None
    assert any("no ImageNet VGG16 weights" in d for d in metrics["witw_differences"])


def test_configure_serves_both_commands():
    train_parser = argparse.ArgumentParser(prog="crossview train")
    stage.configure(train_parser)
    args = train_parser.parse_args(["--train", "t", "--models", "m", "--metrics", "x", "--loss-plot", "l",
                                    "--epochs-plot", "e"])
    assert args._stage is stage.train_main and args.val is None


@pytest.mark.gpu
@pytest.mark.parametrize("params", [TINY, TINY_WITW], ids=["timm_contrastive", "witw_fov"])
def test_gpu_training_with_bf16_and_compile(params, manifests, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    gpu = params.model_copy(update={"device": "cuda", "amp": True, "compile": True, "epochs": 2})
    train(gpu, manifests, tmp_path)
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert np.isfinite(metrics["train_loss"]) and metrics["val_pairs"] == 8


def test_the_default_demo_run_learns_clearly_on_the_held_out_city(demo_repo):
    """The demo's photos and chips are rendered from one world, so the default model (trained by the
    `train` stage of the shared `dvc repro`, about two minutes of CPU) must beat chance clearly on the
    test city it never saw (issue 12: recall@10 >= 3x chance, mean rank <= 0.5x chance), although the
    test city keeps its planted close-ups, portraits and wrong geotags, whose ranks are chance."""
    reports = demo_repo / "reports"
    train_json, eval_json = reports / "train_metrics.json", reports / "eval_metrics.json"
    val, test = json.loads(train_json.read_text()), json.loads(eval_json.read_text())
    assert val["val_pairs"] >= 20 and test["pairs"] >= 150
    assert test["chance_mean_rank"] == (test["pairs"] + 1) / 2
    assert test["chance_recall_at_10"] == pytest.approx(10 / test["pairs"])
    assert "ties count against" in test["convention"]
    assert test["recall_at_10"] >= 3 * test["chance_recall_at_10"]
    assert test["mean_rank"] <= 0.5 * test["chance_mean_rank"]
    assert val["val_mean_rank"] < 0.8 * val["val_chance_mean_rank"]
