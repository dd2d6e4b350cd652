"""Benchmark: how time and memory grow with the number of photos, stage by stage (search to manifest).

Part 1, the photo stages end to end: a Flickr population of N photos (``tests/flickr_server.py`` on
loopback, ``source: flickr``) through ``crossview search``, ``download`` (a loopback HTTP server
serving one small real JPEG with a per-photo comment segment, so every photo has its own bytes),
``pair``, ``chip``, ``filter`` and ``manifest``, on one synthetic tile set (four 8-bit RGB GeoTIFFs in
UTM 31N at 3 m, converted once by ``crossview tiles``, not timed). Each stage runs as its CLI in a
subprocess; its wall time, CPU time (``wait4``) and peak RSS (its own VmHWM, see ``PEAK``) are recorded.

Part 2, the table-only stages (pair, filter, manifest) at up to 1M rows: photos and downloads tables
generated in code (no fetch), chips rows made from the pairs (no cutting).

Per stage: seconds, peak RSS, and the growth exponent ``k`` of ``time ~ rows**k`` (least squares on
log-log over the sizes; goal <= 1.1). Then the incremental case: 10 % more photos uploaded after a
full run at the largest N, all six stages rerun (the harvest asks only for the new dates, download
and chip reuse their finished units); goal: <= 20 % of the full run's time. ``--dvc-dir`` times a
no-change ``dvc repro`` in a copy of a finished demo (goal < 5 s). The machine is shared: the load
average is printed with the figures. Prints the incremental ratio last.

Usage: ``nice -n 5 python bench/bench_scale.py [--sizes 10000,40000,160000] [--table-sizes 10000,100000,1000000]
[--dvc-dir /tmp/demo-copy] [--work /tmp/bench_scale]``
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import rasterio
import yaml
from PIL import Image
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.geo import transformer
from pipeline.schemas import CHIPS, DOWNLOADS, PAIRS, PHOTOS, read_table, table_from_rows, write_table
from tests.flickr_server import flickr_server, make_population

log = logging.getLogger("bench_scale")
BBOX = (2.30, 48.84, 2.34, 48.87)  # about 3 x 3.3 km of Paris
EPSG, GSD_M = 32631, 3.0
KEY, SECRET = "BENCHKEY-scale-0000", "BENCHSECRET-scale-1111"
STAGES = ("search", "download", "pair", "chip", "filter", "manifest")
TABLE_STAGES = ("pair", "filter", "manifest")
REALDATA = REPO.parent / "shared" / "realdata" / "photos" / "outdoor_street_01.jpg"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def ts(year: int) -> int:
    return int(datetime(year, 1, 1, tzinfo=UTC).timestamp())


# ---------------------------------------------------------------- peers on loopback


def base_jpeg() -> bytes:
    """A small real photo (160 x 120) as JPEG bytes; a generated one when ../shared/realdata is absent."""
    im = Image.open(REALDATA).convert("RGB") if REALDATA.is_file() else Image.linear_gradient("L").convert("RGB")
    buf = io.BytesIO()
    im.resize((160, 120)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def photo_server(jpeg: bytes) -> ThreadingHTTPServer:
    """Serves ``jpeg`` for any path, with the path in a COM segment: valid, and distinct bytes per photo."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # http.server's naming
            tag = self.path.encode()[:60000]
            body = jpeg[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag + jpeg[2:]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd


def population(n: int, seed: int) -> list:
    """``n`` photos uploaded 2008-2022 plus ``n // 10`` uploaded in 2023 (the incremental run's new photos)."""
    old = make_population(n, BBOX, seed=seed, upload_range=(ts(2008), ts(2023) - 1), min_accuracy=16, decoys=False)
    new = make_population(n // 10, BBOX, seed=seed + 1, upload_range=(ts(2023), ts(2024) - 1), min_accuracy=16,
                          decoys=False)
    top = max(p.id for p in old)
    for k, p in enumerate(new, 1):
        p.id = top + k
    return old + new


# ---------------------------------------------------------------- a synthetic tile set


def utm_box(pad_m: float = 300.0) -> tuple[float, float, float, float]:
    xs, ys = transformer(4326, EPSG).transform([BBOX[0], BBOX[2], BBOX[0], BBOX[2]], [BBOX[1], BBOX[1], BBOX[3], BBOX[3]])
    return min(xs) - pad_m, min(ys) - pad_m, max(xs) + pad_m, max(ys) + pad_m


def make_tileset(root: Path) -> Path:
    """Four textured RGB GeoTIFFs covering BBOX, converted by ``crossview tiles``; returns the folder."""
    root.mkdir(parents=True, exist_ok=True)
    if (root / "tables" / "tiles.parquet").is_file():
        return root
    x0, y0, x1, y1 = utm_box()
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    rng = np.random.default_rng(0)
    entries = []
    for k, (left, top, right, bottom) in enumerate([(x0, y1, xm, ym), (xm, y1, x1, ym), (x0, ym, xm, y0),
                                                     (xm, ym, x1, y0)]):
        w, h = int((right - left) / GSD_M), int((top - bottom) / GSD_M)
        coarse = rng.integers(20, 235, (3, h // 16 + 1, w // 16 + 1), dtype=np.uint8)
        data = np.repeat(np.repeat(coarse, 16, 1), 16, 2)[:, :h, :w] + rng.integers(0, 20, (3, h, w), dtype=np.uint8)
        path = root / f"src_{k}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=f"EPSG:{EPSG}",
                           transform=from_origin(left, top, GSD_M, GSD_M), tiled=True) as ds:
            ds.write(data)
        entries.append({"aoi": "bench", "city": "Benchtown", "uri": str(path), "band_order": [1, 2, 3],
                        "satellite": "synthetic", "licence": "CC BY-SA 4.0",
                        "licence_url": "https://creativecommons.org/licenses/by-sa/4.0/", "attribution": "generated"})
    (root / "rasters.yaml").write_text(yaml.safe_dump(entries))
    params = {"source": "custom", "store": "data/store", "custom": {"rasters": "rasters.yaml"}, "tiles": {"gsd_m": GSD_M}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stage(root, "tiles", ["--out", "tables/tiles.parquet"])
    return root


# ---------------------------------------------------------------- running stages


ARGS = {
    "search": ["--out", "tables/photos.parquet"],
    "download": ["--photos", "tables/photos.parquet", "--out", "tables/downloads.parquet"],
    "pair": ["--photos", "tables/photos.parquet", "--downloads", "tables/downloads.parquet", "--tiles",
             "tables/tiles.parquet", "--out", "tables/pairs.parquet"],
    "chip": ["--pairs", "tables/pairs.parquet", "--tiles", "tables/tiles.parquet", "--out", "tables/chips.parquet"],
    "filter": ["--photos", "tables/photos.parquet", "--downloads", "tables/downloads.parquet", "--pairs",
               "tables/pairs.parquet", "--chips", "tables/chips.parquet", "--out", "tables/decisions.parquet",
               "--funnel", "reports/funnel.json"],
    "manifest": ["--photos", "tables/photos.parquet", "--downloads", "tables/downloads.parquet", "--tiles",
                 "tables/tiles.parquet", "--pairs", "tables/pairs.parquet", "--chips", "tables/chips.parquet",
                 "--decisions", "tables/decisions.parquet", "--out-dir", "manifests", "--card",
                 "manifests/DATASET_CARD.md", "--metrics", "reports/counts.json"],
}


# The stage's own peak RSS: VmHWM of the process after exec, written at exit. (wait4's ru_maxrss would
# include the bench process's memory at the fork, which is large while it holds a generated table or the
# Flickr peer's population.)
PEAK = """
import atexit, os, runpy, sys
def peak():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    with open(os.environ["PEAK_FILE"], "w") as out:
        out.write(kb)
atexit.register(peak)
sys.argv = ["crossview", *sys.argv[1:]]
runpy.run_module("pipeline.cli", run_name="__main__")
"""


def stage(cwd: Path, name: str, args: list[str] | None = None) -> tuple[float, float, float]:
    """Run ``crossview NAME`` in ``cwd``; (wall s, peak RSS MiB, CPU s). Fails loudly with the stage's output.

    CPU seconds (user + system of the stage process) are what the exponents are fitted on as well as
    wall time: on a shared machine wall time grows with the other jobs' load, CPU time much less.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1,localhost", "FLICKR_API_KEY": KEY,
           "FLICKR_API_SECRET": SECRET}
    cmd = [sys.executable, "-c", PEAK, name, *(args or ARGS[name])]
    peak_file = cwd / "stage.peak"
    start = time.perf_counter()
    with (cwd / "stage.log").open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "PEAK_FILE": str(peak_file)}, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{name} failed in {cwd}:\n{(cwd / 'stage.log').read_text()[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    peak = int(peak_file.read_text()) / 1024
    log.info("  %s %-8s %7.1f s %7.1f s CPU %6.0f MB (load %s)", cwd.name, name, wall, cpu, peak, load())
    return wall, peak, cpu


def prepare(run: Path, tileset: Path, params: dict) -> None:
    (run / "tables").mkdir(parents=True, exist_ok=True)
    (run / "data" / "store").mkdir(parents=True, exist_ok=True)
    (run / "reports").mkdir(exist_ok=True)
    shutil.copy(tileset / "tables" / "tiles.parquet", run / "tables" / "tiles.parquet")
    link = run / "data" / "store" / "tiles"
    if not link.exists():
        link.symlink_to(tileset / "data" / "store" / "tiles")
    base = {"store": "data/store", "filter": {"deny_list": str(REPO / "catalogs" / "deny_list.yaml"),
                                              "verdicts": str(run / "verdicts.csv")}}
    (run / "params.yaml").write_text(yaml.safe_dump({**base, **params}))


def run_all(run: Path, stages=STAGES) -> dict[str, tuple[float, float, float]]:
    return {name: stage(run, name) for name in stages}


# ---------------------------------------------------------------- part 2: generated tables


def photo_tables(n: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """``n`` Flickr-like photos inside BBOX and their ok downloads (no files)."""
    rng = np.random.default_rng(seed)
    ids = [f"{3_000_000_000 + i}" for i in range(n)]
    lon = rng.uniform(BBOX[0], BBOX[2], n)
    lat = rng.uniform(BBOX[1], BBOX[3], n)
    photos = pa.table({
        "id": ids, "source": ["flickr"] * n, "aoi": ["bbox"] * n, "city": ["bbox"] * n,
        "owner": [f"{i % 5000}@N00" for i in range(n)], "owner_name": ["someone"] * n, "title": ["a photo"] * n,
        "licence_id": pa.array([4] * n, pa.int32()), "licence": ["CC BY 2.0"] * n,
        "licence_url": ["https://creativecommons.org/licenses/by/2.0/"] * n, "lat": lat, "lon": lon,
        "accuracy": pa.array([16] * n, pa.int32()), "context": pa.array([2] * n, pa.int32()),
        "date_taken": ["2015-06-01 12:00:00"] * n, "date_upload_unix": pa.array([ts(2015)] * n, pa.int64()),
        "url": [f"http://127.0.0.1:9/{i}.jpg" for i in ids], "url_width": pa.array([1024] * n, pa.int32()),
        "url_height": pa.array([768] * n, pa.int32()),
        "page_url": [f"https://www.flickr.com/photos/x/{i}/" for i in ids], "tags": [""] * n, "query_cell": ["c"] * n,
    }).cast(PHOTOS)
    downloads = pa.table({
        "id": ids, "uri": [f"data/store/photos/{i}.jpg" for i in ids], "sha256": [f"{i:0>64}" for i in ids],
        "bytes": pa.array([150_000] * n, pa.int64()), "width": pa.array([1024] * n, pa.int32()),
        "height": pa.array([768] * n, pa.int32()), "bands": pa.array([3] * n, pa.int32()), "mode": ["RGB"] * n,
        "exif_orientation": pa.array([1] * n, pa.int32()), "duplicate_of": pa.nulls(n, pa.string()),
        "status": ["ok"] * n, "error": [""] * n,
    }).cast(DOWNLOADS)
    return photos, downloads


def chips_from_pairs(pairs: pa.Table) -> pa.Table:
    paired = [r for r in pairs.select(["id", "tile_id", "status"]).to_pylist() if r["status"] == "paired"]
    return table_from_rows(({"id": r["id"], "tile_id": r["tile_id"], "uri": f"data/store/chips/{r['id']}.jpg",
                             "width": 75, "height": 75, "nodata_fraction": 0.0, "std": 30.0, "status": "ok",
                             "error": ""} for r in paired), CHIPS)


def table_run(run: Path, tileset: Path, n: int) -> dict[str, tuple[float, float, float]]:
    prepare(run, tileset, {})
    photos, downloads = photo_tables(n)
    write_table(photos, run / "tables" / "photos.parquet", PHOTOS)
    write_table(downloads, run / "tables" / "downloads.parquet", DOWNLOADS)
    out = {"pair": stage(run, "pair")}
    write_table(chips_from_pairs(read_table(run / "tables" / "pairs.parquet", PAIRS)), run / "tables" / "chips.parquet",
                CHIPS)
    out.update({name: stage(run, name) for name in ("filter", "manifest")})
    return out


# ---------------------------------------------------------------- report


def exponent(sizes: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0]) if len(sizes) > 1 else float("nan")


def report(title: str, sizes: list[int], results: dict[int, dict[str, tuple[float, float, float]]], stages) -> None:
    log.info("%s (load %s)", title, load())
    log.info("%-9s %s  exponent wall / CPU", "stage", "  ".join(f"{n:>26,d}" for n in sizes))
    for name in stages:
        cells = "  ".join("{:7.1f}s {:7.1f}s CPU {:6.0f}MB".format(*(results[n][name][k] for k in (0, 2, 1)))
                          for n in sizes)
        k = exponent(sizes, [max(results[n][name][0], 1e-3) for n in sizes])
        kc = exponent(sizes, [max(results[n][name][2], 1e-3) for n in sizes])
        log.info("%-9s %s  %5.2f / %5.2f%s", name, cells, k, kc, "" if max(k, kc) <= 1.1 else "  (> 1.1)")


def dvc_noop(path: Path) -> list[float]:
    """Wall seconds of ``dvc repro`` twice in ``path`` (the first may rehash a fresh copy)."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(["dvc", "repro"], cwd=path, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,40000,160000", help="photo counts for part 1 (search to manifest)")
    ap.add_argument("--table-sizes", default="10000,100000,1000000", help="row counts for part 2 (pair, filter, manifest)")
    ap.add_argument("--work", default="/tmp/bench_scale", help="scratch folder (removed first)")
    ap.add_argument("--dvc-dir", default=None, help="a finished demo copy to time a no-change `dvc repro` in")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    tileset = make_tileset(work / "tileset")
    sizes = [int(s) for s in a.sizes.split(",") if s]
    table_sizes = [int(s) for s in a.table_sizes.split(",") if s]

    full: dict[int, dict] = {}
    jpeg = base_jpeg()
    httpd = photo_server(jpeg)
    image_base = f"http://127.0.0.1:{httpd.server_port}"
    incremental = None
    for n in sizes:
        run = work / f"full_{n}"
        with flickr_server(population(n, seed=n), {KEY: SECRET}, image_base=image_base) as srv:
            flickr = {"rest_url": srv.rest_url, "bbox": list(BBOX), "calls_per_hour": 1e9, "per_page": 250,
                      "min_upload_date": "2008-01-01", "max_upload_date": "2022-12-31", "size": "url_z"}
            prepare(run, tileset, {"source": "flickr", "flickr": flickr})
            full[n] = run_all(run)
            rows = read_table(run / "tables" / "photos.parquet", PHOTOS, columns=["id"]).num_rows
            log.info("%d photos: %d harvested, %.1f s in all (load %s)", n, rows, sum(r[0] for r in full[n].values()),
                     load())
            if n == max(sizes):
                prepare(run, tileset, {"source": "flickr", "flickr": {**flickr, "max_upload_date": "2023-12-31"}})
                incremental = run_all(run)
                more = read_table(run / "tables" / "photos.parquet", PHOTOS, columns=["id"]).num_rows
                log.info("incremental: %d -> %d photos (+%.1f %%)", rows, more, 100 * (more - rows) / rows)
    httpd.shutdown()
    if sizes:
        report("part 1: photo stages end to end, seconds and peak RSS per stage", sizes, full, STAGES)
    tables = {n: table_run(work / f"table_{n}", tileset, n) for n in table_sizes}
    if table_sizes:
        report("part 2: table-only stages on generated rows", table_sizes, tables, TABLE_STAGES)
    if a.dvc_dir:
        first, second = dvc_noop(Path(a.dvc_dir))
        log.info("no-change `dvc repro` in %s: %.1f s (first, may rehash a fresh copy), %.1f s (second; goal < 5 s)",
                 a.dvc_dir, first, second)
    if incremental is not None:
        n = max(sizes)
        full_s, inc_s = sum(r[0] for r in full[n].values()), sum(r[0] for r in incremental.values())
        log.info("incremental per stage: %s", ", ".join(f"{k} {v[0]:.1f} s" for k, v in incremental.items()))
        log.info("incremental +10 %% photos at %d: %.1f s vs full run %.1f s; ratio %.3f (goal <= 0.20)",
                 n, inc_s, full_s, inc_s / full_s)


if __name__ == "__main__":
    main()
