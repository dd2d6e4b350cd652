"""Benchmark: the chip stage (windowed reads, one tile open per 256 chips) vs one gdal_translate per chip.

Makes (once, in a child process so it does not count towards our memory) a 15,000 x 15,000 px
8-bit RGB deflate COG at 0.3 m in UTM 31N, then cuts 2,000 chips of 225 m (750 x 750 px, JPEG q90)
through ``pipeline.chip.chip_pairs`` and times it, and cuts a subset of the same chips the WITW way,
one ``gdal_translate -projwin ... -of JPEG`` process per chip (sequential, as WITW's loop was; and
two at a time, to match our two workers). Prints chips/s of each, the ratios, and our peak RSS.

Usage: ``python bench/bench_chip.py [--chips 2000] [--baseline 100] [--workdir /tmp/crossview-bench]``
(``apt-get install -y gdal-bin`` provides gdal_translate.)
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_chip")
EPSG, X0, Y0, GSD, SIZE = 32631, 440_000.0, 5_420_000.0, 0.3, 15_000


def make_cog(path: Path, size: int = SIZE) -> None:
    """A size x size RGB uint8 deflate COG (1024 px blocks, as the tiles stage writes) with texture and noise."""
    import rasterio
    from rasterio.shutil import copy as rio_copy
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".strips.tif")
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "nodata": 0,
               "crs": f"EPSG:{EPSG}", "transform": from_origin(X0, Y0, GSD, GSD), "tiled": True,
               "blockxsize": 1024, "blockysize": 1024, "compress": "deflate", "BIGTIFF": "YES"}
    cols = np.arange(size)
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, 1024):
            rows = np.arange(r0, min(r0 + 1024, size))[:, None]
            base = 110 + 50 * np.sin(cols / 97.0) * np.cos(rows / 131.0) + 30 * np.sin((cols + rows) / 23.0)
            strip = np.stack([base + k * 12 + rng.normal(0, 9, base.shape) for k in range(3)])
            dst.write(np.clip(strip, 1, 255).astype(np.uint8), window=Window(0, r0, size, len(rows)))
    rio_copy(tmp, path, driver="COG", compress="deflate", blocksize=1024, BIGTIFF="YES", num_threads="ALL_CPUS")
    tmp.unlink()


def chip_positions(n: int, edge_m: float, seed: int = 1) -> np.ndarray:
    """n photo positions whose full chip lies inside the tile."""
    rng = np.random.default_rng(seed)
    extent = SIZE * GSD
    xy = rng.uniform(edge_m / 2 + 1, extent - edge_m / 2 - 1, (n, 2))
    return np.c_[X0 + xy[:, 0], Y0 - xy[:, 1]]


def ours(tile: Path, pos: np.ndarray, store: Path, workers: int) -> tuple[float, list[dict]]:
    """Time chip_pairs on a fresh store."""
    from pipeline import chip
    from pipeline.config import parse_params
    from pipeline.schemas import PAIRS, TILES, table_from_rows

    pairs = table_from_rows([{"id": f"{k:05d}", "tile_id": "big", "epsg": EPSG, "x_m": x, "y_m": y, "split": "train",
                              "status": "paired", "reason": ""} for k, (x, y) in enumerate(pos)], PAIRS)
    tiles = table_from_rows([{"tile_id": "big", "uri": str(tile), "epsg": EPSG, "gsd_m": GSD, "sha256": "bench",
                              "status": "ok"}], TILES)
    params = parse_params({"store": str(store), "workers": workers, "chip": {"edge_m": 225, "format": "jpeg", "jpeg_quality": 90}})
    t = time.perf_counter()
    rows = chip.chip_pairs(pairs, tiles, params).to_pylist()
    return time.perf_counter() - t, rows


def gdal_translate_one(tile: Path, xy: np.ndarray, out: Path, edge_m: float = 225.0) -> None:
    """WITW's way: one gdal_translate -projwin process per chip."""
    h = edge_m / 2
    x, y = xy
    subprocess.run(["gdal_translate", "-q", "-projwin", str(x - h), str(y + h), str(x + h), str(y - h),
                    "-of", "JPEG", "-co", "QUALITY=90", str(tile), str(out)], check=True)


def baseline(tile: Path, pos: np.ndarray, outdir: Path, parallel: int) -> float:
    outdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda k: gdal_translate_one(tile, pos[k], outdir / f"{k:05d}.jpg"), range(len(pos))))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=2000)
    ap.add_argument("--baseline", type=int, default=100, help="chips cut the gdal_translate way (rate is scaled)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/crossview-bench")
    ap.add_argument("--make", help=argparse.SUPPRESS)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.make:
        make_cog(Path(a.make))
        return
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tile = work / "tile15k.tif"
    if not tile.exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make", str(tile)], check=True)
        log.info("made %s (%d x %d px, %.0f MB) in %.0f s", tile, SIZE, SIZE, tile.stat().st_size / 1e6, time.perf_counter() - t)
    pos = chip_positions(a.chips, 225.0)
    shutil.rmtree(work / "store", ignore_errors=True)
    t_ours, rows = ours(tile, pos, work / "store", a.workers)
    ok = sum(r["status"] == "ok" for r in rows)
    assert ok == a.chips and {r["width"] for r in rows} == {750}, "some chips failed"
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate = a.chips / t_ours
    log.info("ours: %d chips (750 x 750 JPEG) in %.1f s = %.1f chips/s with %d workers; peak RSS %.0f MB (target < 1024 MB)",
             a.chips, t_ours, rate, a.workers, rss_mb)
    if shutil.which("gdal_translate") is None:
        log.error("gdal_translate not found: apt-get install -y gdal-bin")
        return
    sub = pos[: a.baseline]
    if not len(sub):
        return
    for parallel in (1, a.workers):
        shutil.rmtree(work / "gdal", ignore_errors=True)
        t = baseline(tile, sub, work / "gdal", parallel)
        base_rate = len(sub) / t
        log.info("gdal_translate per chip, %d at a time: %d chips in %.1f s = %.2f chips/s (2000 chips would take %.0f s, "
                 "scaled from the subset); ours is %.1fx faster (target >= 10x)", parallel, len(sub), t, base_rate,
                 a.chips / base_rate, rate / base_rate)


if __name__ == "__main__":
    main()
