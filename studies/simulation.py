"""The panorama-to-photo simulation (the seed's Figure 4): one trained and evaluated variant per step.

``crossview simulation --step STEP``: trains the ``train`` model on the panorama manifests with the
Figure-4 chain up to STEP (``train.panorama_step``; ``simulation.epochs`` and ``simulation.seed``,
augmentation off so that north stays north where the step keeps it), then evaluates it on the test
manifest with the same chain (per-image draws are seeded, so the test views are the same in every run).
``crossview simulation-report``: one row per step (name, the seed's label, top-1, top-1 %, mean
rank, N) in ``results.json`` and the seed's plot (top-1 % and top-1 over the steps) with its
published end points marked.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.config import PANORAMA_STEPS, Params, TrainParams
from pipeline.errors import StageInputError
from pipeline.store import write_json
from pipeline.train.pano_views import STEP_LABELS
from pipeline.train.runs import run_evaluation, run_training

log = logging.getLogger(__name__)

# The seed's published end points (IQT Labs, "Where in the World, Part 3", Figure 4), as fractions.
SEED_POINTS = {
    "Fully-modified CVUSA (seed)": {"recall_at_1pct": 0.11, "recall_at_1": 0.0017},
    "WITW subset (seed)": {"recall_at_1pct": 0.0308, "recall_at_1": 0.0003},
}


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``simulation`` (one variant) and ``simulation-report`` (the aggregate)."""
    parser.add_argument("--manifests", default="data/panorama_manifests", help="folder with train.parquet, test.parquet")
    parser.add_argument("--step", choices=PANORAMA_STEPS, help="simulation: the step to train and evaluate")
    parser.add_argument("--models", default=None, help="simulation: checkpoint folder of this step")
    parser.add_argument("--steps", default=None, help="simulation-report: folder of the steps' report folders")
    parser.add_argument("--out", required=True, help="simulation: this step's report folder; "
                        "simulation-report: where results.json and simulation.png go")


def variant_params(params: Params, step: str) -> TrainParams:
    """The ``train`` params of one step's variant."""
    sim = params.simulation
    return params.train.model_copy(update={"panorama_step": step, "epochs": sim.epochs, "seed": sim.seed,
                                           "augment": False})


def run_step(params: Params, step: str, manifests: str | Path, models: str | Path, out: str | Path) -> dict:
    """Train and evaluate one step's variant; return its evaluation metrics."""
    manifests, out = Path(manifests), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = variant_params(params, step)
    run_training(train, params.s3, str(manifests / "train.parquet"), None, str(models), str(out / "train_metrics.json"),
                 str(out / "train_loss.csv"), str(out / "train_epochs.csv"))
    return run_evaluation(params.evaluate, params.s3, str(manifests / "test.parquet"), str(Path(models) / "model.pt"),
                          str(out / "eval_metrics.json"), str(out / "eval_pairs.parquet"), str(out / "recall_at_k.csv"))


def result_rows(steps_dir: str | Path, steps: list[str]) -> list[dict]:
    """One row per step from ``steps_dir/<step>/eval_metrics.json``, in the seed's order."""
    rows = []
    for step in sorted(steps, key=PANORAMA_STEPS.index):
        path = Path(steps_dir) / step / "eval_metrics.json"
        if not path.exists():
            raise StageInputError(f"{path} is missing: run `dvc repro studies/dvc.yaml:simulation` (step {step})")
        m = json.loads(path.read_text())
        rows.append({"step": step, "label": STEP_LABELS[step], "top1": m["recall_at_1"],
                     "top1_pct": m["recall_at_1pct"], "mean_rank": m["mean_rank"], "pairs": m["pairs"],
                     "chance_top1": m["chance_recall_at_1"], "chance_top1_pct": m["chance_recall_at_1pct"]})
    return rows


def plot(rows: list[dict], path: str | Path, title: str) -> None:
    """The seed's Figure 4 form: top-1 % and top-1 over the steps, the seed's end points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=110)
    ax.plot(x, [100 * r["top1_pct"] for r in rows], "o-", color="tab:blue", label="top-1 % (this run)")
    ax.plot(x, [100 * r["top1"] for r in rows], "s-", color="tab:orange", label="top-1 (this run)")
    if rows:
        ax.plot(x, [100 * r["chance_top1_pct"] for r in rows], ":", color="tab:blue", lw=1, label="top-1 % by chance")
    labels = [r["label"] for r in rows]
    for name, pts in SEED_POINTS.items():
        if name.startswith("Fully") and rows and rows[-1]["step"] == "swapped":
            at = len(rows) - 1  # beside this run's fully-modified step
        else:
            at = len(labels)
            labels.append(name)
        for key, colour, marker in (("recall_at_1pct", "tab:blue", "*"), ("recall_at_1", "tab:orange", "*")):
            ax.plot([at], [100 * pts[key]], marker, color=colour, ms=14, mec="black")
        ax.annotate(f"{name}\n{100 * pts['recall_at_1pct']:.2f} % / {100 * pts['recall_at_1']:.2f} %",
                    (at, 100 * pts["recall_at_1pct"]), textcoords="offset points", xytext=(0, 12), ha="center",
                    fontsize=7)
    ax.set_ylim(0, max([12.5] + [110 * r["top1_pct"] for r in rows]) * 1.15)
    ax.set_xticks(list(range(len(labels))), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("recall (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(params: Params, steps_dir: str | Path, out: str | Path) -> list[dict]:
    """results.json and simulation.png in ``out`` from the steps' evaluation metrics under ``steps_dir``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = result_rows(steps_dir, params.simulation.steps)
    n = rows[0]["pairs"] if rows else 0
    write_json({"steps": rows, "seed_points": SEED_POINTS, "epochs": params.simulation.epochs,
                "model": params.train.model}, out / "results.json", sort_keys=True)
    plot(rows, out / "simulation.png",
         f"From panoramas to photos ({params.train.model}, {params.simulation.epochs} epochs, N = {n} test pairs)")
    return rows


def main(params: Params, args: argparse.Namespace) -> int:
    """``simulation``: one step; ``simulation-report``: the aggregate."""
    if args.command == "simulation-report":
        report(params, args.steps or Path(args.out) / "steps", args.out)
        return 0
    if args.step is None:
        raise StageInputError("crossview simulation: give --step (one of the seed's Figure-4 steps)")
    run_step(params, args.step, args.manifests, args.models or f"models/simulation/{args.step}", args.out)
    return 0
