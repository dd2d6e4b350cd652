"""The training loop: seeded epochs, a checkpoint after each (atomic), resume, validation by retrieval.

Every epoch starts from a state that depends only on (params, data, epoch): the sampler's order and
the augmentations are seeded by ``(seed, epoch[, index])`` and torch's RNG is reseeded with
``(seed, epoch)``. So a run interrupted at any point and resumed from its last checkpoint ends with
the same weights and metrics as an uninterrupted one. A checkpoint is reused only when its
fingerprint (params, manifests, this package's code) matches; otherwise training starts afresh.

``model.pt`` holds the weights ``train.keep`` names: the last epoch's, or (WITW) those of the epoch
with the lowest validation loss, written when that epoch ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.config import TrainParams, witw_differences
from pipeline.device import resolve_device
from pipeline.errors import StageInputError
from pipeline.store import atomic_file
from pipeline.train.data import ManifestPairs, make_loader
from pipeline.train.metrics import Retrieval, retrieve, summary
from pipeline.train.models import CrossViewModel, build_model

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
MODEL = "model.pt"
StepHook = Callable[[int, int], None]  # (epoch, step) before each step


def autocast(device: str, enabled: bool):
    """bf16 autocast on CUDA when asked; full precision elsewhere."""
    if enabled and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def fingerprint(params: TrainParams, *manifests: str) -> str:
    """What a checkpoint must match to be resumed: params, manifest bytes and this package's code."""
    h = hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode())
    for path in manifests:
        h.update(Path(path).read_bytes())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        h.update(source.read_bytes())
    return h.hexdigest()


def save_atomic(obj: object, path: str | Path) -> None:
    """``torch.save`` atomically: a crash never leaves half a checkpoint."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


@dataclass
class History:
    """Per-step losses and per-epoch summaries (what the metrics JSON and the plots show)."""

    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)


def embed(model: CrossViewModel, loader: DataLoader, device: str, amp: bool
          ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Photo and chip features of every pair of an in-order loader (on the CPU) and the mean loss of its batches.

    The loss is WITW's validation loss: each batch's in-batch loss in eval mode, weighted by the
    batch's size (batches of one pair have none); NaN when no batch has two pairs.
    """
    photos, chips, total, count = [], [], 0.0, 0
    model.eval()
    with torch.no_grad(), autocast(device, amp):
        for _, photo, chip in loader:
            p = model.embed_photo(photo.to(device, non_blocking=True))
            c = model.embed_chip(chip.to(device, non_blocking=True))
            if len(p) > 1:
                total += float(model.loss(p, c)[0]) * len(p)
                count += len(p)
            photos.append(p.float().cpu())
            chips.append(c.float().cpu())
    return torch.cat(photos), torch.cat(chips), total / count if count else float("nan")


def evaluate_model(model: CrossViewModel, ds: ManifestPairs, *, batch_size: int, workers: int, device: str,
                   amp: bool, chunk: int) -> Retrieval:
    """Rank every chip of ``ds`` for its photo among all the split's chips."""
    loader, _ = make_loader(ds, batch_size, workers, train=False, device=device)
    photos, chips, _ = embed(model, loader, device, amp)
    return retrieve(model.distances, photos, chips, chunk, device)


def learning_rate(params: TrainParams, step: int, total: int) -> float:
    """The learning rate of global step ``step`` of ``total``: constant, or a cosine decay from the base rate to 0."""
    base = _lr(params)
    if params.schedule == "constant" or total <= 0:
        return base
    return base * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _train_epoch(model, optimizer, loader, epoch: int, params: TrainParams, device: str, history: History,
                 on_step: StepHook | None) -> float:
    model.train()
    losses = []
    per_epoch = min(len(loader), params.steps_per_epoch or len(loader))
    for step, (_, photo, chip) in enumerate(loader):
        if params.steps_per_epoch is not None and step >= params.steps_per_epoch:
            break
        if on_step is not None:
            on_step(epoch, step)
        for group in optimizer.param_groups:  # a function of the step alone: resuming needs no scheduler state
            group["lr"] = learning_rate(params, epoch * per_epoch + step, params.epochs * per_epoch)
        with autocast(device, params.amp):
            p = model.embed_photo(photo.to(device, non_blocking=True))
            c = model.embed_chip(chip.to(device, non_blocking=True))
            loss, _ = model.loss(p, c)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        history.steps.append({"step": len(history.steps) + 1, "epoch": epoch + 1, "loss": losses[-1]})
    return float(np.mean(losses)) if losses else float("nan")


def _lr(params: TrainParams) -> float:
    return params.witw_fov.lr if params.model == "witw_fov" else params.timm_contrastive.lr


def _start(params: TrainParams, out_dir: Path, fp: str, device: str):
    """Model, optimizer, first epoch and history: from a matching checkpoint, or fresh."""
    torch.manual_seed(params.seed)
    model = build_model(params).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=_lr(params), weight_decay=params.weight_decay)
    path = out_dir / CHECKPOINT
    if path.exists():
        state = torch.load(path, map_location=device, weights_only=True)
        lost_best = (params.keep_rule == "best_val_loss" and best_epoch(History(**state["history"])) is not None
                     and not _is_model_of(out_dir / MODEL, fp))
        if state.get("fingerprint") == fp and lost_best:
            log.info("%s has no best weights of this run: training starts afresh", out_dir / MODEL)
        elif state.get("fingerprint") == fp:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            log.info("resuming from %s after epoch %d", path, state["epoch"])
            return model, optimizer, state["epoch"], History(**state["history"])
        log.info("%s was made with other params, data or code: training starts afresh", path)
    if not params.pretrained:
        log.info("no train.%s.pretrained weights file: %s starts from scratch", params.model, params.model)
    if params.model == "witw_fov" and witw_differences(params):
        log.warning("witw_fov results are not comparable to WITW's: %s", "; ".join(witw_differences(params)))
    return model, optimizer, 0, History()


def fit(params: TrainParams, train: ManifestPairs, val: ManifestPairs | None, out_dir: str | Path, *,
        fp: str = "", on_epoch: Callable[[History], None] | None = None,
        on_step: StepHook | None = None) -> tuple[CrossViewModel, History]:
    """Train for ``params.epochs`` (resuming from ``out_dir/last.pt``); write ``out_dir/model.pt``."""
    out_dir, device = Path(out_dir), resolve_device(params.device, "train.device")
    if device == "cpu":
        torch.set_num_threads(params.threads)
    model, optimizer, first, history = _start(params, out_dir, fp, device)
    if params.compile and device.startswith("cuda"):
        model.compile_branches()
    loader, sampler = make_loader(train, params.batch, params.loader_workers, train=True, device=device,
                                  seed=params.seed)
    validate = val is not None and len(val) > 1
    if validate:
        val_loader, _ = make_loader(val, params.batch, params.loader_workers, train=False, device=device)
    elif params.keep_rule == "best_val_loss":
        log.warning("no validation split of 2+ pairs: model.pt is the last epoch's, not the lowest validation loss")
    for epoch in range(first, params.epochs):
        torch.manual_seed(params.seed * 1_000_003 + epoch)
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        loss = _train_epoch(model, optimizer, loader, epoch, params, device, history, on_step)
        seconds = time.perf_counter() - t0  # logged only: outputs stay byte-identical from run to run
        row = {"epoch": epoch + 1, "train_loss": loss}
        if validate:
            photos, chips, val_loss = embed(model, val_loader, device, params.amp)
            result = retrieve(model.distances, photos, chips, params.eval_chunk, device)
            row["val_loss"] = val_loss
            row.update({f"val_{k}": v for k, v in summary(result.rank).items() if k != "convention"})
        history.epochs.append(row)
        log.info("epoch %d/%d (%.1f s): %s", epoch + 1, params.epochs, seconds, json.dumps(row))
        if validate and params.keep_rule == "best_val_loss" and best_epoch(history) == epoch + 1:
            _save_model(model, params, fp, epoch + 1, out_dir)  # before the checkpoint: a resume finds it
        save_atomic({"fingerprint": fp, "epoch": epoch + 1, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "history": history.__dict__}, out_dir / CHECKPOINT)
        if on_epoch is not None:
            on_epoch(history)
    if not _is_model_of(out_dir / MODEL, fp) or (params.keep_rule == "last" and first < params.epochs):
        if validate and params.keep_rule == "best_val_loss":
            log.warning("no finite validation loss: model.pt holds the last epoch's weights")
        _save_model(model, params, fp, params.epochs, out_dir)  # torch.save output differs every time: only when new
    return model, history


def best_epoch(history: History) -> int | None:
    """The (1-based) epoch with the lowest validation loss, the earliest on a tie; None without one."""
    losses = [(row["val_loss"], row["epoch"]) for row in history.epochs if np.isfinite(row.get("val_loss", np.nan))]
    return min(losses)[1] if losses else None


def _save_model(model: CrossViewModel, params: TrainParams, fp: str, epoch: int, out_dir: Path) -> None:
    save_atomic({"params": params.model_dump(), "model": model.state_dict(), "fingerprint": fp, "epoch": epoch},
                out_dir / MODEL)


def _is_model_of(path: Path, fp: str) -> bool:
    """True when ``path`` is the final model of the run with fingerprint ``fp``."""
    return bool(fp) and path.exists() and torch.load(path, map_location="cpu", weights_only=True).get("fingerprint") == fp


def load_model(path: str | Path, device: str = "cpu") -> tuple[CrossViewModel, TrainParams]:
    """A trained model from ``model.pt`` (its params travel with it), in eval mode."""
    path = Path(path)
    if not path.exists():
        raise StageInputError(f"{path} does not exist: run `crossview train` (or `dvc repro train`) first")
    state = torch.load(path, map_location=device, weights_only=True)
    params = TrainParams.model_validate(state["params"])
    section = getattr(params, params.model).model_copy(update={"pretrained": None})  # the weights are all here
    model = build_model(params.model_copy(update={params.model: section}))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), params
