"""Benchmark: does training wait on input? Loader samples/s vs training-step samples/s, batch sizes 8–64.

For each batch size it measures, on the same pairs and the same model inputs:

* loader: the training DataLoader (``ManifestPairs`` → ``make_loader``: read through the store,
  JPEG decode at reduced scale, resize, polar transform for witw_fov, augmentation) with
  ``--workers`` decode processes and no decoded-pixel cache, i.e. what every epoch of a large
  split costs;
* step: forward + loss + backward + Adam step of the model on ready tensors (no loader);
* end to end: the two together, as :func:`pipeline.train.loop.fit` runs them.

If loader samples/s is below step samples/s, the model waits on input. The pairs are made in
code like the demo's (500 x 375 photo JPEGs, 750 x 750 chip JPEGs; ``--n`` of them), or taken
from ``--manifest``. Each figure is the median of ``--repeat`` runs; the load average is printed
because other processes on a small machine change the figures.

Usage: ``python bench/bench_train.py [--model timm_contrastive|witw_fov] [--batch-sizes 8 16 32 64]
[--workers 2] [--threads 2] [--n 256] [--steps 4] [--repeat 3] [--manifest manifests/train.parquet]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("bench_train")


def make_manifest(root: Path, n: int) -> str:
    """``n`` demo-sized pairs (photo 500x375 JPEG, chip 750x750 JPEG) with a manifest."""
    from pipeline.schemas import MANIFEST, table_from_rows, write_table

    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        photo = np.kron(rng.integers(0, 256, (15, 20, 3), dtype=np.uint8), np.ones((25, 25, 1), np.uint8))
        chip = np.kron(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), np.ones((25, 25, 1), np.uint8))
        pid = f"{k:05d}"
        Image.fromarray(photo).save(root / f"{pid}.jpg", quality=95)
        Image.fromarray(chip).save(root / f"{pid}_chip.jpg", quality=90)
        rows.append({"id": pid, "split": "train", "photo_uri": str(root / f"{pid}.jpg"),
                     "chip_uri": str(root / f"{pid}_chip.jpg")})
    path = root / "train.parquet"
    write_table(table_from_rows(rows, MANIFEST), path, MANIFEST)
    return str(path)


def loader_rate(manifest: str, spec, batch: int, workers: int, batches: int) -> float:
    """Samples/s of the training DataLoader (first batch, which starts the workers, not counted)."""
    from pipeline.train.data import ManifestPairs, make_loader

    ds = ManifestPairs(manifest, spec, cache_mb=0)
    loader, sampler = make_loader(ds, batch, workers, train=True)
    done, start = 0, None
    for epoch in range(1000):
        sampler.set_epoch(epoch)
        for _, photo, _ in loader:
            if start is None:
                start = time.perf_counter()
                continue
            done += photo.shape[0]
            if done >= batches * batch:
                return done / (time.perf_counter() - start)
    raise RuntimeError("unreachable")


def step_rate(model, spec, batch: int, steps: int) -> float:
    """Samples/s of forward + loss + backward + Adam on ready tensors (one warm-up step not counted)."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    photo = torch.randn(batch, 3, spec.photo_height, spec.photo_width)
    chip = torch.randn(batch, 3, *(spec.polar or (spec.chip_px, spec.chip_px)))
    model.train()
    for k in range(steps + 1):
        if k == 1:
            start = time.perf_counter()
        loss, _ = model.loss(model.embed_photo(photo), model.embed_chip(chip))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def end_to_end_rate(model, manifest: str, spec, batch: int, workers: int, steps: int) -> float:
    """Samples/s of loader + step together, as the training loop runs them."""
    import torch

    from pipeline.train.data import ManifestPairs, make_loader

    loader, sampler = make_loader(ManifestPairs(manifest, spec, cache_mb=0), batch, workers, train=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    done, start = 0, None
    for epoch in range(1000):
        sampler.set_epoch(epoch)
        for _, photo, chip in loader:
            loss, _ = model.loss(model.embed_photo(photo), model.embed_chip(chip))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if start is None:
                start = time.perf_counter()
                continue
            done += batch
            if done >= steps * batch:
                return done / (time.perf_counter() - start)
    raise RuntimeError("unreachable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="timm_contrastive", choices=["timm_contrastive", "witw_fov"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--manifest", help="use this manifest's pairs instead of generated ones")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from pipeline.config import TrainParams
    from pipeline.train.data import view_spec
    from pipeline.train.models import build_model

    torch.set_num_threads(args.threads)
    params = TrainParams(model=args.model)
    spec = view_spec(params).training(True)
    torch.manual_seed(0)
    model = build_model(params)
    section = getattr(params, args.model)
    what = section.backbone if args.model == "timm_contrastive" else f"vgg16[:{section.vgg_convs} convs]"
    print(f"{args.model} ({what}), photo {spec.photo_height}x{spec.photo_width}, "
          f"chip {spec.polar or (spec.chip_px, spec.chip_px)}; {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"loader workers {args.workers}, median of {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        manifest = args.manifest or make_manifest(Path(tmp), args.n)
        print(f"{'batch':>5} {'loader/s':>9} {'step/s':>9} {'e2e/s':>9}  bound by")
        for batch in args.batch_sizes:
            load = statistics.median(loader_rate(manifest, spec, batch, args.workers, 6) for _ in range(args.repeat))
            step = statistics.median(step_rate(model, spec, batch, args.steps) for _ in range(args.repeat))
            e2e = statistics.median(end_to_end_rate(model, manifest, spec, batch, args.workers, args.steps)
                                    for _ in range(args.repeat))
            print(f"{batch:>5} {load:>9.1f} {step:>9.1f} {e2e:>9.1f}  {'input' if load < step else 'model'}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
