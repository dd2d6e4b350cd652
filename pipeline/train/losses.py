"""Losses over a batch's photo x chip matrix, where pair ``i`` (photo i, chip i) is the match."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_margin_triplet(dist: torch.Tensor, alpha: float = 10.0) -> torch.Tensor:
    """Weighted soft-margin triplet loss over all in-batch negatives, photo→chip and chip→photo (WITW, DSM).

    ``dist[i, j]`` is the distance of photo ``i`` to chip ``j``; each term is
    ``log(1 + exp(alpha * (d_pos - d_neg)))``, averaged over every (anchor, negative) pair.
    """
    n = dist.shape[0]
    if dist.shape != (n, n) or n < 2:
        raise ValueError(f"need a square distance matrix of at least 2 pairs, got {tuple(dist.shape)}")
    pos = dist.diagonal()
    off = ~torch.eye(n, dtype=torch.bool, device=dist.device)
    photo_to_chip = F.softplus(alpha * (pos[:, None] - dist))[off].mean()
    chip_to_photo = F.softplus(alpha * (pos[None, :] - dist))[off].mean()
    return (photo_to_chip + chip_to_photo) / 2


def info_nce(similarity: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP / Sample4Geo): cross-entropy over rows and columns of ``scale * similarity``."""
    n = similarity.shape[0]
    if similarity.shape != (n, n) or n < 2:
        raise ValueError(f"need a square similarity matrix of at least 2 pairs, got {tuple(similarity.shape)}")
    logits = similarity * logit_scale.exp()
    target = torch.arange(n, device=similarity.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
