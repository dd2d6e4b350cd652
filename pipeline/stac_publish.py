"""Publish raster catalog rows as a static, self-contained STAC catalog (the demo publishes its own rasters).

One collection per aoi (title = city; licence as an SPDX id when known, else ``other`` with a
``license`` link; the attribution as a licensor/producer provider), one item per raster (id = file
stem; geometry = its lon/lat bounds; ``city`` and ``platform`` properties) with one ``image`` asset
whose ``eo:bands`` name the red, green and blue bands of ``band_order``. Hrefs are relative, so the
catalog can be moved or served over HTTP with its rasters, and reading it back with ``stac.url``
gives the same raster catalog rows. Files are byte-identical for the same inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import pystac
import rasterio
from rasterio.warp import transform_bounds

from catalogs import find_licence

log = logging.getLogger(__name__)

EO_SCHEMA = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
ASSET_KEY = "image"


def _bounds(path: Path) -> tuple[tuple[float, float, float, float], int]:
    """A raster's lon/lat bounds and band count, from its header."""
    with rasterio.open(path) as src:
        return transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21), src.count


def _eo_bands(count: int, band_order: Sequence[int]) -> list[dict]:
    names = {b: c for c, b in zip(("red", "green", "blue"), band_order, strict=True)}
    return [{"name": f"b{k}", **({"common_name": names[k]} if k in names else {})} for k in range(1, count + 1)]


def _item(row: Mapping, base: Path, when: datetime) -> pystac.Item:
    path = base / str(row["uri"])
    (west, south, east, north), count = _bounds(path)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    item = pystac.Item(
        id=path.stem, geometry={"type": "Polygon", "coordinates": [ring]}, bbox=[west, south, east, north],
        datetime=when, properties={"city": str(row["city"]), "platform": str(row["satellite"])},
        stac_extensions=[EO_SCHEMA],
    )
    asset = pystac.Asset(href=str(path.resolve()), media_type=pystac.MediaType.GEOTIFF, roles=["data"],
                         extra_fields={"eo:bands": _eo_bands(count, row["band_order"])})
    item.add_asset(ASSET_KEY, asset)
    return item


def _collection(aoi: str, rows: list[Mapping], items: list[pystac.Item], when: datetime) -> pystac.Collection:
    first = rows[0]
    known = find_licence(first["licence"])
    boxes = [i.bbox for i in items]
    extent = pystac.Extent(
        pystac.SpatialExtent([[min(b[0] for b in boxes), min(b[1] for b in boxes),
                               max(b[2] for b in boxes), max(b[3] for b in boxes)]]),
        pystac.TemporalExtent([[when, when]]),
    )
    collection = pystac.Collection(
        id=aoi, title=str(first["city"]), description=f"{first['city']}: {first['satellite']} imagery",
        extent=extent, license=known.spdx if known and known.spdx else "other",
        providers=[pystac.Provider(name=str(first["attribution"]), roles=[pystac.ProviderRole.LICENSOR,
                                                                          pystac.ProviderRole.PRODUCER])],
    )
    url = first.get("licence_url") or (known.url if known else "")
    if url:
        collection.add_link(pystac.Link("license", url, media_type="text/html", title=str(first["licence"])))
    return collection


def publish(rows: Sequence[Mapping], base: str | Path, out: str | Path, when: datetime, title: str) -> Path:
    """Write a static catalog of raster catalog ``rows`` (``uri`` relative to ``base``) at ``out/catalog.json``."""
    base, out = Path(base), Path(out)
    catalog = pystac.Catalog(id="crossview-rasters", description=title, title=title)
    for aoi in sorted({str(r["aoi"]) for r in rows}):
        mine = [r for r in rows if str(r["aoi"]) == aoi]
        items = [_item(r, base, when) for r in mine]
        collection = _collection(aoi, mine, items, when)
        for item in sorted(items, key=lambda i: i.id):
            collection.add_item(item)
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(out.resolve()))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    log.info("published %d rasters as a static STAC catalog at %s", len(rows), out / "catalog.json")
    return out / "catalog.json"
