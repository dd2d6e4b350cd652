"""Benchmark: the chip stage vs a plain two-thread rasterio + Pillow loop, and vs one gdal_translate per chip.

Makes (once, in a child process) a 15,000 x 15,000 px 8-bit RGB deflate COG at 0.3 m in UTM 31N,
then, ``--repeat`` times and alternating, each in a fresh process over the same COG and the same
2,000 chip positions (225 m: 750 x 750 px, JPEG q90):

- ours: ``pipeline.chip.chip_pairs`` with 2 workers (chips, sidecars, the chips table);
- plain: a 2-thread pool, one rasterio handle per thread, a window read per chip, and Pillow
  writing the JPEG (no sidecar, no statistics: less work than ours).

Then cuts a subset of the chips the WITW way, one ``gdal_translate -projwin ... -of JPEG`` process
per chip (sequential, as WITW's loop was, and two at a time). Prints chips/s and CPU per chip of
each, our peak RSS, and last the ratio ours / plain loop (target >= 1.8x).

Usage: ``python bench/bench_chip.py [--chips 2000] [--repeat 3] [--baseline 100] [--workdir /tmp/crossview-bench]``
(``apt-get install -y gdal-bin`` provides gdal_translate.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
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


def plain(tile: Path, pos: np.ndarray, outdir: Path, threads: int) -> float:
    """The plain way: a thread pool, one rasterio handle per thread, window read, Pillow JPEG q90 to a file."""
    import threading

    import rasterio
    from PIL import Image
    from rasterio.windows import Window

    from pipeline import chipgeom

    outdir.mkdir(parents=True, exist_ok=True)
    local = threading.local()

    def cut(k: int) -> None:
        if not hasattr(local, "src"):
            local.src = rasterio.open(tile)
        src = local.src
        w = chipgeom.pixel_window(chipgeom.ChipSquare(pos[k][0], pos[k][1], 225.0, EPSG), src.transform, GSD)
        data = src.read((1, 2, 3), window=Window(w.col_off, w.row_off, w.width, w.height))
        Image.fromarray(np.moveaxis(data, 0, -1)).save(outdir / f"{k:05d}.jpg", quality=90)

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(cut, range(len(pos))))
    return time.perf_counter() - t


def child(mode: str, work: Path, chips: int, workers: int) -> None:
    """One timed run in a fresh process (GDAL's cache settings and memory do not leak between runs)."""
    import dask  # noqa: F401 - imports happen before the clocks start, for both sides
    import rasterio  # noqa: F401
    from PIL import Image  # noqa: F401

    from pipeline import chip  # noqa: F401

    pos = chip_positions(chips, 225.0)
    tile = work / "tile15k.tif"
    cpu = time.process_time()
    if mode == "ours":
        shutil.rmtree(work / "store", ignore_errors=True)
        seconds, rows = ours(tile, pos, work / "store", workers)
        ok = sum(r["status"] == "ok" for r in rows)
        assert ok == chips and {r["width"] for r in rows} == {750}, "some chips failed"
    else:
        shutil.rmtree(work / "plain", ignore_errors=True)
        seconds = plain(tile, pos, work / "plain", workers)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu": time.process_time() - cpu, "rss_mb": rss_mb}))


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


def load() -> str:
    """The 1/5/15-minute load averages (the machine is shared: timings depend on them)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=2000)
    ap.add_argument("--baseline", type=int, default=100, help="chips cut the gdal_translate way (rate is scaled)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs of ours and of the plain loop, alternating (median)")
    ap.add_argument("--workdir", default="/tmp/crossview-bench")
    ap.add_argument("--make", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=["ours", "plain"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.make:
        make_cog(Path(a.make))
        return
    work = Path(a.workdir)
    if a.child:
        child(a.child, work, a.chips, a.workers)
        return
    work.mkdir(parents=True, exist_ok=True)
    tile = work / "tile15k.tif"
    if not tile.exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make", str(tile)], check=True)
        log.info("made %s (%d x %d px, %.0f MB) in %.0f s", tile, SIZE, SIZE, tile.stat().st_size / 1e6, time.perf_counter() - t)
    runs: dict[str, list[dict]] = {"ours": [], "plain": []}
    for k in range(max(1, a.repeat)):
        for mode in ("ours", "plain"):
            cmd = [sys.executable, __file__, "--child", mode, "--workdir", str(work), "--chips", str(a.chips),
                   "--workers", str(a.workers)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            runs[mode].append(run)
            log.info("run %d, %-5s: %d chips in %.1f s = %.1f chips/s (%.1f s CPU, peak RSS %.0f MB); load %s",
                     k + 1, mode, a.chips, run["seconds"], a.chips / run["seconds"], run["cpu"], run["rss_mb"], load())
    rate = {m: a.chips / statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    cpu = {m: statistics.median(r["cpu"] for r in rs) for m, rs in runs.items()}
    rss_mb = max(r["rss_mb"] for r in runs["ours"])
    log.info("ours: %.1f chips/s with %d workers, %.2f ms CPU per chip; peak RSS %.0f MB (target < 1024 MB)",
             rate["ours"], a.workers, 1000 * cpu["ours"] / a.chips, rss_mb)
    log.info("plain %d-thread rasterio + Pillow loop: %.1f chips/s, %.2f ms CPU per chip",
             a.workers, rate["plain"], 1000 * cpu["plain"] / a.chips)
    sub = chip_positions(a.chips, 225.0)[: a.baseline]
    if shutil.which("gdal_translate") is None:
        log.warning("gdal_translate not found: the one-process-per-chip baseline is skipped (apt-get install gdal-bin)")
    elif len(sub):
        for parallel in (1, a.workers):
            shutil.rmtree(work / "gdal", ignore_errors=True)
            t = baseline(tile, sub, work / "gdal", parallel)
            base_rate = len(sub) / t
            log.info("gdal_translate per chip, %d at a time: %d chips in %.1f s = %.2f chips/s; ours is %.1fx faster "
                     "(target >= 10x)", parallel, len(sub), t, base_rate, rate["ours"] / base_rate)
    log.info("ours / plain %d-thread loop: %.2fx chips/s (target >= 1.8x), %.2fx less CPU per chip; load %s",
             a.workers, rate["ours"] / rate["plain"], cpu["plain"] / cpu["ours"], load())


if __name__ == "__main__":
    main()
