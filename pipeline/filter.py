"""Run every filter in ``filters.REGISTRY`` -> ``decisions`` (one row per photo x filter) + a funnel report.

A curator ``keep`` verdict overrides drops by model-kind filters (indoor, relevance): the model's
row becomes kept with the reason ``overridden by curator keep`` and the original reason, so the
override is on record (:func:`filters.curator_rules.apply_curator_override`). Rule drops are never
overridden.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from filters import REGISTRY
from filters.base import PLACES, Filter, Tables, column, places_of
from filters.curator_rules import CURATOR, apply_curator_override, warn_unknown_verdicts
from filters.funnel import NotesTally, add_steps, filter_order, funnel_steps, no_steps
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
)
from pipeline.store import write_json
from pipeline.tablestream import Cursor, SortingWriter, TableWriter, id_chunks, repeated
from pipeline.verdicts import Verdict, latest_verdicts

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


def survivors(photos: pa.Table, decisions: pa.Table) -> pa.Array:
    """Ids of the photos no decision drops, sorted."""
    ids = photos["id"]
    if decisions.num_rows:
        dropped = pc.filter(decisions["id"], pc.invert(decisions["kept"]))
        ids = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=dropped.combine_chunks())))
    return pc.take(ids, pc.array_sort_indices(ids)).combine_chunks()


def _sorted(decisions: pa.Table) -> pa.Table:
    if not decisions.num_rows:
        return decisions
    return decisions.take(pc.sort_indices(decisions, sort_keys=[(k, "ascending") for k in SORT_KEYS["decisions"]]))


def judge(tables: Tables, params: FilterParams, registry: Sequence[Filter] = REGISTRY) -> tuple[pa.Table, int]:
    """Every filter but the thinning ones, then the curator override: (decisions sorted by id and filter,
    the override count). A photo's decisions depend only on its own rows, so parts of the tables give
    parts of the decisions."""
    decisions = _concat(_checked(f, f.fn(tables, params)) for f in registry if not f.thins)
    decisions, overrides = apply_curator_override(decisions, registry)
    return _sorted(decisions), overrides


def thin(tables: Tables, params: FilterParams, candidates: pa.Array, registry: Sequence[Filter] = REGISTRY) -> pa.Table:
    """The thinning filters' decisions, each run on the places of the ``candidates`` (ids) that every earlier
    one kept."""
    parts = []
    for f in (f for f in registry if f.thins):
        table = _checked(f, _sorted(_concat(f.fn([places_of(tables.pairs, candidates)], params))))
        parts.append(table)
        candidates = survivors(pa.table({"id": candidates}), table)
    return _concat(parts)


def _concat(parts: Iterable[pa.Table]) -> pa.Table:
    """Decisions parts as one table (the empty DECISIONS table for none)."""
    parts = list(parts)
    return pa.concat_tables(parts) if parts else DECISIONS.empty_table()


def run_filters(tables: Tables, params: FilterParams, registry: Sequence[Filter] = REGISTRY) -> tuple[pa.Table, int]:
    """Run every filter of ``registry`` on whole tables; return all decisions (sorted by id, filter) and the
    override count. Thinning filters run last, on the photos every earlier decision kept (after the
    curator override), so they only drop a photo in favour of one that stays."""
    if tables.verdicts is None:  # read once: the curator filter and the warning below both need them
        tables = replace(tables, verdicts=_verdicts(params, registry))
    decisions, overrides = judge(tables, params, registry)
    decisions = _sorted(pa.concat_tables([decisions, thin(tables, params, survivors(tables.photos, decisions), registry)]))
    warn_unknown_verdicts(params.verdicts, set(tables.verdicts) - set(column(tables.photos, "id")))
    _log_counts(Counter(column(decisions, "filter")), _drops(decisions), filter_order(registry))
    return decisions, overrides


def _verdicts(params: FilterParams, registry: Sequence[Filter]) -> Mapping[str, Verdict]:
    """The latest curator verdict per photo, when the registry has the curator filter (else none)."""
    return latest_verdicts(params.verdicts) if any(f.name == CURATOR for f in registry) else {}


def _drops(decisions: pa.Table) -> Counter:
    """Dropping decisions per filter."""
    return Counter(pc.filter(decisions["filter"], pc.invert(decisions["kept"])).to_pylist())


def _log_counts(judged: Counter, dropped: Counter, order: Sequence[str]) -> None:
    """One line a filter: photos judged and dropped."""
    for name in order:
        log.info("%s: %d judged, %d dropped", name, judged[name], dropped[name])


def _add_groups(out: dict[str, dict[str, int]], ids: list[str], key: dict[str, str], removed: dict) -> None:
    """Count photos ``ids`` into ``out`` ``{group: {found, removed, kept}}``, grouped by ``key``."""
    for i in ids:
        g = out.setdefault(key.get(i) or UNASSIGNED, {"found": 0, "removed": 0, "kept": 0})
        g["found"] += 1
        g["removed" if i in removed else "kept"] += 1


def _ordered(groups: dict[str, dict[str, int]], first: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """Groups in ``first`` first, then by name."""
    rank = {g: k for k, g in enumerate(first)}
    return {g: groups[g] for g in sorted(groups, key=lambda g: (rank.get(g, len(rank)), g))}


class FunnelTally:
    """The funnel report, counted over the photos one part at a time (each part with its pairs and decisions)."""

    def __init__(self, order: Sequence[str]) -> None:
        self.order = list(order)
        self.steps = no_steps(order)
        self.judged: Counter = Counter()
        self.drops: Counter = Counter()
        self.by_city: dict[str, dict[str, int]] = {}
        self.by_split: dict[str, dict[str, int]] = {}

    def add(self, photos: pa.Table, pairs: pa.Table, decisions: pa.Table) -> None:
        ids = column(photos, "id")
        steps = funnel_steps(ids, decisions, self.order)
        self.steps = add_steps(self.steps, steps)
        self.judged.update(column(decisions, "filter"))
        self.drops.update(_drops(decisions))
        _add_groups(self.by_city, ids, dict(zip(ids, column(photos, "city"), strict=True)), steps.first)
        _add_groups(self.by_split, ids, dict(zip(column(pairs, "id"), column(pairs, "split"), strict=True)), steps.first)

    def report(self, overrides: int = 0, notes: dict[str, str] | None = None) -> dict:
        """Photos found, newly removed by each filter in order, kept; drops by reason, city, split.

        A photo dropped by several filters is counted once, under the first in the order, so
        ``found == kept + sum(removed.values())``. ``dropped`` counts every drop of each filter.
        """
        return {
            "found": self.steps.found,
            "removed": self.steps.removed,
            "remaining": self.steps.remaining,
            "kept": self.steps.kept,
            "dropped": {name: self.drops[name] for name in self.order},
            "curator_overrides": overrides,
            "not_run": dict(sorted((notes or {}).items())),
            "by_reason": self.steps.by_reason,
            "by_city": _ordered(self.by_city),
            "by_split": _ordered(self.by_split, SPLITS),
        }


def funnel(
    photos: pa.Table,
    pairs: pa.Table,
    decisions: pa.Table,
    order: Sequence[str],
    overrides: int = 0,
    notes: dict[str, str] | None = None,
) -> dict:
    """The funnel report of whole tables (:meth:`FunnelTally.report`)."""
    tally = FunnelTally(order)
    tally.add(photos, pairs, decisions)
    return tally.report(overrides, notes)


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


def shared_bytes(path: str | Path) -> dict[str, int]:
    """``{sha256: ok downloads with those bytes}`` for the hashes more than one ok download of the table has
    (:func:`pipeline.tablestream.repeated`: 8 bytes a photo)."""

    def ok(part: pa.Table) -> pa.Array:
        return pc.and_(pc.equal(part["status"], "ok"), pc.not_equal(part["sha256"], ""))

    return {h: n for h, (_, n) in repeated(path, DOWNLOADS, "sha256", ok, ["status"]).items()}


def _inputs(args: argparse.Namespace) -> dict[str, Cursor]:
    """Cursors over every table but the photos, by ``Tables`` field."""
    cursors = {name: Cursor(getattr(args, name), schema) for name, schema in (("downloads", DOWNLOADS), ("pairs", PAIRS),
                                                                            ("chips", CHIPS))}  # fmt: skip
    for name, schema in (("scores", SCORES), ("relevance", RELEVANCE)):
        if getattr(args, name):
            cursors[name] = Cursor(getattr(args, name), schema)
    return cursors


def _judge_all(params: FilterParams, args: argparse.Namespace, registry: Sequence[Filter], out: Path,
               places: Path) -> int:  # fmt: skip
    """Judge the photos a part at a time into ``out`` and the survivors' ``PLACES`` into ``places``; the
    override count. The download hashes that repeat and the curator verdicts are read once."""
    copies, overrides = shared_bytes(args.downloads), 0
    verdicts = _verdicts(params, registry)
    unknown = set(verdicts)
    with TableWriter(out, DECISIONS) as writer, TableWriter(places, PLACES, geometry=False) as kept:
        for photos, rest in id_chunks(Cursor(args.photos, PHOTOS), _inputs(args)):
            part = Tables(photos=photos, **rest, shared_bytes=copies, verdicts=verdicts)
            decisions, n = judge(part, params, registry)
            writer.write(decisions)
            overrides += n
            unknown -= set(column(photos, "id"))
            kept.write(places_of(rest["pairs"], survivors(photos, decisions)))
    warn_unknown_verdicts(params.verdicts, unknown)
    return overrides


def _thin_all(params: FilterParams, registry: Sequence[Filter], places: Path, tmp: Path) -> list[Path]:
    """Run each thinning filter on the places of the photos that every earlier decision kept, streamed from
    ``places``, into an id-sorted decisions file; those files."""
    outs = []
    for k, f in enumerate(f for f in registry if f.thins):
        if outs:  # the next filter judges the places the last one kept
            rest = tmp / f"places{k}.parquet"
            with TableWriter(rest, PLACES, geometry=False) as writer:
                for part, last in id_chunks(Cursor(places, PLACES, geometry=False), {"d": Cursor(outs[-1], DECISIONS)}):
                    writer.write(part.filter(pc.is_in(part["id"], value_set=survivors(part, last["d"]))))
            places = rest
        outs.append(tmp / f"thinned{k}.parquet")
        with SortingWriter(outs[-1], DECISIONS) as writer:
            for decisions in f.fn(Cursor(places, PLACES, geometry=False).parts(), params):
                writer.write(_checked(f, decisions))
    return outs


def main(params: Params, args: argparse.Namespace, registry: Sequence[Filter] = REGISTRY) -> int:
    """Judge the photos a part at a time (pipeline/tablestream.py), keeping the survivors' places on disk;
    thin them (streamed in id order to each thinning filter, whose decisions are sorted on disk); then merge
    both into the decisions table while counting the funnel: memory does not grow with the photos."""
    order = filter_order(registry)
    tally, notes = FunnelTally(order), NotesTally()
    with tempfile.TemporaryDirectory(prefix="crossview-filter-") as tmp:
        judged, places = Path(tmp) / "judged.parquet", Path(tmp) / "places.parquet"
        overrides = _judge_all(params.filter, args, registry, judged, places)
        pa.default_memory_pool().release_unused()  # the parts are gone: give their pages back before thinning
        thinned = _thin_all(params.filter, registry, places, Path(tmp))
        parts = {"pairs": Cursor(args.pairs, PAIRS, ["id", "split"]), "judged": Cursor(judged, DECISIONS)}
        parts.update({f"thinned{k}": Cursor(path, DECISIONS) for k, path in enumerate(thinned)})
        with TableWriter(args.out, DECISIONS) as writer:
            for photos, rest in id_chunks(Cursor(args.photos, PHOTOS, ["id", "city"]), parts):
                decisions = _sorted(pa.concat_tables([t for name, t in rest.items() if name != "pairs"]))
                writer.write(decisions)
                tally.add(photos, rest["pairs"], decisions)
                notes.add(decisions)
    _log_counts(tally.judged, tally.drops, order)
    report = tally.report(overrides, notes.notes(registry))
    write_json(report, args.funnel)
    if args.funnel_csv:
        funnel_chart.write_csv(report, args.funnel_csv)
    if args.funnel_png:
        funnel_chart.write_png(report, args.funnel_png)
    log.info("found %d photos, kept %d; by reason: %s", report["found"], report["kept"], report["by_reason"])
    return 0
