"""Benchmark: the download stage (fetch + full decode + validation + upright RGB JPEG + sidecar, through
the shared executor) vs what most scripts do: a ``concurrent.futures.ThreadPoolExecutor`` running
``requests.get`` and writing the bytes to a file, unchecked. Same images, same loopback HTTP server,
same concurrency.

The images are the valid real photos in ``../shared/realdata/photos/`` (when present) plus generated
Flickr-sized JPEGs (1024 px on the long side, as ``url_l``), served from memory by a keep-alive
HTTP/1.1 server on 127.0.0.1 in its own process (``--in-process-server`` to share the clients'
interpreter, as before 2026-11-25). ``--latency-ms`` delays every response (time to first byte), to
model a CDN instead of loopback; both clients are warmed up on 16 images, then each setting runs
``--repeat`` times in alternating order and the median is reported. Prints images/s of both and the
ratio ours / plain (>= 1.0 means ours is not slower).

At 0 ms the run is CPU-bound (client, validator and server share the machine's cores) and ours
spends ~2 ms of CPU per photo on the validating decode that the plain loop skips; at any latency a
real CDN has, the fetches bound both and the ratio is ~1.0 (figures in the README).

Usage: ``python bench/bench_download.py [--n 240] [--workers 8] [--latency-ms 0 50] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import multiprocessing
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_download")
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "photos"


def make_images(n: int, seed: int = 0) -> dict[str, bytes]:
    """``n`` JPEGs: the valid real photos cycled with generated 1024 px ones (smooth scenes plus sensor noise)."""
    from PIL import Image

    real = []
    if REALDATA.is_dir():
        real = [p.read_bytes() for p in sorted(REALDATA.glob("*.jp*g")) if not p.name.startswith("bad_")]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:768, 0:1024]
    images = {}
    for i in range(n):
        if real and i % 3 == 0:
            images[f"{i:05d}"] = real[(i // 3) % len(real)]
            continue
        base = 120 + 60 * np.sin(xx / (40 + i % 17)) * np.cos(yy / (55 + i % 13))
        rgb = np.stack([base + 25 * k + rng.normal(0, 12, base.shape) for k in range(3)], axis=-1)
        out = io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=88)
        images[f"{i:05d}"] = out.getvalue()
    return images


def _handler(images: dict[str, bytes], latency_s: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            # as CDNs do: without it, Nagle + delayed ACK stall every reused keep-alive connection
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            body = images.get(self.path.rsplit("/", 1)[-1].removesuffix(".jpg"))
            if latency_s:
                time.sleep(latency_s)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _serve_forever(images: dict[str, bytes], latency_s: float, conn) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(images, latency_s))
    httpd.daemon_threads = True
    conn.send(httpd.server_address[1])
    httpd.serve_forever()


@contextlib.contextmanager
def serve(images: dict[str, bytes], latency_s: float, in_process: bool = False) -> Iterator[str]:
    """Serve ``/img/<name>.jpg`` from memory on a free loopback port; yield the base URL.

    The server runs in its own process, as a real one would: in the client's process its Python
    threads would take the client's GIL and CPU and charge them to whichever client overlaps more
    work with the transfers. ``in_process=True`` keeps it in this process, to measure that effect.
    """
    if in_process:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(images, latency_s))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}/img"
        finally:
            httpd.shutdown()
            httpd.server_close()
        return
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_forever, args=(images, latency_s, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the image server did not start")
        yield f"http://127.0.0.1:{parent.recv()}/img"
    finally:
        proc.terminate()
        proc.join(10)


def plain(urls: dict[str, str], out: Path, workers: int) -> float:
    """What most scripts do: a thread pool of ``requests.get`` writing the bytes as they come."""
    import requests

    def one(item: tuple[str, str]) -> None:
        photo_id, url = item
        resp = requests.get(url, timeout=30)
        resp.raise_for_status()
        (out / f"{photo_id}.jpg").write_bytes(resp.content)

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, sorted(urls.items())))
    elapsed = time.perf_counter() - start
    assert len(list(out.glob("*.jpg"))) == len(urls)
    return elapsed


def ours(urls: dict[str, str], out: Path, workers: int) -> float:
    """The download stage core: ``process_one`` per photo through ``pipeline.executor.run``."""
    import pyarrow as pa

    from pipeline.config import DownloadParams, Params
    from pipeline.download import download

    # equal concurrency: as many requests in flight to the one host as the plain loop has threads
    params = Params(store=str(out), workers=workers, download=DownloadParams(workers=workers, per_host=workers))
    photos = pa.table({"id": list(urls), "url": list(urls.values())})
    start = time.perf_counter()
    table = download(photos, params)
    elapsed = time.perf_counter() - start
    statuses = set(table.column("status").to_pylist())
    assert statuses == {"ok"}, f"download rows not all ok: {statuses}"
    return elapsed


def measure(
    images: dict[str, bytes], workers: int, latency_ms: float, repeat: int, in_process: bool = False
) -> tuple[float, float]:
    """Median images/s of (ours, plain) at one latency."""
    times = {"ours": [], "plain": []}
    with serve(images, latency_ms / 1000, in_process) as base:
        urls = {name: f"{base}/{name}.jpg" for name in images}
        warm = dict(list(urls.items())[:16])  # imports, connection pools, page cache: not what is measured
        for fn in (ours, plain):
            work = Path(tempfile.mkdtemp(prefix="bench-download-warm-"))
            fn(warm, work / "store", workers)
            shutil.rmtree(work, ignore_errors=True)
        for rep in range(repeat):
            order = ("ours", "plain") if rep % 2 == 0 else ("plain", "ours")
            for name in order:
                work = Path(tempfile.mkdtemp(prefix=f"bench-download-{name}-"))
                try:
                    times[name].append((ours if name == "ours" else plain)(urls, work / "store", workers))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
    n = len(images)
    return n / statistics.median(times["ours"]), n / statistics.median(times["plain"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=240, help="images per run (default 240)")
    parser.add_argument("--workers", type=int, default=8, help="concurrency of both (default 8, download.workers)")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0],
                        help="per-response delays to test (default: 0 = raw loopback, 50 = a CDN)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--in-process-server", action="store_true",
                        help="run the HTTP server in this process (its threads then share the clients' GIL)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    images = make_images(args.n)
    size_mb = sum(map(len, images.values())) / 1e6
    where = "in this process" if args.in_process_server else "in its own process"
    print(f"{args.n} images, {size_mb:.1f} MB, concurrency {args.workers}, median of {args.repeat}, server {where}")
    print(f"{'latency ms':>10} {'ours img/s':>11} {'plain img/s':>12} {'ours/plain':>11}")
    for latency in args.latency_ms:
        ours_rate, plain_rate = measure(images, args.workers, latency, args.repeat, args.in_process_server)
        print(f"{latency:>10g} {ours_rate:>11.1f} {plain_rate:>12.1f} {ours_rate / plain_rate:>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
