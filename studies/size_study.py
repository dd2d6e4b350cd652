"""``crossview study-size``: the training-set size study (the seed's Figure 6).

``variant``: train on the nested seeded subset of one fraction of the train manifest (one DVC
``matrix`` stage per fraction x seed, so each is cached and a changed fraction reruns only its own
variant) and evaluate on the test manifest -> one JSON. ``report``: read the variants that
``study.size`` names, fit ``y = a - b / x^c`` to top-1 % and mean rank (and recall@10, steadier on
a small test set), check a fit on the smaller sizes against the largest, and write
``results.json``, the DVC plot CSV and the PNG.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from pipeline.config import Params
from pipeline.errors import StageInputError
from pipeline.schemas import MANIFEST, read_table
from pipeline.store import write_json
from studies import chart
from studies.fit import fit_curve, holdout_check
from studies.variant_run import budget, train_and_evaluate
from studies.variants import fraction_subset, write_manifest

log = logging.getLogger(__name__)

FIT_METRICS = ("recall_at_1pct", "recall_at_10", "mean_rank")


def run_variant(params: Params, train: str, val: str | None, test: str, fraction: float, seed: int) -> dict:
    """Train on the ``fraction`` subset (seed ``seed``) of ``train``; its size and test metrics."""
    table = read_table(train, MANIFEST)
    subset = fraction_subset(table, fraction, seed)
    with tempfile.TemporaryDirectory(prefix="crossview-size-") as tmp:
        path = write_manifest(subset, Path(tmp) / "train.parquet")
        metrics = train_and_evaluate(params, path, val, test, seed)
    return {"fraction": fraction, "seed": seed, "size": subset.num_rows, "full_size": table.num_rows,
            "metrics": metrics}


def read_points(params: Params, variants_dir: str) -> list[dict]:
    """The variants ``study.size`` names (fractions x seeds), read from the JSONs in ``variants_dir``."""
    found = {}
    for path in sorted(Path(variants_dir).glob("*.json")):
        p = json.loads(path.read_text())
        found[(p["fraction"], p["seed"])] = p
    wanted = [(f, s) for f in sorted(params.study.size.fractions) for s in params.study.seeds]
    missing = [f"fraction {f} seed {s}" for f, s in wanted if (f, s) not in found]
    if missing:
        raise StageInputError(f"{variants_dir}: no results for {', '.join(missing)}: run "
                              "`dvc repro studies/dvc.yaml:size` (it trains the missing variants first)")
    return [found[k] for k in wanted]


def fits(points: list[dict], holdout: bool) -> dict:
    """Per metric: the fit over every point, and (``holdout``) the fit on the smaller sizes checked at the largest."""
    x = np.array([p["fraction"] for p in points], dtype=float)
    out = {}
    for metric in FIT_METRICS:
        y = np.array([p["metrics"][metric] for p in points], dtype=float)
        sizes = np.unique(x)
        sd = np.array([np.std(y[x == s], ddof=1) if (x == s).sum() > 1 else 0.0 for s in x])
        fit = fit_curve(x, y, sd if np.all(sd > 0) else None)
        out[metric] = {
            "fit": fit.as_dict() if fit else None,
            "holdout": holdout_check(x, y) if holdout and len(sizes) >= 4 else None,
            "mean_by_size": [{"fraction": float(s), "mean": float(np.mean(y[x == s])),
                              "sd": float(np.std(y[x == s], ddof=1)) if (x == s).sum() > 1 else None}
                             for s in sizes],
        }
    return out


def report(params: Params, variants_dir: str, results: str, plot_csv: str, png: str) -> dict:
    points = read_points(params, variants_dir)
    full = max(p["full_size"] for p in points)
    out = {
        "x": "training-set size as a fraction of the train manifest (full_size pairs); fits are y = a - b / x^c",
        "full_size": full,
        "points": [{"fraction": p["fraction"], "size": p["size"], "seed": p["seed"], "metrics": p["metrics"]}
                   for p in points],
        "fit": fits(points, params.study.size.fit_holdout),
        "budget": budget(params),
        "test_pairs": points[0]["metrics"].get("pairs"),
    }
    write_json(out, results, sort_keys=True)
    chart.write_rows([{"size": p["size"], "fraction": p["fraction"], "seed": p["seed"],
                       **{m: p["metrics"][m] for m in FIT_METRICS}} for p in points], plot_csv)
    chart.size_png(out, FIT_METRICS[:1] + FIT_METRICS[2:], png)
    for metric, f in out["fit"].items():
        if f["fit"]:
            log.info("%s: a=%.4g±%.2g b=%.4g c=%.3g, per doubling %+.4g, unstable a: %s", metric, f["fit"]["a"],
                     f["fit"]["a_err"] or float("nan"), f["fit"]["b"], f["fit"]["c"], f["fit"]["per_doubling"],
                     f["fit"]["unstable_a"])
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    v = steps.add_parser("variant", help="train + evaluate one subset")
    v.add_argument("--train", required=True, help="train manifest (manifests/train.parquet)")
    v.add_argument("--val", help="validation manifest (manifests/val.parquet)")
    v.add_argument("--test", required=True, help="test manifest (manifests/test.parquet), the same for every size")
    v.add_argument("--fraction", type=float, required=True, help="subset size as a fraction of the train manifest")
    v.add_argument("--seed", type=int, required=True, help="subset draw and training seed")
    v.add_argument("--out", required=True, help="variant metrics to write (JSON)")
    r = steps.add_parser("report", help="fit and plot the variants study.size names")
    r.add_argument("--variants", required=True, help="folder of variant JSONs")
    r.add_argument("--results", required=True, help="results.json to write")
    r.add_argument("--plot-csv", required=True, help="the points as CSV (DVC plot)")
    r.add_argument("--png", required=True, help="the Figure 6 style chart (PNG)")


def main(params: Params, args: argparse.Namespace) -> int:
    if args.step == "variant":
        write_json(run_variant(params, args.train, args.val, args.test, args.fraction, args.seed), args.out,
                   sort_keys=True)
    else:
        report(params, args.variants, args.results, args.plot_csv, args.png)
    return 0
