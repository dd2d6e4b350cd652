"""Vector files wherever a geometry is asked for (pipeline/vectors.py): every format GDAL reads, any CRS.

Each file is written by the test with geopandas (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, GeoParquet)
in a projected CRS, so a reader that ignored the file's CRS would put the polygons or points somewhere
else entirely: deny areas, Flickr search areas and custom photo tables are checked on what they yield.
"""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import pytest
import shapely

from catalogs import load_deny_list
from filters import location_rules as location
from filters.base import Tables
from pipeline.config import FilterParams, Params
from pipeline.errors import CatalogError, ConfigError
from pipeline.flickr import AOI, aois_from_params
from pipeline.flickr import _rows as flickr_rows
from pipeline.geo import transformer
from pipeline.photos_io import custom_rows
from pipeline.schemas import DOWNLOADS, PAIRS, PHOTOS, table_from_rows
from pipeline.vectors import is_vector_file, read_area, read_polygons

UTM = 32631  # where the test areas are drawn; photos and checks are in lon/lat
FORMATS = {"gpkg": "GPKG", "shp": "ESRI Shapefile", "geojson": "GeoJSON", "fgb": "FlatGeobuf", "parquet": None}
# Two squares in UTM 31N near Rotterdam (x, y, half side in metres).
SQUARES = {"harbour": (590_000.0, 5_750_000.0, 500.0), "old_town": (594_000.0, 5_752_000.0, 300.0)}


def lonlat(x: float, y: float) -> tuple[float, float]:
    return transformer(UTM, 4326).transform(x, y)


def write_vector(path: Path, frame: gpd.GeoDataFrame) -> Path:
    """Write ``frame`` in the format the suffix names (GeoParquet through geopandas, the rest through GDAL)."""
    suffix = path.suffix.lstrip(".")
    if suffix == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_file(path, driver=FORMATS[suffix], engine="pyogrio")
    return path


def squares_frame(crs: int = 3857) -> gpd.GeoDataFrame:
    """The two squares as named polygons, stored in ``crs`` (Web Mercator by default, neither UTM nor lon/lat)."""
    geoms = [shapely.box(x - h, y - h, x + h, y + h) for x, y, h in SQUARES.values()]
    frame = gpd.GeoDataFrame({"name": list(SQUARES), "city": ["Rotterdam", "Rotterdam"]}, geometry=geoms, crs=UTM)
    return frame.to_crs(crs)


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_polygons_from_every_format_come_back_in_lon_lat_whatever_the_files_crs(tmp_path, suffix):
    path = write_vector(tmp_path / f"areas.{suffix}", squares_frame())
    assert is_vector_file(path)
    features = {f.name: f for f in read_polygons(path)}  # FlatGeobuf's spatial index may reorder features
    assert sorted(features) == ["harbour", "old_town"]
    x, y, h = SQUARES["harbour"]
    inside, outside = lonlat(x + 0.9 * h, y - 0.9 * h), lonlat(x + 1.2 * h, y)
    harbour = features["harbour"].geometry
    assert harbour.covers(shapely.Point(inside)) and not harbour.covers(shapely.Point(outside))
    assert features["harbour"].label.startswith(f"'harbour' ({path.name} feature ")
    utm_area = read_area(path, UTM)  # the same file asked for in another CRS
    assert utm_area.area == pytest.approx(1000**2 + 600**2, rel=1e-3)


def test_a_file_without_crs_or_without_polygons_is_one_line_naming_it(tmp_path):
    bare = write_vector(tmp_path / "bare.shp", squares_frame(UTM))
    bare.with_suffix(".prj").unlink()
    with pytest.raises(CatalogError, match=r"bare\.shp: the area file has no CRS"):
        read_polygons(bare)
    points = write_vector(tmp_path / "points.gpkg", gpd.GeoDataFrame(geometry=[shapely.Point(4.3, 51.9)], crs=4326))
    with pytest.raises(CatalogError, match=r"points\.gpkg: feature 1 is a Point"):
        read_polygons(points)
    (tmp_path / "broken.gpkg").write_bytes(b"not a geopackage")
    with pytest.raises(CatalogError, match=r"broken\.gpkg: cannot read"):
        read_polygons(tmp_path / "broken.gpkg")
    with pytest.raises(CatalogError, match="not found"):
        read_polygons(tmp_path / "missing.gpkg")


# ---------------------------------------------------------------- deny areas


def photo(i: str, lon: float, lat: float) -> dict:
    return {"id": i, "source": "custom", "owner": "someone", "lat": lat, "lon": lon}


def deny_tables() -> Tables:
    hx, hy, hh = SQUARES["harbour"]
    ox, oy, _ = SQUARES["old_town"]
    photos = [photo("in_harbour", *lonlat(hx, hy)), photo("in_old_town", *lonlat(ox, oy)),
              photo("outside", *lonlat(hx + 3 * hh, hy)), photo("no_position", math.nan, math.nan)]
    return Tables(photos=table_from_rows(photos, PHOTOS), downloads=table_from_rows([], DOWNLOADS),
                  pairs=table_from_rows([], PAIRS), chips=None)


def test_deny_list_may_be_a_geopackage_in_any_crs_and_the_reason_names_the_feature(tmp_path):
    path = write_vector(tmp_path / "deny.gpkg", squares_frame())
    out = {r["id"]: r for r in location.deny_list(deny_tables(), FilterParams(deny_list=str(path))).to_pylist()}
    assert {i for i, r in out.items() if not r["kept"]} == {"in_harbour", "in_old_town"}
    assert out["in_old_town"]["reason"] == f"deny_list: inside polygon 'old_town' (deny.gpkg feature 2) ({path})"
    assert out["outside"]["kept"] and out["no_position"]["kept"]


def test_deny_yaml_mixes_ids_wkt_and_vector_files_relative_to_itself(tmp_path):
    (tmp_path / "areas").mkdir()
    write_vector(tmp_path / "areas" / "harbour.fgb", squares_frame().iloc[:1])
    deny = tmp_path / "deny.yaml"
    ox, oy, oh = SQUARES["old_town"]
    ring = [lonlat(ox - oh, oy - oh), lonlat(ox + oh, oy - oh), lonlat(ox + oh, oy + oh), lonlat(ox - oh, oy + oh)]
    wkt = shapely.Polygon(ring).wkt
    deny.write_text(f'ids: [outside]\npolygons:\n  - {{wkt: "{wkt}"}}\n  - {{file: areas/harbour.fgb, why: port}}\n')
    assert load_deny_list(deny).polygon_files and load_deny_list(deny).polygons_wkt == (wkt,)
    out = {r["id"]: r for r in location.deny_list(deny_tables(), FilterParams(deny_list=str(deny))).to_pylist()}
    assert out["in_old_town"]["reason"].startswith("deny_list: inside polygon 1 (")
    assert out["in_harbour"]["reason"].startswith("deny_list: inside polygon 'harbour' (harbour.fgb feature 1)")
    assert out["outside"]["reason"].startswith("deny_list: photo id outside")
    assert out["no_position"]["kept"]


# ---------------------------------------------------------------- Flickr search areas


def test_flickr_aoi_file_gives_one_search_area_per_polygon_and_skips_photos_outside_it(tmp_path):
    diamond = shapely.Polygon([(590_000, 5_749_000), (591_000, 5_750_000), (590_000, 5_751_000), (589_000, 5_750_000)])
    frame = gpd.GeoDataFrame({"aoi": ["AOI_diamond"], "city": ["Rotterdam"]}, geometry=[diamond], crs=UTM)
    path = write_vector(tmp_path / "search.geojson", frame.to_crs(4326))
    params = Params.model_validate({"source": "flickr", "flickr": {"aoi": str(path)}})
    (aoi,) = aois_from_params(params)
    assert (aoi.aoi, aoi.city) == ("AOI_diamond", "Rotterdam")
    west, south, east, north = aoi.bbox
    assert (west, south) == pytest.approx(lonlat(589_000, 5_749_000), abs=0.01)
    assert aoi.area.covers(shapely.Point(lonlat(590_000, 5_750_000)))
    corner, centre = lonlat(589_050, 5_749_050), lonlat(590_000, 5_750_000)  # the corner is in the bbox only
    assert west <= corner[0] <= east and south <= corner[1] <= north

    class State:  # persisted Flickr pages, as the harvest reads them back
        cells = {"q": type("Cell", (), {"status": "done", "lo": 0, "hi": 10**10})()}

        @staticmethod
        def cell_photos(_):
            return [{"id": "in", "latitude": centre[1], "longitude": centre[0], "owner": "o", "license": "4"},
                    {"id": "corner", "latitude": corner[1], "longitude": corner[0], "owner": "o", "license": "4"}]

    rows = flickr_rows(State, aoi, 0, 10**10, params.flickr, seen := set())
    assert [r["id"] for r in rows] == ["in"] and seen == {"in"}
    plain = flickr_rows(State, AOI("bbox", "bbox", aoi.bbox), 0, 10**10, params.flickr, set())
    assert [r["id"] for r in plain] == ["in", "corner"]


def test_flickr_bbox_and_aoi_together_are_refused(tmp_path):
    path = write_vector(tmp_path / "a.gpkg", squares_frame())
    params = Params.model_validate({"flickr": {"aoi": str(path), "bbox": [4, 51, 5, 52]}})
    with pytest.raises(ConfigError, match="keep one"):
        aois_from_params(params)


# ---------------------------------------------------------------- custom photo tables with point geometry


def photo_points(crs: int) -> gpd.GeoDataFrame:
    pts = [shapely.Point(590_000, 5_750_000), shapely.Point(590_100, 5_750_050), None]
    frame = gpd.GeoDataFrame(
        {"id": ["g1", "g2", "g3"], "image": ["img/g1.jpg", "img/g2.jpg", "img/g3.jpg"], "owner": ["Ann"] * 3,
         "licence": ["CC BY 4.0"] * 3, "accuracy": [16, 16, 16]}, geometry=pts, crs=UTM)
    return frame.to_crs(crs)


@pytest.mark.parametrize("suffix", ["gpkg", "parquet", "shp", "geojson"])
def test_custom_photo_positions_come_from_point_geometry_in_any_crs(tmp_path, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my").mkdir()
    path = write_vector(tmp_path / "my" / f"photos.{suffix}", photo_points(3857))
    rows = {r["id"]: r for r in custom_rows(path)}
    assert (rows["g1"]["lon"], rows["g1"]["lat"]) == pytest.approx(lonlat(590_000, 5_750_000), abs=1e-7)
    assert (rows["g2"]["lon"], rows["g2"]["lat"]) == pytest.approx(lonlat(590_100, 5_750_050), abs=1e-7)
    assert math.isnan(rows["g3"]["lat"])  # no geometry: kept, the pair stage records bad_coordinates
    assert rows["g1"]["url"] == str(Path("my") / "img" / "g1.jpg") and rows["g1"]["licence"] == "CC BY 4.0"
    table_from_rows(rows.values(), PHOTOS)


def test_custom_photo_table_with_polygons_names_the_rows(tmp_path):
    frame = photo_points(UTM)
    frame.loc[1, "geometry"] = shapely.box(0, 0, 1, 1)
    path = write_vector(tmp_path / "photos.gpkg", frame)
    with pytest.raises(CatalogError, match=r"rows 2 are not points"):
        custom_rows(path)
