"""Retrieval metrics from a photo x chip distance matrix computed block by block (memory stays bounded).

Photo ``i`` matches chip ``i``. Its rank is 1 + the number of chips strictly closer than its own
(ties count in its favour); recall@k is the share of photos with rank ≤ k, and top-1 % is
recall@k with ``k = max(1, round(N / 100))`` (WITW, CVUSA). Only O(N) numbers are kept, whatever N.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

DistanceFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class Retrieval:
    """Per photo: rank of its chip, distance to it, nearest chip and its distance, bearing at its own chip."""

    rank: np.ndarray  # int64, 1-based
    distance: np.ndarray  # float64
    top1: np.ndarray  # int64 index of the nearest chip
    top1_distance: np.ndarray
    bearing_deg: np.ndarray | None  # predicted viewing direction at the true chip; None without orientation


def retrieve(distances: DistanceFn, photos: torch.Tensor, chips: torch.Tensor, chunk: int = 1024,
             device: str = "cpu") -> Retrieval:
    """Rank every photo's chip among all chips, ``chunk`` x ``chunk`` blocks at a time."""
    n = photos.shape[0]
    if chips.shape[0] != n or n == 0:
        raise ValueError(f"need as many chips as photos (> 0), got {n} photos and {chips.shape[0]} chips")
    rank, dist = np.ones(n, np.int64), np.zeros(n)
    top1, top1_dist, bearing = np.zeros(n, np.int64), np.full(n, np.inf), np.full(n, np.nan)
    starts = list(range(0, n, chunk))
    if device.startswith("cuda") and chips.numel() * chips.element_size() < 2**32:
        chips = chips.to(device)  # one transfer instead of one per block row
    with torch.no_grad():
        for p0 in starts:
            p1 = min(p0 + chunk, n)
            block_photos = photos[p0:p1].to(device)
            order = [p0] + [c for c in starts if c != p0]  # own block first: it holds the true distances
            for c0 in order:
                c1 = min(c0 + chunk, n)
                d, b = distances(block_photos, chips[c0:c1].to(device))
                d = d.double().cpu()
                if c0 == p0:
                    own = torch.diagonal(d).clone()
                    dist[p0:p1] = own.numpy()
                    if b is not None:
                        bearing[p0:p1] = torch.diagonal(b).double().cpu().numpy()
                rank[p0:p1] += (d < own[:, None]).sum(1).numpy()
                best, where = d.min(1)
                better = best.numpy() < top1_dist[p0:p1]
                top1_dist[p0:p1] = np.where(better, best.numpy(), top1_dist[p0:p1])
                top1[p0:p1] = np.where(better, where.numpy() + c0, top1[p0:p1])
    has_bearing = not np.isnan(bearing).all()
    return Retrieval(rank, dist, top1, top1_dist, bearing if has_bearing else None)


def one_percent_k(n: int) -> int:
    """The k of top-1 % recall for ``n`` candidates."""
    return max(1, round(n / 100))


def recall_at(rank: np.ndarray, k: int) -> float:
    """Share of photos whose chip ranks within the first ``k``."""
    return float(np.mean(rank <= k)) if len(rank) else 0.0


def summary(rank: np.ndarray) -> dict[str, float | int]:
    """Recall at 1, 5, 10 and 1 %, mean and median rank, and what chance would give (DVC metrics)."""
    n = len(rank)
    k1 = one_percent_k(n)
    return {
        "pairs": n,
        "recall_at_1": recall_at(rank, 1),
        "recall_at_5": recall_at(rank, 5),
        "recall_at_10": recall_at(rank, 10),
        "recall_at_1pct": recall_at(rank, k1),
        "k_1pct": k1,
        "mean_rank": float(np.mean(rank)) if n else 0.0,
        "median_rank": float(np.median(rank)) if n else 0.0,
        "chance_recall_at_1": 1 / n if n else 0.0,
        "chance_mean_rank": (n + 1) / 2,
    }


def recall_curve(rank: np.ndarray, max_k: int = 100) -> list[dict[str, float]]:
    """``[{k, recall}]`` for k = 1 .. min(max_k, N): the recall@k plot."""
    return [{"k": k, "recall": recall_at(rank, k)} for k in range(1, min(max_k, len(rank)) + 1)]
