"""Curator verdicts (review/verdicts.csv): the latest verdict per photo keeps or drops it."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from filters import Tables, column, decisions_table
from pipeline.config import FilterParams
from pipeline.errors import CatalogError

log = logging.getLogger(__name__)

COLUMNS = ("id", "verdict", "curator", "timestamp", "note")
KEEP = "keep"
VERDICTS = (KEEP, "drop_indoor", "drop_irrelevant", "drop_wrong_location")


@dataclass(frozen=True)
class Verdict:
    id: str
    verdict: str
    curator: str
    timestamp: datetime
    note: str
    line: int  # line in the CSV file (the header is line 1)


def parse_timestamp(text: str, where: str) -> datetime:
    """An ISO 8601 verdict timestamp (naive = UTC); CatalogError naming ``where`` otherwise."""
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CatalogError(f"{where}: timestamp {text!r} is not ISO 8601 (e.g. 2026-01-31T12:00:00Z)") from None
    # A naive timestamp is taken as UTC so it can be compared with zoned ones.
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _verdict(row: list[str], header: list[str], where: str, line: int) -> Verdict:
    if len(row) != len(header):
        raise CatalogError(f"{where}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
    r = dict(zip(header, row, strict=True))
    vid = r["id"].strip()
    if not vid:
        raise CatalogError(f"{where}: empty id")
    verdict = r["verdict"].strip()
    if verdict not in VERDICTS:
        raise CatalogError(f"{where}: unknown verdict {verdict!r} (allowed: {', '.join(VERDICTS)})")
    return Verdict(
        vid, verdict, r["curator"].strip(), parse_timestamp(r["timestamp"], where), r.get("note", "").strip(), line
    )


def read_verdicts(path: str | Path) -> list[Verdict]:
    """Every row of a verdicts CSV, checked; a malformed row raises CatalogError naming its line."""
    path = Path(path)
    if not path.exists():
        log.info("%s does not exist: no curator verdicts", path)
        return []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise CatalogError(f"{path} line 1: header lacks {', '.join(missing)} (expected {','.join(COLUMNS)})")
        out = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            out.append(_verdict(row, header, f"{path} line {reader.line_num}", reader.line_num))
    return out


def latest_verdicts(path: str | Path) -> dict[str, Verdict]:
    """``{id: verdict}``: the latest row per id wins, by timestamp and then by position in the file."""
    latest: dict[str, Verdict] = {}
    for v in read_verdicts(path):
        old = latest.get(v.id)
        if old is None or (v.timestamp, v.line) >= (old.timestamp, old.line):
            latest[v.id] = v
    return latest


def curator(tables: Tables, params: FilterParams) -> pa.Table:
    """Apply curator verdicts: ``keep`` is recorded (it overrides model drops), ``drop_*`` drops."""
    verdicts = latest_verdicts(params.verdicts)
    photo_ids = set(column(tables.photos, "id"))
    unknown = sorted(set(verdicts) - photo_ids)
    if unknown:
        log.warning(
            "%s: %d verdict(s) for ids not in the photos table (ignored): %s",
            params.verdicts,
            len(unknown),
            ", ".join(unknown[:10]) + (", ..." if len(unknown) > 10 else ""),
        )
    out = []
    for i in sorted(set(verdicts) & photo_ids):
        v = verdicts[i]
        if v.verdict == KEEP:
            out.append((i, True, "curator: keep", None))
        else:
            out.append((i, False, f"{v.verdict}: {v.note}" if v.note else v.verdict, None))
    return decisions_table("curator", out)
