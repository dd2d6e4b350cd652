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


class NotesTally:
    """What :func:`filter_notes` needs of each filter, gathered from decisions one part at a time (in id order)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[bool, str]] = {}  # {filter: (every row kept with its first row's reason, that reason)}

    def add(self, decisions: pa.Table) -> None:
        rows = decisions.select(["filter", "kept"]).append_column("reason", decisions["reason"].fill_null(""))
        parts = rows.group_by("filter", use_threads=False).aggregate(
            [("kept", "all"), ("reason", "first"), ("reason", "count_distinct")]
        )
        for n, k, r, distinct in zip(*(column(parts, c) for c in ("filter", "kept_all", "reason_first",
                                                                    "reason_count_distinct")), strict=True):  # fmt: skip
            same, first = self._seen.setdefault(n, (True, r))
            self._seen[n] = (same and k and distinct == 1 and r == first, first)

    def notes(self, registry: Sequence[Filter]) -> dict[str, str]:
        """``{filter: note}`` for the filters that judged no photo or kept every photo with one note."""
        notes: dict[str, str] = {}
        for f in registry:
            if f.name not in self._seen:
                if f.kind == "model":
                    notes[f.name] = "judged no photo (its input was not given or was empty)"
                continue
            same, first = self._seen[f.name]
            if same and first.startswith(f"{f.name}: "):
                notes[f.name] = first.removeprefix(f"{f.name}: ")
        return notes


def filter_notes(decisions: pa.Table, registry: Sequence[Filter]) -> dict[str, str]:
    """Filters that did not really run: judged no photo, or kept every photo with one note (e.g. a
    relevance head skipped for too few labels). ``{filter: note}``, so the funnel says so."""
    tally = NotesTally()
    tally.add(decisions)
    return tally.notes(registry)


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


def no_steps(order: Sequence[str]) -> Steps:
    """The funnel of no photos through the filters in ``order``: where a tally over parts starts."""
    return Steps(0, {}, {n: 0 for n in order}, {n: 0 for n in order}, 0, {})


def add_steps(a: Steps, b: Steps) -> Steps:
    """The funnel of two disjoint sets of photos (``first``, per photo, is left empty)."""
    removed = {n: a.removed.get(n, 0) + b.removed.get(n, 0) for n in dict.fromkeys([*a.removed, *b.removed])}
    found, remaining = a.found + b.found, {}
    left = found
    for name, n in removed.items():
        left -= n
        remaining[name] = left
    reasons = Counter(a.by_reason) + Counter(b.by_reason)
    return Steps(found, {}, removed, remaining, a.kept + b.kept, {c: reasons[c] for c in sorted(reasons)})


def reorder_steps(steps: Steps, order: Sequence[str]) -> Steps:
    """``steps`` with its filters in ``order`` (every name it has must be there): removed and remaining recounted."""
    removed, remaining, left = {}, {}, steps.found
    for name in order:
        removed[name] = steps.removed.get(name, 0)
        left -= removed[name]
        remaining[name] = left
    return Steps(steps.found, steps.first, removed, remaining, steps.kept, steps.by_reason)
