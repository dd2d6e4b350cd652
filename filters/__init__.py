"""Every rule and model that can drop a photo, and the registry the filter stage runs.

A filter is a plain function ``(tables, params) -> decisions``: it reads the stage tables in a
:class:`Tables` value and returns a DECISIONS table (id, filter, kept, reason, score) with one row
per photo it judges. No filter drops rows itself; the filter stage runs them all and the
manifest stage keeps a photo only when no decision drops it.

Reasons read ``"<code>"`` or ``"<code>: <detail>"``; the code (see :func:`reason_code`) is what
the funnel and the dataset card count. Kept rows have an empty reason unless there is something
to note (a converted single-band photo, an unknown geotag accuracy, a curator keep).

Adding a filter: write one function in a module here and add one line to ``REGISTRY``.
``kind`` is ``rule`` (deterministic checks on metadata, pairs and chips) or ``model`` (classifier
scores); a curator ``keep`` verdict overrides ``model`` drops only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import pyarrow as pa

from pipeline.config import FilterParams
from pipeline.schemas import DECISIONS, table_from_rows


@dataclass(frozen=True)
class Tables:
    """The stage tables filters read (schemas in ``pipeline.schemas``)."""

    photos: pa.Table
    downloads: pa.Table
    pairs: pa.Table
    chips: pa.Table
    scores: pa.Table | None = None  # classify stage (indoor vote); None: the indoor rule judges nothing
    relevance: pa.Table | None = None  # relevance stage (head trained on curator verdicts)


FilterFn = Callable[[Tables, FilterParams], pa.Table]


class Filter(NamedTuple):
    name: str
    fn: FilterFn
    kind: Literal["rule", "model"]


def decisions_table(name: str, rows: Iterable[tuple[str, bool, str, float | None]]) -> pa.Table:
    """A DECISIONS table for filter ``name`` from ``(id, kept, reason, score)`` tuples."""
    return table_from_rows(
        (
            {"id": i, "filter": name, "kept": kept, "reason": reason or "", "score": score}
            for i, kept, reason, score in rows
        ),
        DECISIONS,
    )


def reason_code(reason: str) -> str:
    """The code of a reason: the text before the first colon (``"corrupt: bad JPEG"`` -> ``"corrupt"``)."""
    return reason.split(":", 1)[0].strip()


def column(table: pa.Table, name: str) -> list:
    """One column as a Python list (empty list for an empty table)."""
    return table.column(name).to_pylist()


def by_id(table: pa.Table, columns: Sequence[str]) -> dict[str, dict]:
    """``{id: {column: value}}`` for the given columns."""
    data = {c: column(table, c) for c in ("id", *columns)}
    return {i: {c: data[c][k] for c in columns} for k, i in enumerate(data["id"])}


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
    for f in registry:
        rows = [(k, r or "") for n, k, r in zip(names, kept, reasons, strict=True) if n == f.name]
        if not rows and f.kind == "model":
            notes[f.name] = "judged no photo (its input was not given or was empty)"
        elif all(k for k, _ in rows) and len({r for _, r in rows}) == 1 and rows[0][1].startswith(f"{f.name}: "):
            notes[f.name] = rows[0][1].removeprefix(f"{f.name}: ")
    return notes


# Imported after the helpers above, which the filter modules use.
from filters import chip, indoor, location, photo, relevance, verdicts  # noqa: E402

# Registry order is the funnel order: a photo dropped by several filters is counted once, under
# the first. Cheap upstream facts first, then location, chips, models, and the curator last.
REGISTRY: list[Filter] = [
    Filter("download", photo.download, "rule"),
    Filter("single_band", photo.single_band, "rule"),
    Filter("colour_mode", photo.colour_mode, "rule"),
    Filter("too_small", photo.too_small, "rule"),
    Filter("duplicate_image", photo.duplicate_image, "rule"),
    Filter("licence", photo.licence, "rule"),
    Filter("coordinates", location.coordinates, "rule"),
    Filter("accuracy", photo.accuracy, "rule"),
    Filter("deny_list", location.deny_list, "rule"),
    Filter("pairing", location.pairing, "rule"),
    Filter("density", location.density, "rule"),
    Filter("split_buffer", location.split_buffer, "rule"),
    Filter("chip_error", chip.chip_error, "rule"),
    Filter("chip_nodata", chip.chip_nodata, "rule"),
    Filter("chip_uniform", chip.chip_uniform, "rule"),
    Filter("indoor", indoor.indoor, "model"),
    Filter("relevance", relevance.relevance, "model"),
    Filter("curator", verdicts.curator, "rule"),
]

__all__ = [
    "REGISTRY",
    "Filter",
    "FilterFn",
    "Tables",
    "by_id",
    "column",
    "decisions_table",
    "filter_notes",
    "filter_order",
    "first_drops",
    "reason_code",
]
