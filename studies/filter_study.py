"""``crossview study-filters``: what each filter of ``filters.REGISTRY`` is worth to the model.

For each filter of the registry (``study.filters.only`` narrows it), the train set is rebuilt with
that filter off: the filter stage's own core (:func:`pipeline.filter.run_filters`) runs the registry
minus the filter, so the curator override and the density limit (a thinning filter, run last on the
survivors) are recomputed on the new set, and the manifest stage's core
(:func:`pipeline.manifest.manifest_rows`) keeps what has a paired, ok chip (a dropped photo with no
chip cannot come back). Also "none" (every filter off) and "all" (the dataset's own train set,
checked against ``manifests/train.parquet``). A variant whose train set differs from all-filters' by at most
``study.filters.min_change`` of its pairs is not trained (said so in its row): nothing, or too little
to resolve with a training run, came back. Every variant is evaluated on the all-filters
test manifest. Size matters on its own, so where a variant's size differs from all-filters' by more
than ``study.filters.match_min_change``, a size-matched control is trained too: the larger of the
two sets downsampled (nested seeded subset) to the smaller one's size.

On the demo, whose ``truth.csv`` says what each planted photo is and which filter should drop it
(``expected``), the study also trains "perfect <filter>" variants: the all-filters train set minus
the photos the truth says that filter should have dropped (what a perfect wrong-geotag or
relevance filter would be worth), each with its size-matched control (not when ``study.filters.only``
narrows the study). Real data has no truth: the file is optional.

Each training run is cached in the variants folder under a key of everything it depends on (its
train set's bytes, the val and test manifests, the train/evaluate/study params, the seed and the
training code), so a rerun retrains only what changed. A tool rather than a stage: it composes the
filter and manifest stages' cores, so dvc.yaml runs it as ``python -m studies.filter_study``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from filters import REGISTRY
from filters.base import Filter, Tables, column
from pipeline.config import Params
from pipeline.errors import ConfigError, StageInputError
from pipeline.filter import read_tables, run_filters
from pipeline.manifest import manifest_rows
from pipeline.schemas import MANIFEST, TILES, read_table, table_from_rows
from pipeline.store import sha256_file, write_json, write_text_atomic
from studies import chart
from studies.variant_run import budget, study_train_params, train_and_evaluate
from studies.variants import nested_subset, write_manifest

log = logging.getLogger(__name__)

METRICS = ("recall_at_1pct", "recall_at_10", "mean_rank")
REPO = Path(__file__).resolve().parents[1]
CODE = [REPO / p for p in ("pipeline/train", "studies/variant_run.py")]  # what a cached run's key covers


def variant_registries(registry: list[Filter], only: list[str]) -> list[tuple[str, list[Filter]]]:
    """``(variant, filters that run)``: all, one per studied filter (the registry minus it), none."""
    names = [f.name for f in registry]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ConfigError(f"study.filters.only: {unknown} are not in filters.REGISTRY ({', '.join(names)})")
    studied = [n for n in names if not only or n in only]
    return [("all", list(registry)), *((n, [f for f in registry if f.name != n]) for n in studied), ("none", [])]


def train_set(tables: Tables, tiles: pa.Table, params: Params, registry: list[Filter], split: str = "train"
              ) -> pa.Table:
    """The ``split`` manifest that the manifest stage would write if the filter stage ran ``registry``."""
    decisions, _ = run_filters(tables, params.filter, registry)
    rows = [r for r in manifest_rows(tables, tiles, decisions, params) if r["split"] == split]
    return table_from_rows(rows, MANIFEST)


def build_variants(tables: Tables, tiles: pa.Table, params: Params, registry: list[Filter]) -> dict[str, pa.Table]:
    """``{variant: train set}`` for :func:`variant_registries`."""
    return {name: train_set(tables, tiles, params, reg)
            for name, reg in variant_registries(registry, params.study.filters.only)}


PERFECT = chart.PERFECT
NOT_A_FILTER = {"ok", "density_pair"}  # truth.csv's expected values that no filter should drop


def perfect_variants(base: pa.Table, truth: str | None) -> dict[str, pa.Table]:
    """``{"perfect X": base minus the photos truth.csv expects filter X to drop}`` (the demo's truth), or {}."""
    if not truth or not Path(truth).is_file():
        return {}
    with open(truth, newline="", encoding="utf-8") as f:
        expected = {r["id"]: r["expected"] for r in csv.DictReader(f)}
    ids = column(base, "id")
    kinds = sorted({expected[i] for i in ids if expected.get(i, "ok") not in NOT_A_FILTER})
    return {PERFECT + k: base.filter(pa.array([expected.get(i) != k for i in ids])) for k in kinds}


def _code_hash() -> str:
    h = hashlib.sha256()
    for root in CODE:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            h.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def cached_run(params: Params, table: pa.Table, val: str, test: str, seed: int, cache: Path) -> dict:
    """Train + evaluate on ``table``, or read the result of an identical earlier run from ``cache``."""
    with tempfile.TemporaryDirectory(prefix="crossview-filters-") as tmp:
        path = write_manifest(table, Path(tmp) / "train.parquet")
        test_sha = sha256_file(test)
        key = hashlib.sha256(json.dumps({
            "train": sha256_file(path), "val": sha256_file(val), "test": test_sha, "seed": seed,
            "train_params": study_train_params(params, seed).model_dump(mode="json"),
            "evaluate": params.evaluate.model_dump(mode="json"), "code": _code_hash(),
        }, sort_keys=True).encode()).hexdigest()[:20]
        out = cache / f"run-{key}.json"
        if out.exists():
            log.info("cached: %s (%d pairs, seed %d)", out.name, table.num_rows, seed)
            return json.loads(out.read_text())["metrics"]
        metrics = train_and_evaluate(params, path, val, test, seed)
    write_json({"size": table.num_rows, "seed": seed, "test_sha256": test_sha, "metrics": metrics}, out, sort_keys=True)
    return metrics


def _stats(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "runs": len(values)}


def _deltas(a: list[dict], b: list[dict]) -> dict:
    return {m: _stats([x[m] - y[m] for x, y in zip(a, b, strict=True)]) for m in METRICS}


def study(params: Params, sets: dict[str, pa.Table], val: str, test: str, cache: Path) -> list[dict]:
    """One row per variant: filters off, sizes, metrics, deltas vs all filters and vs a size-matched set."""
    seeds = params.study.seeds
    base = sets["all"]
    base_ids = set(column(base, "id"))
    base_runs = [cached_run(params, base, val, test, s, cache) for s in seeds]
    rows = []
    for name, table in sets.items():
        ids = set(column(table, "id"))
        row = {"variant": name, "filters_off": _filters_off(name), "train_size": table.num_rows,
               "added": len(ids - base_ids), "removed": len(base_ids - ids)}
        row["trained"], row["note"] = _worth_training(params, name, row, base.num_rows)
        runs = base_runs if not row["trained"] or name == "all" else [
            cached_run(params, table, val, test, s, cache) for s in seeds]
        row["metrics"] = {m: _stats([r[m] for r in runs]) for m in METRICS}
        row["delta_vs_all"] = _deltas(runs, base_runs) if row["trained"] and name != "all" else None
        row["size_matched"], row["delta_vs_size_matched"] = _matched(params, name, table, base, runs, base_runs,
                                                                     val, test, cache) if row["delta_vs_all"] else (
            None, None)
        rows.append(row)
    return rows


def _worth_training(params: Params, name: str, row: dict, base_size: int) -> tuple[bool, str]:
    """Whether a variant is trained, and why not: the same set as all filters, or too small a change to resolve."""
    changed = row["added"] + row["removed"]
    if name == "all":
        return True, "every filter, as the dataset's train manifest"
    if not changed:
        return False, "the same train set as all filters: nothing this filter dropped has a chip in train"
    if changed <= params.study.filters.min_change * base_size:
        return False, (f"changes {changed} of {base_size} pairs (study.filters.min_change "
                       f"{params.study.filters.min_change:.0%}): below what a training run resolves; not trained")
    return True, ""


def _filters_off(name: str) -> list[str]:
    if name.startswith(PERFECT):
        return []  # every filter on, and the truth's drops of one kind on top
    return {"all": [], "none": [f.name for f in REGISTRY]}.get(name, [name])


def _matched(params: Params, name: str, table: pa.Table, base: pa.Table, runs: list[dict], base_runs: list[dict],
             val: str, test: str, cache: Path) -> tuple[str, dict]:
    """The size-matched comparison: the larger set downsampled to the smaller one's size (or none needed)."""
    n, nb = table.num_rows, base.num_rows
    seeds = params.study.seeds
    if abs(n - nb) <= params.study.filters.match_min_change * nb:
        return f"sizes within {params.study.filters.match_min_change:.0%}: compared with all filters as is", \
            _deltas(runs, base_runs)
    if n > nb:
        small = [cached_run(params, nested_subset(table, nb, s), val, test, s, cache) for s in seeds]
        what = "every-filter-off" if name == "none" else f"{name}-off"
        return f"{what} set downsampled to all-filters' {nb} pairs, against all filters", _deltas(small, base_runs)
    small = [cached_run(params, nested_subset(base, n, s), val, test, s, cache) for s in seeds]
    return f"all-filters set downsampled to this variant's {n} pairs", _deltas(runs, small)


def markdown(rows: list[dict], metric: str = "recall_at_10") -> str:
    """The filter table (README): one line per variant."""
    def fmt(d: dict | None, m: str) -> str:
        if not d:
            return ""
        return f"{d[m]['mean']:+.3f}" + (f" ± {d[m]['sd']:.3f}" if d[m]["sd"] is not None else "")

    head = ("| variant | train pairs | added / removed | recall@10 | mean rank | Δ recall@10 vs all | "
            "Δ mean rank vs all | Δ recall@10 size-matched | Δ mean rank size-matched |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {chart.variant_label(r['variant'])} | "
                     f"{r['train_size']} | +{r['added']} / -{r['removed']} | "
                     f"{r['metrics'][metric]['mean']:.3f} | {r['metrics']['mean_rank']['mean']:.1f} | "
                     + (" | ".join(fmt(r[k], m) for k in ("delta_vs_all", "delta_vs_size_matched")
                                   for m in (metric, "mean_rank")) if r["trained"] and r["variant"] != "all"
                        else f"{r['note']} | | | ") + " |")
    return "\n".join(lines) + "\n"


def run(params: Params, args: argparse.Namespace) -> dict:
    tables = read_tables(args)
    sets = build_variants(tables, read_table(args.tiles, TILES), params, REGISTRY)
    dataset = set(column(read_table(args.train, MANIFEST), "id"))
    if set(column(sets["all"], "id")) != dataset:
        raise StageInputError(f"{args.train} is not the train set the filter and manifest stages give on these "
                              "tables: run `dvc repro` first, then the study")
    if not params.study.filters.only:  # the whole study; a narrowed one (study.filters.only) trains only those
        sets.update(perfect_variants(sets["all"], args.truth))
    cache = Path(args.variants)
    cache.mkdir(parents=True, exist_ok=True)
    rows = study(params, sets, args.val, args.test, cache)
    out = {"variants": rows, "budget": budget(params), "test_manifest": args.test,
           "test_pairs": read_table(args.test, MANIFEST).num_rows, "registry": [f.name for f in REGISTRY]}
    write_json(out, args.results, sort_keys=True)
    chart.write_rows([{"variant": r["variant"], "train_size": r["train_size"],
                       **{m: r["metrics"][m]["mean"] for m in METRICS}} for r in rows], args.plot_csv)
    chart.filters_png(rows, "recall_at_10", args.png)
    write_text_atomic(markdown(rows), args.table)
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    for name in ("photos", "downloads", "pairs", "chips", "scores", "relevance", "tiles"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} table (Parquet), as the filter stage reads it")
    parser.add_argument("--train", required=True, help="the dataset's train manifest (checked against all filters)")
    parser.add_argument("--val", required=True, help="validation manifest (the same for every variant)")
    parser.add_argument("--test", required=True, help="test manifest, every filter applied (the same for every variant)")
    parser.add_argument("--variants", required=True, help="folder of cached runs (one JSON per training run)")
    parser.add_argument("--results", required=True, help="results.json to write")
    parser.add_argument("--plot-csv", required=True, help="one row per variant (CSV, DVC plot)")
    parser.add_argument("--png", required=True, help="bar chart of the deltas (PNG)")
    parser.add_argument("--table", required=True, help="the filter table (Markdown)")
    parser.add_argument("--truth", default=None, help="the demo's truth.csv: adds the perfect-filter variants "
                        "(optional; a missing file adds none)")


def main(params: Params, args: argparse.Namespace) -> int:
    run(params, args)
    return 0


if __name__ == "__main__":
    from pipeline import cli

    sys.exit(cli.main(["study-filters", *sys.argv[1:]]))
