"""The persisted state of a Flickr harvest: its query plan and every finished page.

One folder per AOI and query fingerprint (bbox, licences, accuracy, page size, extras) under
``flickr.state_dir``::

    <state_dir>/<aoi>-<fingerprint hash>/plan.json          the cells, their status and totals
    <state_dir>/<aoi>-<fingerprint hash>/pages/<cell>/0001.json   one fetched page of photos

Every file is written to a temp file and renamed, so a process killed at any moment leaves
either the old or the new version. A page file's existence means that page is finished, so a
resumed harvest fetches only what is missing. ``plan.json`` records which upload-date ranges
were already planned (``roots``), so a rerun with a wider date range queries only the new part.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import StoreError
from pipeline.store import write_json

VERSION = 1

# Cell statuses: pending (not queried yet), fetching (probed, pages being fetched), split
# (too dense: replaced by its children), done (every page fetched), capped (still above
# Flickr's 4,000-result cap at the smallest cell and a one-second date range).
PENDING, FETCHING, SPLIT, DONE, CAPPED = "pending", "fetching", "split", "done", "capped"
FINISHED = (DONE, CAPPED)


@dataclass
class CellRecord:
    """What the plan knows about one query cell."""

    bbox: tuple[float, float, float, float]
    lo: int  # min_upload_date, unix seconds, inclusive
    hi: int  # max_upload_date, unix seconds, inclusive
    quad: str = ""
    status: str = PENDING
    total: int | None = None  # Flickr's `total` when probed
    pages: int | None = None  # pages to fetch
    fetched: int | None = None  # photos received, once finished
    children: list[str] = field(default_factory=list)


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:10]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def uncovered(ranges: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of ``[lo, hi]`` (inclusive) that no range in ``ranges`` covers."""
    parts, cursor = [], lo
    for a, b in sorted(ranges):
        if b < cursor or a > hi:
            continue
        if a > cursor:
            parts.append((cursor, a - 1))
        cursor = max(cursor, b + 1)
        if cursor > hi:
            break
    if cursor <= hi:
        parts.append((cursor, hi))
    return parts


class HarvestState:
    """The plan and fetched pages of one AOI's harvest, persisted under ``root``."""

    def __init__(self, root: str | Path, aoi: str, fingerprint: dict) -> None:
        self.aoi = aoi
        self.fingerprint = fingerprint
        self.dir = Path(root) / f"{_safe_name(aoi)}-{fingerprint_hash(fingerprint)}"
        self.roots: list[tuple[int, int]] = []
        self.cells: dict[str, CellRecord] = {}
        self._counts: dict[tuple[str, int], int] = {}
        self._load()

    def __repr__(self) -> str:
        return f"HarvestState({str(self.dir)!r}, cells={len(self.cells)})"

    @property
    def plan_path(self) -> Path:
        return self.dir / "plan.json"

    def _load(self) -> None:
        for stale in self.dir.rglob(".*.tmp"):  # left by a run killed mid-write; never a finished file
            stale.unlink(missing_ok=True)
        if not self.plan_path.exists():
            return
        try:
            data = json.loads(self.plan_path.read_text())
            if data.get("version") != VERSION or data.get("fingerprint") != self.fingerprint:
                raise ValueError("version or fingerprint differs")
            self.roots = [tuple(r) for r in data["roots"]]
            self.cells = {cid: CellRecord(**{**rec, "bbox": tuple(rec["bbox"])}) for cid, rec in data["cells"].items()}
        except (ValueError, KeyError, TypeError) as err:
            raise StoreError(
                f"{self.plan_path}: unreadable harvest state ({err}); delete {self.dir} to start this AOI's search over"
            ) from None

    def save(self) -> None:
        """Persist the plan atomically."""
        data = {
            "version": VERSION,
            "aoi": self.aoi,
            "fingerprint": self.fingerprint,
            "roots": [list(r) for r in self.roots],
            "cells": {cid: asdict(rec) for cid, rec in sorted(self.cells.items())},
        }
        write_json(data, self.plan_path, indent=None, sort_keys=True)

    def add_range(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Record that ``[lo, hi]`` is wanted; return its parts that no earlier run planned."""
        new = uncovered(self.roots, lo, hi)
        self.roots.extend(new)
        return new

    def _page_dir(self, cell_id: str) -> Path:
        return self.dir / "pages" / _safe_name(cell_id.split("/", 1)[-1])

    def page_path(self, cell_id: str, page: int) -> Path:
        return self._page_dir(cell_id) / f"{page:04d}.json"

    def save_page(self, cell_id: str, page: int, photos: list[dict]) -> None:
        """Persist one fetched page (its existence marks the page finished)."""
        page_doc = {"cell": cell_id, "page": page, "photo": photos}
        write_json(page_doc, self.page_path(cell_id, page), indent=None, sort_keys=True)
        self._counts[(cell_id, page)] = len(photos)

    def photo_count(self, cell_id: str) -> int:
        """Photos on a cell's finished pages (pages of an earlier run are read once)."""
        total = 0
        for page in self.done_pages(cell_id):
            if (cell_id, page) not in self._counts:
                self._counts[(cell_id, page)] = len(json.loads(self.page_path(cell_id, page).read_text())["photo"])
            total += self._counts[(cell_id, page)]
        return total

    def done_pages(self, cell_id: str) -> set[int]:
        folder = self._page_dir(cell_id)
        if not folder.is_dir():
            return set()
        return {int(p.stem) for p in folder.glob("[0-9]*.json")}

    def cell_photos(self, cell_id: str) -> Iterator[dict]:
        """The photos of a cell's finished pages, in page order."""
        for page in sorted(self.done_pages(cell_id)):
            yield from json.loads(self.page_path(cell_id, page).read_text())["photo"]

    def drop_pages(self, cell_id: str) -> None:
        """Forget a cell's pages (a probe page of a cell that is being split)."""
        for page in self.done_pages(cell_id):
            self.page_path(cell_id, page).unlink(missing_ok=True)
