"""The panorama-to-photo simulation study (studies/simulation.py, studies/dvc.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import Params
from pipeline.errors import StageInputError
from studies.simulation import SEED_POINTS, report, variant_params
from tests.conftest import repo_copy, sh


def write_step(steps_dir: Path, step: str, top1: float, top1pct: float, rank: float) -> None:
    (steps_dir / step).mkdir(parents=True)
    (steps_dir / step / "eval_metrics.json").write_text(json.dumps({
        "recall_at_1": top1, "recall_at_1pct": top1pct, "mean_rank": rank, "pairs": 200,
        "chance_recall_at_1": 0.005, "chance_recall_at_1pct": 0.01}))


def test_report_has_one_row_per_step_in_the_seeds_order_and_a_plot(tmp_path):
    params = Params.model_validate({"simulation": {"steps": ["swapped", "unmodified", "fov70"]}})
    for step, vals in {"unmodified": (0.5, 0.9, 3.0), "fov70": (0.1, 0.3, 20.0), "swapped": (0.02, 0.08, 60.0)}.items():
        write_step(tmp_path / "steps", step, *vals)
    rows = report(params, tmp_path / "steps", tmp_path / "out")
    assert [r["step"] for r in rows] == ["unmodified", "fov70", "swapped"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["steps"] == rows and saved["seed_points"] == SEED_POINTS
    assert rows[2] == {"step": "swapped", "label": "Fully-Modified", "top1": 0.02, "top1_pct": 0.08, "mean_rank": 60.0,
                       "pairs": 200, "chance_top1": 0.005, "chance_top1_pct": 0.01}
    assert SEED_POINTS["Fully-modified CVUSA (seed)"] == {"recall_at_1pct": 0.11, "recall_at_1": 0.0017}
    assert (tmp_path / "out" / "simulation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_names_a_missing_step(tmp_path):
    params = Params.model_validate({"simulation": {"steps": ["unmodified", "fov90"]}})
    write_step(tmp_path / "steps", "unmodified", 0.5, 0.9, 3.0)
    with pytest.raises(StageInputError, match="fov90"):
        report(params, tmp_path / "steps", tmp_path / "out")


def test_a_variant_is_the_train_params_with_its_step_and_no_augmentation():
    params = Params.model_validate({"train": {"epochs": 40, "augment": True}, "simulation": {"epochs": 3, "seed": 5}})
    v = variant_params(params, "one_view")
    assert (v.panorama_step, v.epochs, v.seed, v.augmentation) == ("one_view", 3, 5, False)
    assert v.model == params.train.model


TINY = {
    "panoramas": {"count": 12, "width": 64, "height": 16, "overhead_px": 32, "test_fraction": 0.5},
    "simulation": {"epochs": 1, "steps": ["unmodified", "fov70", "swapped"]},
    "train": {"loader_workers": 0, "batch_size": 4,
              "timm_contrastive": {"embed_dim": 16, "photo_height": 16, "photo_width": 16, "chip_px": 16}},
    "evaluate": {"loader_workers": 0},
}


def _set_params(root: Path, changes: dict) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        for key, value in values.items():
            if isinstance(value, dict):
                params[section][key].update(value)
            else:
                params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_dvc_repro_runs_the_simulation_from_a_fresh_clone_and_is_incremental(tmp_path):
    root = repo_copy(tmp_path / "repo")
    _set_params(root, TINY)
    sh(["dvc", "repro", "studies/dvc.yaml:simulation"], root)
    results = json.loads((root / "reports/studies/simulation/results.json").read_text())
    assert [r["step"] for r in results["steps"]] == ["unmodified", "fov70", "swapped"]
    assert all(r["pairs"] == 6 and 1 <= r["mean_rank"] <= 6 for r in results["steps"])
    assert (root / "reports/studies/simulation/simulation.png").exists()
    again = sh(["dvc", "repro", "studies/dvc.yaml:simulation"], root)
    assert "Running stage" not in again
    _set_params(root, {"simulation": {"steps": ["unmodified", "fov70", "fov90", "swapped"]}})
    more = sh(["dvc", "repro", "studies/dvc.yaml:simulation"], root)
    assert "simulation_step@fov90" in more
    assert "Running stage 'studies/dvc.yaml:simulation_step@unmodified'" not in more  # cached per variant
    assert "Running stage 'studies/dvc.yaml:simulation_data'" not in more
    results = json.loads((root / "reports/studies/simulation/results.json").read_text())
    assert [r["step"] for r in results["steps"]] == ["unmodified", "fov90", "fov70", "swapped"]  # the seed's order
