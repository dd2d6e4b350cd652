"""The training sets a study compares: nested seeded subsets of a manifest, and their sizes.

A subset of fraction f is the first ``round(f * N)`` rows of one seeded permutation of the
manifest's ids (:func:`pipeline.neighbours.seeded_order`), so subsets of one seed are nested
(every 1/8 subset lies inside the 1/4 one) and the same ids + seed always give the same rows,
whatever the row order of the file.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import StageInputError
from pipeline.neighbours import seeded_order
from pipeline.schemas import MANIFEST, write_table

MIN_PAIRS = 2  # training needs two pairs (an in-batch negative)


def subset_size(n: int, fraction: float) -> int:
    """Rows in the ``fraction`` subset of ``n`` rows: ``round(fraction * n)``, at least 2 (and at most ``n``)."""
    return min(n, max(MIN_PAIRS, round(fraction * n)))


def nested_subset(table: pa.Table, size: int, seed: int) -> pa.Table:
    """The first ``size`` rows of ``table`` in the seeded order of its ids (nested across sizes), sorted by id."""
    if size > table.num_rows:
        raise StageInputError(f"a subset of {size} rows was asked of a manifest with {table.num_rows}")
    order = seeded_order(table.column("id"), seed)[:size]
    out = table.take(pa.array(order, pa.int64()))
    return out.take(pc.sort_indices(out, sort_keys=[("id", "ascending")]))


def fraction_subset(table: pa.Table, fraction: float, seed: int) -> pa.Table:
    """The nested subset of ``fraction`` of ``table`` (:func:`subset_size` rows)."""
    return nested_subset(table, subset_size(table.num_rows, fraction), seed)


def write_manifest(table: pa.Table, path: str | Path) -> str:
    """Write a variant's manifest (MANIFEST schema) and return its path."""
    write_table(table, path, MANIFEST)
    return str(path)

