"""The chip stage: windows centred on the photo, nodata and std, errors as rows, reruns, S3."""

from __future__ import annotations

import argparse
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from pipeline import chip
from pipeline.chipgeom import ChipSquare, containing_pixel, pixel_window
from pipeline.config import parse_params
from pipeline.schemas import (
    CHIPS,
    PAIRS,
    TILES,
    read_table,
    table_from_rows,
    write_table,
)
from pipeline.store import client_for

EPSG = 32631
X0, Y0 = 448_000.0, 5_412_000.0  # north-west corner of the test tiles
GSD = 0.3


def pattern(width: int, height: int) -> np.ndarray:
    """RGB that encodes each pixel's (col, row): R = col % 256, G = row % 256, B = 1 + col//256 + 16 * (row//256)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols % 256, rows % 256, 1 + cols // 256 + 16 * (rows // 256)]).astype(np.uint8)


def decode(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(col, row) arrays from pattern pixels (H, W, 3)."""
    r, g, b = (rgb[..., k].astype(int) for k in range(3))
    return r + 256 * ((b - 1) % 16), g + 256 * ((b - 1) // 16)


def write_cog(path: Path, data: np.ndarray, gsd: float = GSD) -> Path:
    """Write a (3, H, W) uint8 array as a deflate COG in UTM 31N with nodata 0."""
    profile = {"driver": "COG", "width": data.shape[2], "height": data.shape[1], "count": 3, "dtype": "uint8",
               "crs": f"EPSG:{EPSG}", "transform": Affine(gsd, 0, X0, 0, -gsd, Y0), "nodata": 0,
               "blocksize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def at_pixel(col: float, row: float) -> tuple[float, float]:
    """UTM position of a fractional pixel coordinate of the test tiles."""
    return X0 + col * GSD, Y0 - row * GSD


def params(store, **chip_section):
    return parse_params({"store": str(store), "workers": 2, "chip": {"edge_m": 225, "format": "png", **chip_section}})


def tiles_table(*tiles: tuple[str, str]):
    rows = [{"tile_id": tid, "uri": uri, "epsg": EPSG, "gsd_m": GSD, "sha256": f"sha-{tid}", "status": "ok"} for tid, uri in tiles]
    return table_from_rows(rows, TILES)


def pairs_table(points: dict[str, tuple[str, float, float]]):
    rows = [{"id": pid, "tile_id": t, "epsg": EPSG, "x_m": x, "y_m": y, "split": "train", "status": "paired", "reason": ""}
            for pid, (t, x, y) in points.items()]
    rows.append({"id": "zz_dropped", "status": "density", "reason": "close to another"})  # gets no chip
    return table_from_rows(rows, PAIRS)


def load(uri: str) -> np.ndarray:
    return np.asarray(Image.open(uri).convert("RGB"))


@pytest.fixture(scope="module")
def tile_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiles")
    write_cog(d / "pattern.tif", pattern(1000, 1000))
    patchy = pattern(2000, 1000)
    patchy[:, :, :500] = 0  # western quarter is nodata
    patchy[:, :, 1000:] = 77  # eastern half is one flat grey
    write_cog(d / "patchy.tif", patchy)
    (d / "broken.tif").write_bytes(b"II*\x00 this is not a tiff")
    return d


def test_chip_centre_pixel_is_the_photo_location(tile_dir, tmp_path):
    rng = np.random.default_rng(0)
    points = {f"p{k}": ("pat", *at_pixel(c, r)) for k, (c, r) in enumerate(rng.uniform(375, 625, (12, 2)))}
    points["exact"] = ("pat", *at_pixel(500.5, 400.5))
    out = chip.chip_pairs(pairs_table(points), tiles_table(("pat", str(tile_dir / "pattern.tif"))), params(tmp_path / "store"))
    rows = {r["id"]: r for r in out.to_pylist()}
    assert out.schema == CHIPS and out["id"].to_pylist() == sorted(points)
    for pid, (_, x, y) in points.items():
        r = rows[pid]
        assert (r["status"], r["width"], r["height"], r["nodata_fraction"]) == ("ok", 750, 750, 0.0)
        img = load(r["uri"])
        assert img.shape == (750, 750, 3)
        cols, rws = decode(img)
        want_col, want_row = containing_pixel(Affine(GSD, 0, X0, 0, -GSD, Y0), x, y)
        assert (cols[375, 375], rws[375, 375]) == (want_col, want_row)
        # the whole chip is the tile's window, pixel for pixel
        assert (cols[0, 0], rws[0, 0], cols[-1, -1], rws[-1, -1]) == (want_col - 375, want_row - 375, want_col + 374, want_row + 374)
    assert (decode(load(rows["exact"]["uri"]))[0][375, 375], decode(load(rows["exact"]["uri"]))[1][375, 375]) == (500, 400)


def test_nodata_patch_gives_high_nodata_fraction_and_flat_patch_zero_std(tile_dir, tmp_path):
    points = {"west": ("pch", *at_pixel(500, 500)), "flat": ("pch", *at_pixel(1500, 500)),
              "edge": ("pch", *at_pixel(1500, 900)), "clean": ("pat", *at_pixel(500, 500))}
    tiles = tiles_table(("pch", str(tile_dir / "patchy.tif")), ("pat", str(tile_dir / "pattern.tif")))
    rows = {r["id"]: r for r in chip.chip_pairs(pairs_table(points), tiles, params(tmp_path / "s")).to_pylist()}
    assert rows["west"]["nodata_fraction"] == pytest.approx(375 / 750)  # cols 125..499 of 125..874 are zero
    assert rows["flat"]["std"] == 0.0 and rows["flat"]["nodata_fraction"] == 0.0
    assert rows["edge"]["nodata_fraction"] == pytest.approx((900 + 375 - 1000) / 750)  # past the raster: filled
    assert rows["edge"]["width"] == 750 and rows["edge"]["std"] == 0.0  # std over valid pixels only
    assert rows["clean"]["nodata_fraction"] == 0.0 and rows["clean"]["std"] > 20
    assert load(rows["west"]["uri"])[:, :375].max() == 0


def test_pixels_under_an_internal_mask_count_as_nodata(tmp_path):
    data = pattern(1000, 1000)
    profile = {"driver": "GTiff", "width": 1000, "height": 1000, "count": 3, "dtype": "uint8", "crs": f"EPSG:{EPSG}",
               "transform": Affine(GSD, 0, X0, 0, -GSD, Y0), "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(tmp_path / "masked.tif", "w", **profile) as dst:
        dst.write(data)
        mask = np.full((1000, 1000), 255, np.uint8)
        mask[:, :200] = 0  # masked although the pixel values are not 0
        dst.write_mask(mask)
    points = {"m": ("msk", *at_pixel(500, 500))}
    rows = chip.chip_pairs(pairs_table(points), tiles_table(("msk", str(tmp_path / "masked.tif"))), params(tmp_path / "s")).to_pylist()
    assert rows[0]["nodata_fraction"] == pytest.approx(75 / 750)  # chip cols 125..199 are masked
    assert load(rows[0]["uri"])[:, :75].max() == 0 and load(rows[0]["uri"])[:, 75:].min(axis=2).max() > 0


def test_unreadable_tile_or_missing_tile_is_an_error_row_and_the_rest_go_on(tile_dir, tmp_path):
    points = {"bad": ("brk", *at_pixel(500, 500)), "good": ("pat", *at_pixel(500, 500)), "lost": ("nope", 1.0, 2.0)}
    tiles = tiles_table(("brk", str(tile_dir / "broken.tif")), ("pat", str(tile_dir / "pattern.tif")))
    rows = {r["id"]: r for r in chip.chip_pairs(pairs_table(points), tiles, params(tmp_path / "s")).to_pylist()}
    assert rows["good"]["status"] == "ok"
    assert rows["bad"]["status"] == "error" and "cannot read tile brk" in rows["bad"]["error"]
    assert rows["lost"]["status"] == "error" and "tile nope" in rows["lost"]["error"]
    assert rows["bad"]["uri"] is None


def test_jpeg_chips_and_new_params_go_to_a_new_folder(tile_dir, tmp_path):
    points = {"a": ("pat", *at_pixel(500, 500))}
    tiles = tiles_table(("pat", str(tile_dir / "pattern.tif")))
    q90 = chip.chip_pairs(pairs_table(points), tiles, params(tmp_path, format="jpeg", jpeg_quality=90)).to_pylist()[0]
    q80 = chip.chip_pairs(pairs_table(points), tiles, params(tmp_path, format="jpeg", jpeg_quality=80)).to_pylist()[0]
    assert q90["uri"].endswith("/a.jpg") and Path(q90["uri"]).parent != Path(q80["uri"]).parent
    assert Path(q90["uri"]).is_file() and Path(q80["uri"]).is_file()
    with Image.open(q90["uri"]) as img:
        assert (img.format, img.size) == ("JPEG", (750, 750))
    assert json.loads(Path(q90["uri"]).with_suffix(".json").read_text())["nodata_fraction"] == 0.0


def _run_main(tmp_path: Path, store: Path, out: Path, **chip_section) -> bytes:
    parser = argparse.ArgumentParser()
    chip.configure(parser)
    args = parser.parse_args(["--pairs", str(tmp_path / "pairs.parquet"), "--tiles", str(tmp_path / "tiles.parquet"), "--out", str(out)])
    assert chip.main(params(store, **chip_section), args) == 0
    return out.read_bytes()


def test_rerun_skips_finished_chips_and_tables_are_byte_identical(tile_dir, tmp_path):
    points = {f"r{k}": ("pat", *at_pixel(400 + 20 * k, 500)) for k in range(6)}
    write_table(pairs_table(points), tmp_path / "pairs.parquet", PAIRS)
    write_table(tiles_table(("pat", str(tile_dir / "pattern.tif"))), tmp_path / "tiles.parquet", TILES, sort_by=["tile_id"])
    store = tmp_path / "store"
    first = _run_main(tmp_path, store, tmp_path / "chips1.parquet")
    rows = read_table(tmp_path / "chips1.parquet", CHIPS).to_pylist()
    files = {r["id"]: Path(r["uri"]) for r in rows}
    for f in files.values():
        os.utime(f, (1, 1))
    files["r2"].with_suffix(".json").unlink()  # r2 never finished: it is cut again
    leftover = files["r0"].parent / ".crossview-tmp-abc.png"
    leftover.write_bytes(b"half a chip")
    second = _run_main(tmp_path, store, tmp_path / "chips2.parquet")
    assert first == second
    assert not leftover.exists()
    assert {k for k, f in files.items() if f.stat().st_mtime != 1} == {"r2"}


def test_chips_folder_exists_even_with_nothing_to_chip(tmp_path):
    write_table(table_from_rows([], PAIRS), tmp_path / "pairs.parquet", PAIRS)
    write_table(tiles_table(), tmp_path / "tiles.parquet", TILES, sort_by=["tile_id"])
    _run_main(tmp_path, tmp_path / "store", tmp_path / "chips.parquet")
    assert (tmp_path / "store" / "chips").is_dir()
    assert read_table(tmp_path / "chips.parquet", CHIPS).num_rows == 0


def test_chip_from_an_s3_tile_into_an_s3_store(tile_dir, s3):
    client = client_for(s3, anonymous=False)
    client.create_bucket(Bucket="bkt")
    client.upload_file(str(tile_dir / "pattern.tif"), "bkt", "store/tiles/pat.tif")
    p = parse_params({"store": "s3://bkt/store", "s3": s3.model_dump(), "chip": {"format": "png"}})
    points = {"s1": ("pat", *at_pixel(450.5, 550.5)), "s2": ("pat", *at_pixel(520.5, 420.5))}
    tiles = tiles_table(("pat", "s3://bkt/store/tiles/pat.tif"))
    rows = {r["id"]: r for r in chip.chip_pairs(pairs_table(points), tiles, p).to_pylist()}
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    key = rows["s1"]["uri"].removeprefix("s3://bkt/")
    img = np.asarray(Image.open(io.BytesIO(client.get_object(Bucket="bkt", Key=key)["Body"].read())))
    cols, rws = decode(img)
    assert (cols[375, 375], rws[375, 375]) == (450, 550)
    client.delete_object(Bucket="bkt", Key="store/tiles/pat.tif")  # finished chips need no tile any more
    again = {r["id"]: r for r in chip.chip_pairs(pairs_table(points), tiles, p).to_pylist()}
    assert again == rows


def test_window_matches_chipgeom():
    w = pixel_window(ChipSquare(*at_pixel(500.5, 500.5), 225.0, EPSG), Affine(GSD, 0, X0, 0, -GSD, Y0), GSD)
    assert (w.col_off, w.row_off, w.width) == (125, 125, 750)


def test_real_rasters_chip_exactly_and_a_truncated_geotiff_is_an_error_row(realdata, tmp_path):
    rasters = realdata / "rasters"
    rotterdam, landsat = rasters / "spacenet_rotterdam_rgb_uint8_utm31n.tif", rasters / "landsat_rgb_byte_utm18n.tif"
    with rasterio.open(rotterdam) as src:
        gsd_r, (x_r, y_r) = src.res[0], src.xy(100, 90)  # centre of pixel row 100, col 90
        want = src.read(window=rasterio.windows.Window(90 - 25, 100 - 25, 50, 50))
    with rasterio.open(landsat) as src:
        gsd_l, centre, corner = src.res[0], src.xy(359, 395), src.xy(5, 5)
    tiles = table_from_rows([
        {"tile_id": "rot", "uri": str(rotterdam), "epsg": 32631, "gsd_m": gsd_r, "sha256": "r", "status": "ok"},
        {"tile_id": "lan", "uri": str(landsat), "epsg": 32618, "gsd_m": gsd_l, "sha256": "l", "status": "ok"},
        {"tile_id": "cut", "uri": str(rasters / "bad_truncated_geotiff_01.tif"), "epsg": 32618, "gsd_m": gsd_l,
         "sha256": "c", "status": "ok"},
    ], TILES)
    rot = {"rot": ("rot", x_r, y_r)}
    out = {r["id"]: r for r in chip.chip_pairs(pairs_table(rot), tiles, params(tmp_path, edge_m=gsd_r * 50)).to_pylist()}
    assert (out["rot"]["width"], out["rot"]["nodata_fraction"]) == (50, 0.0)
    assert (load(out["rot"]["uri"]) == want.transpose(1, 2, 0)).all()  # PNG: the raster's pixels, unchanged
    lan = {"centre": ("lan", *centre), "corner": ("lan", *corner), "trunc": ("cut", *centre)}
    out = {r["id"]: r for r in chip.chip_pairs(pairs_table(lan), tiles, params(tmp_path, edge_m=gsd_l * 100)).to_pylist()}
    assert out["centre"]["nodata_fraction"] < 0.05 and out["centre"]["std"] > 5
    assert out["corner"]["nodata_fraction"] > 0.9  # the scene's nodata collar and beyond the raster
    assert out["trunc"]["status"] == "error" and "cannot read tile cut" in out["trunc"]["error"]


def test_chips_cut_from_a_shared_read_are_the_chips_cut_one_by_one(tile_dir, tmp_path):
    """The cells path (chips copied out of the tile decoded in cells of blocks) against read_chip + chip_stats + encode per chip."""
    rng = np.random.default_rng(3)
    patchy = tile_dir / "patchy.tif"  # nodata quarter, flat half, pattern between
    points = {f"c{k:03d}": ("patchy", *at_pixel(rng.uniform(0, 2000), rng.uniform(0, 1000))) for k in range(60)}
    cfg = params(tmp_path / "store", format="jpeg", jpeg_quality=90)
    rows = {r["id"]: r for r in chip.chip_pairs(pairs_table(points), tiles_table(("patchy", str(patchy))), cfg).to_pylist()}
    inside = 0
    with rasterio.open(patchy) as src:
        for pid, (_, x, y) in points.items():
            window = pixel_window(ChipSquare(x, y, 225.0, EPSG), src.transform, GSD)
            inside += window.clip(src.width, src.height) == window
            data, valid = chip.read_chip(src, window)
            nodata, std = chip.chip_stats(data, valid)
            row = rows[pid]
            assert (row["status"], row["nodata_fraction"], row["std"]) == ("ok", nodata, std)
            assert Path(row["uri"]).read_bytes() == chip.encode(data, cfg.chip)
    assert 0 < inside < len(points)  # both paths ran


def test_chip_stats_are_the_exact_integer_moments():
    rng = np.random.default_rng(5)
    for _ in range(20):
        data = rng.integers(0, 256, (3, 40, 70)).astype(np.uint8)
        data[:, : rng.integers(0, 40)] = 0
        valid = data.any(axis=0)
        n = int(valid.sum()) * 3
        s1, s2 = int(data.sum(dtype=np.uint64)), int(np.square(data, dtype=np.uint16).sum(dtype=np.uint64))
        want_std = float(np.sqrt(max(s2 * n - s1 * s1, 0) / (n * n))) if n else 0.0
        assert chip.chip_stats(data, valid) == ((valid.size - valid.sum()) / valid.size, want_std)


def test_a_tiles_chips_split_into_one_spatial_chunk_per_worker():
    points = {f"p{k:04d}": ("t", *at_pixel(k % 100 * 9.0, k // 100 * 9.0)) for k in range(1000)}
    cfg = parse_params({"chip": {"edge_m": 225}}).chip
    tasks, _ = chip.plan_tasks(pairs_table(points), tiles_table(("t", "t.tif")), cfg, workers=2)
    assert [len(t.ids) for t in tasks] == [500, 500]
    tasks, _ = chip.plan_tasks(pairs_table(points), tiles_table(("t", "t.tif")), cfg, workers=16)
    assert len(tasks) == 4 and sum(len(t.ids) for t in tasks) == 1000  # at least CHUNK chips a task


def textured(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(3, H, W) uint8 like aerial imagery to an encoder: smooth structure plus noise, no nodata (as bench_chip's COG)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    base = 110 + 50 * np.sin(cols / 97.0) * np.cos(rows / 131.0) + 30 * np.sin((cols + rows) / 23.0)
    return np.clip(np.stack([base + k * 12 + rng.normal(0, 9, base.shape) for k in range(3)]), 1, 255).astype(np.uint8)


def test_jpeg_chips_are_byte_identical_across_runs_and_worker_counts(tmp_path):
    """Same tile and positions -> the same chip files, byte for byte, whatever the number of workers
    (1, 2 and 3 tasks of 100 px chips, cut on that many threads at once)."""
    tile = write_cog(tmp_path / "tex.tif", textured(1200, 1100))
    rng = np.random.default_rng(11)
    points = {f"d{k:03d}": ("tex", *at_pixel(rng.uniform(60, 1140), rng.uniform(60, 1040))) for k in range(600)}
    points["edge"] = ("tex", *at_pixel(10, 10))  # reaches past the tile: the one-by-one path
    tiles = tiles_table(("tex", str(tile)))
    found = []
    for run, workers in enumerate((1, 2, 4, 2)):
        cfg = parse_params({"store": str(tmp_path / f"store{run}"), "workers": workers,
                            "chip": {"edge_m": 30, "format": "jpeg", "jpeg_quality": 90}})
        tasks, _ = chip.plan_tasks(pairs_table(points), tiles, cfg.chip, workers=workers)
        assert len(tasks) == {1: 1, 2: 2, 4: 3}[workers]
        rows = chip.chip_pairs(pairs_table(points), tiles, cfg).to_pylist()
        assert {r["status"] for r in rows} == {"ok"} and {r["width"] for r in rows} == {100}
        found.append({r["id"]: (Path(r["uri"]).read_bytes(), r["nodata_fraction"], r["std"]) for r in rows})
    assert all(f == found[0] for f in found[1:])
    assert found[0]["edge"][1] > 0.2 and found[0]["d000"][1] == 0.0


def test_jpeg_chips_match_pillows_encoding_within_encoder_noise(tmp_path):
    """The chips' JPEG encoder (libjpeg-turbo through simplejpeg, 4:2:0) against the one it replaced (Pillow, q90).

    Both decoded by Pillow, per chip: mean |difference| <= 2 grey levels and max <= 32 (measured 1.4 and 16 on
    bench_chip's texture), and the error against the source pixels no more than 5 % above Pillow's. Same size.
    """
    data = textured(1300, 1200, seed=4)
    tile = write_cog(tmp_path / "tex.tif", data)
    points = {"a": ("tex", *at_pixel(650.5, 600.5)), "b": ("tex", *at_pixel(420.2, 390.7)), "c": ("tex", *at_pixel(900.9, 820.1))}
    cfg = parse_params({"store": str(tmp_path / "store"), "chip": {"edge_m": 225, "format": "jpeg", "jpeg_quality": 90}})
    rows = chip.chip_pairs(pairs_table(points), tiles_table(("tex", str(tile))), cfg).to_pylist()
    with rasterio.open(tile) as src:
        for row in rows:
            _, x, y = points[row["id"]]
            w = pixel_window(ChipSquare(x, y, 225.0, EPSG), src.transform, GSD)
            source = data[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width].transpose(1, 2, 0)
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(source)).save(buf, "JPEG", quality=90)  # the chips as they were
            before = np.asarray(Image.open(buf).convert("RGB")).astype(int)
            now = load(row["uri"]).astype(int)
            assert now.shape == before.shape == (750, 750, 3)
            diff = np.abs(now - before)
            assert diff.mean() <= 2.0 and diff.max() <= 32, (diff.mean(), diff.max())
            assert np.abs(now - source).mean() <= 1.05 * np.abs(before - source).mean()


def test_cells_decode_each_cell_once_and_keep_none_past_its_last_chip(tile_dir):
    """_Cells against the tile read window by window; decodes: each cell once with room for all, and never more than an
    LRU of the same size would (Belady's rule keeps the cell needed soonest); nothing kept after the last window."""
    rng = np.random.default_rng(5)
    with rasterio.open(tile_dir / "pattern.tif") as src:
        windows = [rasterio.windows.Window(int(c), int(r), 100, 100) for c, r in rng.integers(0, 900, (80, 2))]
        cell_bytes = 256 * 256 * 3
        for limit in (10**9, 4 * cell_bytes, cell_bytes):
            cells = chip._Cells(src, windows, limit, min_px=100)
            keys = [key for w in windows for key in cells._keys(w)]
            lru: list = []
            lru_decodes = 0
            for key in keys:
                if key in lru:
                    lru.remove(key)
                else:
                    lru_decodes += 1
                    del lru[: max(0, len(lru) + 1 - max(1, limit // cell_bytes))]
                lru.append(key)
            for i, w in enumerate(windows):
                want = np.moveaxis(src.read((1, 2, 3), window=w), 0, -1)
                assert np.array_equal(cells.cut(i, w), want)
                assert cells.size <= max(limit, cell_bytes)
            assert not cells.kept and cells.size == 0
            if limit == 10**9:
                assert cells.decoded == len(set(keys)) < len(keys)
            assert cells.decoded <= lru_decodes, (limit, cells.decoded, lru_decodes)
            if limit == 4 * cell_bytes:
                assert cells.decoded < lru_decodes  # on these windows the rule saves decodes


def test_shares_claim_every_chip_once_when_work_is_taken():
    task = chip.ChipTask("t", "t.tif", GSD, EPSG, "chips/x", (), (), (), group="g-test")
    shares = chip._Shares()
    own = shares.join(task, [(k, None) for k in range(100)])
    mine = [shares.claim(own) for _ in range(10)]
    taken = shares.take("g-test")  # the back half of the 90 left
    assert (own.front, own.back, len(taken.items)) == (10, 55, 45)
    assert [k for k, _ in taken.items] == list(range(55, 100))
    again = shares.take("g-test")  # 45 left in each: the first (own) gives its back half
    assert (own.back, [k for k, _ in again.items]) == (33, list(range(33, 55)))
    got = []
    for share in (own, taken, again):
        while (i := shares.claim(share)) is not None:
            got.append(share.items[i][0])
    assert sorted(mine + got) == list(range(100))  # every chip claimed exactly once
    assert shares.take("g-test") is None  # nothing left to take
    for share in (again, taken, own):
        shares.leave(share)
    assert shares.groups == {}
    small = shares.join(task, [(k, None) for k in range(2 * chip.MIN_TAKE - 1)])
    assert shares.take("g-test") is None  # too little left to be worth a take
    shares.leave(small)


def test_a_task_done_early_takes_chips_from_another_task_on_the_tile(tmp_path):
    """Two tasks of one tile on two threads, one with 300 chips and one with 6: the small one takes from the large one;
    together they give each chip exactly one row, and the chips' bytes and rows are those of a one-task run."""
    import threading

    tile = write_cog(tmp_path / "tex.tif", textured(1200, 1100))
    rng = np.random.default_rng(2)
    points = {f"p{k:03d}": ("tex", *at_pixel(rng.uniform(60, 1140), rng.uniform(60, 1040))) for k in range(306)}
    tiles = tiles_table(("tex", str(tile)))
    cfg = parse_params({"store": str(tmp_path / "one"), "workers": 1, "chip": {"edge_m": 30, "format": "jpeg"}})
    (one,), _ = chip.plan_tasks(pairs_table(points), tiles, cfg.chip, workers=1)
    alone = {r["id"]: r for r in chip.process_task(one, str(tmp_path / "one"), cfg.s3, cfg.chip)}
    assert len(alone) == 306 and {r["status"] for r in alone.values()} == {"ok"}

    big = chip.ChipTask(one.tile_id, one.tile_uri, one.gsd_m, one.epsg, one.folder, one.ids[:300], one.x_m[:300],
                        one.y_m[:300], group="g-two")
    small = chip.ChipTask(one.tile_id, one.tile_uri, one.gsd_m, one.epsg, one.folder, one.ids[300:], one.x_m[300:],
                          one.y_m[300:], group="g-two")
    results = {}
    store = str(tmp_path / "two")
    runner = threading.Thread(target=lambda: results.update(big=chip.process_task(big, store, cfg.s3, cfg.chip)))
    runner.start()
    while "g-two" not in chip._SHARES.groups and runner.is_alive():  # the big task has its share up
        pass
    results["small"] = chip.process_task(small, store, cfg.s3, cfg.chip)
    runner.join()
    rows = results["big"] + results["small"]
    assert sorted(r["id"] for r in rows) == sorted(points)  # each chip exactly once
    assert len({r["id"] for r in results["small"]} - set(small.ids)) > 0  # the small task took some of the big one's
    for row in rows:
        want = alone[row["id"]]
        assert (row["status"], row["nodata_fraction"], row["std"], row["width"]) == (
            want["status"], want["nodata_fraction"], want["std"], want["width"])
        assert Path(row["uri"]).read_bytes() == Path(want["uri"]).read_bytes()
    assert "g-two" not in chip._SHARES.groups


def test_the_stage_sorts_its_rows_on_disk_into_the_bytes_of_the_whole_table(tile_dir, tmp_path, monkeypatch):
    """chip.main with runs of 3 rows (two tiles, a broken tile's error rows, chips past the edge, workers taking work
    from each other): the bytes of write_table(chip_pairs(...)) over the same store."""
    from pipeline import tablestream

    rng = np.random.default_rng(8)
    points = {f"m{k:02d}": ("pat", *at_pixel(*rng.uniform(-50, 1050, 2))) for k in range(25)}
    points.update({f"b{k}": ("brk", *at_pixel(500, 500)) for k in range(3)})
    tiles = tiles_table(("pat", str(tile_dir / "pattern.tif")), ("brk", str(tile_dir / "broken.tif")))
    write_table(pairs_table(points), tmp_path / "pairs.parquet", PAIRS)
    write_table(tiles, tmp_path / "tiles.parquet", TILES, sort_by=["tile_id"])
    monkeypatch.setattr(tablestream, "RUN_ROWS", 3)
    _run_main(tmp_path, tmp_path / "store", tmp_path / "chips.parquet")
    whole = chip.chip_pairs(pairs_table(points), tiles, params(tmp_path / "store"))
    write_table(whole, tmp_path / "whole.parquet", CHIPS)
    assert (tmp_path / "chips.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert Counter(whole["status"].to_pylist()) == {"ok": 25, "error": 3}
