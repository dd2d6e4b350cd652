"""Overhead imagery from STAC: a static catalog (local, HTTP or S3) or a STAC API -> raster catalog rows.

When ``stac.url`` is set, the items it yields (filtered by ``stac.collections``, ``stac.bbox`` or the
polygons of ``stac.aoi``, and ``stac.datetime``) replace the raster catalog of every source; the tiles
stage reads their image assets by window over ``/vsicurl/`` or ``/vsis3/`` exactly like catalog rows.
Each item becomes one :class:`catalogs.RasterSource`: aoi = its collection id, city = the item property
``stac.city_property`` (else the collection's title), licence, attribution and satellite from the item or
its collection (``license`` + a ``license`` link, ``providers``, ``platform``), each overridable by a
param. Static catalogs are read with pystac through the store's reader; APIs are searched with
pystac-client, which follows the API's paging links.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, time
from functools import lru_cache

import pystac
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from catalogs import RasterSource, raster_source
from pipeline.config import Params, S3Params, StacParams
from pipeline.errors import CatalogError, StoreError
from pipeline.store import is_http, is_s3, read_bytes, redact

log = logging.getLogger(__name__)

GEOTIFF_TYPES = ("image/tiff", "image/geotiff", "image/vnd.stac.geotiff")
OPEN_LICENCES = ("proprietary", "various", "other")  # STAC's words for "see the license link"
SEARCH_CONFORMANCE = "/item-search"
RGB = ("red", "green", "blue")


class StoreStacIO(pystac.StacIO):
    """pystac reads through :func:`pipeline.store.read_bytes` (local path, HTTP or S3 with the s3 params)."""

    def __init__(self, s3: S3Params, timeout_s: float) -> None:
        super().__init__()
        self.s3, self.timeout_s = s3, timeout_s

    def read_text(self, source, *args, **kwargs) -> str:
        href = str(source.href if isinstance(source, pystac.Link) else source)
        return read_bytes(href.removeprefix("file://"), self.s3, timeout_s=self.timeout_s).decode("utf-8")

    def write_text(self, dest, txt: str, *args, **kwargs) -> None:
        raise CatalogError(f"{dest}: crossview reads STAC catalogs, it does not write them back")


# ---------------------------------------------------------------- filters (static catalogs; APIs filter server-side)


def _bound(text: str, end: bool) -> datetime | None:
    """One end of an RFC 3339 interval: '..' or '' open; a bare date covers the whole day."""
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        if len(text) == 10:
            day = datetime.fromisoformat(text).date()
            return datetime.combine(day, time.max if end else time.min, UTC)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CatalogError(f"stac.datetime: {text!r} is not an RFC 3339 date or date-time (e.g. 2016-01-01)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_interval(text: str | None) -> tuple[datetime | None, datetime | None]:
    """``stac.datetime`` as (start, end), either open (None)."""
    if not text:
        return None, None
    parts = text.split("/")
    if len(parts) == 1:  # an instant (or a whole day, for a bare date)
        return _bound(parts[0], end=False), _bound(parts[0], end=True)
    if len(parts) != 2:
        raise CatalogError(f"stac.datetime: {text!r} must be an instant or start/end")
    return _bound(parts[0], end=False), _bound(parts[1], end=True)


def _item_times(item: pystac.Item) -> tuple[datetime | None, datetime | None]:
    meta = item.common_metadata
    start, end = meta.start_datetime or item.datetime, meta.end_datetime or item.datetime
    return start, end


def in_interval(item: pystac.Item, start: datetime | None, end: datetime | None) -> bool:
    """Whether the item's datetime (or start/end range) overlaps [start, end]."""
    first, last = _item_times(item)
    if start is not None and last is not None and last < start:
        return False
    return not (end is not None and first is not None and first > end)


def search_area(stac: StacParams) -> BaseGeometry | None:
    """The lon/lat area items must intersect: ``stac.bbox``, the polygons of ``stac.aoi``, or None (anywhere)."""
    if stac.bbox is not None:
        return shapely.box(*stac.bbox)
    if stac.aoi:
        from pipeline.vectors import read_area

        return read_area(stac.aoi, 4326, "stac.aoi file")
    return None


def _item_area(item: pystac.Item) -> BaseGeometry | None:
    if item.geometry:
        return shape(item.geometry)
    return shapely.box(*item.bbox) if item.bbox else None


# ---------------------------------------------------------------- finding items


def _root_doc(url: str, io: StoreStacIO) -> dict:
    try:
        doc = json.loads(io.read_text(url))
    except StoreError as err:
        raise CatalogError(f"stac.url: cannot read {redact(url)} ({err}); check the URL or path") from None
    except ValueError as err:
        raise CatalogError(f"stac.url: {redact(url)} is not STAC JSON ({err})") from None
    if not isinstance(doc, dict) or "type" not in doc:
        raise CatalogError(f"stac.url: {redact(url)} is not a STAC catalog, collection or API landing page")
    return doc


def is_api(doc: dict) -> bool:
    """A STAC API landing page: it conforms to item search or links a search endpoint."""
    if any(SEARCH_CONFORMANCE in c for c in doc.get("conformsTo") or []):
        return True
    return any(link.get("rel") == "search" for link in doc.get("links") or [])


def _static_items(url: str, stac: StacParams, io: StoreStacIO) -> list[pystac.Item]:
    root = pystac.read_file(url, stac_io=io)
    if isinstance(root, pystac.Item):
        items = [root]
    else:
        items = list(root.get_items(recursive=True))
    area, (start, end) = search_area(stac), parse_interval(stac.datetime)
    wanted = set(stac.collections)
    out = []
    for item in items:
        if wanted and _collection_id(item) not in wanted:
            continue
        footprint = _item_area(item)
        if area is not None and (footprint is None or not footprint.intersects(area)):
            continue
        if in_interval(item, start, end):
            out.append(item)
    return out


def _api_items(url: str, stac: StacParams) -> list[pystac.Item]:
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    area = search_area(stac) if stac.aoi else None
    try:
        client = Client.open(url, timeout=stac.timeout_s)
        search = client.search(
            collections=stac.collections or None,
            bbox=list(stac.bbox) if stac.bbox is not None else None,
            intersects=shapely.geometry.mapping(area) if area is not None else None,
            datetime=stac.datetime or None,
            max_items=stac.max_items + 1,
        )
        return list(search.items())
    except (APIError, OSError, ValueError) as err:
        reason = " ".join(redact(str(err)).split())[:300]
        raise CatalogError(f"stac.url: the STAC API at {redact(url)} failed ({type(err).__name__}: {reason})") from None


def find_items(stac: StacParams, s3: S3Params) -> list[pystac.Item]:
    """Every item ``stac.url`` yields for the search params, sorted by (collection, id)."""
    url = str(stac.url)
    parse_interval(stac.datetime)  # a bad datetime is the same one line for an API as for a static catalog
    io = StoreStacIO(s3, stac.timeout_s)
    doc = _root_doc(url, io)
    items = _api_items(url, stac) if is_api(doc) else _static_items(url, stac, io)
    if len(items) > stac.max_items:
        raise CatalogError(
            f"stac.url: the search matches more than stac.max_items = {stac.max_items} items; narrow it with "
            "stac.collections, stac.bbox / stac.aoi or stac.datetime, or raise stac.max_items"
        )
    log.info("stac: %d items from %s", len(items), redact(url))
    return sorted(items, key=lambda i: (_collection_id(i), i.id))


# ---------------------------------------------------------------- items -> raster catalog rows


def _collection_id(item: pystac.Item) -> str:
    return item.collection_id or ""


@lru_cache(maxsize=256)
def _collection_doc(href: str, s3: S3Params, timeout_s: float) -> dict:
    try:
        return json.loads(read_bytes(href, s3, timeout_s=timeout_s))
    except (StoreError, ValueError):
        log.warning("stac: cannot read collection %s; only the item's metadata is used", redact(href))
        return {}


def collection_of(item: pystac.Item, stac: StacParams, s3: S3Params) -> dict:
    """The item's collection as a dict (licence, providers, title), or {} when it has none."""
    link = item.get_single_link("collection")
    if link is None:
        return {}
    href = link.get_absolute_href() or link.href
    return _collection_doc(str(href).removeprefix("file://"), s3, stac.timeout_s)


def _link(doc: dict, rel: str) -> dict:
    return next((link for link in doc.get("links") or [] if link.get("rel") == rel), {})


def licence_of(item: pystac.Item, coll: dict, stac: StacParams) -> tuple[str, str]:
    """(licence, licence URL): the params' override, else the item's or collection's ``license`` and link."""
    if stac.licence:  # the override replaces the item's licence and its link (a known licence brings its URL)
        return stac.licence, stac.licence_url or ""
    own = item.get_single_link("license")
    link = {"href": own.get_absolute_href() or own.href, "title": own.title} if own else _link(coll, "license")
    name = item.properties.get("license") or coll.get("license") or ""
    url = stac.licence_url or link.get("href", "")
    if name in OPEN_LICENCES:
        name = link.get("title") or name
    if not name:
        raise CatalogError(f"stac item {item.id}: no licence in the item or its collection; set stac.licence")
    return name, url


def _provider_names(providers) -> list[str]:
    names = []
    for p in providers or []:
        p = p.to_dict() if hasattr(p, "to_dict") else p
        roles = set(p.get("roles") or [])
        if not roles or roles & {"licensor", "producer"}:
            names.append(str(p.get("name", "")).strip())
    return [n for n in dict.fromkeys(names) if n]


def attribution_of(item: pystac.Item, coll: dict) -> str:
    """The licensor/producer providers of the item, else of its collection, else its scientific citation."""
    names = _provider_names(item.properties.get("providers")) or _provider_names(coll.get("providers"))
    return ", ".join(names) or item.properties.get("sci:citation") or coll.get("sci:citation") or ""


def satellite_of(item: pystac.Item, coll: dict) -> str:
    """The item's platform, else its constellation, else the collection's one summarised platform."""
    props = item.properties
    platforms = (coll.get("summaries") or {}).get("platform") or []
    return str(props.get("platform") or props.get("constellation") or (platforms[0] if len(platforms) == 1 else ""))


def pick_asset(item: pystac.Item, key: str | None) -> tuple[str, pystac.Asset]:
    """The image asset: ``stac.asset``, else ``visual``, else the one GeoTIFF data asset; else an error naming them."""
    if key:
        if key not in item.assets:
            raise CatalogError(f"stac item {item.id}: no asset {key!r} (it has {sorted(item.assets)}); fix stac.asset")
        return key, item.assets[key]
    if "visual" in item.assets:
        return "visual", item.assets["visual"]
    tiffs = [k for k, a in item.assets.items()
             if (a.media_type or "").split(";")[0].strip() in GEOTIFF_TYPES and "data" in (a.roles or ["data"])]
    if len(tiffs) != 1:
        raise CatalogError(
            f"stac item {item.id}: cannot tell which asset is the image ({sorted(item.assets)}); set stac.asset"
        )
    return tiffs[0], item.assets[tiffs[0]]


def band_order_of(asset: pystac.Asset, stac: StacParams) -> tuple[int, int, int]:
    """``stac.band_order``, else the 1-based red, green, blue of the asset's ``eo:bands`` / ``bands``, else 1, 1, 1
    for a one-band asset and 1, 2, 3 otherwise."""
    if stac.band_order is not None:
        return stac.band_order
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    names = [str(b.get("common_name") or b.get("eo:common_name") or "").lower() for b in bands]
    if all(c in names for c in RGB):
        return tuple(names.index(c) + 1 for c in RGB)  # type: ignore[return-value]
    return (1, 1, 1) if len(bands) == 1 else (1, 2, 3)  # one band (panchromatic): grey RGB


def asset_uri(asset: pystac.Asset, relative: bool) -> str:
    """The asset's absolute href as a catalog URI: URLs as they are, local paths relative to the cwd when the
    catalog was given by a relative path (tables hold no absolute local paths the user did not write)."""
    href = str(asset.get_absolute_href() or asset.href).removeprefix("file://")
    if is_http(href) or is_s3(href) or not relative:
        return href
    try:
        return os.path.relpath(href)
    except ValueError:
        return href


def to_source(item: pystac.Item, stac: StacParams, s3: S3Params, relative: bool) -> RasterSource:
    """One item -> one raster catalog row, checked like any catalog row (licence known or with a URL, ...)."""
    coll = collection_of(item, stac, s3)
    _, asset = pick_asset(item, stac.asset)
    licence, licence_url = licence_of(item, coll, stac)
    aoi = _collection_id(item) or "stac"
    row = {
        "aoi": aoi,
        "city": str(item.properties.get(stac.city_property) or coll.get("title") or aoi),
        "uri": asset_uri(asset, relative),
        "band_order": list(band_order_of(asset, stac)),
        "satellite": stac.satellite or satellite_of(item, coll) or "",
        "licence": licence,
        "licence_url": licence_url,
        "attribution": stac.attribution or attribution_of(item, coll),
    }
    where = f"stac item {item.id} (collection {aoi})"
    for key, param in (("satellite", "stac.satellite"), ("attribution", "stac.attribution")):
        if not row[key]:
            raise CatalogError(f"{where}: no {key} in the item or its collection; set {param}")
    try:
        return raster_source(row, where)
    except CatalogError as err:
        raise CatalogError(f"{err} (from STAC: or set stac.licence and stac.licence_url)") from None


def raster_sources(params: Params) -> list[RasterSource]:
    """The raster catalog from ``stac.url``: one row per matching item."""
    stac = params.stac
    if not stac.url:
        raise CatalogError("stac.url is not set")
    relative = not (is_http(stac.url) or is_s3(stac.url) or os.path.isabs(stac.url))
    _collection_doc.cache_clear()  # a catalog may have been republished since the last call in this process
    items = find_items(stac, params.s3)
    if not items:
        log.warning("stac: no item matches the search (collections, bbox/aoi, datetime): no tiles")
    return [to_source(item, stac, params.s3, relative) for item in items]
