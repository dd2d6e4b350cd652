"""Photo metadata in → ``photos`` rows: Flickr-shaped dicts, custom photo tables and folders of geotagged images.

The one place that parses Flickr ``photos.search`` photo dicts (used by the demo catalog and,
later, the live Flickr harvest), so the type drift of the API (numbers sent as strings or
numbers, ``""`` for unknown) is handled once. Rows are dicts keyed by ``schemas.PHOTOS``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from catalogs import Licence, find_licence
from pipeline import vectors
from pipeline.errors import CatalogError
from pipeline.schemas import PHOTOS

log = logging.getLogger(__name__)

# Flickr size extras, largest first, with each size's nominal longest side in px.
URL_SIZES: tuple[tuple[str, int], ...] = (("l", 1024), ("c", 800), ("z", 640), ("m", 500), ("n", 320))
MAX_SIDE_PX = 1024
PAGE_URL = "https://www.flickr.com/photos/{owner}/{id}"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".heic", ".heif", ".webp"})
TABLE_REQUIRED = ("id", "lat", "lon", "image", "owner", "licence")
TABLE_OPTIONAL = ("accuracy", "date_taken", "title", "page_url", "licence_url", "owner_name")
WEB_URL = re.compile(r"https?://", re.IGNORECASE)  # an image at a public URL is its own link to the source
SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


# ---------------------------------------------------------------- value parsing (str-or-number)


def _text(value) -> str | None:
    """A stripped string, or None for missing/empty; Flickr's ``{"_content": ...}`` is unwrapped."""
    if isinstance(value, Mapping):
        value = value.get("_content")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().strip("\x00").strip()
    return text or None


def to_float(value) -> float:
    """``"40.1"``, ``40.1`` → 40.1; missing, empty, ``"nan"`` or unparsable → NaN."""
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    text = _text(value)
    if text is None:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def to_int(value) -> int | None:
    """``"16"``, ``16``, ``16.0`` → 16; missing, empty, NaN or unparsable → None."""
    number = to_float(value)
    if math.isnan(number) or math.isinf(number) or number != int(number):
        return None
    return int(number)


def local_uri(path: str, base: str | Path) -> str:
    """A path relative to ``base`` re-expressed relative to the working directory; URLs and absolute paths kept."""
    if "://" in path or os.path.isabs(path):
        return path
    full = os.path.abspath(os.path.join(base, path))
    try:
        return os.path.relpath(full)
    except ValueError:  # another drive (Windows): no relative form exists
        return full


# ---------------------------------------------------------------- licences


def match_licence(value) -> tuple[Licence | None, str | None]:
    """A known licence (Flickr id, name, SPDX id, any case; catalogs/licences.csv) → (Licence, None);
    other text → (None, text)."""
    lic = find_licence(_text(value))
    return (lic, None) if lic is not None else (None, _text(value))


def _licence_columns(value, licence_url=None) -> dict:
    lic, other = match_licence(value)
    url = _text(licence_url)
    if lic is not None:
        return {"licence_id": lic.id, "licence": lic.name, "licence_url": url or lic.url}
    return {"licence_id": None, "licence": other, "licence_url": url}


# ---------------------------------------------------------------- Flickr photo dicts


def choose_url(d: Mapping, size: str = f"largest<={MAX_SIDE_PX}") -> tuple[str | None, int | None, int | None]:
    """The image URL for ``size`` (``largest<=N``, or an extra such as ``url_o``) with its width and height.

    ``largest<=N`` takes the largest of url_l/c/z/m/n whose longest side is ≤ N px. A named size the
    photo lacks (originals can be restricted by their owner) falls back to ``largest<=1024``.
    """
    if size.startswith("url_"):
        suffix = size[4:]
        url = _text(d.get(size))
        if url is not None:
            return url, to_int(d.get(f"width_{suffix}")), to_int(d.get(f"height_{suffix}"))
        size = f"largest<={MAX_SIDE_PX}"
    cap = int(size.removeprefix("largest<="))
    best: tuple[int, str, int | None, int | None] | None = None
    for suffix, nominal in URL_SIZES:
        url = _text(d.get(f"url_{suffix}"))
        if url is None:
            continue
        width, height = to_int(d.get(f"width_{suffix}")), to_int(d.get(f"height_{suffix}"))
        side = max(width or 0, height or 0) or nominal
        if side <= cap and (best is None or side > best[0]):
            best = (side, url, width, height)
    if best is None:  # only over-size variants (not seen on Flickr): none fits the cap
        return None, None, None
    return best[1], best[2], best[3]


def photo_row_from_flickr(
    d: Mapping,
    aoi: str | None,
    city: str | None,
    base: str | Path | None = None,
    *,
    source: str = "flickr",
    query_cell: str | None = None,
    size: str = f"largest<={MAX_SIDE_PX}",
) -> dict:
    """A Flickr ``photos.search`` photo dict (with extras) → a ``photos`` row; ``base`` resolves relative URLs."""
    photo_id = _text(d.get("id"))
    if photo_id is None:
        raise CatalogError("photo dict without an 'id'")
    owner = _text(d.get("owner"))
    url, width, height = choose_url(d, size)
    if url is not None and base is not None:
        url = local_uri(url, base)
    return {
        "id": photo_id,
        "source": source,
        "aoi": aoi,
        "city": city,
        "owner": owner,
        "owner_name": _text(d.get("ownername")),
        "title": _text(d.get("title")),
        **_licence_columns(d.get("license")),
        "lat": to_float(d.get("latitude")),
        "lon": to_float(d.get("longitude")),
        "accuracy": to_int(d.get("accuracy")),
        "context": to_int(d.get("context")),
        "date_taken": _text(d.get("datetaken")),
        "date_upload_unix": to_int(d.get("dateupload")),
        "url": url,
        "url_width": width,
        "url_height": height,
        "page_url": PAGE_URL.format(owner=owner, id=photo_id) if owner else None,
        "tags": _text(d.get("tags")),
        "query_cell": query_cell,
    }


# ---------------------------------------------------------------- custom photo table


def _read_table_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
                columns = reader.fieldnames or []
        except UnicodeDecodeError as err:
            line = path.read_bytes()[: err.start].count(b"\n") + 1
            raise CatalogError(
                f"{path}: line {line} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
                "save the table as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
            ) from None
    elif suffix in (".parquet", ".pq") and not vectors.is_geoparquet(path):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows, columns = table.to_pylist(), table.column_names
    elif suffix in vectors.VECTOR_SUFFIXES or suffix == ".pq":  # positions from the point geometry, any CRS
        rows, columns = vectors.point_records(path, "custom.photos table")
    else:
        raise CatalogError(
            f"{path}: custom.photos must be a .csv or .parquet table, a vector file of points "
            "(GeoPackage, Shapefile, GeoJSON, FlatGeobuf, GeoParquet) or a folder of images"
        )
    missing = [c for c in TABLE_REQUIRED if c not in columns]
    if missing:
        raise CatalogError(f"{path}: missing required columns {', '.join(missing)} (need {', '.join(TABLE_REQUIRED)})")
    ignored = sorted(set(columns) - set(TABLE_REQUIRED) - set(TABLE_OPTIONAL))
    if ignored:
        log.warning("%s: ignoring columns %s", path, ", ".join(ignored))
    return rows


def _table_id(value) -> str | None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _text(value)


def _check_ids(ids: list[str | None], path: Path) -> None:
    """Raise CatalogError naming the rows (1 = first data row) with empty, unsafe or duplicate ids."""
    problems = []
    empty = [i + 1 for i, v in enumerate(ids) if v is None]
    if empty:
        problems.append(f"empty id in rows {_rows(empty)}")
    unsafe = [i + 1 for i, v in enumerate(ids) if v is not None and not SAFE_ID.fullmatch(v)]
    if unsafe:
        problems.append(f"ids with characters other than letters, digits, '.', '_', '-' in rows {_rows(unsafe)}")
    counts = Counter(v for v in ids if v is not None)
    for value in sorted(v for v, n in counts.items() if n > 1):
        rows = [i + 1 for i, v in enumerate(ids) if v == value]
        problems.append(f"id {value!r} repeated in rows {_rows(rows)}")
    if problems:
        raise CatalogError(f"{path}: {'; '.join(problems)} (rows count from 1, header excluded)")


def _rows(numbers: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def _photo_row(**values) -> dict:
    """A complete ``photos`` row: columns not given are null."""
    row = dict.fromkeys(PHOTOS.names)
    row.update(values)
    return row


def _custom_row(r: Mapping, photo_id: str, base: Path) -> dict:
    image = _text(r.get("image"))
    return _photo_row(**{
        "id": photo_id,
        "source": "custom",
        "owner": _text(r.get("owner")),
        "owner_name": _text(r.get("owner_name")),
        "title": _text(r.get("title")),
        **_licence_columns(r.get("licence"), r.get("licence_url")),
        "lat": to_float(r.get("lat")),
        "lon": to_float(r.get("lon")),
        "accuracy": to_int(r.get("accuracy")),
        "date_taken": _text(r.get("date_taken")),
        "url": local_uri(image, base) if image else None,
        "page_url": _text(r.get("page_url")) or (image if image and WEB_URL.match(image) else None),
    })


def rows_from_table(path: str | Path) -> list[dict]:
    """A custom photo table (CSV, Parquet or a vector file of points) → ``photos`` rows; aoi/city are left for
    the pair stage."""
    path = Path(path)
    records = _read_table_rows(path)
    ids = [_table_id(r.get("id")) for r in records]
    _check_ids(ids, path)
    # Implausible dates (in the future, before 1826) are the filter stage's ``date_taken`` rule: judged against
    # params, never the clock, so the same table gives the same photos table on any day.
    return [_custom_row(r, i, path.parent) for r, i in zip(records, ids, strict=True)]


# ---------------------------------------------------------------- custom folder of geotagged images


def _dms(value) -> float:
    try:
        d, m, s = (float(x) for x in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan
    return d + m / 60 + s / 3600


def gps_from_exif(exif) -> tuple[float, float]:
    """(lat, lon) in degrees from a Pillow ``Exif``'s GPS IFD; NaN, NaN when absent or unreadable."""
    from PIL import ExifTags

    try:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:  # noqa: BLE001 - a malformed GPS IFD is just "no GPS"
        return math.nan, math.nan
    lat, lon = _dms(gps.get(2)), _dms(gps.get(4))
    if str(gps.get(1, "N")).strip().upper().startswith("S"):
        lat = -lat
    if str(gps.get(3, "E")).strip().upper().startswith("W"):
        lon = -lon
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
        return math.nan, math.nan  # NaN, inf or out of range: no usable position (pairing records why)
    return lat, lon


def _exif_fields(path: Path) -> dict:
    """GPS, Artist, Copyright and DateTimeOriginal from a file; empty values when it cannot be read."""
    from PIL import ExifTags, Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            lat, lon = gps_from_exif(exif)
            taken = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal) or exif.get(
                ExifTags.Base.DateTime
            )
            artist, copyright_ = exif.get(ExifTags.Base.Artist), exif.get(ExifTags.Base.Copyright)
    except Exception as err:  # noqa: BLE001 - unreadable files still get a row; download records why
        log.debug("%s: no EXIF read (%s)", path, err)
        return {"lat": math.nan, "lon": math.nan, "date_taken": None, "owner": None, "licence": None}
    taken = _text(taken)
    if taken and re.fullmatch(r"\d{4}:\d\d:\d\d \d\d:\d\d:\d\d", taken):
        taken = taken[:10].replace(":", "-") + taken[10:]  # EXIF "YYYY:MM:DD" → Flickr's "YYYY-MM-DD"
    return {"lat": lat, "lon": lon, "date_taken": taken, "owner": _text(artist), "licence": _text(copyright_)}


def sanitise_id(relative: str) -> str:
    """A store-safe id from a relative path: folders joined by ``__``, other characters → ``_``."""
    text = "__".join(Path(relative).parts)
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "_"


def _unique_ids(relatives: list[str]) -> list[str]:
    """Ids from extension-less relative paths; clashes fall back to the full name, then a ``-N`` suffix."""
    stems = [sanitise_id(str(Path(r).with_suffix(""))) for r in relatives]
    counts = Counter(stems)
    ids = [sanitise_id(r) if counts[s] > 1 else s for r, s in zip(relatives, stems, strict=True)]
    used, seen, out = set(ids), set(), []
    for value in ids:
        if value in seen:
            n = 2
            while f"{value}-{n}" in used:
                n += 1
            value = f"{value}-{n}"
            used.add(value)
        seen.add(value)
        out.append(value)
    return out


def is_image_file(path: Path) -> bool:
    """Whether ``path`` holds an image by its content (Pillow, plus HEIC through pillow-heif), whatever its name;
    files named like images count too, so a corrupt ``.jpg`` still gets a row and a recorded reason."""
    from PIL import Image

    import pipeline.images  # noqa: F401 - registers the HEIC/HEIF opener

    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with Image.open(path):
            return True
    except Image.DecompressionBombError:
        return True  # an image, too large: the download stage records why
    except Exception:  # noqa: BLE001 - not an image Pillow knows
        return False


def rows_from_folder(folder: str | Path) -> list[dict]:
    """Every image under ``folder`` (by content, any name; hidden files skipped) → a ``photos`` row with
    EXIF GPS (NaN when absent). Files that are not images are named in a warning, never dropped silently."""
    folder = Path(folder)
    candidates = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    images = [is_image_file(p) for p in candidates]
    files = [p for p, ok in zip(candidates, images, strict=True) if ok]
    skipped = [p.relative_to(folder).as_posix() for p, ok in zip(candidates, images, strict=True) if not ok]
    if skipped:
        log.warning(
            "%s: %d files are not images (by content) and get no photo row: %s", folder, len(skipped),
            ", ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else ""),
        )
    relatives = [p.relative_to(folder).as_posix() for p in files]
    rows = []
    for path, rel, photo_id in zip(files, relatives, _unique_ids(relatives), strict=True):
        meta = _exif_fields(path)
        rows.append(_photo_row(**{
            "id": photo_id,
            "source": "custom",
            "owner": meta["owner"] or "unknown",
            "title": path.name,
            **_licence_columns(meta["licence"] or "unknown"),
            "lat": meta["lat"],
            "lon": meta["lon"],
            "date_taken": meta["date_taken"],
            "url": local_uri(rel, folder),
        }))
    no_gps = sum(math.isnan(r["lat"]) for r in rows)
    log.info("%s: %d images, %d without EXIF GPS", folder, len(rows), no_gps)
    return rows


def custom_rows(path: str | Path) -> list[dict]:
    """``custom.photos``: a CSV/Parquet table or a folder of images → ``photos`` rows."""
    path = Path(path)
    if not path.exists():
        raise CatalogError(f"{path}: custom.photos not found (a CSV/Parquet table or a folder of images)")
    return rows_from_folder(path) if path.is_dir() else rows_from_table(path)
