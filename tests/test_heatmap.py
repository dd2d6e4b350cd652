"""``crossview heatmap``: the grid, CRS and bounds of the GeoTIFF, the GeoJSON points, the PNG, bad areas,
WITW's score and the bearing convention, and the defaults after the demo's ``dvc repro``.

The tile is made in code (:func:`make_tile`): a 500 m square at 1 m in UTM zone 31N with a blocky
pattern, registered in a ``tiles`` table; the model is a tiny witw_fov (random weights: the files'
geometry, not the scores, is under test).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from affine import Affine
from PIL import Image

torch = pytest.importorskip("torch")

from pipeline import heatmap, heatmap_draw, heatmap_score
from pipeline.config import Params, TrainParams, WitwFovParams
from pipeline.geo import transformer
from pipeline.schemas import MANIFEST, TILES, table_from_rows, write_table
from pipeline.train.loop import save_atomic
from pipeline.train.models import build_model

EPSG, X0, Y1, GSD, SIDE = 32631, 600_000.0, 5_000_500.0, 1.0, 500
STEP = 56.25
BOX = (600_100.0, 5_000_100.0, 600_400.0, 5_000_400.0)  # 300 m: 6 x 6 cells of 56.25 m (the last ones partial)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tile(root) -> str:
    """A 500 x 500 px RGB GeoTIFF at 1 m in EPSG:32631 and its one-row ``tiles`` table; returns the table path."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (3, 20, 20), dtype=np.uint8)
    data = np.kron(blocks, np.ones((1, 25, 25), np.uint8))
    data[:, data.any(axis=0) == 0] = 1  # no accidental nodata
    path = root / "tile.tif"
    with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=3, dtype="uint8",
                       crs=f"EPSG:{EPSG}", transform=Affine(GSD, 0, X0, 0, -GSD, Y1), tiled=True) as dst:
        dst.write(data)
    footprint = shapely.box(X0, Y1 - SIDE * GSD, X0 + SIDE * GSD, Y1)
    row = {"tile_id": "T1", "aoi": "A", "city": "C", "uri": str(path), "epsg": EPSG,
           "footprint_wkb": shapely.to_wkb(footprint), "minx": X0, "miny": Y1 - SIDE, "maxx": X0 + SIDE, "maxy": Y1,
           "gsd_m": GSD, "width": SIDE, "height": SIDE, "status": "ok"}
    table = root / "tiles.parquet"
    write_table(table_from_rows([row], TILES), table, TILES, sort_by=["tile_id"])
    return str(table)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("heat")
    tiles = make_tile(root)
    torch.manual_seed(0)
    params = TrainParams(model="witw_fov", witw_fov=WitwFovParams(vgg_convs=2, polar_height=8, polar_width=32,
                                                                  chip_px=16, channels=4))
    save_atomic({"params": params.model_dump(), "model": build_model(params).state_dict()}, root / "model.pt")
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(root / "photo.jpg")
    manifest = root / "test.parquet"
    write_table(table_from_rows([{"id": "p1", "split": "test", "photo_uri": str(root / "photo.jpg"), "x_m": 600_250.0,
                                  "y_m": 5_000_250.0, "epsg": EPSG}], MANIFEST), manifest, MANIFEST)
    return root, tiles, manifest


def run(world, *extra: str) -> str:
    root, tiles, manifest = world
    parser = argparse.ArgumentParser(prog="crossview heatmap")
    heatmap.configure(parser)
    out = str(root / f"out{abs(hash(extra))}")
    args = parser.parse_args(["--model", str(root / "model.pt"), "--tiles", tiles, "--manifest", str(manifest),
                              "--out", out, *extra])
    assert heatmap.main(Params(), args) == 0
    return out


def test_geotiff_has_the_grid_crs_transform_and_bounds(world):
    out = run(world, "--bbox", *map(str, BOX), "--crs", "tile", "--photo", str(world[0] / "photo.jpg"))
    with rasterio.open(f"{out}.tif") as src:
        assert src.crs.to_epsg() == EPSG
        assert (src.width, src.height, src.count) == (6, 6, 3)
        assert src.transform == Affine(STEP, 0, BOX[0], 0, -STEP, BOX[3])
        assert src.bounds == pytest.approx((BOX[0], BOX[3] - 6 * STEP, BOX[0] + 6 * STEP, BOX[3]))
        assert src.descriptions == ("score", "bearing_deg", "left_edge_deg")
        assert "exp(10 (1 - d))" in src.tags()["SCORE"] and "photo's centre" in src.tags()["BEARING"]
        score, bearing, left = src.read(1), src.read(2), src.read(3)
    # a point is scored when its whole 225 m chip lies in the tile: centres 128.1 .. 353.1 m in, not 409.4 m
    assert np.isfinite(score[:5, :5]).all() and np.isnan(score[5]).all() and np.isnan(score[:, 5]).all()
    assert ((score[:5, :5] > math.exp(-30)) & (score[:5, :5] <= math.exp(10))).all()  # exp(10 (1 - d)), d in 0..4
    assert ((bearing[:5, :5] >= 0) & (bearing[:5, :5] < 360)).all()
    view = 360 * 6 / 32  # the tiny model's photo: 70 degrees rounded to 6 of the polar image's 32 columns
    assert np.allclose((bearing[:5, :5] - left[:5, :5]) % 360, view / 2, atol=1e-3)


def test_geojson_points_are_the_scored_cell_centres_in_lon_lat(world):
    out = run(world, "--bbox", *map(str, BOX), "--crs", f"EPSG:{EPSG}", "--photo", str(world[0] / "photo.jpg"))
    features = json.loads(Path(f"{out}.geojson").read_text())["features"]
    assert len(features) == 25
    with rasterio.open(f"{out}.tif") as src:
        score = src.read(1)
    back = transformer(4326, EPSG)
    for f in features:
        p = f["properties"]
        x, y = back.transform(*f["geometry"]["coordinates"])
        assert (x, y) == pytest.approx((BOX[0] + (p["col"] + 0.5) * STEP, BOX[3] - (p["row"] + 0.5) * STEP), abs=1e-3)
        assert p["score"] == pytest.approx(float(score[p["row"], p["col"]]), rel=1e-6)
        assert p["score"] == pytest.approx(math.exp(10 * (1 - p["distance"])), rel=1e-9)
        assert 0 <= p["bearing_deg"] < 360 and p["tile_id"] == "T1" and p["epsg"] == EPSG
        assert 0 <= p["left_edge_deg"] < 360 and "photo's centre" in p["bearing_convention"]
        assert p["score_formula"].startswith("exp(10 (1 - d))")
    ranks = sorted(f["properties"]["rank"] for f in features)
    assert ranks == list(range(1, 26))
    best = min(features, key=lambda f: f["properties"]["rank"])["properties"]["score"]
    assert best == max(f["properties"]["score"] for f in features)


def test_png_shows_the_area_with_the_true_location_marked(world):
    out = run(world, "--bbox", *map(str, BOX), "--crs", "tile", "--id", "p1")
    png = Image.open(f"{out}.png")
    assert png.size == (1600, 1600)
    side = 6 * STEP  # the truth (600250, 5000250) is 150 m right of and below the grid's top-left corner
    t = round(150 / side * 1600)
    assert png.getpixel((t, t)) == (0, 255, 255)


def test_a_lon_lat_polygon_is_gridded_in_the_tiles_utm_crs(world):
    to_ll = transformer(EPSG, 4326)
    corners = [(600_150, 5_000_150), (600_350, 5_000_150), (600_250, 5_000_350)]
    wkt = "POLYGON((" + ", ".join(f"{lon} {lat}" for lon, lat in (to_ll.transform(*c) for c in corners + corners[:1])) + "))"
    out = run(world, "--polygon", wkt, "--photo", str(world[0] / "photo.jpg"))
    with rasterio.open(f"{out}.tif") as src:
        assert src.crs.to_epsg() == EPSG
        assert src.transform.a == STEP
        assert (src.width, src.height) == (math.ceil(200 / STEP), math.ceil(200 / STEP))
        assert src.transform.c == pytest.approx(600_150, abs=0.5) and src.transform.f == pytest.approx(5_000_350, abs=0.5)
        scored = np.isfinite(src.read(1))
    triangle = shapely.Polygon(corners)
    x, y = np.meshgrid(src.transform.c + (np.arange(src.width) + 0.5) * STEP,
                       src.transform.f - (np.arange(src.height) + 0.5) * STEP)
    inside = shapely.covers(triangle, shapely.points(x, y))
    assert scored.sum() > 0 and not (scored & ~inside).any()  # nothing outside the polygon is scored


def test_an_area_outside_every_tile_or_too_large_is_refused(world):
    root, tiles, _ = world
    model, _ = __import__("pipeline.train.loop", fromlist=["load_model"]).load_model(root / "model.pt")
    photo = Image.open(root / "photo.jpg")
    far = shapely.box(700_000, 5_000_000, 700_300, 5_000_300)
    with pytest.raises(heatmap.HeatmapError, match="not inside any tile"):
        heatmap_score.compute(model, photo, heatmap_score.load_tiles(tiles), far, EPSG, STEP, 225.0)
    with pytest.raises(heatmap.HeatmapError, match="max_points"):
        heatmap_score.compute(model, photo, heatmap_score.load_tiles(tiles), shapely.box(*BOX), EPSG, 1.0, 225.0, max_points=100)
    with pytest.raises(heatmap.HeatmapError, match="--crs"):
        heatmap.parse_crs("mercator")
    with pytest.raises(heatmap.HeatmapError, match="min < max"):
        heatmap.parse_area([1, 1, 0, 2], None)


def test_witw_score_is_exp_10_one_minus_distance_on_a_hand_made_distance_grid():
    d = np.array([[0.0, 1.0], [2.0, np.nan]])
    s = heatmap_score.witw_score(d)
    assert s[0, 0] == pytest.approx(math.exp(10)) and s[0, 1] == pytest.approx(1.0)
    assert s[1, 0] == pytest.approx(math.exp(-10)) and np.isnan(s[1, 1])
    assert heatmap_score.left_edge(np.array([10.0, 200.0]), 70.0).tolist() == pytest.approx([335.0, 165.0])


def _result(orientation: bool) -> heatmap_score.HeatmapResult:
    grid = heatmap_score.Grid(EPSG, BOX[0], BOX[3], STEP, 2, 2)
    d = np.array([[0.2, 0.9], [1.5, np.nan]])
    bearing = np.array([[90.0, 180.0], [270.0, np.nan]], np.float32) if orientation else np.full((2, 2), np.nan)
    tile = np.array([["T1", "T1"], ["T1", None]], object)
    return heatmap_score.HeatmapResult(grid, heatmap_score.witw_score(d), d, bearing.astype(np.float32),
                                       heatmap_score.left_edge(bearing, 60.0).astype(np.float32), tile, orientation)


def _yellow(path) -> int:
    px = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    return int(((px[:, 0] > 230) & (px[:, 1] > 210) & (px[:, 2] < 40)).sum())


def test_png_legend_states_the_convention_and_a_model_without_orientation_draws_no_marks(tmp_path):
    imagery = Image.new("RGB", (400, 400), (60, 60, 60))
    with_arrows, without = _result(True), _result(False)
    heatmap_draw.render_png(with_arrows, imagery, tmp_path / "a.png")
    heatmap_draw.render_png(without, imagery, tmp_path / "b.png")
    assert _yellow(tmp_path / "a.png") > 100 and _yellow(tmp_path / "b.png") == 0  # arrows only with orientation
    assert any("CENTRE" in line for line in heatmap_draw.legend_lines(with_arrows, truth=False))
    assert "no viewing direction" in " ".join(heatmap_draw.legend_lines(without, truth=False))
    bottom = np.asarray(Image.open(tmp_path / "b.png").convert("L"))[-20:]
    assert (bottom > 240).mean() > 0.5 and (bottom < 60).any(), "a white legend box with dark text"
    props = heatmap_draw.feature_rows(without)[0]["properties"]
    assert props["bearing_deg"] is None and "no viewing direction" in props["bearing_convention"]


def test_heatmap_defaults_work_right_after_the_demo_dvc_repro(demo_repo, tmp_path):
    import subprocess

    rows = pq.read_table(demo_repo / "manifests" / "test.parquet", columns=["id", "x_m", "y_m", "epsg"]).to_pylist()
    mx, my = np.median([r["x_m"] for r in rows]), np.median([r["y_m"] for r in rows])
    row = min(rows, key=lambda r: math.hypot(r["x_m"] - mx, r["y_m"] - my))  # mid-city: every chip fits
    x, y = row["x_m"], row["y_m"]
    out = tmp_path / "demo_heat"
    cmd = ["crossview", "heatmap", "--id", row["id"], "--crs", f"EPSG:{row['epsg']}",
           "--bbox", str(x - 120), str(y - 120), str(x + 120), str(y + 120), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=demo_repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    features = json.loads(Path(f"{out}.geojson").read_text())["features"]
    assert len(features) == 16  # the 4 x 4 cell centres (56.25 m apart) inside the 240 m box, all scored
    assert all(f["properties"]["bearing_deg"] is None for f in features)  # timm_contrastive: no orientation
    assert "no viewing direction" in features[0]["properties"]["bearing_convention"]
    assert Image.open(f"{out}.png").size[0] > 0


def test_a_geopackage_search_area_in_another_crs_grids_like_the_same_polygon_as_wkt(world):
    import geopandas as gpd

    corners = [(600_150, 5_000_150), (600_350, 5_000_150), (600_250, 5_000_350)]
    to_ll = transformer(EPSG, 4326)
    wkt = shapely.Polygon([to_ll.transform(*c) for c in corners]).wkt
    path = world[0] / "area.gpkg"  # stored in Web Mercator: read_area must convert it to --crs (lon/lat here)
    gpd.GeoDataFrame(geometry=[shapely.Polygon(corners)], crs=EPSG).to_crs(3857).to_file(path, driver="GPKG")
    outs = [run(world, "--polygon", area, "--photo", str(world[0] / "photo.jpg")) for area in (str(path), wkt)]
    grids = []
    for out in outs:
        with rasterio.open(f"{out}.tif") as src:
            grids.append((src.crs.to_epsg(), src.width, src.height, src.transform, np.isfinite(src.read(1)).tolist()))
    assert grids[0][:3] == grids[1][:3] and grids[0][3].almost_equals(grids[1][3], precision=1e-3)
    assert grids[0][4] == grids[1][4] and any(any(row) for row in grids[0][4])
