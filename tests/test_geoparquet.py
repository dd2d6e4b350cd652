"""GeoParquet tables (pipeline/geoparquet.py through schemas.write_table): geopandas opens tiles, pairs and
manifests with EPSG:4326 geometry in the right place, reruns are byte-identical, and readers that ask for
the declared columns see exactly what they saw before.
"""

from __future__ import annotations

import hashlib
import json

import geopandas as gpd
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely

from pipeline.geo import transformer
from pipeline.schemas import MANIFEST, PAIRS, TILES, read_table, table_from_rows, write_table

EPSG = 32631
X, Y = 590_000.0, 5_750_000.0


def lonlat(x: float, y: float, epsg: int = EPSG) -> tuple[float, float]:
    return transformer(epsg, 4326).transform(x, y)


def pairs_table():
    rows = [
        {"id": "b", "aoi": "A", "city": "Rotterdam", "tile_id": "t1", "epsg": EPSG, "x_m": X, "y_m": Y,
         "split": "train", "status": "paired", "reason": ""},
        {"id": "c", "aoi": "B", "city": "Atlanta", "tile_id": "t2", "epsg": 32616, "x_m": 741_000.0, "y_m": 3_737_000.0,
         "split": "test", "status": "paired", "reason": ""},
        {"id": "a", "aoi": "A", "city": "Rotterdam", "status": "outside_tiles", "reason": "in no tile"},
    ]
    return table_from_rows(rows, PAIRS)


def manifest_table():
    lon, lat = lonlat(X, Y)
    row = {"id": "m1", "split": "train", "aoi": "A", "city": "Rotterdam", "lat": lat, "lon": lon, "epsg": EPSG,
           "x_m": X, "y_m": Y, "chip_edge_m": 225.0, "chip_px": 750, "gsd_m": 0.3, "tile_id": "t1"}
    return table_from_rows([row], MANIFEST)


def tiles_table():
    footprint = shapely.box(X - 1000, Y - 800, X + 1000, Y + 800)
    rows = [{"tile_id": "t1", "aoi": "A", "city": "Rotterdam", "epsg": EPSG, "footprint_wkb": shapely.to_wkb(footprint),
             "status": "ok"},
            {"tile_id": "t0", "aoi": "A", "city": "Rotterdam", "status": "error", "error": "unreadable"}]
    return table_from_rows(rows, TILES)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pairs_open_in_geopandas_as_epsg_4326_points_and_rerun_byte_identical(tmp_path):
    write_table(pairs_table(), tmp_path / "p1.parquet", PAIRS)
    write_table(pairs_table().take([2, 0, 1]), tmp_path / "p2.parquet", PAIRS)  # another row order, same file
    assert sha(tmp_path / "p1.parquet") == sha(tmp_path / "p2.parquet")
    frame = gpd.read_parquet(tmp_path / "p1.parquet")
    assert frame.crs.to_epsg() == 4326
    assert list(frame.columns) == [*PAIRS.names, "geometry"]  # geopandas hides the bbox covering column
    by_id = dict(zip(frame["id"], frame.geometry, strict=True))
    assert by_id["a"] is None  # no tile, no position in the pairs table
    assert (by_id["b"].x, by_id["b"].y) == pytest.approx(lonlat(X, Y), abs=1e-9)
    assert (by_id["c"].x, by_id["c"].y) == pytest.approx(lonlat(741_000.0, 3_737_000.0, 32616), abs=1e-9)  # 2nd zone
    near_rotterdam = gpd.read_parquet(tmp_path / "p1.parquet", bbox=(4.0, 51.0, 5.0, 52.0))  # through the covering
    assert near_rotterdam["id"].tolist() == ["b"]


def test_declared_columns_read_back_unchanged_and_the_geo_metadata_is_1_1(tmp_path):
    write_table(pairs_table(), tmp_path / "p.parquet", PAIRS)
    back = read_table(tmp_path / "p.parquet", PAIRS)
    assert back.schema.equals(PAIRS) and back.schema.metadata is None
    assert pq.read_table(tmp_path / "p.parquet", columns=PAIRS.names).column_names == PAIRS.names
    names = pq.read_schema(tmp_path / "p.parquet").names
    assert names[: len(PAIRS)] == PAIRS.names and names[len(PAIRS):] == ["geometry", "bbox"]
    geo = json.loads(pq.read_schema(tmp_path / "p.parquet").metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["Point"]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    lo, hi = lonlat(741_000.0, 3_737_000.0, 32616), lonlat(X, Y)
    assert column["bbox"] == pytest.approx([lo[0], lo[1], hi[0], hi[1]])


def test_manifest_has_the_photo_point_and_the_chip_footprint_as_a_second_geometry(tmp_path):
    write_table(manifest_table(), tmp_path / "m.parquet", MANIFEST)
    frame = gpd.read_parquet(tmp_path / "m.parquet")
    assert frame.geometry.name == "geometry" and frame.crs.to_epsg() == 4326
    assert frame["chip_footprint"].crs.to_epsg() == 4326
    row = frame.iloc[0]
    assert (row.geometry.x, row.geometry.y) == pytest.approx((row["lon"], row["lat"]), abs=0)
    chip_utm = gpd.GeoSeries([row["chip_footprint"]], crs=4326).to_crs(EPSG).iloc[0]
    assert chip_utm.area == pytest.approx(225.0**2, rel=1e-6)
    assert chip_utm.centroid.distance(shapely.Point(X, Y)) < 1e-3
    assert shapely.Polygon(chip_utm.exterior).exterior.is_ccw


def test_tile_footprints_are_lon_lat_polygons_and_error_rows_have_none(tmp_path):
    write_table(tiles_table(), tmp_path / "t.parquet", TILES, sort_by=["tile_id"])
    frame = gpd.read_parquet(tmp_path / "t.parquet").set_index("tile_id")
    assert frame.crs.to_epsg() == 4326 and frame.loc["t0"].geometry is None
    back = gpd.GeoSeries([frame.loc["t1"].geometry], crs=4326).to_crs(EPSG).iloc[0]
    assert back.symmetric_difference(shapely.box(X - 1000, Y - 800, X + 1000, Y + 800)).area < 1.0  # m²


def test_an_empty_table_is_still_geoparquet(tmp_path):
    write_table(table_from_rows([], MANIFEST), tmp_path / "e.parquet", MANIFEST)
    frame = gpd.read_parquet(tmp_path / "e.parquet")
    assert len(frame) == 0 and frame.crs.to_epsg() == 4326


@pytest.mark.skipif("Parquet" not in pyogrio.list_drivers(), reason="this GDAL build has no (Geo)Parquet driver")
def test_gdal_reads_the_geoparquet_with_its_crs(tmp_path):
    write_table(pairs_table(), tmp_path / "p.parquet", PAIRS)
    info = pyogrio.read_info(tmp_path / "p.parquet")
    assert info["crs"] == "EPSG:4326" and info["features"] == 3
