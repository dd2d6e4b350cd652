"""Train one study variant on a train manifest and evaluate it on the fixed test manifest.

The model, loss curves and per-pair ranks go to a scratch folder that is deleted afterwards: a study
keeps each variant's metrics (small JSON, cached by DVC), not its weights. Training and evaluation
are the train/evaluate stages' own code (:mod:`pipeline.train.runs`) with their params; the study
overrides only the seed and, when ``study.epochs`` is set, the epochs (the same budget rule for
every variant: fixed epochs).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from pipeline.config import Params, TrainParams
from pipeline.train.runs import run_evaluation, run_training

log = logging.getLogger(__name__)

METRICS = ("recall_at_1", "recall_at_5", "recall_at_10", "recall_at_1pct", "mean_rank", "median_rank", "pairs")


def study_train_params(params: Params, seed: int) -> TrainParams:
    """``train`` params with what a study varies: the seed, and the fixed epoch budget ``study.epochs``."""
    update: dict = {"seed": seed}
    if params.study.epochs is not None:
        update["epochs"] = params.study.epochs
    return params.train.model_copy(update=update)


def budget(params: Params) -> dict:
    """The training budget every variant gets, and why (``results.json``'s ``budget``)."""
    return {
        "rule": "fixed epochs",
        "epochs": params.study.epochs if params.study.epochs is not None else params.train.epochs,
        "seeds": list(params.study.seeds),
        "model": params.train.model,
        "why": "every pair is seen the same number of times at every size, as the train stage trains; fixed "
        "steps would give a small subset many passes over the same pairs (overfitting it) and cost every "
        "size the full run's time",
    }


def train_and_evaluate(params: Params, train_manifest: str, val_manifest: str | None, test_manifest: str,
                       seed: int) -> dict:
    """Train on ``train_manifest`` (validating on ``val_manifest``), evaluate on ``test_manifest``; the metrics."""
    tp = study_train_params(params, seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crossview-study-") as tmp:
        work = Path(tmp)
        history = run_training(tp, params.s3, train_manifest, val_manifest, str(work / "model"),
                               str(work / "train.json"), str(work / "loss.csv"), str(work / "epochs.csv"))
        metrics = run_evaluation(params.evaluate, params.s3, test_manifest, str(work / "model" / "model.pt"),
                                 str(work / "eval.json"), str(work / "pairs.parquet"), str(work / "recall.csv"))
    last = history.epochs[-1] if history.epochs else {}
    out = {k: metrics[k] for k in METRICS if k in metrics}
    out["train_loss"] = last.get("train_loss")
    log.info("trained %d epochs on %s (seed %d) in %.0f s: %s", tp.epochs, train_manifest, seed,
             time.perf_counter() - t0, json.dumps(out))
    return out
