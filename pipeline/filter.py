"""Run every filter in ``filters.REGISTRY`` -> ``decisions`` (one row per photo x filter) + a funnel report.

A curator ``keep`` verdict overrides drops by model-kind filters (indoor, relevance): the model's
row becomes kept with the reason ``overridden by curator keep`` and the original reason, so the
override is on record (:func:`filters.curator_rules.apply_curator_override`). Rule drops are never
overridden.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from filters import REGISTRY
from filters.base import Filter, Tables, column
from filters.curator_rules import apply_curator_override
from filters.funnel import filter_notes, filter_order, funnel_steps
from pipeline import funnel_chart
from pipeline.config import FilterParams, Params
from pipeline.errors import SchemaError
from pipeline.schemas import (
    CHIPS,
    DECISIONS,
    DOWNLOADS,
    PAIRS,
    PHOTOS,
    RELEVANCE,
    SCORES,
    SORT_KEYS,
    SPLITS,
    read_table,
    write_table,
)
from pipeline.store import write_json

log = logging.getLogger(__name__)

UNASSIGNED = "unassigned"


def _checked(f: Filter, table: pa.Table) -> pa.Table:
    """A filter's output, checked: DECISIONS schema, its own name, one row per id."""
    if not table.schema.equals(DECISIONS):
        raise SchemaError(f"filter {f.name} returned a table that is not in the DECISIONS schema")
    names = set(column(table, "filter"))
    if names - {f.name}:
        raise SchemaError(f"filter {f.name} returned rows named {sorted(names - {f.name})}")
    ids = column(table, "id")
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, n in Counter(ids).items() if n > 1)[:10]
        raise SchemaError(f"filter {f.name} judged some photos twice: {', '.join(dup)}")
    return table


def _logged(f: Filter, table: pa.Table) -> pa.Table:
    log.info("%s: %d judged, %d dropped", f.name, table.num_rows, column(table, "kept").count(False))
    return table


def survivors(photos: pa.Table, decisions: pa.Table) -> list[str]:
    """Ids of the photos no decision drops, sorted."""
    dropped = set(pc.filter(decisions["id"], pc.invert(decisions["kept"])).to_pylist()) if decisions.num_rows else set()
    return sorted(i for i in column(photos, "id") if i not in dropped)


def run_filters(tables: Tables, params: FilterParams, registry: Sequence[Filter] = REGISTRY) -> tuple[pa.Table, int]:
    """Run every filter of ``registry``; return all decisions (sorted by id, filter) and the override count.

    Thinning filters run last, each on the photos that every earlier decision kept (after the
    curator override), so they only drop a photo in favour of one that stays.
    """
    parts = []
    for f in (f for f in registry if not f.thins):
        parts.append(_logged(f, _checked(f, f.fn(tables, params))))
    decisions = pa.concat_tables(parts) if parts else DECISIONS.empty_table()
    decisions, overrides = apply_curator_override(decisions, registry)
    for f in (f for f in registry if f.thins):
        table = _logged(f, _checked(f, f.fn(tables, params, survivors(tables.photos, decisions))))
        decisions = pa.concat_tables([decisions, table])
    if decisions.num_rows:
        decisions = decisions.take(pc.sort_indices(decisions, sort_keys=[("id", "ascending"), ("filter", "ascending")]))
    return decisions, overrides


def _groups(ids: list[str], key: dict[str, str], removed: dict, first: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """``{group: {found, removed, kept}}`` for photos grouped by ``key``: groups in ``first`` first, then by name."""
    out: dict[str, dict[str, int]] = {}
    for i in ids:
        g = out.setdefault(key.get(i) or UNASSIGNED, {"found": 0, "removed": 0, "kept": 0})
        g["found"] += 1
        g["removed" if i in removed else "kept"] += 1
    rank = {g: k for k, g in enumerate(first)}
    return {g: out[g] for g in sorted(out, key=lambda g: (rank.get(g, len(rank)), g))}


def funnel(
    photos: pa.Table,
    pairs: pa.Table,
    decisions: pa.Table,
    order: Sequence[str],
    overrides: int = 0,
    notes: dict[str, str] | None = None,
) -> dict:
    """The funnel report: photos found, newly removed by each filter in ``order``, kept; drops by reason, city, split.

    A photo dropped by several filters is counted once, under the first in ``order``, so
    ``found == kept + sum(removed.values())``. ``dropped`` counts every drop of each filter.
    """
    ids = column(photos, "id")
    steps = funnel_steps(ids, decisions, order)
    all_drops = Counter(n for n, k in zip(column(decisions, "filter"), column(decisions, "kept"), strict=True) if not k)
    return {
        "found": steps.found,
        "removed": steps.removed,
        "remaining": steps.remaining,
        "kept": steps.kept,
        "dropped": {name: all_drops[name] for name in order},
        "curator_overrides": overrides,
        "not_run": dict(sorted((notes or {}).items())),
        "by_reason": steps.by_reason,
        "by_city": _groups(ids, dict(zip(ids, column(photos, "city"), strict=True)), steps.first),
        "by_split": _groups(
            ids, dict(zip(column(pairs, "id"), column(pairs, "split"), strict=True)), steps.first, SPLITS
        ),
    }


def read_tables(args: argparse.Namespace) -> Tables:
    return Tables(
        photos=read_table(args.photos, PHOTOS),
        downloads=read_table(args.downloads, DOWNLOADS),
        pairs=read_table(args.pairs, PAIRS),
        chips=read_table(args.chips, CHIPS),
        scores=read_table(args.scores, SCORES) if args.scores else None,
        relevance=read_table(args.relevance, RELEVANCE) if args.relevance else None,
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", required=True, help="photos table (Parquet)")
    parser.add_argument("--downloads", required=True, help="downloads table (Parquet)")
    parser.add_argument("--pairs", required=True, help="pairs table (Parquet)")
    parser.add_argument("--chips", required=True, help="chips table (Parquet)")
    parser.add_argument("--scores", help="classify stage scores (Parquet); without it the indoor rule judges nothing")
    parser.add_argument("--relevance", help="relevance stage scores (Parquet)")
    parser.add_argument("--out", required=True, help="decisions table to write (Parquet)")
    parser.add_argument("--funnel", required=True, help="funnel report to write (DVC metrics JSON)")
    parser.add_argument("--funnel-csv", help="funnel steps as CSV (a DVC plot)")
    parser.add_argument("--funnel-png", help="funnel bar chart (PNG)")


def main(params: Params, args: argparse.Namespace, registry: Sequence[Filter] = REGISTRY) -> int:
    tables = read_tables(args)
    decisions, overrides = run_filters(tables, params.filter, registry)
    write_table(decisions, args.out, DECISIONS, sort_by=SORT_KEYS["decisions"])
    order = filter_order(registry, decisions)
    report = funnel(tables.photos, tables.pairs, decisions, order, overrides, filter_notes(decisions, registry))
    write_json(report, args.funnel)
    if args.funnel_csv:
        funnel_chart.write_csv(report, args.funnel_csv)
    if args.funnel_png:
        funnel_chart.write_png(report, args.funnel_png)
    log.info("found %d photos, kept %d; by reason: %s", report["found"], report["kept"], report["by_reason"])
    return 0
