"""Benchmark: the classify stage against a naive per-image loop (batch 1, no workers) on the same model.

Three ways to score the same photos with the same EfficientNet-Lite0 weights:

- ``naive``: the loop most scripts have (and WITW's): ``Image.open().convert("RGB")``, torchvision
  ``Resize(256, bicubic) → CenterCrop(224) → ToTensor → Normalize``, ``net(x[None])`` in eager
  PyTorch, one photo at a time. The stage should run at ≥ 5× this.
- ``naive+prepare``: the same loop with the stage's own ``prepare`` (reduced-scale JPEG decode,
  resize of the crop only), to show how much of the gain is preprocessing and how much inference.
- ``stage``: :func:`pipeline.classify.classify` as ``params.yaml`` configures it (``workers`` chunks at
  once, each a DataLoader and an ONNX Runtime session when installed), embedding cache and table
  included, a fresh cache each time so every photo is scored.

The photos are the valid real photos in ``../shared/realdata/photos/`` normalised like the download
stage does (upright RGB JPEG, quality 95) and scaled to ``--size`` px on the long side (Flickr's
``url_l`` is 1024), cycled to ``--n`` files. Each setting runs ``--repeat`` times in rotating order
and the median is reported, with the load average, because other processes on a small machine
change the figures. Top-1 agreement with the naive loop is printed (preprocessing differs by a
rounding step, so a photo whose two best classes are close may swap).

Usage: ``python bench/bench_classify.py [--n 192] [--size 1024] [--repeat 3] [--set classify.threads=2 ...]``
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


def textbook_transform(pre):
    """torchvision's usual recipe for ``pre``: Resize(shorter side, bicubic), CenterCrop, ToTensor, Normalize."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(pre.resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(pre.crop),
            transforms.ToTensor(),
            transforms.Normalize([m / 255 for m in pre.mean], [s / 255 for s in pre.std]),
        ]
    )


def naive(spec, uris: list[str], device: str, textbook: bool = True) -> tuple[float, list[int]]:
    """One photo at a time: read, decode, preprocess, forward in eager PyTorch."""
    import torch
    from PIL import Image

    from pipeline.scene.backbone import load_backbone
    from pipeline.scene.infer import prepare

    pre = spec.preprocess
    textbook_pre = textbook_transform(pre)
    net = load_backbone(spec).net.to(device)
    top1 = []
    start = time.perf_counter()
    with torch.inference_mode():
        for uri in uris:
            if textbook:
                x = textbook_pre(Image.open(uri).convert("RGB"))
            else:
                x = torch.from_numpy(prepare(Path(uri).read_bytes(), pre))
            top1.append(int(torch.softmax(net(x[None].to(device)), dim=1).argmax()))
    return time.perf_counter() - start, top1


def stage(downloads, params, cache: Path) -> tuple[float, list[int], int]:
    """The classify stage core, cache and table included (a fresh cache each time: everything is scored)."""
    from pipeline.classify import classify
    from pipeline.embeddings import EmbeddingCache
    from pipeline.scene.spec import model_spec

    start = time.perf_counter()
    _, summary = classify(downloads, params, cache)
    elapsed = time.perf_counter() - start
    index = EmbeddingCache(cache, model_spec(params.classify).key).index(1)
    top1 = [
        index[(i, s)][0][0] for i, s in zip(downloads.column("id").to_pylist(), downloads.column("sha256").to_pylist())
    ]
    return elapsed, top1, summary.scored


def forward_rates(spec, threads: int, seconds: float = 3.0) -> dict[str, float]:
    """Images/s of the network alone on random input: eager torch at batch 1, ONNX Runtime at batch 1."""
    import torch

    from pipeline.scene import onnx
    from pipeline.scene.backbone import load_backbone

    torch.set_num_threads(threads)
    backbone = load_backbone(spec)
    x = torch.randn(1, 3, spec.preprocess.crop, spec.preprocess.crop)
    runners = {"torch eager": lambda: backbone.net(x)}
    if onnx.available():
        session = onnx.OnnxBackbone(backbone, threads)
        runners["onnxruntime"] = lambda: session.run(x.numpy())
    out = {}
    with torch.inference_mode():
        for name, fn in runners.items():
            fn()
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                fn()
                done += 1
            out[name] = done / (time.perf_counter() - start)
    return out


def preprocess_ms(uris: list[str], spec) -> tuple[float, float]:
    """ms per photo: the stage's ``prepare`` and the textbook full decode + torchvision transforms."""
    from PIL import Image

    from pipeline.scene.infer import prepare

    pre = spec.preprocess
    textbook = textbook_transform(pre)
    sample = uris[:24]
    start = time.perf_counter()
    for u in sample:
        prepare(Path(u).read_bytes(), pre)
    fast = (time.perf_counter() - start) / len(sample) * 1000
    start = time.perf_counter()
    for u in sample:
        textbook(Image.open(u).convert("RGB"))
    return fast, (time.perf_counter() - start) / len(sample) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override params, e.g. classify.threads=2")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import yaml

    from pipeline.config import parse_params
    from pipeline.device import import_torch, resolve_device
    from pipeline.scene import onnx
    from pipeline.scene.spec import model_spec

    torch = import_torch()  # first import through the stage's own path (OpenMP settings)
    cores = os.cpu_count() or 1
    doc = yaml.safe_load(Path(args.params).read_text())
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.rpartition(".")
        (doc.setdefault(section, {}) if section else doc)[name] = yaml.safe_load(value)
    params = parse_params(doc)
    device = resolve_device(params.classify.device, "classify.device")
    runtime = onnx.resolve_runtime(params.classify.runtime, device)
    spec = model_spec(params.classify)
    names = ["naive", "naive+prepare", "stage"]
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
        root = Path(tmp)
        downloads = make_store(root, args.n, args.size)
        uris = downloads.column("uri").to_pylist()
        stage(downloads.slice(0, 8), params, root / "warm")  # loads the backbone (and exports it for onnxruntime)
        naive(spec, uris[:4], device)
        times: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        top: dict[str, list[int]] = {}
        for r in range(args.repeat):
            for name in names[r % 3 :] + names[: r % 3]:
                before = cpu_seconds()
                if name == "stage":
                    elapsed, top[name], scored = stage(downloads, params, root / f"cache{r}")
                    assert scored == args.n
                else:
                    torch.set_num_threads(cores)  # what a plain script gets: every core (the stage sets its own)
                    elapsed, top[name] = naive(spec, uris, device, textbook=name == "naive")
                times[name].append(elapsed)
                cpu[name].append(cpu_seconds() - before)
        fast_ms, textbook_ms = preprocess_ms(uris, spec)
        forward = forward_rates(spec, cores)
    rate = {k: args.n / statistics.median(v) for k, v in times.items()}
    cpu_ms = {k: statistics.median(v) / args.n * 1000 for k, v in cpu.items()}
    c = params.classify
    print(f"device {device}, {cores} CPUs, load average {os.getloadavg()[0]:.2f}; {args.n} photos of {args.size} px, median of {args.repeat}")
    print(
        f"stage: runtime {runtime}, {params.workers} chunks at once x {c.threads} compute threads, "
        f"batch {c.batch_size}, loader workers {c.loader_workers}"
    )
    for name, label in [
        ("naive", "naive loop (textbook, batch 1)"),
        ("naive+prepare", "naive loop with the stage's prepare"),
        ("stage", "classify stage"),
    ]:
        print(
            f"{label:38s} {rate[name]:7.1f} img/s  {cpu_ms[name]:6.1f} CPU-ms/img"
            f"   stage / this = {rate['stage'] / rate[name]:.2f}x"
        )
    rates = ", ".join(f"{k} {v:.1f} img/s" for k, v in forward.items())
    print(f"forward only, batch 1, {cores} threads: {rates}")
    print(f"preprocess: stage's prepare {fast_ms:.1f} ms/photo; textbook decode + transforms {textbook_ms:.1f} ms/photo")
    for name in ("naive", "naive+prepare"):
        print(f"top-1 agreement {name} vs stage: {float(np.mean(np.array(top[name]) == np.array(top['stage']))):.3f}")


if __name__ == "__main__":
    main()
