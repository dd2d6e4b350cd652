"""The curator verdicts CSV (``review/verdicts.csv``): its columns, verdict names, parsing and the latest row per id.

Columns ``id,verdict,curator,timestamp,note``; one row per verdict, superseded rows kept as
history. The latest row per id wins, by timestamp (ISO 8601; naive means UTC) and then by
position in the file. The filter stage (curator rule), the relevance stage (labels) and the
review page (which appends rows, :mod:`pipeline.review.verdict_table`) all read it here.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import CatalogError

log = logging.getLogger(__name__)

COLUMNS = ("id", "verdict", "curator", "timestamp", "note")
KEEP = "keep"
VERDICTS = (KEEP, "drop_indoor", "drop_irrelevant", "drop_wrong_location")


@dataclass(frozen=True)
class Verdict:
    """One row of the verdicts table, as written (fields trimmed)."""

    id: str
    verdict: str
    curator: str
    timestamp: str  # ISO 8601, e.g. 2026-01-31T12:00:00.123456Z
    note: str = ""

    def key(self) -> tuple[str, str, str]:
        """What names one row (the review page's undo): id, timestamp, curator."""
        return (self.id, self.timestamp, self.curator)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def parse_timestamp(text: str, where: str) -> datetime:
    """An ISO 8601 verdict timestamp (naive = UTC); CatalogError naming ``where`` otherwise."""
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CatalogError(f"{where}: timestamp {text!r} is not ISO 8601 (e.g. 2026-01-31T12:00:00Z)") from None
    # A naive timestamp is taken as UTC so it can be compared with zoned ones.
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _row(cells: list[str], header: list[str], where: str) -> Verdict:
    if len(cells) != len(header):
        raise CatalogError(f"{where}: expected {len(header)} fields ({','.join(header)}), got {len(cells)}")
    r = {k: v.strip() for k, v in zip(header, cells, strict=True)}
    if not r["id"]:
        raise CatalogError(f"{where}: empty id")
    if r["verdict"] not in VERDICTS:
        raise CatalogError(f"{where}: unknown verdict {r['verdict']!r} (allowed: {', '.join(VERDICTS)})")
    parse_timestamp(r["timestamp"], where)
    return Verdict(r["id"], r["verdict"], r["curator"], r["timestamp"], r.get("note", ""))


def parse(text: str, where: str = "verdicts") -> list[Verdict]:
    """Every row of a verdicts CSV in file order; a bad header or row raises CatalogError naming its line.

    An empty text (a file not yet written) has no rows; blank lines are skipped.
    """
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if not header:
        return []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise CatalogError(f"{where} line 1: header lacks {', '.join(missing)} (expected {','.join(COLUMNS)})")
    return [_row(cells, header, f"{where} line {reader.line_num}") for cells in reader if any(c.strip() for c in cells)]


def read(path: str | Path) -> list[Verdict]:
    """The rows of the verdicts file at ``path``; none when it does not exist."""
    path = Path(path)
    if not path.exists():
        log.info("%s does not exist: no curator verdicts", path)
        return []
    return parse(path.read_text(encoding="utf-8"), str(path))


def latest(rows: Iterable[Verdict]) -> dict[str, Verdict]:
    """``{id: row}``: the latest row per id, by timestamp, ties broken by position (later wins)."""
    best: dict[str, tuple[datetime, int, Verdict]] = {}
    for n, row in enumerate(rows):
        key = (parse_timestamp(row.timestamp, f"verdict for {row.id}"), n)
        old = best.get(row.id)
        if old is None or key >= old[:2]:
            best[row.id] = (*key, row)
    return {i: v[2] for i, v in best.items()}


def latest_verdicts(path: str | Path) -> dict[str, Verdict]:
    """``{id: row}``: the latest verdict per photo in the file at ``path``."""
    return latest(read(path))


def format_rows(rows: Iterable[Verdict], header: bool = False) -> str:
    """Rows as CSV text (one line each), optionally preceded by the header."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r.id, r.verdict, r.curator, r.timestamp, r.note])
    return buf.getvalue()
