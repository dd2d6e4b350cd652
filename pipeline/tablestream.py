"""Id-sorted tables read and written one range of ids at a time, so a table stage's memory does not grow with its rows.

Every stage table is written sorted by id (:func:`pipeline.schemas.write_table`), so the rows of one
range of ids lie in one stretch of every file. :func:`id_chunks` takes the photos table ``rows`` at a
time and, from each other table, the rows whose ids come up to the chunk's last id, reading every
file forward once. A stage whose result for a photo depends only on that photo's rows gets, chunk by
chunk, the rows it would get from the whole tables. :class:`TableWriter` writes rows in id order and
gives the bytes :func:`~pipeline.schemas.write_table` gives for the whole table: the same row groups,
and for a table with a place the same GeoParquet metadata (its bounding box is known only at the end,
so such a file is written twice: rows and geometry, then the same row groups under the final metadata).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import SchemaError
from pipeline.geoparquet import append_geometry, geo_text, merge_metadata
from pipeline.schemas import (
    GEOMETRY,
    PARQUET_OPTIONS,
    ROW_GROUP_ROWS,
    check_file,
    conform,
    schema_name,
    sort_rows,
    unreadable,
    written_by,
)
from pipeline.store import atomic_file

CHUNK_ROWS = 16_384  # photos a chunk: with their rows in every table, a few tens of MB


class Cursor:
    """A forward reader of one id-sorted table file: :meth:`take` the next rows, or :meth:`upto` an id."""

    def __init__(self, path: str | Path, schema: pa.Schema, columns: Sequence[str] | None = None,
                 geometry: bool = True, batch_rows: int | None = None) -> None:  # fmt: skip
        """``geometry``: as the file was written (:class:`TableWriter`); ``batch_rows``: rows read at a time
        (``CHUNK_ROWS`` when not given)."""
        self.path, self._table_schema = check_file(path, schema, geometry), schema
        names = list(columns) if columns else schema.names
        self.schema = pa.schema([schema.field(n) for n in names])
        try:
            # no pre-buffering: pages are read as batches need them, not a whole row group at once
            source = pq.ParquetFile(self.path, pre_buffer=False, buffer_size=1 << 20)
            self._batches = source.iter_batches(batch_size=batch_rows or CHUNK_ROWS, columns=names, use_threads=False)
        except (pa.ArrowException, OSError) as err:
            raise unreadable(self.path, schema, err) from None
        self._buffer = self.schema.empty_table()
        self._last: str | None = None

    def _more(self) -> bool:
        """Append the next batch to the buffer (False at the end), checking that ids do not go back."""
        try:
            batch = next(self._batches)
        except StopIteration:
            return False
        except (pa.ArrowException, OSError) as err:
            raise unreadable(self.path, self._table_schema, err) from None
        ids = batch.column("id")
        if len(ids):
            back = self._last is not None and ids[0].as_py() < self._last
            if back or (len(ids) > 1 and pc.any(pc.less(ids.slice(1), ids.slice(0, len(ids) - 1))).as_py()):
                raise SchemaError(f"{self.path} is not sorted by id; rerun {written_by(self._table_schema)}")
            self._last = ids[-1].as_py()
        self._buffer = pa.concat_tables([self._buffer, pa.Table.from_batches([batch], self.schema)])
        return True

    def _split(self, n: int) -> pa.Table:
        head, self._buffer = self._buffer.slice(0, n), self._buffer.slice(n)
        return head

    def upto(self, last: str | None) -> pa.Table:
        """The next rows whose ids are at most ``last`` (every remaining row when ``last`` is None)."""
        while last is None or not self._buffer.num_rows or self._buffer["id"][-1].as_py() <= last:
            if not self._more():
                break
        if last is None:
            return self._split(self._buffer.num_rows)
        return self._split(pc.sum(pc.less_equal(self._buffer["id"], last)).as_py() or 0)

    def peek(self, n: int) -> str | None:
        """The id of the ``n``-th row still to read (of the last one, when fewer are left; None at the end)."""
        while self._buffer.num_rows < n and self._more():
            pass
        rows = self._buffer.num_rows
        return self._buffer["id"][min(n, rows) - 1].as_py() if rows else None

    def parts(self) -> Iterator[pa.Table]:
        """Every remaining row, a batch at a time."""
        while self._buffer.num_rows or self._more():
            yield self._split(self._buffer.num_rows)

    def take(self, n: int) -> pa.Table:
        """The next ``n`` rows, and any further rows with the last one's id (fewer at the end)."""
        while self._buffer.num_rows < n and self._more():
            pass
        head = self._split(n)
        return pa.concat_tables([head, self.upto(head["id"][-1].as_py())]) if head.num_rows else head


def id_chunks(
    lead: Cursor, others: Mapping[str, Cursor], rows: int | None = None
) -> Iterator[tuple[pa.Table, dict[str, pa.Table]]]:
    """``(lead rows, {name: rows})`` for consecutive ranges of ids, ``rows`` lead rows at a time.

    Each range ends at its last lead id; the last range (with no lead rows) holds whatever the other
    tables have after the lead's last id, so every row of every table is in exactly one chunk.
    ``rows``: ``CHUNK_ROWS`` when not given.
    """
    rows = rows or CHUNK_ROWS
    while True:
        head = lead.take(rows)
        last = head["id"][-1].as_py() if head.num_rows else None
        yield head.combine_chunks(), {name: c.upto(last).combine_chunks() for name, c in others.items()}
        if last is None:
            return


def repeated(
    path: str | Path,
    schema: pa.Schema,
    column: str,
    keep: Callable[[pa.Table], pa.Array] | None = None,
    needs: Sequence[str] = (),
) -> dict[str, tuple[str, int]]:
    """``{value: (first id, rows)}`` for the values of ``column`` that more than one row has.

    Only rows where ``keep(part)`` is true count (every row without ``keep``; ``part`` has the columns
    id, ``column`` and ``needs``). The file is read forward
    twice, keeping 8 bytes a row: the first pass counts a 64-bit hash of each value, the second counts
    exactly the values whose hash came up more than once (few, unless most rows repeat). Ids are sorted,
    so the first id is the smallest.
    """

    def kept() -> Iterator[pa.Table]:
        for part in Cursor(path, schema, list(dict.fromkeys(["id", column, *needs]))).parts():
            yield part.filter(keep(part)) if keep else part

    keys = [np.fromiter((hash(v) for v in part[column].to_pylist()), np.int64, part.num_rows) for part in kept()]
    values, counts = np.unique(np.concatenate(keys) if keys else np.empty(0, np.int64), return_counts=True)
    suspects = set(values[counts > 1].tolist())
    del keys, values, counts
    found: dict[str, tuple[str, int]] = {}
    for part in kept():
        for pid, value in zip(part["id"].to_pylist(), part[column].to_pylist(), strict=True):
            if hash(value) in suspects:
                first, n = found.get(value, (pid, 0))
                found[value] = (first, n + 1)
    return {v: hit for v, hit in sorted(found.items()) if hit[1] > 1}


class TableWriter:
    """Write a table in id order, part by part, with the bytes ``write_table`` would give the whole table.

    Use as a context manager: the file appears (atomically) only when the block ends without error.
    Parts must come in sort order (the caller reads its inputs in id order); they are cut into row
    groups of ``ROW_GROUP_ROWS`` like ``write_table`` cuts the whole table.
    """

    def __init__(self, path: str | Path, schema: pa.Schema, geometry: bool = True) -> None:
        """``geometry=False``: the declared columns only, for a stage's scratch table that is read back
        (with ``Cursor(..., geometry=False)``) and rewritten, so deriving geometry twice would be waste."""
        self.path, self.schema = Path(path), schema
        self.rows = 0
        self._geometry = GEOMETRY.get(schema_name(schema) or "") if geometry else ()
        self._metas: dict[str, dict] = {}  # the geometry columns' metadata over every row so far
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def __enter__(self) -> Self:
        self._atomic = atomic_file(self.path)
        self._tmp = Path(self._atomic.__enter__())
        self._rows_path = self._tmp.with_name(self._tmp.name + ".rows") if self._geometry else self._tmp
        plain = self.schema.remove_metadata()
        self._empty = conform(plain.empty_table(), self.schema, self.path)
        if self._geometry:
            self._empty, self._metas = append_geometry(self._empty, self._geometry)
        self._writer = pq.ParquetWriter(self._rows_path, self._empty.schema, **PARQUET_OPTIONS)
        return self

    def write(self, table: pa.Table) -> None:
        """Append rows (checked against the schema) after every row written so far."""
        table = conform(table, self.schema, self.path).replace_schema_metadata(None)
        if self._geometry:
            table, metas = append_geometry(table, self._geometry)
            self._metas = {k: merge_metadata(self._metas[k], metas[k]) for k in metas}
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, n: int) -> None:
        rows = pa.concat_tables(self._pending) if self._pending else self._empty
        # one contiguous table a row group: Parquet pages (and so the bytes) depend on the chunks written
        self._writer.write_table(rows.slice(0, n).combine_chunks(), row_group_size=ROW_GROUP_ROWS)
        rest = rows.slice(n)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def __exit__(self, kind, err, trace) -> None:
        try:
            if kind is None:
                if self._pending_rows or not self.rows:
                    self._flush(self._pending_rows)  # an empty table still gets its (empty) row group
                self._writer.close()
                if self._geometry:
                    self._rewrite()
            else:
                self._writer.close()
        finally:
            if self._geometry:
                self._rows_path.unlink(missing_ok=True)
            self._atomic.__exit__(kind, err, trace)

    def _rewrite(self) -> None:
        """Copy the row groups under the ``geo`` metadata of the whole table (its bbox known only now)."""
        source = pq.ParquetFile(self._rows_path)
        schema = source.schema_arrow.with_metadata({"geo": geo_text(self._geometry, self._metas)})
        with pq.ParquetWriter(self._tmp, schema, **PARQUET_OPTIONS) as out:
            for k in range(source.num_row_groups):
                out.write_table(source.read_row_group(k).replace_schema_metadata(schema.metadata),
                                row_group_size=ROW_GROUP_ROWS)  # fmt: skip


RUN_ROWS = 131_072  # rows a SortingWriter sorts in memory before it spills them to a sorted run (~50 MB of photos)
MERGE_MIN_ROWS = 1_024  # rows read at a time from each run while merging, at least
KEY_MERGE_ROWS = 1 << 18  # rows a KeySorter reads over all its runs at a time while merging (a few numbers each)


def value_runs(blocks: Iterable[pa.Table], column: str) -> Iterator[tuple[int, pa.Table]]:
    """``(value, rows)`` for each run of equal integer ``column`` values in blocks sorted by it (a run that
    spans blocks comes as consecutive pairs with one value): a key-sorted stream cut by, say, UTM zone."""
    for block in blocks:
        values = block[column].to_numpy()
        cuts = np.r_[0, np.flatnonzero(np.diff(values)) + 1, len(values)]
        for a, b in itertools.pairwise(cuts.tolist()):
            if b > a:
                yield int(values[a]), block.slice(a, b - a)


class _Runs:
    """Rows that come in any order, kept up to ``run_rows`` (``RUN_ROWS`` when not given), then sorted and
    spilled to a run file in a temp folder: what :class:`SortingWriter` and :class:`KeySorter` share. A
    subclass says how rows are checked (:meth:`_conform`), sorted (:meth:`_sort`) and spilled (:meth:`_spill`)."""

    _prefix = "crossview-sort-"

    def __init__(self, schema: pa.Schema, run_rows: int | None = None) -> None:
        self.schema, self.run_rows = schema, run_rows or RUN_ROWS
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._runs: list[Path] = []

    def __enter__(self) -> Self:
        self._tmp = tempfile.TemporaryDirectory(prefix=self._prefix)
        return self

    def write(self, table: pa.Table) -> None:
        """Add rows (checked against the schema), in any order."""
        table = self._conform(table)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= self.run_rows:
            self._spill()

    def _sorted_pending(self) -> pa.Table:
        rows = pa.concat_tables(self._pending) if self._pending else self.schema.empty_table()
        self._pending, self._pending_rows = [], 0
        return self._sort(rows)

    def _run_path(self, suffix: str) -> Path:
        return Path(self._tmp.name) / f"run{len(self._runs):05d}{suffix}"

    def _conform(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError

    def _sort(self, rows: pa.Table) -> pa.Table:
        raise NotImplementedError

    def _spill(self) -> None:
        raise NotImplementedError


class SortingWriter(_Runs):
    """Write rows that come in any order (unique ids) as an id-sorted table: the bytes ``write_table`` gives.

    Up to ``run_rows`` rows are kept; past that they are sorted and spilled to a temp run file, and at the
    end the runs are merged a range of ids at a time (:meth:`Cursor.peek`, :meth:`Cursor.upto`) into a
    :class:`TableWriter`. Memory: ``run_rows`` rows (twice, while sorting) and ``CHUNK_ROWS`` rows over the
    runs while merging (at least ``MERGE_MIN_ROWS`` a run: past 16 runs, 2M rows, that part grows). A table
    that fits in one run is sorted in memory and written, as ``write_table`` does. Atomic, as TableWriter.
    """

    def __init__(self, path: str | Path, schema: pa.Schema, run_rows: int | None = None) -> None:
        """``run_rows``: ``RUN_ROWS`` when not given."""
        super().__init__(schema, run_rows)
        self.path = Path(path)

    def _conform(self, table: pa.Table) -> pa.Table:
        return conform(table, self.schema, self.path)

    def _sort(self, rows: pa.Table) -> pa.Table:
        return sort_rows(rows)

    def _spill(self) -> None:
        run = self._run_path(".parquet")
        with TableWriter(run, self.schema, geometry=False) as writer:
            writer.write(self._sorted_pending())
        self._runs.append(run)

    def __exit__(self, kind, err, trace) -> None:
        try:
            if kind is None:
                with TableWriter(self.path, self.schema) as out:
                    if not self._runs:
                        out.write(self._sorted_pending())
                    else:
                        if self._pending_rows:
                            self._spill()
                        self._merge(out)
        finally:
            self._pending = []
            self._tmp.cleanup()

    def _merge(self, out: TableWriter) -> None:
        step = max(MERGE_MIN_ROWS, CHUNK_ROWS // len(self._runs))  # CHUNK_ROWS rows buffered over all runs
        cursors = [Cursor(run, self.schema, geometry=False, batch_rows=step) for run in self._runs]
        while True:
            # every run's rows up to the smallest of the runs' step-th ids: all rows up to that id
            ends = [end for end in (c.peek(step) for c in cursors) if end is not None]
            if not ends:
                return
            out.write(sort_rows(pa.concat_tables([c.upto(min(ends)) for c in cursors])))


def _at_most(columns: Sequence[np.ndarray], bound: Sequence) -> np.ndarray:
    """Rows whose key tuple (``columns``) is at most ``bound`` in lexicographic order."""
    below, equal = np.zeros(len(columns[0]), bool), np.ones(len(columns[0]), bool)
    for values, b in zip(columns, bound, strict=True):
        below |= equal & (values < b)
        equal &= values == b
    return below | equal


class KeySorter(_Runs):
    """Rows that come in any order, read back in the order of numeric ``keys`` a block at a time, with memory
    that does not grow with the rows: an external merge sort (the place-ordered sweeps of the pair and
    filter stages use it; :class:`SortingWriter` is its id-ordered, table-writing sibling).

    Up to ``run_rows`` rows are kept; past that they are sorted and spilled to a temp Arrow IPC run of
    ``MERGE_MIN_ROWS``-row batches, read back (not memory-mapped) ``KEY_MERGE_ROWS`` rows over all runs
    at a time while merging (at least a batch a run).
    The keys should make a total order (end them with a unique one): rows with equal keys come back in
    no promised order. Use as a context manager; :meth:`blocks` once, after the last :meth:`write`.
    """

    _prefix = "crossview-keysort-"

    def __init__(self, schema: pa.Schema, keys: Sequence[str], run_rows: int | None = None) -> None:
        super().__init__(schema, run_rows)
        self.keys = list(keys)

    def __exit__(self, kind, err, trace) -> None:
        self._pending = []
        self._tmp.cleanup()

    def _conform(self, table: pa.Table) -> pa.Table:
        return table.select(self.schema.names).cast(self.schema)

    def _sort(self, rows: pa.Table) -> pa.Table:
        return rows.sort_by([(k, "ascending") for k in self.keys]).combine_chunks()

    def _spill(self) -> None:
        run = self._run_path(".arrow")
        with pa.OSFile(str(run), "wb") as sink, pa.ipc.new_file(sink, self.schema) as writer:
            writer.write_table(self._sorted_pending(), max_chunksize=MERGE_MIN_ROWS)
        self._runs.append(run)

    def _key_columns(self, table: pa.Table) -> list[np.ndarray]:
        return [table[k].to_numpy() for k in self.keys]

    def blocks(self, rows: int | None = None) -> Iterator[pa.Table]:
        """Every row in key order: in blocks of ``rows`` (``CHUNK_ROWS`` when not given) when nothing was
        spilled, else as merged (up to ``KEY_MERGE_ROWS`` rows over the runs at a time)."""
        rows = rows or CHUNK_ROWS
        if not self._runs:
            table = self._sorted_pending()
            for a in range(0, table.num_rows, rows):
                yield table.slice(a, rows)
            return
        if self._pending_rows:
            self._spill()
        files = [pa.OSFile(str(run), "rb") for run in self._runs]
        try:
            yield from self._merge(files, max(1, KEY_MERGE_ROWS // len(files) // MERGE_MIN_ROWS))
        finally:
            for f in files:
                f.close()

    def _merge(self, files: list, batches: int) -> Iterator[pa.Table]:
        """Merge the runs, reading ``batches`` batches of each at a time (as each is used up)."""
        readers = [pa.ipc.open_file(f) for f in files]
        ahead = [0] * len(readers)  # next batch of each run
        buffers = [self.schema.empty_table() for _ in readers]
        keys = [self._key_columns(b) for b in buffers]  # each buffer's key columns
        while True:
            for k, reader in enumerate(readers):
                if not buffers[k].num_rows and ahead[k] < reader.num_record_batches:
                    end = min(ahead[k] + batches, reader.num_record_batches)
                    buffers[k] = pa.Table.from_batches([reader.get_batch(b) for b in range(ahead[k], end)], self.schema)
                    keys[k], ahead[k] = self._key_columns(buffers[k]), end
            live = [k for k in range(len(readers)) if buffers[k].num_rows]
            if not live:
                return
            # every row up to the smallest of the unfinished runs' buffered last keys (all rows, at the end)
            lasts = [tuple(c[-1] for c in keys[k]) for k in live if ahead[k] < readers[k].num_record_batches]
            bound = min(lasts) if lasts else None
            out = []
            for k in live:
                n = buffers[k].num_rows if bound is None else int(np.count_nonzero(_at_most(keys[k], bound)))
                out.append(buffers[k].slice(0, n))
                buffers[k], keys[k] = buffers[k].slice(n), [c[n:] for c in keys[k]]
            yield pa.concat_tables(out).sort_by([(key, "ascending") for key in self.keys]).combine_chunks()
