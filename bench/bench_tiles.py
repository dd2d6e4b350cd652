"""Benchmark: peak memory and time of converting one big tile with the tiles stage.

Generates (window by window) a SpaceNet PS-MS-like source: ``--size`` x ``--size`` px, 8 bands,
uint16, EPSG:4326 at about 0.3 m per pixel (over Dar es Salaam, like the real PS-MS COG), with
smooth, compressible content and a nodata triangle. Then converts it in a fresh subprocess
through ``pipeline.tiles.process_one`` (overview stretch, WarpedVRT to UTM at 0.3 m, temp tiled
GeoTIFF, COG copy with overviews, footprint, sha256), and reads the child's max RSS from
``getrusage(RUSAGE_CHILDREN)``. The baseline is what a naive whole-tile read needs just to hold
the source in memory (``size^2 x 8 bands x 2 bytes``: 6.4 GB at 20k). Target: peak RSS < 1.5 GB.

Usage: ``python bench/bench_tiles.py [--size 20000] [--workdir DIR] [--keep]``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_tiles")
LAT, LON = -6.80, 39.25  # Dar es Salaam
GSD_M = 0.3
TARGET_RSS_GB = 1.5


def write_source(path: Path, size: int, block: int = 1024) -> None:
    """An 8-band uint16 EPSG:4326 GeoTIFF, written window by window (memory stays a few blocks)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    deg_x = GSD_M / (111_320 * math.cos(math.radians(LAT)))
    deg_y = GSD_M / 110_574
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 8, "dtype": "uint16",
        "crs": "EPSG:4326", "transform": from_origin(LON, LAT + size * deg_y / 2, deg_x, deg_y),
        "nodata": 0, "tiled": True, "blockxsize": 512, "blockysize": 512,
        "compress": "deflate", "predictor": 2, "zlevel": 1, "bigtiff": "YES",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, block):
            for col in range(0, size, block):
                h, w = min(block, size - row), min(block, size - col)
                rr, cc = np.mgrid[row : row + h, col : col + w]
                # fields and streets: smooth gradients plus a regular block pattern (compressible)
                base = 900 + 500 * np.sin(rr / 700.0) * np.cos(cc / 900.0) + 300 * (((rr // 40) + (cc // 40)) % 3)
                data = np.stack([base * (0.7 + 0.1 * b) + 40 * b for b in range(8)]).astype(np.uint16)
                data[:, rr + cc < size // 3] = 0  # nodata triangle in the top-left corner
                dst.write(data, window=Window(col, row, w, h))


def child(workdir: str, source: str) -> None:
    """Run in the subprocess: convert the tile through the stage's own per-tile function."""
    from catalogs import RasterSource
    from pipeline.config import parse_params
    from pipeline.tiles import TileJob, process_one

    params = parse_params({"store": str(Path(workdir) / "store"), "tiles": {"gsd_m": GSD_M}})
    src = RasterSource("BENCH", "Bench", source, (5, 3, 2), "WorldView-3", "CC BY-SA 4.0", "bench")
    stat = Path(source).stat()
    row = process_one(TileJob("BENCH__big", src, source, f"{stat.st_size}:mtime:{stat.st_mtime_ns}"), params)
    print(json.dumps({k: row.get(k) for k in ("status", "error", "width", "height", "epsg", "uri")}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="source side in px (default 20000)")
    parser.add_argument("--workdir", default=None, help="where to put the source and the store (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", nargs=2, metavar=("WORKDIR", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_tiles_"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"source_{args.size}.tif"
    try:
        if not source.exists():
            start = time.monotonic()
            write_source(source, args.size)
            log.info(
                "generated %s (%.2f GB on disk) in %.0f s",
                source,
                source.stat().st_size / 1e9,
                time.monotonic() - start,
            )
        shutil.rmtree(workdir / "store", ignore_errors=True)
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(workdir), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_gb = usage.ru_maxrss * 1024 / 1e9  # Linux reports KiB
        cpu_s = usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            log.error("conversion failed:\n%s", proc.stderr[-4000:])
            return 1
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        naive_gb = args.size**2 * 8 * 2 / 1e9
        out_gb = Path(row["uri"]).stat().st_size / 1e9 if row["status"] == "ok" else 0.0
        print(f"source: {args.size}x{args.size} px, 8 x uint16, EPSG:4326 -> {row}")
        print(f"output COG: {row['width']}x{row['height']} px, {out_gb:.2f} GB")
        rate = args.size**2 / elapsed / 1e6
        print(f"conversion time: {elapsed:.1f} s wall, {cpu_s:.1f} s CPU ({rate:.2f} Mpx/s of source)")
        print(f"peak RSS of the conversion: {peak_gb:.2f} GB")
        print(f"naive whole-tile read (source in memory): {naive_gb:.2f} GB  -> {naive_gb / peak_gb:.1f}x more")
        ok = row["status"] == "ok" and peak_gb < TARGET_RSS_GB
        print(f"target peak RSS < {TARGET_RSS_GB} GB: {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
