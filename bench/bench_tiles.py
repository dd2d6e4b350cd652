"""Benchmark: the tiles stage's conversion of one big tile vs WITW's two GDAL passes, and its peak memory.

Generates (window by window) a SpaceNet PS-MS-like source: ``--size`` x ``--size`` px, 8 bands,
uint16, EPSG:4326 at about 0.3 m per pixel (over Dar es Salaam, like the real PS-MS COG), with
smooth, compressible content and a nodata triangle. Then, ``--repeat`` times and alternating:

- ours: a fresh subprocess runs ``pipeline.tiles.process_one`` (overview stretch; then, block by
  block on every core, the source window made 8-bit and warped to UTM at 0.3 m; temp tiled GeoTIFF,
  COG with overviews, footprint, sha256); the conversion is timed inside it (the stage converts
  many tiles per process, so interpreter start and imports are reported apart), and its peak RSS
  comes from ``os.wait4``;
- WITW: ``gdal_translate -ot Byte -a_nodata 0 -b 5 -b 3 -b 2 -scale_N lo hi 1 255`` then
  ``gdalwarp -t_srs EPSG:<utm> -tr 0.3 0.3 -r lanczos -srcnodata None -dstnodata None`` (no
  compression, no overviews), skipped with a note when the GDAL command-line tools are missing.

Prints medians, the peak RSS against the 1.5 GB target (the source alone in memory would be
``size^2 x 8 bands x 2 bytes``: 6.4 GB at 20k), and last the ratio ours / WITW (target <= 0.6).

Usage: ``python bench/bench_tiles.py [--size 5000] [--repeat 3] [--no-witw] [--workdir DIR] [--keep]``
(``apt-get install -y gdal-bin`` provides the GDAL tools.)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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
    """Run in the subprocess: convert the tile through the stage's own per-tile function, timed in-process."""
    from catalogs import RasterSource
    from pipeline.config import parse_params
    from pipeline.tiles import TileJob, process_one

    params = parse_params({"store": str(Path(workdir) / "store"), "tiles": {"gsd_m": GSD_M}})
    src = RasterSource("BENCH", "Bench", source, (5, 3, 2), "WorldView-3", "CC BY-SA 4.0", "bench")
    stat = Path(source).stat()
    start, cpu = time.perf_counter(), time.process_time()
    row = process_one(TileJob("BENCH__big", src, source, f"{stat.st_size}:mtime:{stat.st_mtime_ns}"), params)
    timing = {"convert_s": time.perf_counter() - start, "convert_cpu_s": time.process_time() - cpu}
    print(json.dumps({**{k: row.get(k) for k in ("status", "error", "width", "height", "epsg", "uri")}, **timing}))


@dataclass
class Run:
    """One child process: exit code, stdout, wall seconds, CPU seconds (user + sys) and peak RSS in GB."""

    rc: int
    out: str
    wall: float
    cpu: float
    rss_gb: float


def run_child(cmd: list[str]) -> Run:
    """Run ``cmd`` and measure it alone (os.wait4: this child's own rusage, not all children's)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps the child: Popen.wait would lose its rusage
        wall = time.perf_counter() - start
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read() if rc == 0 else err.read()[-4000:]
    return Run(rc, text, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / 1e9)


def ours(workdir: Path, source: Path) -> tuple[Run, dict]:
    """The tiles stage on ``source`` in a fresh subprocess (fresh store, so nothing is resumed)."""
    shutil.rmtree(workdir / "store", ignore_errors=True)
    run = run_child([sys.executable, __file__, "--child", str(workdir), str(source)])
    if run.rc != 0:
        raise SystemExit(f"conversion failed:\n{run.out}")
    return run, json.loads(run.out.strip().splitlines()[-1])


def witw(workdir: Path, source: Path, cog: str) -> tuple[Run, Run]:
    """WITW's two passes on the same source: gdal_translate to 8-bit bands 5,3,2, then gdalwarp to UTM.

    The stretch (WITW's 2-98 percentiles of non-zero pixels) is taken from our COG rather than
    computed again, so WITW's statistics pass is not counted: the baseline is, if anything, fast.
    """
    import rasterio

    with rasterio.open(cog) as ds:
        stretch, epsg = json.loads(ds.tags()["CROSSVIEW_STRETCH"]), ds.crs.to_epsg()
    scale = [a for k, (lo, hi) in enumerate(stretch["bands"], 1) for a in (f"-scale_{k}", str(lo), str(hi), "1", "255")]
    byte, utm = workdir / "witw_8bit.tif", workdir / "witw_utm.tif"
    for path in (byte, utm):
        path.unlink(missing_ok=True)
    translate = run_child(["gdal_translate", "-q", "-ot", "Byte", "-a_nodata", "0", "-b", "5", "-b", "3", "-b", "2",
                           *scale, str(source), str(byte)])  # fmt: skip
    warp = run_child(["gdalwarp", "-q", "-t_srs", f"EPSG:{epsg}", "-tr", str(GSD_M), str(GSD_M), "-r", "lanczos",
                      "-srcnodata", "None", "-dstnodata", "None", str(byte), str(utm)])  # fmt: skip
    for run in (translate, warp):
        if run.rc != 0:
            raise SystemExit(f"WITW baseline failed:\n{run.out}")
    return translate, warp


def load() -> str:
    """The 1/5/15-minute load averages (the machine is shared: timings depend on them)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5_000, help="source side in px (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side, alternating (median reported)")
    parser.add_argument("--no-witw", action="store_true", help="skip WITW's two passes (memory check only)")
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
            log.info("generated %s (%.2f GB on disk) in %.0f s", source, source.stat().st_size / 1e9,
                     time.monotonic() - start)  # fmt: skip
        have_gdal = shutil.which("gdal_translate") and shutil.which("gdalwarp")
        if not have_gdal and not args.no_witw:
            log.warning("gdal_translate/gdalwarp not found: WITW's two passes are skipped (apt-get install gdal-bin)")
        mine, theirs = [], []
        for k in range(max(1, args.repeat)):
            run, row = ours(workdir, source)
            mine.append((run, row))
            log.info("run %d, ours: %.1f s converting (%.1f s CPU), %.1f s with interpreter start; peak RSS %.2f GB; "
                     "load %s", k + 1, row["convert_s"], row["convert_cpu_s"], run.wall, run.rss_gb, load())  # fmt: skip
            if have_gdal and not args.no_witw:
                translate, warp = witw(workdir, source, row["uri"])
                theirs.append((translate, warp))
                log.info("run %d, WITW: gdal_translate %.1f s (%.1f s CPU) + gdalwarp %.1f s (%.1f s CPU) = %.1f s; "
                         "load %s", k + 1, translate.wall, translate.cpu, warp.wall, warp.cpu,
                         translate.wall + warp.wall, load())  # fmt: skip
        run, row = mine[-1]
        peak_gb = max(r.rss_gb for r, _ in mine)
        naive_gb = args.size**2 * 8 * 2 / 1e9
        out_gb = Path(row["uri"]).stat().st_size / 1e9
        print(f"source: {args.size}x{args.size} px, 8 x uint16, EPSG:4326 -> {row['width']}x{row['height']} px "
              f"EPSG:{row['epsg']} COG, {out_gb:.2f} GB")  # fmt: skip
        conv = statistics.median(r["convert_s"] for _, r in mine)
        conv_cpu = statistics.median(r["convert_cpu_s"] for _, r in mine)
        whole = statistics.median(r.wall for r, _ in mine)
        print(f"ours (median of {len(mine)}): {conv:.1f} s converting, {conv_cpu:.1f} s CPU, {whole:.1f} s with "
              f"interpreter start and imports; {args.size**2 / conv / 1e6:.2f} Mpx/s of source")  # fmt: skip
        print(f"peak RSS of the conversion: {peak_gb:.2f} GB (target < {TARGET_RSS_GB} GB; the source alone in memory "
              f"would be {naive_gb:.2f} GB)")  # fmt: skip
        ok = peak_gb < TARGET_RSS_GB
        if not theirs:
            print(f"WITW baseline: skipped; memory target {'PASS' if ok else 'FAIL'}; load {load()}")
            return 0 if ok else 1
        base = statistics.median(t.wall + w.wall for t, w in theirs)
        base_cpu = statistics.median(t.cpu + w.cpu for t, w in theirs)
        print(f"WITW's two passes (median of {len(theirs)}): {base:.1f} s, {base_cpu:.1f} s CPU")
        print(f"ratio ours/WITW: {conv / base:.2f} wall (target <= 0.6; {whole / base:.2f} counting our interpreter "
              f"start), {conv_cpu / base_cpu:.2f} CPU; peak RSS {'PASS' if ok else 'FAIL'}; load {load()}")  # fmt: skip
        return 0 if ok else 1
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
