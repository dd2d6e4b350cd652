"""Retrieval metrics from a photo x chip distance matrix computed block by block (memory stays bounded).

Photo ``i`` matches chip ``i``. By default the numbers follow WITW's printout (``cvig_fov.py test``):

* rank = the number of chips at distance ≤ the photo's own (its own chip included), so ties count
  against the photo;
* recall@k = the share of photos with rank ≤ k;
* top-1 % = the share of photos with ``rank * 100 <= N``: 0 whenever N < 100.

Two other conventions are kept under names that say so: ``*_ties_favour`` ranks (1 + the number of
chips strictly closer, ties counting for the photo) and ``recall_at_1pct_nearest_k`` (recall@k with
``k = max(1, round(N / 100))``, as many CVUSA papers report it). Only O(N) numbers are kept, whatever N.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

DistanceFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
CONVENTION = ("WITW: rank = chips at distance <= the true one (ties count against the photo); "
              "recall_at_1pct counts a hit when rank * 100 <= N")


@dataclass(frozen=True)
class Retrieval:
    """Per photo: rank of its chip (both tie conventions), distance to it, nearest chip, bearing at its own chip."""

    rank: np.ndarray  # int64, WITW: chips at distance <= the own chip's (1-based, ties against)
    rank_ties_favour: np.ndarray  # int64, 1 + chips strictly closer
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
    at_most, closer, dist = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)
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
                at_most[p0:p1] += (d <= own[:, None]).sum(1).numpy()
                closer[p0:p1] += (d < own[:, None]).sum(1).numpy()
                best, where = d.min(1)
                better = best.numpy() < top1_dist[p0:p1]
                top1_dist[p0:p1] = np.where(better, best.numpy(), top1_dist[p0:p1])
                top1[p0:p1] = np.where(better, where.numpy() + c0, top1[p0:p1])
    has_bearing = not np.isnan(bearing).all()
    return Retrieval(at_most, closer + 1, dist, top1, top1_dist, bearing if has_bearing else None)


def one_percent_k(n: int) -> int:
    """The k of the nearest-k top-1 % convention for ``n`` candidates: ``max(1, round(n / 100))``."""
    return max(1, round(n / 100))


def recall_at(rank: np.ndarray, k: int) -> float:
    """Share of photos whose chip ranks within the first ``k``."""
    return float(np.mean(rank <= k)) if len(rank) else 0.0


def top_one_percent(rank: np.ndarray) -> float:
    """WITW's top-1 %: the share of photos with ``rank * 100 <= N`` (0 when N < 100)."""
    n = len(rank)
    return float(np.mean(rank * 100 <= n)) if n else 0.0


def chance(n: int) -> dict[str, float]:
    """What ranking the chips at random gives, in expectation, for ``n`` pairs (no ties)."""
    if n == 0:
        return {f"chance_{k}": 0.0 for k in ("recall_at_1", "recall_at_5", "recall_at_10", "recall_at_1pct",
                                               "mean_rank", "median_rank")}
    return {
        "chance_recall_at_1": 1 / n,
        "chance_recall_at_5": min(5, n) / n,
        "chance_recall_at_10": min(10, n) / n,
        "chance_recall_at_1pct": (n // 100) / n,
        "chance_mean_rank": (n + 1) / 2,
        "chance_median_rank": (n + 1) / 2,
    }


def summary(rank: np.ndarray, rank_ties_favour: np.ndarray | None = None) -> dict[str, float | int | str]:
    """Recall at 1, 5, 10 and 1 %, mean and median rank in WITW's convention, chance levels, N (DVC metrics).

    With ``rank_ties_favour`` the same ranks with ties counted for the photo are added under
    ``*_ties_favour`` names; the nearest-k top-1 % is always added as ``recall_at_1pct_nearest_k``.
    """
    n = len(rank)
    out: dict[str, float | int | str] = {
        "convention": CONVENTION,
        "pairs": n,
        "recall_at_1": recall_at(rank, 1),
        "recall_at_5": recall_at(rank, 5),
        "recall_at_10": recall_at(rank, 10),
        "recall_at_1pct": top_one_percent(rank),
        "mean_rank": float(np.mean(rank)) if n else 0.0,
        "median_rank": float(np.median(rank)) if n else 0.0,
        **chance(n),
        "recall_at_1pct_nearest_k": recall_at(rank, one_percent_k(n)),
        "k_1pct_nearest": one_percent_k(n),
    }
    if rank_ties_favour is not None:
        out.update({
            "recall_at_1_ties_favour": recall_at(rank_ties_favour, 1),
            "recall_at_10_ties_favour": recall_at(rank_ties_favour, 10),
            "mean_rank_ties_favour": float(np.mean(rank_ties_favour)) if n else 0.0,
        })
    return out


def recall_curve(rank: np.ndarray, max_k: int = 100) -> list[dict[str, float]]:
    """``[{k, recall}]`` for k = 1 .. min(max_k, N): the recall@k plot."""
    return [{"k": k, "recall": recall_at(rank, k)} for k in range(1, min(max_k, len(rank)) + 1)]
