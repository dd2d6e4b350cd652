"""The query plan: split an AOI into cells small enough that Flickr returns every photo.

Flickr returns at most 4,000 distinct results for one query (``SEARCH_CAP``). A cell whose
``total`` exceeds ``flickr.split_threshold`` is split into four quadrants (a quadtree on the
bbox) while both halves stay at least ``flickr.min_cell_deg`` wide, then in two by upload date.
A cell at or below the threshold is fetched page by page, every page up to ``pages`` (WITW
skipped the last one), stopping early on an empty page. Everything is recorded in a
:class:`~pipeline.flickr.state.HarvestState`, so an interrupted harvest resumes where it stopped.

Cell ids are stable: ``AOI_3_Paris/q0123/2019-01-01..2019-06-30`` (quadrant digits 0 SW, 1 SE,
2 NW, 3 NE from the AOI's bbox; inclusive upload-date range, UTC, seconds shown when the
bounds are not whole days).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime

from pipeline.config import FlickrParams
from pipeline.errors import ConfigError
from pipeline.flickr.state import (
    CAPPED,
    DONE,
    FETCHING,
    PENDING,
    SPLIT,
    CellRecord,
    HarvestState,
)

log = logging.getLogger(__name__)

SEARCH_CAP = 4000  # Flickr returns at most the first 4,000 results of one query
GEO_PAGE_MAX = 250  # geo (bbox) queries return at most 250 results per page
EXTRAS = (
    "description,license,date_upload,date_taken,owner_name,original_format,last_update,geo,tags,"
    "machine_tags,o_dims,media,path_alias,url_m,url_z,url_c,url_l,url_o"
)
DAY = 86400


def parse_int(value, default: int = 0) -> int:
    """Flickr sends counts as numbers or strings ("381192"); accept both."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def parse_date(value: str | None, *, end: bool, now: Callable[[], float]) -> int:
    """An ISO date/datetime param -> unix seconds (UTC). A bare date's end bound is 23:59:59."""
    if value is None:
        return int(now())
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime.combine(day, dtime(23, 59, 59) if end else dtime(0, 0, 0), tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:  # a naive datetime means UTC
                moment = moment.replace(tzinfo=UTC)
    except ValueError:
        which = "max_upload_date" if end else "min_upload_date"
        raise ConfigError(f"flickr.{which}: {value!r} is not an ISO date like 2019-06-30") from None
    return int(moment.timestamp())


def upload_range(params: FlickrParams, now: Callable[[], float]) -> tuple[int, int]:
    """The inclusive upload-date range this run wants, in unix seconds."""
    lo = parse_date(params.min_upload_date or "2004-01-01", end=False, now=now)
    hi = parse_date(params.max_upload_date, end=True, now=now)
    if lo > hi:
        raise ConfigError(f"flickr.min_upload_date ({params.min_upload_date}) is after max_upload_date")
    return lo, hi


def _fmt(ts: int, whole_day: bool) -> str:
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.strftime("%Y-%m-%d" if whole_day else "%Y-%m-%dT%H:%M:%S")


def date_label(lo: int, hi: int) -> str:
    """An inclusive upload range as ``2019-01-01..2019-06-30`` (seconds shown when not whole days)."""
    return f"{_fmt(lo, lo % DAY == 0)}..{_fmt(hi, (hi + 1) % DAY == 0)}"


def cell_id(aoi: str, quad: str, lo: int, hi: int) -> str:
    """``AOI/q<quadrants>/<from>..<to>``."""
    return f"{aoi}/q{quad}/{date_label(lo, hi)}"


def snap_bbox(bbox) -> tuple[float, float, float, float]:
    """Round a bbox outward to Flickr's 6 decimals, so no photo falls between cells."""
    w, s, e, n = (float(v) for v in bbox)
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ConfigError(f"bbox {list(bbox)} must be [min_lon, min_lat, max_lon, max_lat] with min < max")
    return (math.floor(w * 1e6) / 1e6, math.floor(s * 1e6) / 1e6, math.ceil(e * 1e6) / 1e6, math.ceil(n * 1e6) / 1e6)


def split_space(rec: CellRecord) -> list[CellRecord]:
    """Four quadrants: 0 SW, 1 SE, 2 NW, 3 NE; midpoints on the 6-decimal grid."""
    w, s, e, n = rec.bbox
    mx, my = round((w + e) / 2, 6), round((s + n) / 2, 6)
    boxes = [(w, s, mx, my), (mx, s, e, my), (w, my, mx, n), (mx, my, e, n)]
    return [CellRecord(bbox=b, lo=rec.lo, hi=rec.hi, quad=rec.quad + str(i)) for i, b in enumerate(boxes)]


def split_time(rec: CellRecord) -> list[CellRecord]:
    """Two halves of the upload range, cut on a whole day (or hour, minute) where one fits."""
    middle = (rec.lo + rec.hi + 1) / 2
    cut = rec.hi
    for grain in (DAY, 3600, 60, 1):
        cut = round(middle / grain) * grain
        if rec.lo < cut <= rec.hi:
            break
    return [CellRecord(bbox=rec.bbox, lo=rec.lo, hi=cut - 1, quad=rec.quad), CellRecord(bbox=rec.bbox, lo=cut, hi=rec.hi, quad=rec.quad)]


def can_split_space(rec: CellRecord, min_cell_deg: float) -> bool:
    w, s, e, n = rec.bbox
    return (e - w) / 2 >= min_cell_deg and (n - s) / 2 >= min_cell_deg


def search_kwargs(rec: CellRecord, params: FlickrParams, page: int) -> dict:
    """The ``flickr.photos.search`` arguments for one page of one cell."""
    kwargs = {
        "bbox": ",".join(f"{v:.6f}" for v in rec.bbox),
        "has_geo": 1,
        "license": ",".join(str(i) for i in sorted(params.licences)),
        "min_upload_date": rec.lo,
        "max_upload_date": rec.hi,
        "privacy_filter": 1,
        "content_type": 1,
        "media": "photos",
        "sort": "date-posted-asc",  # new uploads land after the pages already fetched
        "extras": EXTRAS,
        "per_page": min(params.per_page, GEO_PAGE_MAX),
        "page": page,
    }
    if params.min_accuracy > 1:  # 1 (world) admits every photo, so the filter is left out
        kwargs["accuracy"] = params.min_accuracy
    return kwargs


def fingerprint(params: FlickrParams, bbox) -> dict:
    """What makes two harvests' pages interchangeable (the date range is planned separately)."""
    return {
        "bbox": list(snap_bbox(bbox)),
        "licences": sorted(params.licences),
        "min_accuracy": params.min_accuracy,
        "per_page": min(params.per_page, GEO_PAGE_MAX),
        "extras": EXTRAS,
    }


@dataclass
class Progress:
    """Callbacks the harvest reports to (a progress bar); all optional."""

    on_page: Callable[[int], None] = lambda n_photos: None


class Planner:
    """Runs the plan of one AOI against a client, persisting every step in ``state``."""

    def __init__(self, client, params: FlickrParams, state: HarvestState, progress: Progress | None = None) -> None:
        self.client, self.params, self.state = client, params, state
        self.progress = progress or Progress()

    def add_roots(self, bbox, lo: int, hi: int) -> None:
        """Plan root cells for the parts of ``[lo, hi]`` no earlier run planned."""
        for a, b in self.state.add_range(lo, hi):
            rec = CellRecord(bbox=snap_bbox(bbox), lo=a, hi=b)
            self.state.cells[cell_id(self.state.aoi, "", a, b)] = rec
            log.info("%s: planning uploads %s", self.state.aoi, date_label(a, b))
        self.state.save()

    def open_cells(self, lo: int, hi: int) -> list[str]:
        return sorted(
            cid
            for cid, rec in self.state.cells.items()
            if rec.status in (PENDING, FETCHING) and rec.lo <= hi and rec.hi >= lo
        )

    def run(self, lo: int, hi: int) -> None:
        """Query every open cell overlapping ``[lo, hi]`` until none is left."""
        while cells := self.open_cells(lo, hi):
            for cid in cells:
                self._run_cell(cid)

    def _run_cell(self, cid: str) -> None:
        rec = self.state.cells[cid]
        if rec.status == PENDING and self._probe(cid, rec):
            return  # split: its children are open cells now
        done = self.state.done_pages(cid)
        for page in range(2, (rec.pages or 1) + 1):
            if page in done:
                continue
            photos = self.client.search(**search_kwargs(rec, self.params, page)).get("photo") or []
            if not photos:
                log.debug("%s: page %d of %s is empty; stopping", cid, page, rec.pages)
                break
            self.state.save_page(cid, page, photos)
            self.progress.on_page(len(photos))
        rec.fetched = self.state.photo_count(cid)
        rec.status = CAPPED if (rec.total or 0) > SEARCH_CAP else DONE
        self.state.save()

    def _probe(self, cid: str, rec: CellRecord) -> bool:
        """Fetch page 1; split the cell if it is too dense (return True), else start fetching it."""
        reply = self.client.search(**search_kwargs(rec, self.params, 1))
        total = parse_int(reply.get("total"))
        per_page = min(self.params.per_page, GEO_PAGE_MAX)
        children = self._children(rec, total)
        rec.total = total
        if children:
            rec.status, rec.children = SPLIT, []
            for child in children:
                child_id = cell_id(self.state.aoi, child.quad, child.lo, child.hi)
                self.state.cells[child_id] = child
                rec.children.append(child_id)
            self.state.drop_pages(cid)
            self.state.save()
            log.debug("%s: %d photos > %d: split into %d", cid, total, self.params.split_threshold, len(children))
            return True
        reachable = min(total, SEARCH_CAP)
        rec.pages = max(parse_int(reply.get("pages")) if total else 0, math.ceil(reachable / per_page))
        rec.pages = min(rec.pages, math.ceil(SEARCH_CAP / per_page))
        if total > SEARCH_CAP:
            log.warning(
                "%s holds %d photos but Flickr returns at most %d for one query and the cell cannot be split "
                "further; lower flickr.min_cell_deg to get the rest", cid, total, SEARCH_CAP,
            )
        photos = reply.get("photo") or []
        if photos:
            self.state.save_page(cid, 1, photos)
            self.progress.on_page(len(photos))
        else:
            rec.pages = 1
        rec.status = FETCHING
        self.state.save()
        return False

    def _children(self, rec: CellRecord, total: int) -> list[CellRecord]:
        if total <= self.params.split_threshold:
            return []
        if can_split_space(rec, self.params.min_cell_deg):
            return split_space(rec)
        if rec.hi > rec.lo:
            return split_time(rec)
        return []
