"""Benchmark: the classify stage (DataLoader decode workers, batches, channels-last, embedding cache and
scores table) vs a naive per-image loop (batch 1, no workers, decode in the loop) on the same model
and the same preprocessing function, so both give the same scores.

The photos are the valid real photos in ``../shared/realdata/photos/`` normalised like the download
stage does (upright RGB JPEG, quality 95) and scaled to ``--size`` px on the long side (Flickr's
``url_l`` is 1024), cycled to ``--n`` files. Each setting runs ``--repeat`` times in alternating
order and the median is reported, with the load average, because other processes on a small
machine change the figures. Also printed, to show what bounds the ratio: the forward-only rate of
the model at batch 1 and at the stage's batch size, and the decode + preprocess time per photo.

Usage: ``python bench/bench_classify.py [--n 96] [--size 1024] [--batch-size 16] [--workers 2]
[--threads 2] [--device cpu] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_classify")
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "photos"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers), user + system."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_store(root: Path, n: int, size: int):
    """``n`` normalised JPEGs in ``root`` and their downloads table."""
    from PIL import Image

    from pipeline.images import inspect_image, normalise
    from pipeline.schemas import DOWNLOADS, table_from_rows

    sources = [
        p.read_bytes()
        for p in sorted(REALDATA.iterdir())
        if p.suffix in (".jpg", ".png") and not p.name.startswith("bad_")
    ]
    if not sources:
        raise SystemExit(f"no photos in {REALDATA}")
    rows = []
    for k in range(n):
        im = Image.open(io.BytesIO(normalise(sources[k % len(sources)])))
        scale = size / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=95)
        path = root / f"{k:05d}.jpg"
        path.write_bytes(buf.getvalue())
        rows.append(
            {"id": f"{k:05d}", "uri": str(path), "sha256": inspect_image(buf.getvalue()).sha256, "status": "ok"}
        )
    return table_from_rows(rows, DOWNLOADS)


def naive(spec, uris: list[str], device: str) -> tuple[float, list[int]]:
    """The loop most scripts have: read, decode, preprocess, forward one photo at a time."""
    import torch

    from pipeline.models.scene import load_backbone, prepare

    net = load_backbone(spec).net.to(device)
    top1 = []
    start = time.perf_counter()
    with torch.inference_mode():
        for uri in uris:
            x = torch.from_numpy(prepare(Path(uri).read_bytes(), spec.preprocess))[None].to(device)
            top1.append(int(torch.softmax(net(x), dim=1).argmax()))
    return time.perf_counter() - start, top1


def stage(downloads, params, cache: Path) -> tuple[float, list[int], int]:
    """The classify stage core, cache and table included (a fresh cache each time: everything is scored)."""
    from pipeline.classify import EmbeddingCache, classify
    from pipeline.models.scene import model_spec

    start = time.perf_counter()
    _, summary = classify(downloads, params, cache)
    elapsed = time.perf_counter() - start
    index = EmbeddingCache(cache, model_spec(params.classify).key).index(1)
    top1 = [
        index[(i, s)][0][0] for i, s in zip(downloads.column("id").to_pylist(), downloads.column("sha256").to_pylist())
    ]
    return elapsed, top1, summary.scored


def forward_rate(spec, batch: int, device: str, channels_last: bool, seconds: float = 3.0) -> float:
    """Images/s of the network alone on random input."""
    import torch

    from pipeline.models.scene import load_backbone

    net = load_backbone(spec).net.to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            net(x)
            done += batch
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def decode_ms(uris: list[str], spec) -> tuple[float, float]:
    """ms per photo: the stage's ``prepare`` (reduced-scale JPEG decode) and a full decode + resize."""
    from PIL import Image

    from pipeline.models.scene import prepare

    sample = uris[:24]
    start = time.perf_counter()
    for u in sample:
        prepare(Path(u).read_bytes(), spec.preprocess)
    fast = (time.perf_counter() - start) / len(sample) * 1000
    start = time.perf_counter()
    for u in sample:
        with Image.open(u) as im:
            im.convert("RGB").resize((298, 224), Image.BICUBIC)
    return fast, (time.perf_counter() - start) / len(sample) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from pipeline.config import parse_params
    from pipeline.models.scene import import_torch, model_spec

    import_torch().set_num_threads(args.threads)  # first import through the stage's own path (OpenMP settings)
    params = parse_params(
        {
            "classify": {
                "device": args.device,
                "batch_size": args.batch_size,
                "loader_workers": args.workers,
                "threads": args.threads,
            }
        }
    )
    spec = model_spec(params.classify)
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
        root = Path(tmp)
        downloads = make_store(root, args.n, args.size)
        uris = downloads.column("uri").to_pylist()
        stage(downloads.slice(0, 8), params, root / "warm")  # loads and caches the backbone
        naive(spec, uris[:4], args.device)
        times: dict[str, list[float]] = {"naive": [], "stage": []}
        cpu: dict[str, list[float]] = {"naive": [], "stage": []}
        for r in range(args.repeat):
            for name in ["naive", "stage"] if r % 2 == 0 else ["stage", "naive"]:
                before = cpu_seconds()
                if name == "naive":
                    elapsed, top_naive = naive(spec, uris, args.device)
                else:
                    elapsed, top_stage, scored = stage(downloads, params, root / f"cache{r}")
                    assert scored == args.n
                times[name].append(elapsed)
                cpu[name].append(cpu_seconds() - before)
        fast_ms, full_ms = decode_ms(uris, spec)
        fwd1 = forward_rate(spec, 1, args.device, channels_last=False)
        fwdb = forward_rate(spec, args.batch_size, args.device, channels_last=True)
    naive_rate, stage_rate = (args.n / statistics.median(times[k]) for k in ("naive", "stage"))
    cpu_ms = {k: statistics.median(v) / args.n * 1000 for k, v in cpu.items()}
    agree = float(np.mean(np.array(top_naive) == np.array(top_stage)))
    print(
        f"device {args.device}, {os.cpu_count()} CPUs, torch threads {args.threads}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{args.n} photos of {args.size} px, batch {args.batch_size}, loader workers {args.workers}, median of {args.repeat}"
    )
    print(f"naive loop (batch 1, no workers):   {naive_rate:7.1f} img/s   {cpu_ms['naive']:6.1f} CPU-ms/img")
    print(
        f"classify stage (DataLoader):        {stage_rate:7.1f} img/s   {cpu_ms['stage']:6.1f} CPU-ms/img"
        f"   speedup {stage_rate / naive_rate:.2f}x"
    )
    print(f"forward only, batch 1 contiguous:   {fwd1:7.1f} img/s")
    print(f"forward only, batch {args.batch_size} channels-last: {fwdb:6.1f} img/s")
    print(
        f"decode+preprocess: {fast_ms:.1f} ms/photo (reduced-scale JPEG decode); full decode + resize {full_ms:.1f} ms"
    )
    print(f"top-1 agreement naive vs stage: {agree:.3f}")


if __name__ == "__main__":
    main()
