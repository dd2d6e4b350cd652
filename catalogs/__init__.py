"""Typed loaders for the catalog files beside this module (and for users' own catalogs)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from pipeline.errors import CatalogError

HERE = Path(__file__).resolve().parent

RASTER_KEYS = ("aoi", "city", "uri", "band_order", "satellite", "licence", "attribution")
RASTER_OPTIONAL = ("epsg", "licence_url", "key_status", "note", "bands", "dtype")


@dataclass(frozen=True)
class RasterSource:
    """One source raster (or an S3/local prefix of GeoTIFFs) with how to turn it into RGB."""

    aoi: str
    city: str
    uri: str
    band_order: tuple[int, ...]
    satellite: str
    licence: str
    attribution: str
    licence_url: str = ""
    epsg: int | None = None  # UTM zone to re-project to; derived from the tile centre when None
    key_status: str = ""


@dataclass(frozen=True)
class Licence:
    """A licence: its Flickr id (None for licences Flickr does not offer), name, URL and terms."""

    id: int | None
    name: str
    url: str
    redistributable: bool
    spdx: str = ""
    attribution: bool = True  # credit the owner (all CC licences; not public-domain marks)
    source_link: str = "if_available"  # "required": a row without a page URL cannot be attributed
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class FrameLayout:
    """One photo layout of the photo-frame catalog: name, aspect (height / width) and probability."""

    name: str
    aspect: float
    p: float


@dataclass(frozen=True)
class PhotoFrames:
    """The photo-like crop distribution (catalogs/photo_frames.yaml): angle of view, layouts, tilt."""

    hfov_deg: tuple[float, float]
    layouts: tuple[FrameLayout, ...]
    tilt: float = 0.5


@dataclass(frozen=True)
class DenyList:
    ids: frozenset[str] = frozenset()
    owners: frozenset[str] = frozenset()
    polygons_wkt: tuple[str, ...] = field(default_factory=tuple)
    polygon_files: tuple[str, ...] = ()  # vector files of deny polygons (any format GDAL reads, any CRS)


def _band_order(value, where: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise CatalogError(f"{where}: band_order must be a list like [5, 3, 2], got {value!r}")
    try:
        bands = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise CatalogError(f"{where}: band_order must hold 1-based band numbers, got {value!r}") from None
    if len(bands) != 3 or min(bands) < 1:
        raise CatalogError(f"{where}: band_order needs three 1-based band numbers (R, G, B), got {value!r}")
    return bands


def _resolve_uri(uri: str, base: Path) -> str:
    """Local paths in a catalog are relative to the catalog file; keep them relative to the cwd."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    path = (base / uri).resolve()
    try:
        return os.path.relpath(path, Path.cwd())
    except ValueError:
        return str(path)


def _raster_licence(row: dict, where: str) -> tuple[str, str]:
    """(licence name, licence URL) of a raster row: a known licence name or SPDX id gives its URL; an
    unknown one needs ``licence_url`` (every manifest row carries the overhead licence's URL)."""
    text, url = str(row["licence"]).strip(), str(row.get("licence_url") or "").strip()
    known = find_licence(text)
    if known is not None and not known.redistributable:
        raise CatalogError(f"{where}: column licence: {text!r} does not allow redistribution")
    if url:
        return (known.name if known else text), url
    if known is None:
        raise CatalogError(
            f"{where}: column licence: {text!r} is not a known licence name or SPDX id (e.g. 'CC BY-SA 4.0'); "
            "add a licence_url column with its URL, or use a name from catalogs/licences.csv"
        )
    return known.name, known.url


def _raster_row(row: dict, where: str, base: Path) -> RasterSource:
    if not isinstance(row, dict):
        raise CatalogError(f"{where}: each entry must be a mapping with keys {', '.join(RASTER_KEYS)}")
    missing = [k for k in RASTER_KEYS if row.get(k) in (None, "")]
    if missing:
        raise CatalogError(f"{where}: missing required column(s) {', '.join(missing)} (need {', '.join(RASTER_KEYS)})")
    unknown = set(row) - set(RASTER_KEYS) - set(RASTER_OPTIONAL)
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)} (allowed: {RASTER_KEYS + RASTER_OPTIONAL})")
    epsg = row.get("epsg")
    try:
        epsg = int(epsg) if epsg not in (None, "") else None
    except (TypeError, ValueError):
        raise CatalogError(f"{where}: epsg must be an integer EPSG code, got {epsg!r}") from None
    licence, licence_url = _raster_licence(row, where)
    return RasterSource(
        aoi=str(row["aoi"]),
        city=str(row["city"]),
        uri=_resolve_uri(str(row["uri"]), base),
        band_order=_band_order(row["band_order"], where),
        satellite=str(row["satellite"]),
        licence=licence,
        attribution=str(row["attribution"]),
        licence_url=licence_url,
        epsg=epsg,
        key_status=str(row.get("key_status") or ""),
    )


def raster_source(row: dict, where: str, base: str | Path = ".") -> RasterSource:
    """One raster catalog row from a mapping (e.g. a STAC item), checked like a catalog file's rows."""
    return _raster_row(row, where, Path(base))


def load_raster_catalog(path: str | Path) -> list[RasterSource]:
    """Load a raster catalog: a YAML list of mappings or a CSV with the same columns."""
    path = Path(path)
    if not path.exists():
        raise CatalogError(f"{path}: raster catalog not found (set custom.rasters in params.yaml)")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = yaml.safe_load(path.read_text()) or []
        if isinstance(rows, dict) and "rasters" in rows:
            rows = rows["rasters"]
        if not isinstance(rows, list):
            raise CatalogError(f"{path}: expected a list of rasters (or a mapping with a 'rasters' list)")
    kind = "row" if path.suffix.lower() == ".csv" else "entry"  # CSV rows count from 1 after the header
    return [_raster_row(r, f"{path} {kind} {i + 1}", path.parent) for i, r in enumerate(rows)]


def load_spacenet() -> list[RasterSource]:
    """The eleven SpaceNet AOIs WITW used."""
    return load_raster_catalog(HERE / "spacenet_aois.csv")


LICENCE_COLUMNS = ("flickr_id", "name", "spdx", "url", "redistributable", "attribution", "source_link", "aliases")


def _licence_key(text: str) -> str:
    """A licence name or id compared loosely: case, spaces, hyphens and underscores ignored."""
    return "".join(ch for ch in text.casefold() if ch.isalnum() or ch in ".()")


@lru_cache(maxsize=1)
def load_licence_catalog() -> tuple[Licence, ...]:
    """Every known licence (catalogs/licences.csv): Flickr's ids 0-16 and other common ones by SPDX id."""
    path = HERE / "licences.csv"
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != LICENCE_COLUMNS:
            raise CatalogError(f"{path}: columns must be {', '.join(LICENCE_COLUMNS)}")
        return tuple(
            Licence(
                id=int(r["flickr_id"]) if r["flickr_id"] else None,
                name=r["name"],
                url=r["url"],
                redistributable=r["redistributable"] == "true",
                spdx=r["spdx"],
                attribution=r["attribution"] == "true",
                source_link=r["source_link"],
                aliases=tuple(a for a in r["aliases"].split(";") if a),
            )
            for r in reader
        )


def load_licences() -> dict[int, Licence]:
    """Flickr licence ids -> name, URL, whether redistribution with attribution is allowed."""
    return {lic.id: lic for lic in load_licence_catalog() if lic.id is not None}


@lru_cache(maxsize=1)
def _licences_by_key() -> dict[str, Licence]:
    out: dict[str, Licence] = {}
    for lic in load_licence_catalog():
        for text in (lic.name, lic.spdx, lic.url, *lic.aliases):
            if text:
                out.setdefault(_licence_key(text), lic)
    return out


def find_licence(value) -> Licence | None:
    """A known licence from a Flickr id (``4``, ``"4"``), a name (``CC BY-SA 4.0``, any case), an SPDX id
    (``CC-BY-SA-4.0``), a long name (``Attribution-ShareAlike 4.0 International``) or its URL; else None."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and number.is_integer():
        return load_licences().get(int(number))
    return _licences_by_key().get(_licence_key(text))


def load_demo() -> dict:
    """The demo AOI definition (catalogs/demo_aoi.yaml)."""
    return yaml.safe_load((HERE / "demo_aoi.yaml").read_text())


def load_deny_list(path: str | Path) -> DenyList:
    """Load a deny list: YAML with ``ids``, ``owners``, ``polygons`` (``wkt`` or a vector ``file``), or a vector
    file whose polygons are the deny areas; a missing file denies nothing."""
    from pipeline.vectors import VECTOR_SUFFIXES

    path = Path(path)
    if not path.exists():
        return DenyList()
    if path.suffix.lower() in VECTOR_SUFFIXES:
        return DenyList(polygon_files=(str(path),))
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"ids", "owners", "polygons"}
    if unknown:
        raise CatalogError(f"{path}: unknown keys {sorted(unknown)} (allowed: ids, owners, polygons)")

    def values(key: str, field_name: str) -> list[str]:
        out = []
        for item in data.get(key) or []:
            out.append(str(item[field_name] if isinstance(item, dict) else item))
        return out

    polygons = data.get("polygons") or []
    files = [item for item in polygons if isinstance(item, dict) and "file" in item]
    return DenyList(
        ids=frozenset(values("ids", "id")),
        owners=frozenset(values("owners", "owner")),
        polygons_wkt=tuple(str(item["wkt"] if isinstance(item, dict) else item) for item in polygons
                           if not (isinstance(item, dict) and "file" in item)),
        polygon_files=tuple(_resolve_uri(str(item["file"]), path.parent) for item in files),
    )


def load_photo_frames(path: str | Path | None = None) -> PhotoFrames:
    """The photo-frame distribution: ``path``, or the bundled catalogs/photo_frames.yaml (WITW's numbers)."""
    path = Path(path) if path else HERE / "photo_frames.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise CatalogError(f"{path}: photo-frame catalog not found (train.photo_frames in params.yaml)") from None
    try:
        low, high = (float(v) for v in data["hfov_deg"])
        layouts = tuple(FrameLayout(str(r["name"]), float(r["aspect"]), float(r["p"])) for r in data["layouts"])
        tilt = float(data.get("tilt", 0.5))
    except (KeyError, TypeError, ValueError) as err:
        raise CatalogError(f"{path}: needs hfov_deg [low, high] and layouts of name/aspect/p ({err})") from None
    total = sum(r.p for r in layouts)
    if not 0 < low <= high <= 360 or not layouts or abs(total - 1) > 1e-6 or min(r.p for r in layouts) < 0:
        raise CatalogError(f"{path}: hfov_deg must be 0 < low <= high <= 360 and layout p's non-negative, "
                           f"summing to 1 (they sum to {total:g})")
    return PhotoFrames((low, high), layouts, tilt)
