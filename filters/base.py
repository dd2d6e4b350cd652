"""What every filter shares: the tables it reads, its registry entry, and the decisions table it returns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import FilterParams
from pipeline.schemas import DECISIONS, table_from_rows
from pipeline.verdicts import Verdict


@dataclass(frozen=True)
class Tables:
    """The stage tables filters read (schemas in ``pipeline.schemas``)."""

    photos: pa.Table
    downloads: pa.Table
    pairs: pa.Table
    chips: pa.Table
    scores: pa.Table | None = None  # classify stage (indoor vote); None: the indoor rule judges nothing
    relevance: pa.Table | None = None  # relevance stage (head trained on curator verdicts)
    # {sha256: ok downloads with those bytes} over the whole run, for hashes more than one download has:
    # the filter stage reads the tables in parts (pipeline/tablestream.py), so a count across photos
    # comes from here; None: count within these tables
    shared_bytes: Mapping[str, int] | None = None
    # {id: latest verdict} of ``filter.verdicts``, read once a run (the filter stage judges the photos a
    # part at a time); None: read from the file
    verdicts: Mapping[str, Verdict] | None = None


FilterFn = Callable[[Tables, FilterParams], pa.Table]
# A thinning filter chooses among the photos every other filter kept (the candidates), so it only
# ever drops a photo in favour of one that is in the manifest; it judges the candidates only. It runs
# once over the whole run on the candidates' ``PLACES`` (id-sorted parts, in id order: the filter
# stage streams them from disk, so memory need not grow with the photos) and yields DECISIONS parts
# in any order.
PLACES = pa.schema([("id", pa.string()), ("epsg", pa.int32()), ("x_m", pa.float64()), ("y_m", pa.float64())])
ThinningFn = Callable[[Iterable[pa.Table], FilterParams], Iterable[pa.Table]]


def places_of(pairs: pa.Table, candidates: pa.Array) -> pa.Table:
    """The ``PLACES`` of the ``candidates`` (ids) that have a place in ``pairs``, sorted by id."""
    pairs = pairs.select(PLACES.names)
    pairs = pairs.filter(pc.and_(pc.is_in(pairs["id"], value_set=candidates), pc.is_valid(pairs["x_m"])))
    return pairs.take(pc.sort_indices(pairs["id"])).combine_chunks().cast(PLACES)


class Filter(NamedTuple):
    name: str
    fn: FilterFn | ThinningFn
    kind: Literal["rule", "model"]
    thins: bool = False  # runs after every other filter (and the curator override), on their survivors


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
