"""Saving curator verdicts (``review/verdicts.csv``, format in :mod:`pipeline.verdicts`): append-only rows.

Saving appends rows under an exclusive lock (``fcntl.flock`` on the file's folder) with one
``write`` and an ``fsync``, and takes the UTC timestamp inside the lock, so file order and
timestamps agree and two curators (or two browser tabs) saving at once lose nothing. Superseded
verdicts stay in the file as history; ``retract`` (the review page's undo) removes exactly the rows
it names, atomically (temp file + fsync + rename).
Reading is :mod:`pipeline.verdicts`'s, the filter stage's: the latest row per id wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Container, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import CrossviewError
from pipeline.store import fsync_dir, write_text_atomic
from pipeline.verdicts import VERDICTS, Verdict, format_rows, latest, parse

log = logging.getLogger(__name__)

MAX_NOTE = 500


class VerdictError(CrossviewError, ValueError):
    """A verdict names an unknown photo id or an unknown verdict."""


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
        self._cache: tuple[tuple | None, list[Verdict], dict[str, Verdict]] = (None, [], {})

    # -- reading ---------------------------------------------------------------------------

    def stamp(self) -> tuple | None:
        """Changes whenever the file does (inode, size, mtime); None when it does not exist."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> tuple[tuple | None, list[Verdict], dict[str, Verdict]]:
        stamp = self.stamp()
        if stamp is None:
            return (None, [], {})
        if self._cache[0] != stamp:
            with self._locked(fcntl.LOCK_SH):  # never read half of a row being appended
                stamp = self.stamp()
                rows = parse(self.path.read_text(encoding="utf-8"), str(self.path)) if stamp else []
            self._cache = (stamp, rows, latest(rows))
        return self._cache

    def rows(self) -> list[Verdict]:
        """Every row in file order (cached until the file changes); malformed rows raise CatalogError."""
        return self._load()[1]

    def latest(self) -> dict[str, Verdict]:
        """``{id: row}``: the latest verdict per id (by timestamp, then by position in the file)."""
        return self._load()[2]

    def history(self, photo_id: str) -> list[Verdict]:
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
    ) -> list[Verdict]:
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
            rows = [Verdict(str(i), verdict, curator, stamp, note) for i in ids]
            self._write_append(rows)
        log.info("%s: %s by %s for %d photo(s)", self.path, verdict, curator, len(rows))
        return rows

    def _write_append(self, rows: Sequence[Verdict]) -> None:
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
            fsync_dir(self.path.parent)

    def retract(self, keys: Iterable[tuple[str, str, str]]) -> list[Verdict]:
        """Remove the rows named by ``(id, timestamp, curator)`` (undo); return the rows removed."""
        wanted = set(keys)
        with self._locked():
            if not self.path.exists():
                return []
            kept, removed = [], []
            for row in parse(self.path.read_text(encoding="utf-8"), str(self.path)):
                (removed if row.key() in wanted else kept).append(row)
            if removed:
                write_text_atomic(format_rows(kept, header=True), self.path, fsync=True)
        log.info("%s: retracted %d verdict row(s)", self.path, len(removed))
        return removed
