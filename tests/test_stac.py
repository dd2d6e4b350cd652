"""Overhead imagery from STAC (pipeline/stac.py): a static catalog written here with pystac, whose items point
at the real rasters in ``../shared/realdata/rasters``, read from disk and over a loopback HTTP server (the
tiles stage then reads the assets by window through GDAL's ``/vsicurl/``), and a STAC API on loopback
searched with pystac-client (paging, bbox, datetime, collections). Tiles and chips are made from both.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
import pyarrow as pa
import pystac
import pytest
import shapely

from pipeline.chip import chip_pairs
from pipeline.config import parse_params
from pipeline.errors import CatalogError
from pipeline.geo import transformer
from pipeline.pair import pair_photos
from pipeline.schemas import DOWNLOADS, PHOTOS, table_from_rows
from pipeline.stac import raster_sources
from pipeline.tiles import build_tiles
from tests.stac_server import stac_api, static_server

ROTTERDAM, ATLANTA, LANDSAT = ("spacenet_rotterdam_rgb_uint8_utm31n.tif", "spacenet_atlanta_pan_uint16_utm16n.tif",
                               "landsat_rgb_byte_utm18n.tif")
# item id -> (raster, collection, city, acquisition date, asset key, eo:bands common names)
ITEMS = {
    "rotterdam": (ROTTERDAM, "spacenet", "Rotterdam", "2019-05-01", "visual", ["red", "green", "blue"]),
    "atlanta": (ATLANTA, "spacenet", "Atlanta", "2017-03-01", "pan", ["pan"]),
    "landsat": (LANDSAT, "landsat", "New York", "2013-07-01", "image", ["red", "green", "blue"]),
}
LANDSAT_POLICY = "https://www.usgs.gov/landsat-missions/data-policy"


def footprint(path: Path) -> tuple[list[float], dict]:
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as src:
        box = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    return list(box), shapely.geometry.mapping(shapely.box(*box))


def make_item(item_id: str, raster: Path, href: str) -> pystac.Item:
    _, collection, city, day, key, bands = ITEMS[item_id]
    bbox, geom = footprint(raster)
    item = pystac.Item(item_id, geom, bbox, datetime.fromisoformat(day).replace(tzinfo=UTC),
                       {"city": city, "platform": "landsat-8" if collection == "landsat" else "worldview-2"})
    item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF, roles=["data"],
                                     extra_fields={"eo:bands": [{"name": f"b{k}", "common_name": c}
                                                                for k, c in enumerate(bands, 1)]}))
    item.add_asset("thumbnail", pystac.Asset(href.replace(".tif", ".png"), media_type=pystac.MediaType.PNG,
                                             roles=["thumbnail"]))
    return item


def collections() -> dict[str, pystac.Collection]:
    extent = pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]]))
    spacenet = pystac.Collection("spacenet", "SpaceNet scenes", extent, title="SpaceNet", license="CC-BY-SA-4.0",
                                 providers=[pystac.Provider("SpaceNet", roles=["licensor"]),
                                            pystac.Provider("Maxar", roles=["producer"]),
                                            pystac.Provider("AWS", roles=["host"])])
    landsat = pystac.Collection("landsat", "Landsat 8", extent, title="Landsat", license="proprietary",
                                providers=[pystac.Provider("USGS", roles=["producer", "licensor"])])
    landsat.add_link(pystac.Link("license", LANDSAT_POLICY, title="USGS Landsat data policy"))
    return {"spacenet": spacenet, "landsat": landsat}


def write_catalog(out: Path, rasters: Path, href) -> Path:
    """A self-contained static catalog at ``out/catalog.json``; ``href(raster name)`` gives each asset's href."""
    catalog = pystac.Catalog("test-rasters", "real rasters for the STAC tests")
    colls = collections()
    for item_id, (name, coll, *_) in ITEMS.items():
        colls[coll].add_item(make_item(item_id, rasters / name, href(name)))
    for coll in colls.values():
        catalog.add_child(coll)
    catalog.normalize_hrefs(str(out))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return out / "catalog.json"


@pytest.fixture()
def rasters(realdata) -> Path:
    return realdata / "rasters"


@pytest.fixture()
def on_disk(tmp_path, rasters) -> Path:
    """A catalog whose assets are the realdata rasters themselves (absolute paths)."""
    return write_catalog(tmp_path / "stac", rasters, lambda name: str(rasters / name))


@pytest.fixture()
def site(tmp_path, rasters) -> Path:
    """A folder to serve: the catalog under stac/ and copies of the rasters under rasters/ (relative hrefs)."""
    root = tmp_path / "site"
    (root / "rasters").mkdir(parents=True)
    for name, *_ in ITEMS.values():
        shutil.copy(rasters / name, root / "rasters" / name)
    write_catalog(root / "stac", rasters, lambda name: str(root / "rasters" / name))
    catalog = pystac.Catalog.from_file(str(root / "stac" / "catalog.json"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root


def sources(url: str, **stac) -> dict:
    """``{raster file name: RasterSource}`` for the items of ``url`` and the other stac params."""
    return {s.uri.rsplit("/", 1)[-1]: s for s in raster_sources(parse_params({"stac": {"url": url, **stac}}))}


# ---------------------------------------------------------------- items -> raster catalog rows


def test_static_catalog_on_disk_gives_one_checked_raster_row_per_item(on_disk, rasters):
    rows = sources(str(on_disk), band_order=None)
    assert sorted(rows) == sorted([ROTTERDAM, ATLANTA, LANDSAT])
    rot, atl, lan = rows[ROTTERDAM], rows[ATLANTA], rows[LANDSAT]
    assert rot.uri == str(rasters / ROTTERDAM)  # an absolute href stays as the catalog wrote it
    assert (rot.aoi, rot.city, rot.satellite, rot.band_order) == ("spacenet", "Rotterdam", "worldview-2", (1, 2, 3))
    assert (rot.licence, rot.licence_url) == ("CC BY-SA 4.0", "https://creativecommons.org/licenses/by-sa/4.0/")
    assert rot.attribution == "SpaceNet, Maxar"  # licensor and producer, not the host
    assert atl.band_order == (1, 1, 1)  # one panchromatic band -> grey RGB
    assert (lan.aoi, lan.city, lan.satellite) == ("landsat", "New York", "landsat-8")
    assert (lan.licence, lan.licence_url, lan.attribution) == ("USGS Landsat data policy", LANDSAT_POLICY, "USGS")


def test_static_search_filters_by_collection_bbox_aoi_file_and_datetime(on_disk, tmp_path):
    url = str(on_disk)
    assert set(sources(url, collections=["landsat"])) == {LANDSAT}
    assert set(sources(url, bbox=[4.0, 51.0, 5.0, 52.5])) == {ROTTERDAM}
    assert set(sources(url, datetime="2017-01-01/..")) == {ROTTERDAM, ATLANTA}
    assert set(sources(url, datetime="2017-03-01")) == {ATLANTA}  # a bare date is the whole day
    assert set(sources(url, datetime="../2016-12-31T23:59:59Z")) == {LANDSAT}
    atlanta = sources(url, collections=["spacenet"])[ATLANTA]
    box = shapely.box(*footprint(Path(atlanta.uri))[0])
    area = gpd.GeoDataFrame(geometry=[box.centroid.buffer(0.001)], crs=4326).to_crs(3857)  # in Web Mercator
    area.to_file(tmp_path / "aoi.gpkg", driver="GPKG")
    assert set(sources(url, aoi=str(tmp_path / "aoi.gpkg"))) == {ATLANTA}


def test_params_override_licence_attribution_satellite_and_bands(on_disk):
    rows = sources(str(on_disk), licence="CC BY 4.0", attribution="Me and mine", satellite="WV-2", band_order=[3, 2, 1])
    for row in rows.values():
        assert (row.licence, row.licence_url) == ("CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/")
        assert (row.attribution, row.satellite, row.band_order) == ("Me and mine", "WV-2", (3, 2, 1))


def test_bad_catalogs_and_searches_are_one_line_naming_what_to_set(on_disk, tmp_path):
    missing = r"stac item landsat: no asset 'red' \(it has \['image', 'thumbnail'\]\); fix stac.asset"
    with pytest.raises(CatalogError, match=missing):
        sources(str(on_disk), asset="red")
    with pytest.raises(CatalogError, match="more than stac.max_items = 2"):
        sources(str(on_disk), max_items=2)
    with pytest.raises(CatalogError, match=r"stac.url: cannot read .*nope.json"):
        sources(str(tmp_path / "nope.json"))
    with pytest.raises(CatalogError, match="stac.datetime"):
        sources(str(on_disk), datetime="last tuesday")
    bare = tmp_path / "bare"
    catalog = pystac.Catalog.from_file(str(on_disk))
    coll = catalog.get_child("landsat")
    coll.license, coll.providers = "proprietary", []
    coll.clear_links("license")
    catalog.normalize_and_save(str(bare), pystac.CatalogType.SELF_CONTAINED)
    with pytest.raises(CatalogError, match=r"stac item landsat .*column licence: 'proprietary'.*stac.licence"):
        sources(str(bare / "catalog.json"), collections=["landsat"], attribution="USGS")
    with pytest.raises(CatalogError, match=r"no attribution .*set stac.attribution"):
        sources(str(bare / "catalog.json"), collections=["landsat"], licence="CC0 1.0")


# ---------------------------------------------------------------- tiles and chips from STAC


def tiles_and_chips(params: dict, store: Path) -> tuple[list[dict], dict[str, dict]]:
    """The tiles stage on the STAC rows, then a photo at each tile's centre paired and chipped (at 1 m, so only
    the SpaceNet items: the 300 m Landsat scene would make a 237 km COG)."""
    p = parse_params({"store": str(store), "workers": 2, "tiles": {"gsd_m": 1.0},
                      "chip": {"edge_m": 60.0, "format": "png"},
                      "split": {"test_cities": [], "val_fraction": 0.0}, **params})
    tiles = build_tiles(p, raster_sources(p))
    photos, ok = [], [t for t in tiles.to_pylist() if t["status"] == "ok"]
    for t in ok:
        lon, lat = transformer(t["epsg"], 4326).transform((t["minx"] + t["maxx"]) / 2, (t["miny"] + t["maxy"]) / 2)
        photos.append({"id": t["tile_id"], "source": "custom", "lat": lat, "lon": lon})
    downloads = table_from_rows([{"id": r["id"], "status": "ok"} for r in photos], DOWNLOADS)
    tiles_ok = tiles.filter(pa.compute.equal(tiles["status"], "ok"))
    pairs = pair_photos(table_from_rows(photos, PHOTOS), downloads, tiles_ok, p)
    assert pairs["status"].to_pylist() == ["paired"] * len(photos), pairs["reason"].to_pylist()
    chips = {r["id"]: r for r in chip_pairs(pairs, tiles_ok, p).to_pylist()}
    return tiles.to_pylist(), chips


def test_static_catalog_over_http_makes_tiles_and_chips_reading_assets_by_window(site, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with static_server(site) as (url, log):
        stac = {"url": f"{url}/stac/catalog.json", "collections": ["spacenet"]}
        tiles, chips = tiles_and_chips({"stac": stac}, tmp_path / "store")
        entries = list(log.entries)
    assert sorted(t["source_uri"] for t in tiles) == sorted(f"{url}/rasters/{name}" for name in (ROTTERDAM, ATLANTA))
    assert [t["status"] for t in tiles] == ["ok"] * 2, [t["error"] for t in tiles]
    assert {(t["city"], t["licence"], t["attribution"]) for t in tiles} == {
        ("Rotterdam", "CC BY-SA 4.0", "SpaceNet, Maxar"), ("Atlanta", "CC BY-SA 4.0", "SpaceNet, Maxar")}
    assert len(chips) == 2
    assert all(c["status"] == "ok" and c["nodata_fraction"] == 0 and c["width"] == 60 for c in chips.values())
    raster_gets = [e for e in entries if e[0] == "GET" and e[1].startswith("/rasters/")]
    assert raster_gets and all(e[2].startswith("bytes=") for e in raster_gets)  # windows, never a whole download
    assert any(e[0] == "HEAD" and e[1] == f"/rasters/{ROTTERDAM}" for e in entries)  # size + ETag for the resume key


def api_items(rasters: Path) -> list[dict]:
    """The three real items (assets served by the API server) plus two decoys the searches must leave out."""
    items = []
    for item_id, (name, coll, *_) in ITEMS.items():
        item = make_item(item_id, rasters / name, "{url}/files/" + name)
        item.collection_id = coll
        items.append(item.to_dict(include_self_link=False))
        items[-1]["links"] = [{"rel": "collection", "href": "{url}/collections/" + coll, "type": "application/json"}]
    for k, (day, where) in enumerate((("2001-01-01", ROTTERDAM), ("2019-05-02", LANDSAT))):
        decoy = dict(items[0] if where == ROTTERDAM else items[2], id=f"decoy{k}")
        decoy["properties"] = {**decoy["properties"], "datetime": f"{day}T00:00:00Z"}
        items.append(decoy)
    return items


def test_stac_api_search_pages_filters_and_makes_tiles_and_chips(rasters, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    files = tmp_path / "served"
    (files / "files").mkdir(parents=True)
    for name, *_ in ITEMS.values():
        shutil.copy(rasters / name, files / "files" / name)
    colls = [c.to_dict(include_self_link=False) for c in collections().values()]
    with stac_api(api_items(rasters), colls, files, page_size=1) as api:
        url = f"{api.url}/"
        assert set(sources(url, datetime="2010-01-01/2019-05-01T23:59:59Z")) == {ROTTERDAM, ATLANTA, LANDSAT}
        assert len(api.searches) >= 3  # one page per item: pystac-client followed the next links
        assert set(sources(url, bbox=[4.0, 51.0, 5.0, 52.5], datetime="2015-01-01/..")) == {ROTTERDAM}
        assert api.searches[-1]["bbox"] == [4.0, 51.0, 5.0, 52.5]
        everything = raster_sources(parse_params({"stac": {"url": url, "collections": ["landsat"]}}))
        assert [s.uri.rsplit("/", 1)[-1] for s in everything] == [LANDSAT, LANDSAT]  # the item and its decoy
        searched = len(api.searches)
        stac = {"url": url, "datetime": "2010-01-01/2019-05-01T23:59:59Z", "collections": ["spacenet"]}
        tiles, chips = tiles_and_chips({"stac": stac}, tmp_path / "store")
        assert all(s.get("datetime") and s.get("collections") == ["spacenet"] for s in api.searches[searched:])
        entries = list(api.log.entries)
    assert [t["status"] for t in tiles] == ["ok"] * 2 and {t["aoi"] for t in tiles} == {"spacenet"}
    assert {t["city"] for t in tiles} == {"Rotterdam", "Atlanta"}
    assert all(t["source_uri"].startswith(f"{api.url}/files/") for t in tiles)
    assert len(chips) == 2 and all(c["status"] == "ok" and c["nodata_fraction"] == 0 for c in chips.values())
    assert any(e[1] == "/collections/spacenet" for e in entries)  # licence and providers came from the collection
    assert all(e[2].startswith("bytes=") for e in entries if e[0] == "GET" and e[1].startswith("/files/"))


def test_static_catalog_on_s3_resolves_relative_hrefs_to_s3_and_makes_tiles(site, tmp_path, s3):
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)
    client.create_bucket(Bucket="imagery")
    for path in sorted(p for p in site.rglob("*") if p.is_file()):
        client.upload_file(str(path), "imagery", f"open/{path.relative_to(site).as_posix()}")
    stac = {"url": "s3://imagery/open/stac/catalog.json", "collections": ["spacenet"]}
    params = {"s3": s3.model_dump(), "stac": stac}
    rows = raster_sources(parse_params(params))
    assert sorted(r.uri for r in rows) == [f"s3://imagery/open/rasters/{n}" for n in (ATLANTA, ROTTERDAM)]
    tiles, chips = tiles_and_chips(params, tmp_path / "store")
    assert [t["status"] for t in tiles] == ["ok", "ok"], [t["error"] for t in tiles]
    assert len(chips) == 2 and all(c["status"] == "ok" for c in chips.values())


def test_flickr_searches_the_footprints_of_the_stac_items_when_no_bbox_or_aoi_is_set(on_disk, rasters):
    from pipeline.flickr import aois_from_params

    params = parse_params({"source": "flickr", "stac": {"url": str(on_disk), "collections": ["spacenet"]}})
    aois = {a.city: a for a in aois_from_params(params)}
    assert sorted(aois) == ["Atlanta", "Rotterdam"] and {a.aoi for a in aois.values()} == {"spacenet"}
    assert aois["Rotterdam"].bbox == pytest.approx(footprint(rasters / ROTTERDAM)[0], abs=1e-6)
