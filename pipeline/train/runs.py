"""Training and evaluation runs over manifests: what the train/evaluate stages and the studies share.

``run_training``: a train manifest (+ val) → checkpoints (``last.pt`` every epoch, resumed after an
interruption; ``model.pt``), per-epoch metrics JSON and loss curves (CSV). ``run_evaluation``: a manifest
+ ``model.pt`` → recall@1/5/10/1 %, mean/median rank in WITW's conventions with N and the chance levels
(JSON), the recall@k curve (CSV) and one row per pair with its rank and predicted viewing direction.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import torch

from pipeline.config import EvaluateParams, S3Params, TrainParams, witw_differences
from pipeline.device import resolve_device
from pipeline.errors import StageInputError
from pipeline.schemas import EVAL_PAIRS, table_from_rows, write_table
from pipeline.store import write_json, write_text_atomic
from pipeline.train.data import ManifestPairs, panorama_chain, view_spec
from pipeline.train.loop import History, best_epoch, evaluate_model, fingerprint, fit, load_model
from pipeline.train.metrics import Retrieval, recall_curve, summary

log = logging.getLogger(__name__)

def write_csv(rows: list[dict], path: str | Path) -> None:
    """Rows of equal keys as CSV (DVC plots)."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(buf.getvalue(), path)


def train_metrics(params: TrainParams, history: History) -> dict:
    """The train stage's DVC metrics: the kept epoch's row, what was trained, and how it differs from WITW."""
    best = best_epoch(history) if params.keep_rule == "best_val_loss" else None
    kept = best or (history.epochs[-1]["epoch"] if history.epochs else None)
    row = next((r for r in history.epochs if r["epoch"] == kept), {})
    backbone = params.timm_contrastive.backbone if params.model == "timm_contrastive" else "vgg16"
    differences = witw_differences(params)
    return {**row, "model": params.model, "backbone": backbone, "steps": len(history.steps),
            "epochs_run": len(history.epochs), "kept_epoch": kept, "keep": params.keep_rule,
            "batch_size": params.batch, "augment": params.augmentation, "pretrained": params.pretrained,
            "comparable_to_witw": not differences, "witw_differences": differences}


def epoch_rows(history: History) -> list[dict]:
    """Per-epoch loss and validation recall/rank (the ``train_epochs`` plot)."""
    keys = ("epoch", "train_loss", "val_loss", "val_recall_at_1", "val_recall_at_5", "val_recall_at_10",
            "val_mean_rank",
            "val_median_rank")
    return [{k: row.get(k, "") for k in keys} for row in history.epochs]


def run_training(params: TrainParams, s3: S3Params, train_path: str, val_path: str | None, models_dir: str,
                 metrics_path: str, loss_csv: str, epochs_csv: str, on_step=None) -> History:
    """Train on ``train_path`` (validating on ``val_path``); write checkpoints, metrics and curves each epoch."""
    spec, chain = view_spec(params), panorama_chain(params)
    train = ManifestPairs(train_path, spec.training(params.augmentation), s3, seed=params.seed,
                          cache_mb=params.cache_mb, chain=chain)
    if len(train) < 2:
        raise StageInputError(
            f"{train_path} has {len(train)} pairs; training needs at least 2: reports/funnel.json and "
            "manifests/DATASET_CARD.md say why photos were dropped (add photos, or loosen filter.* / split.* params)"
        )
    val = ManifestPairs(val_path, spec, s3, cache_mb=params.cache_mb, chain=chain) if val_path else None
    if val is not None and len(val) < 2:
        log.warning("%s has %d pairs: no validation", val_path, len(val))
    fp = fingerprint(params, *(p for p in (train_path, val_path) if p))

    def on_epoch(history: History) -> None:
        write_json(train_metrics(params, history), metrics_path, sort_keys=True)
        write_csv(history.steps, loss_csv)
        write_csv(epoch_rows(history), epochs_csv)

    _, history = fit(params, train, val, models_dir, fp=fp, on_epoch=on_epoch, on_step=on_step)
    on_epoch(history)  # also when every epoch was already in the checkpoint
    return history


def pair_rows(ids: list[str], splits: list[str], result: Retrieval) -> list[dict]:
    """EVAL_PAIRS rows from a retrieval result."""
    bearing = result.bearing_deg
    return [
        {"id": ids[i], "split": splits[i], "rank": int(result.rank[i]), "distance": float(result.distance[i]),
         "top1_id": ids[int(result.top1[i])], "top1_distance": float(result.top1_distance[i]),
         "predicted_bearing_deg": None if bearing is None else round(float(bearing[i]), 3)}
        for i in range(len(ids))
    ]


def run_evaluation(params: EvaluateParams, s3: S3Params, manifest: str, model_path: str, metrics_path: str,
                   pairs_path: str, recall_csv: str) -> dict:
    """Rank every pair of ``manifest`` with the trained model; write metrics, the recall curve and the pairs."""
    device = resolve_device(params.device, "evaluate.device")
    if device == "cpu":
        torch.set_num_threads(params.threads)
    model, train_params = load_model(model_path, device)
    ds = ManifestPairs(manifest, model.spec, s3, chain=panorama_chain(train_params))
    splits = pq.read_table(manifest, columns=["split"]).column("split").to_pylist()
    ids = [ds.id(i) for i in range(len(ds))]
    if len(ds) == 0:
        log.warning("%s has no pairs: nothing to evaluate", manifest)
        rank, ties_favour, rows = torch.zeros(0, dtype=torch.int64).numpy(), None, []
    else:
        result = evaluate_model(model, ds, batch_size=params.batch_size, workers=params.loader_workers,
                                device=device, amp=train_params.amp, chunk=params.chunk)
        rank, ties_favour, rows = result.rank, result.rank_ties_favour, pair_rows(ids, splits, result)
    metrics = {**summary(rank, ties_favour), "model": train_params.model, "orientation": model.has_orientation,
               "distance": "2 (1 - cos) of L2-normalised features (WITW), 0..4",
               "comparable_to_witw": not witw_differences(train_params)}
    write_json(metrics, metrics_path, sort_keys=True)
    write_csv(recall_curve(rank, params.max_k), recall_csv)
    write_table(table_from_rows(rows, EVAL_PAIRS), pairs_path, EVAL_PAIRS)
    log.info("evaluated %d pairs of %s: %s", len(ds), manifest, json.dumps(metrics))
    return metrics
