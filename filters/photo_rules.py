"""Rules on the photo itself: did it download, is it usable, may it be redistributed, is its geotag precise."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter

import pyarrow as pa

from catalogs import find_licence
from filters.base import Tables, by_id, column, decisions_table
from pipeline.config import FilterParams

# Flickr geo accuracy: 1 world ... 11 city ... 16 street. WITW searched at the default (16).
STREET_LEVEL = 16
FLICKR_SOURCES = ("flickr", "demo")  # the demo's photos are Flickr-shaped and follow Flickr's terms


def _ok_downloads(tables: Tables, columns: list[str]) -> list[tuple[str, dict]]:
    """(id, values) of downloads with status ok, in table order."""
    rows = by_id(tables.downloads, ["status", *columns])
    return [(i, r) for i, r in rows.items() if r["status"] == "ok"]


def download(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos whose download failed; the reason is the download status and its error text."""
    rows = by_id(tables.downloads, ["status", "error"])
    out = []
    for i in column(tables.photos, "id"):
        row = rows.get(i)
        if row is None:
            out.append((i, False, "no_download: no row in the downloads table (rerun `crossview download`)", None))
        elif row["status"] == "ok":
            out.append((i, True, "", None))
        else:
            status = row["status"] or "unknown_status"
            out.append((i, False, f"{status}: {row['error']}" if row["error"] else status, None))
    return decisions_table("download", out)


def single_band(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop single-band (grayscale) photos, as WITW did, or keep them noting the RGB conversion."""
    out = []
    for i, r in _ok_downloads(tables, ["bands", "mode"]):
        if r["bands"] is None:
            continue
        if r["bands"] != 1 or r["mode"] in PALETTE_MODES:  # a palette image has one band of colour indices
            out.append((i, True, "", float(r["bands"])))
        elif params.single_band == "drop":
            out.append((i, False, f"single_band: 1 band (mode {r['mode']})", 1.0))
        else:
            out.append((i, True, f"single_band: converted to RGB (mode {r['mode']})", 1.0))
    return decisions_table("single_band", out)


PALETTE_MODES = frozenset({"P", "PA"})


def colour_mode(tables: Tables, params: FilterParams) -> pa.Table:
    """CMYK, palette, alpha and high-bit photos: converted to RGB by default (noted), dropped when their
    mode is in ``reject_modes``; single-band photos are the ``single_band`` rule's."""
    out = []
    for i, r in _ok_downloads(tables, ["mode", "bands"]):
        mode = r["mode"]
        single = r["bands"] == 1 and mode not in PALETTE_MODES  # the single_band rule's
        if mode is None or mode in ("RGB", "L") or single and mode not in params.reject_modes:
            continue
        if mode in params.reject_modes:
            out.append((i, False, f"colour_mode: {mode} rejected by filter.reject_modes", None))
        else:
            out.append((i, True, f"colour_mode: {mode} converted to RGB", None))
    return decisions_table("colour_mode", out)


def too_small(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos whose shorter side is below ``min_side_px``; the score is the shorter side."""
    out = []
    for i, r in _ok_downloads(tables, ["width", "height"]):
        if r["width"] is None or r["height"] is None:
            continue
        side = min(r["width"], r["height"])
        if side < params.min_side_px:
            detail = f"{r['width']}x{r['height']} px, shorter side < {params.min_side_px}"
            out.append((i, False, f"too_small: {detail}", float(side)))
        else:
            out.append((i, True, "", float(side)))
    return decisions_table("too_small", out)


def placeholder_image(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop every photo whose exact bytes ``placeholder_copies`` or more photos share; the score is the count.

    A CDN answers a deleted photo's URL with one "photo unavailable" image, so many photos download the
    same bytes: all of them are placeholders, none is the photo (``duplicate_image`` would keep one).
    """
    rows = _ok_downloads(tables, ["sha256"])
    copies = tables.shared_bytes
    if copies is None:
        copies = Counter(r["sha256"] for _, r in rows if r["sha256"])
    out = []
    for i, r in rows:
        n = copies.get(r["sha256"], 1) if r["sha256"] else 0
        if n >= params.placeholder_copies:
            detail = f"{n} photos have these exact bytes (sha256 {r['sha256'][:12]}), a CDN placeholder"
            out.append((i, False, f"placeholder_image: {detail}", float(n)))
        else:
            out.append((i, True, "", float(n)))
    return decisions_table("placeholder_image", out)


def duplicate_image(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop byte-identical copies of another photo; the smallest id of each group is kept."""
    out = []
    for i, r in _ok_downloads(tables, ["duplicate_of"]):
        dup = r["duplicate_of"]
        if dup and dup != i:
            out.append((i, False, f"duplicate_image: same bytes as photo {dup}", None))
        else:
            out.append((i, True, "", None))
    return decisions_table("duplicate_image", out)


def _licence_problem(row: dict) -> tuple[str | None, str]:
    """(drop reason or None, note for a kept row) for one photo's licence and attribution fields.

    A page URL is needed only where nothing else can stand in for it: for Flickr photos (Flickr's API
    terms ask for a link back to the photo page, which the search stage derives) and for a
    licence marked ``source_link: required`` in catalogs/licences.csv. CC licences ask for a link to
    the work only "if supplied" (2.0) / "to the extent reasonably practicable" (4.0), so a custom row
    without one is kept with a note.
    """
    known = find_licence(row["licence_id"]) if row["licence_id"] is not None else None
    known = known or find_licence(row["licence"])
    name = row["licence"] or (known.name if known else None)
    url = row["licence_url"] or (known.url if known else None)
    if not name or not url:
        return f"licence: unknown licence (id {row['licence_id']}, name {row['licence']!r})", ""
    if known is not None and not known.redistributable:
        return f"licence: {name} does not allow redistribution", ""
    if not row["owner"] and (known is None or known.attribution):
        return "licence: no owner to attribute", ""
    flickr = row["source"] in FLICKR_SOURCES
    needs_link = flickr or (known is not None and known.source_link == "required")
    if not row["page_url"] and needs_link:
        why = "Flickr's API terms" if flickr else f"{name} requires a link to the source"
        return f"licence: no photo page URL to attribute ({why})", ""
    notes = []
    if known is None:
        notes.append(f"licence {name!r} is not in catalogs/licences.csv; redistribution not checked")
    if not row["page_url"]:
        notes.append("no page URL: attribution credits the owner and the licence only")
    return None, "; ".join(notes)


def licence(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos that cannot be redistributed with attribution (licence, owner, page URL)."""
    rows = by_id(tables.photos, ["source", "licence_id", "licence", "licence_url", "owner", "page_url"])
    out = []
    for i, row in rows.items():
        problem, note = _licence_problem(row)
        out.append((i, problem is None, problem or note, None))
    return decisions_table("licence", out)


def accuracy(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos whose Flickr geo accuracy is below ``min_accuracy`` (16 = street level).

    A photo with no accuracy (custom photos, EXIF geotags) is kept with a note: there is no
    Flickr level to compare, and the density and chip rules still apply to it.
    """
    out = []
    for i, acc in by_id(tables.photos, ["accuracy"]).items():
        value = acc["accuracy"]
        if value is None:
            out.append((i, True, "accuracy: unknown (no Flickr geo accuracy); kept", None))
        elif value < params.min_accuracy:
            detail = f"level {value} < {params.min_accuracy} (Flickr street level is {STREET_LEVEL})"
            out.append((i, False, f"low_accuracy: {detail}", float(value)))
        else:
            out.append((i, True, "", float(value)))
    return decisions_table("accuracy", out)


DATE = re.compile(r"(\d{4})(?:[-:](\d\d)(?:[-:](\d\d))?)?(?:[ T].*)?")
UPLOAD_SLACK = dt.timedelta(days=1)  # date_taken is local time, the upload is UTC: up to 14 h apart


def parse_date(text: str) -> dt.date | None:
    """``"2016-05-01 12:00:00"``, ``"2016-05"``, ``"2016"`` (month/day default to 1) → a date; else None."""
    m = DATE.fullmatch(text.strip())
    if m is None:
        return None
    try:
        return dt.date(int(m[1]), int(m[2] or 1), int(m[3] or 1))
    except ValueError:  # month 13, day 0, year 0 (Flickr's "0000-00-00")
        return None


def _date_problem(taken: str, upload_unix: int | None, params: FilterParams, earliest: dt.date, latest: dt.date) -> str:
    """What is implausible about one photo's ``date_taken`` ("" when nothing); ``earliest``/``latest``: the params' dates."""
    date = parse_date(taken)
    if date is None:
        return f"{taken!r} is not a date (YYYY-MM-DD[ HH:MM:SS])"
    if date < earliest:
        return f"{taken} is before filter.earliest_date_taken {params.earliest_date_taken} (the first photograph)"
    if date > latest:
        return f"{taken} is after filter.latest_date_taken {params.latest_date_taken} (a wrong camera clock?)"
    if upload_unix is not None:
        upload = dt.datetime.fromtimestamp(upload_unix, dt.UTC).date()
        if date > upload + UPLOAD_SLACK:
            return f"{taken} is after the photo's upload on {upload.isoformat()} (UTC)"
    return ""


def date_taken(tables: Tables, params: FilterParams) -> pa.Table:
    """Photos whose ``date_taken`` is implausible (not a date, before the first photograph, after the run's
    reference date ``latest_date_taken`` or after the photo's own upload): kept with the reason noted
    (``implausible_date: keep``: the image and its position are still good) or dropped. Judges only those.

    The reference is a param, never the clock, so the same inputs give the same decisions on any day.
    """
    out = []
    bounds = dt.date.fromisoformat(params.earliest_date_taken), dt.date.fromisoformat(params.latest_date_taken)
    for i, r in by_id(tables.photos, ["date_taken", "date_upload_unix"]).items():
        problem = _date_problem(r["date_taken"], r["date_upload_unix"], params, *bounds) if r["date_taken"] else ""
        if not problem:
            continue
        if params.implausible_date == "drop":
            out.append((i, False, f"date_taken: {problem}: fix the date at the source or leave it empty", None))
        else:
            out.append((i, True, f"date_taken: {problem}; kept, the date is unreliable (filter.implausible_date)", None))
    return decisions_table("date_taken", out)
