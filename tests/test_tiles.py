"""The tiles stage: real rasters, S3 through /vsis3/ on a loopback moto server, resume, CLI."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import yaml

from catalogs import load_raster_catalog
from pipeline import cli, tiles
from pipeline.config import parse_params
from pipeline.errors import CatalogError
from pipeline.schemas import TILES, write_table
from tests.test_raster import write_multispectral

LICENCE = {"satellite": "WorldView-3", "licence": "CC BY-SA 4.0", "attribution": "SpaceNet and Maxar"}


def write_catalog(path: Path, entries: list[dict]) -> Path:
    """A custom raster catalog (YAML) with licence fields filled in."""
    rows = [{"city": e.get("aoi", "x"), **LICENCE, **e} for e in entries]
    path.write_text(yaml.safe_dump(rows))
    return path


def params_for(catalog: Path | None = None, s3=None, store: str = "data/store", **tiles_params):
    data = {"source": "custom", "store": store, "workers": 2, "tiles": tiles_params}
    if catalog is not None:
        data["custom"] = {"rasters": str(catalog)}
    if s3 is not None:
        data["s3"] = s3.model_dump()
    return parse_params(data)


def by_id(table) -> dict[str, dict]:
    return {row["tile_id"]: row for row in table.to_pylist()}


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_real_spacenet_chips_convert_and_truncated_geotiff_is_an_error_row(realdata, in_tmp):
    rasters = realdata / "rasters"
    catalog = write_catalog(
        in_tmp / "cat.yaml",
        [
            {
                "aoi": "AOI_6_Atlanta",
                "uri": str(rasters / "spacenet_atlanta_pan_uint16_utm16n.tif"),
                "band_order": [1, 1, 1],
            },
            {
                "aoi": "AOI_11_Rotterdam",
                "uri": str(rasters / "spacenet_rotterdam_rgb_uint8_utm31n.tif"),
                "band_order": [1, 2, 3],
            },
            {"aoi": "bad", "uri": str(rasters / "bad_truncated_geotiff_01.tif"), "band_order": [1, 2, 3]},
        ],
    )
    params = params_for(catalog, gsd_m=0.5)
    rows = by_id(tiles.build_tiles(params, load_raster_catalog(catalog)))
    assert set(rows) == {
        "AOI_6_Atlanta__spacenet_atlanta_pan_uint16_utm16n",
        "AOI_11_Rotterdam__spacenet_rotterdam_rgb_uint8_utm31n",
        "bad__bad_truncated_geotiff_01",
    }

    bad = rows["bad__bad_truncated_geotiff_01"]
    assert bad["status"] == "error" and bad["uri"] is None
    assert "bad_truncated_geotiff_01.tif" in bad["error"] and "truncated" in bad["error"]

    atl = rows["AOI_6_Atlanta__spacenet_atlanta_pan_uint16_utm16n"]
    assert atl["status"] == "ok" and atl["epsg"] == 32616 and atl["gsd_m"] == 0.5
    assert atl["uri"] == "data/store/tiles/AOI_6_Atlanta__spacenet_atlanta_pan_uint16_utm16n.tif"
    assert '"method": "percentile"' in atl["stretch"]
    with rasterio.open(atl["uri"]) as ds:
        r, g, b = ds.read()
        assert ds.crs.to_epsg() == 32616 and ds.res == (0.5, 0.5)
    assert (r == g).all() and (g == b).all()  # panchromatic [1, 1, 1] -> gray RGB
    valid = r > 0
    assert (r[valid] == 255).mean() == pytest.approx(0.02, abs=0.01)
    assert atl["sha256"] == tiles.sha256_file(atl["uri"])

    rot = rows["AOI_11_Rotterdam__spacenet_rotterdam_rgb_uint8_utm31n"]
    assert rot["status"] == "ok" and rot["epsg"] == 32631 and '"passthrough"' in rot["stretch"]
    with rasterio.open(rasters / "spacenet_rotterdam_rgb_uint8_utm31n.tif") as src, rasterio.open(rot["uri"]) as ds:
        src_mean = src.read().reshape(3, -1).mean(axis=1)
        out = ds.read(masked=True)
        out_mean = out.reshape(3, -1).mean(axis=1)
        assert ds.width == pytest.approx(900 / 0.5, abs=2)
    assert np.allclose(src_mean, out_mean, atol=3)  # uint8 is passed through, not stretched
    footprint = shapely.from_wkb(rot["footprint_wkb"])
    assert footprint.within(shapely.box(rot["minx"], rot["miny"], rot["maxx"], rot["maxy"]))
    assert footprint.area > 0.9 * 900 * 900


def test_landsat_scene_footprint_is_the_rotated_valid_area(realdata, in_tmp):
    catalog = write_catalog(
        in_tmp / "cat.yaml",
        [{"aoi": "landsat", "uri": str(realdata / "rasters/landsat_rgb_byte_utm18n.tif"), "band_order": [1, 2, 3]}],
    )
    rows = tiles.build_tiles(params_for(catalog, gsd_m=300.0), load_raster_catalog(catalog)).to_pylist()
    (row,) = rows
    assert row["status"] == "ok" and row["epsg"] == 32618 and row["width"] == pytest.approx(791, abs=2)
    footprint = shapely.from_wkb(row["footprint_wkb"])
    bounds = shapely.box(row["minx"], row["miny"], row["maxx"], row["maxy"])
    assert 0.4 * bounds.area < footprint.area < 0.8 * bounds.area  # a rotated scene inside a nodata collar
    for x, y in shapely.get_coordinates(bounds.exterior)[:4]:
        assert not footprint.contains(shapely.Point(x, y))


def _s3_upload(s3, bucket: str, files: dict[str, Path]) -> None:
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)
    client.create_bucket(Bucket=bucket)
    for key, path in files.items():
        client.upload_file(str(path), bucket, key)


def test_s3_key_and_prefix_are_read_through_vsis3_and_missing_key_is_an_error_row(s3, in_tmp):
    ms = write_multispectral(in_tmp / "ms.tif", width=300, height=260, corner=60, patch=(0, 0, 0, 0))
    (in_tmp / "readme.txt").write_text("not a raster")
    _s3_upload(
        s3,
        "crossview-src",
        {"single/ms.tif": ms, "prefix/a.tif": ms, "prefix/sub/b.TIF": ms, "prefix/readme.txt": in_tmp / "readme.txt"},
    )
    catalog = write_catalog(
        in_tmp / "cat.yaml",
        [
            {"aoi": "one", "uri": "s3://crossview-src/single/ms.tif", "band_order": "5,3,2"},
            {"aoi": "many", "uri": "s3://crossview-src/prefix/", "band_order": "5,3,2", "epsg": 32631},
            {"aoi": "gone", "uri": "s3://crossview-src/single/missing.tif", "band_order": "5,3,2"},
        ],
    )
    rows = by_id(tiles.build_tiles(params_for(catalog, s3=s3), load_raster_catalog(catalog)))
    assert set(rows) == {"one__ms", "many__a", "many__b", "gone__missing"}
    for tid in ("one__ms", "many__a", "many__b"):
        assert rows[tid]["status"] == "ok", rows[tid]["error"]
        assert rows[tid]["epsg"] == 32631 and rows[tid]["gsd_m"] == 0.3
        assert Path(rows[tid]["uri"]).is_file()
    assert rows["many__b"]["source_uri"] == "s3://crossview-src/prefix/sub/b.TIF"
    with rasterio.open(rows["one__ms"]["uri"]) as one, rasterio.open(rows["many__a"]["uri"]) as many:
        assert (one.read() == many.read()).all()  # same source bytes, same pixels (only the tags differ)
    gone = rows["gone__missing"]
    assert (
        gone["status"] == "error"
        and "s3://crossview-src/single/missing.tif" in gone["error"]
        and "404" in gone["error"]
    )
    assert "fake-secret" not in gone["error"]


def test_s3_store_gets_the_cogs_and_a_rerun_converts_nothing(s3, in_tmp, monkeypatch):
    ms = write_multispectral(in_tmp / "ms.tif", width=300, height=260, corner=60, patch=(0, 0, 0, 0))
    _s3_upload(s3, "crossview-src", {"t/ms.tif": ms})
    boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region).create_bucket(Bucket="crossview-out")
    catalog = write_catalog(
        in_tmp / "cat.yaml", [{"aoi": "one", "uri": "s3://crossview-src/t/ms.tif", "band_order": [5, 3, 2]}]
    )
    params = params_for(catalog, s3=s3, store="s3://crossview-out/store")
    first = tiles.build_tiles(params, load_raster_catalog(catalog))
    (row,) = first.to_pylist()
    assert row["status"] == "ok" and row["uri"] == "s3://crossview-out/store/tiles/one__ms.tif"
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)
    body = client.get_object(Bucket="crossview-out", Key="store/tiles/one__ms.tif")["Body"].read()
    assert tiles.hashlib.sha256(body).hexdigest() == row["sha256"]

    def no_conversion(*args, **kwargs):
        raise AssertionError("a finished tile was converted again")

    monkeypatch.setattr(tiles, "convert", no_conversion)
    second = tiles.build_tiles(params, load_raster_catalog(catalog))
    assert second.equals(first)


def test_local_rerun_skips_finished_tiles_and_table_is_byte_identical(in_tmp):
    ms = write_multispectral(in_tmp / "ms.tif", width=300, height=260, corner=60, patch=(0, 0, 0, 0))
    catalog = write_catalog(in_tmp / "cat.yaml", [{"aoi": "one", "uri": str(ms), "band_order": [5, 3, 2]}])
    params = params_for(catalog)
    cog = in_tmp / "data/store/tiles/one__ms.tif"

    write_table(tiles.build_tiles(params, load_raster_catalog(catalog)), "a.parquet", TILES, sort_by=["tile_id"])
    mtime = cog.stat().st_mtime_ns
    stale = cog.parent / ".crossview-tmp-abc.tif.raw.tif"  # what an interrupted conversion leaves
    stale.write_bytes(b"partial")
    write_table(tiles.build_tiles(params, load_raster_catalog(catalog)), "b.parquet", TILES, sort_by=["tile_id"])
    assert cog.stat().st_mtime_ns == mtime
    assert Path("a.parquet").read_bytes() == Path("b.parquet").read_bytes()
    assert not stale.exists()

    # a changed param changes the resume key: the tile is converted again
    coarser = params_for(catalog, gsd_m=0.6)
    (row,) = tiles.build_tiles(coarser, load_raster_catalog(catalog)).to_pylist()
    assert row["gsd_m"] == 0.6 and cog.stat().st_mtime_ns != mtime


def test_band_order_naming_a_missing_band_is_an_error_row_and_others_go_on(in_tmp):
    ms = write_multispectral(in_tmp / "four.tif", width=200, height=200, count=4, corner=40, patch=(0, 0, 0, 0))
    catalog = write_catalog(
        in_tmp / "cat.yaml",
        [
            {"aoi": "wrong", "uri": str(ms), "band_order": [5, 3, 2]},
            {"aoi": "right", "uri": str(ms), "band_order": [3, 2, 1]},
        ],
    )
    rows = by_id(tiles.build_tiles(params_for(catalog), load_raster_catalog(catalog)))
    assert rows["right__four"]["status"] == "ok"
    err = rows["wrong__four"]["error"]
    assert rows["wrong__four"]["status"] == "error" and "four.tif" in err and "band_order" in err and "4 band" in err


def test_folder_entry_expands_to_tiles_with_unique_sanitised_ids(in_tmp):
    for sub in ("east", "west"):
        (in_tmp / "scenes" / sub).mkdir(parents=True)
        write_multispectral(in_tmp / "scenes" / sub / "scene 1.tif", width=64, height=64, corner=8, patch=(0, 0, 0, 0))
    catalog = write_catalog(in_tmp / "cat.yaml", [{"aoi": "AOI 9", "uri": "scenes", "band_order": [5, 3, 2]}])
    jobs = tiles.plan(load_raster_catalog(catalog), params_for(catalog).s3)
    ids = [job.tile_id for job in jobs]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(tid.startswith("AOI_9__scene_1__") for tid in ids)
    assert (
        tiles.make_tile_id("AOI_1_Rio", "s3://b/PS-RGB/PS-RGB_mosaic_013022223133.tif")
        == "AOI_1_Rio__PS-RGB_mosaic_013022223133"
    )


def _run_cli(argv: list[str], monkeypatch) -> int:
    # Only this helper's commands: the other stage modules are built in parallel by other helpers.
    monkeypatch.setattr(cli, "COMMANDS", {k: v for k, v in cli.COMMANDS.items() if k in ("tiles", "catalog")})
    return cli.main(argv)


def test_cli_help_lists_the_path_arguments(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run_cli(["tiles", "--help"], monkeypatch)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--demo" in out and "--out" in out


def test_cli_runs_a_custom_catalog_from_a_params_file(in_tmp, monkeypatch):
    ms = write_multispectral(in_tmp / "ms.tif", width=200, height=180, corner=40, patch=(0, 0, 0, 0))
    write_catalog(in_tmp / "cat.yaml", [{"aoi": "mine", "uri": "ms.tif", "band_order": [5, 3, 2]}])
    (in_tmp / "params.yaml").write_text("source: custom\ncustom:\n  rasters: cat.yaml\ntiles:\n  gsd_m: 0.5\n")
    assert ms.exists()
    assert _run_cli(["--params", "params.yaml", "tiles", "--out", "tables/tiles.parquet"], monkeypatch) == 0
    (row,) = pq.read_table("tables/tiles.parquet").to_pylist()
    assert row["tile_id"] == "mine__ms" and row["status"] == "ok" and row["gsd_m"] == 0.5
    assert row["source_uri"] == "ms.tif" and row["uri"] == "data/store/tiles/mine__ms.tif"


def test_demo_source_reads_rasters_yaml_from_the_demo_folder(in_tmp, monkeypatch):
    demo = in_tmp / "demo"
    (demo / "rasters").mkdir(parents=True)
    write_multispectral(demo / "rasters" / "demo_a.tif", width=200, height=180, corner=40, patch=(0, 0, 0, 0))
    write_catalog(demo / "rasters.yaml", [{"aoi": "demo_aoi", "uri": "rasters/demo_a.tif", "band_order": [5, 3, 2]}])
    assert _run_cli(["tiles", "--demo", "demo", "--out", "t.parquet"], monkeypatch) == 0  # params.yaml absent: demo
    (row,) = pq.read_table("t.parquet").to_pylist()
    assert row["tile_id"] == "demo_aoi__demo_a" and row["status"] == "ok"
    assert Path("data/store/tiles").is_dir()


def test_missing_catalog_is_a_clear_error(in_tmp, monkeypatch, capsys):
    with pytest.raises(CatalogError, match="not found"):
        tiles.raster_sources(params_for(in_tmp / "nope.yaml"), "data/demo")
    with pytest.raises(CatalogError, match="crossview demo"):
        tiles.raster_sources(parse_params({"source": "demo"}), "no-demo-here")
    (in_tmp / "params.yaml").write_text("source: custom\ncustom:\n  rasters: nope.yaml\n")
    assert _run_cli(["tiles", "--out", "t.parquet"], monkeypatch) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert not os.path.exists("t.parquet")
