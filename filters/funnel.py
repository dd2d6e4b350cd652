"""Funnel arithmetic over decisions: each dropped photo counted once, under the first filter that dropped it.

The filter stage's funnel report and the dataset card's funnel table are both computed here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from filters.base import Filter, column, reason_code


def first_drops(decisions: pa.Table, order: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{id: (filter, reason)}`` of each dropped photo's first drop, in ``order`` of filters.

    Filters not named in ``order`` come after it, by name; within one filter there is one row
    per id, so the attribution is deterministic.
    """
    rank = {name: k for k, name in enumerate(order)}
    first: dict[str, tuple[tuple[int, str], str, str]] = {}
    ids, names, kept, reasons = (column(decisions, c) for c in ("id", "filter", "kept", "reason"))
    for i, name, ok, reason in zip(ids, names, kept, reasons, strict=True):
        if ok:
            continue
        key = (rank.get(name, len(rank)), name)
        if i not in first or key < first[i][0]:
            first[i] = (key, name, reason or "")
    return {i: (name, reason) for i, (_, name, reason) in first.items()}


def filter_order(registry: Sequence[Filter], decisions: pa.Table | None = None) -> list[str]:
    """Registry order of filter names, then any other names found in ``decisions``, sorted."""
    names = [f.name for f in registry]
    if decisions is not None:
        names += sorted(set(column(decisions, "filter")) - set(names))
    return names


def filter_notes(decisions: pa.Table, registry: Sequence[Filter]) -> dict[str, str]:
    """Filters that did not really run: judged no photo, or kept every photo with one note (e.g. a
    relevance head skipped for too few labels). ``{filter: note}``, so the funnel says so."""
    notes: dict[str, str] = {}
    names, kept, reasons = (column(decisions, c) for c in ("filter", "kept", "reason"))
    by_filter: dict[str, list[tuple[bool, str]]] = {}  # one pass over the decisions, not one per filter
    for n, k, r in zip(names, kept, reasons, strict=True):
        by_filter.setdefault(n, []).append((k, r or ""))
    for f in registry:
        rows = by_filter.get(f.name, [])
        if not rows and f.kind == "model":
            notes[f.name] = "judged no photo (its input was not given or was empty)"
        elif all(k for k, _ in rows) and len({r for _, r in rows}) == 1 and rows[0][1].startswith(f"{f.name}: "):
            notes[f.name] = rows[0][1].removeprefix(f"{f.name}: ")
    return notes


@dataclass(frozen=True)
class Steps:
    """The funnel of one set of photos: found, removed and remaining after each filter, kept, drops by reason."""

    found: int
    first: dict[str, tuple[str, str]]  # {photo id: (filter, reason)} of each dropped photo's first drop
    removed: dict[str, int]  # newly removed by each filter, in funnel order
    remaining: dict[str, int]  # photos left after each filter
    kept: int
    by_reason: dict[str, int]  # first drops per reason code, codes sorted


def funnel_steps(ids: Sequence[str], decisions: pa.Table, order: Sequence[str]) -> Steps:
    """Count the funnel of photos ``ids`` through the filters in ``order``.

    A photo dropped by several filters is counted once, under the first in ``order``, so
    ``found == kept + sum(removed.values())``.
    """
    drops = first_drops(decisions, order)
    first = {i: drops[i] for i in ids if i in drops}
    counts = Counter(name for name, _ in first.values())
    removed, remaining, left = {}, {}, len(ids)
    for name in order:
        removed[name] = counts[name]
        left -= counts[name]
        remaining[name] = left
    reasons = Counter(reason_code(reason) for _, reason in first.values())
    return Steps(len(ids), first, removed, remaining, len(ids) - len(first), {c: reasons[c] for c in sorted(reasons)})
