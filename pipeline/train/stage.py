"""``crossview train`` and ``crossview evaluate``: the manifests' first consumer.

train: ``manifests/train.parquet`` (+ val) → ``models/last.pt`` (checkpoint after every epoch, resumed
after an interruption), ``models/model.pt`` (weights + the params that built them), per-epoch metrics
JSON and loss curves (CSV) for DVC. evaluate: a manifest + ``models/model.pt`` → recall@1/5/10/1 %,
mean/median rank in WITW's conventions with N and the chance levels (JSON), the recall@k curve (CSV)
and one row per pair with its rank and predicted viewing direction (Parquet).
"""

from __future__ import annotations

import argparse

from pipeline.config import Params
from pipeline.train.runs import run_evaluation, run_training


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``crossview train`` or ``crossview evaluate`` (one module serves both commands)."""
    if parser.prog.split()[-1] == "evaluate":
        parser.add_argument("--manifest", required=True, help="manifest to evaluate (e.g. manifests/test.parquet)")
        parser.add_argument("--model", required=True, help="trained model (models/model.pt)")
        parser.add_argument("--metrics", required=True, help="metrics to write (DVC metrics JSON)")
        parser.add_argument("--pairs", required=True, help="per-pair ranks and bearings to write (Parquet)")
        parser.add_argument("--recall-plot", required=True, help="recall@k curve to write (CSV, DVC plots)")
        parser.set_defaults(_stage=evaluate_main)
        return
    parser.add_argument("--train", required=True, help="training manifest (manifests/train.parquet)")
    parser.add_argument("--val", help="validation manifest (manifests/val.parquet); none: no validation")
    parser.add_argument("--models", required=True, help="folder for last.pt (checkpoint) and model.pt")
    parser.add_argument("--metrics", required=True, help="metrics to write each epoch (DVC metrics JSON)")
    parser.add_argument("--loss-plot", required=True, help="per-step loss to write (CSV, DVC plots)")
    parser.add_argument("--epochs-plot", required=True, help="per-epoch loss and val recall to write (CSV)")
    parser.set_defaults(_stage=train_main)


def train_main(params: Params, args: argparse.Namespace) -> int:
    tp = params.train
    run_training(tp, params.s3, args.train, args.val, args.models, args.metrics, args.loss_plot, args.epochs_plot)
    return 0


def evaluate_main(params: Params, args: argparse.Namespace) -> int:
    ep = params.evaluate
    run_evaluation(ep, params.s3, args.manifest, args.model, args.metrics, args.pairs, args.recall_plot)
    return 0


def main(params: Params, args: argparse.Namespace) -> int:
    return args._stage(params, args)
