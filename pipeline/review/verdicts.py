"""The curator verdicts table (``review/verdicts.csv``): append-only rows, latest per id wins.

Columns ``id,verdict,curator,timestamp,note``. Saving appends rows under an exclusive lock
(``fcntl.flock`` on the file's folder) with one ``write`` and an ``fsync``, and takes the UTC
timestamp inside the lock, so file order and timestamps agree and two curators (or two browser
tabs) saving at once lose nothing. Superseded verdicts stay in the file as history; ``retract``
(the review page's undo) removes exactly the rows it names, atomically (temp file + rename).
Reading follows the filter stage: the latest row per id wins, by timestamp and then by position.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import logging
import os
import tempfile
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from filters.verdicts import COLUMNS, VERDICTS, parse_timestamp
from pipeline.errors import CatalogError, CrossviewError

log = logging.getLogger(__name__)

MAX_NOTE = 500


class VerdictError(CrossviewError, ValueError):
    """A verdict names an unknown photo id or an unknown verdict."""


@dataclass(frozen=True)
class Row:
    """One line of the verdicts table."""

    id: str
    verdict: str
    curator: str
    timestamp: str  # ISO 8601 UTC, e.g. 2026-01-31T12:00:00.123456Z
    note: str = ""

    def key(self) -> tuple[str, str, str]:
        return (self.id, self.timestamp, self.curator)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def utc_now() -> str:
    """The current UTC time as ISO 8601 with microseconds and a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def clean_note(note: str | None) -> str:
    """A note on one line, trimmed and capped, so every verdict stays one CSV line."""
    return " ".join((note or "").split())[:MAX_NOTE]


def check_verdict(verdict: str) -> str:
    if verdict not in VERDICTS:
        raise VerdictError(f"unknown verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    return verdict


class VerdictTable:
    """The verdicts CSV at ``path``; every write holds an exclusive lock on its folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cache: tuple[tuple | None, list[Row], dict[str, Row]] = (None, [], {})

    # -- reading ---------------------------------------------------------------------------

    def stamp(self) -> tuple | None:
        """Changes whenever the file does (inode, size, mtime); None when it does not exist."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> tuple[tuple | None, list[Row], dict[str, Row]]:
        stamp = self.stamp()
        if stamp is None:
            return (None, [], {})
        if self._cache[0] != stamp:
            with self._locked(fcntl.LOCK_SH):  # never read half of a row being appended
                stamp = self.stamp()
                rows = parse(self.path.read_text(encoding="utf-8"), str(self.path)) if stamp else []
            self._cache = (stamp, rows, latest(rows))
        return self._cache

    def rows(self) -> list[Row]:
        """Every row in file order (cached until the file changes); malformed rows raise CatalogError."""
        return self._load()[1]

    def latest(self) -> dict[str, Row]:
        """``{id: row}``: the latest verdict per id (by timestamp, then by position in the file)."""
        return self._load()[2]

    def history(self, photo_id: str) -> list[Row]:
        return [r for r in self.rows() if r.id == photo_id]

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
        # The lock is on the folder, not the file, so that retract can replace the file by
        # rename without a waiting writer appending to the replaced inode.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append(
        self,
        ids: Sequence[str],
        verdict: str,
        curator: str,
        note: str | None = None,
        known: Container[str] | None = None,
    ) -> list[Row]:
        """Append one row per id (all or none); unknown ids or verdicts raise VerdictError."""
        check_verdict(verdict)
        if not ids:
            raise VerdictError("no photo ids given")
        if known is not None:
            unknown = [i for i in ids if i not in known]
            if unknown:
                shown = ", ".join(repr(i) for i in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
                raise VerdictError(f"unknown photo id(s) {shown}: not in the photos table; nothing was saved")
        note, curator = clean_note(note), clean_note(curator) or "unknown"
        with self._locked():
            stamp = utc_now()  # inside the lock: file order and timestamps agree
            rows = [Row(str(i), verdict, curator, stamp, note) for i in ids]
            self._write_append(rows)
        log.info("%s: %s by %s for %d photo(s)", self.path, verdict, curator, len(rows))
        return rows

    def _write_append(self, rows: Sequence[Row]) -> None:
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a+b") as fh:
            prefix = b""
            if fresh:
                prefix = format_rows([], header=True).encode()
            else:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a hand edit left no final newline
                    prefix = b"\n"
            fh.write(prefix + format_rows(rows).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        if fresh:
            _fsync_dir(self.path.parent)

    def retract(self, keys: Iterable[tuple[str, str, str]]) -> list[Row]:
        """Remove the rows named by ``(id, timestamp, curator)`` (undo); return the rows removed."""
        wanted = set(keys)
        with self._locked():
            if not self.path.exists():
                return []
            kept, removed = [], []
            for row in parse(self.path.read_text(encoding="utf-8"), str(self.path)):
                (removed if row.key() in wanted else kept).append(row)
            if removed:
                _replace(self.path, format_rows(kept, header=True))
        log.info("%s: retracted %d verdict row(s)", self.path, len(removed))
        return removed


def latest(rows: Iterable[Row]) -> dict[str, Row]:
    """The latest row per id: by timestamp, ties broken by position (later wins)."""
    best: dict[str, tuple[datetime, int, Row]] = {}
    for n, row in enumerate(rows):
        key = (parse_timestamp(row.timestamp, f"verdict for {row.id}"), n)
        old = best.get(row.id)
        if old is None or key >= old[:2]:
            best[row.id] = (*key, row)
    return {i: v[2] for i, v in best.items()}


def parse(text: str, where: str = "verdicts") -> list[Row]:
    """Rows of a verdicts CSV; a bad header, verdict or timestamp raises CatalogError naming the line."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if not header:
        return []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise CatalogError(f"{where} line 1: header lacks {', '.join(missing)} (expected {','.join(COLUMNS)})")
    out = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        line = f"{where} line {reader.line_num}"
        if len(cells) != len(header):
            raise CatalogError(f"{line}: expected {len(header)} fields ({','.join(header)}), got {len(cells)}")
        r = {k: v.strip() for k, v in zip(header, cells)}
        if r["verdict"] not in VERDICTS:
            raise CatalogError(f"{line}: unknown verdict {r['verdict']!r} (allowed: {', '.join(VERDICTS)})")
        parse_timestamp(r["timestamp"], line)
        out.append(Row(r["id"], r["verdict"], r["curator"], r["timestamp"], r.get("note", "")))
    return out


def format_rows(rows: Iterable[Row], header: bool = False) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r.id, r.verdict, r.curator, r.timestamp, r.note])
    return buf.getvalue()


def _replace(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
