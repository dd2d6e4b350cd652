"""The indoor/outdoor vote over a scene classifier's top-k categories (pure numpy, no torch).

Each category carries a label: indoor (+1), outdoor (-1) or neutral (0; ImageNet animals, people
and small objects say nothing about the scene). Among the k most probable categories the vote
sums the probability of the indoor ones (indoor mass) and of the outdoor ones (outdoor mass).
The indoor score is the indoor share of that evidence, ``indoor / (indoor + outdoor)`` (0 when
there is none). A photo is indoor when the score is above ``threshold`` *and* the indoor mass
reaches ``min_indoor_mass``, so a photo with almost no indoor evidence (a pet, a portrait) is not
called indoor because its few outdoor categories are even weaker.

With Places365 every category is indoor or outdoor; the vote is then the probability-weighted form
of the release's unweighted top-10 majority (``run_placesCNN_unified.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INDOOR, NEUTRAL, OUTDOOR = 1, 0, -1
IO_CODES = {"indoor": INDOOR, "neutral": NEUTRAL, "outdoor": OUTDOOR}


@dataclass(frozen=True)
class VoteParams:
    """How the vote counts: ``top_k`` categories, indoor share above ``threshold``, a minimum indoor mass."""

    top_k: int = 10
    threshold: float = 0.5
    min_indoor_mass: float = 0.15


@dataclass(frozen=True)
class Vote:
    """One photo's vote: the score, the decision, the masses and the top categories (index, probability)."""

    indoor_score: float
    is_indoor: bool
    indoor_mass: float
    outdoor_mass: float
    top: tuple[tuple[int, float], ...]


def top_categories(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable categories of one probability vector, ties broken by lower index."""
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-probs, kind="stable")[:k]
    return order, probs[order]


def vote_top(top_index: Sequence[int], top_prob: Sequence[float], io: np.ndarray, params: VoteParams) -> Vote:
    """Vote from categories already sorted by probability (the first ``top_k`` are used)."""
    if len(top_index) < min(params.top_k, len(io)):
        raise ValueError(f"vote needs the top {params.top_k} categories, got {len(top_index)}")
    index = np.asarray(top_index[: params.top_k], dtype=np.int64)
    prob = np.asarray(top_prob[: params.top_k], dtype=np.float64)
    labels = np.asarray(io)[index]
    indoor = float(prob[labels == INDOOR].sum())
    outdoor = float(prob[labels == OUTDOOR].sum())
    evidence = indoor + outdoor
    score = indoor / evidence if evidence > 0 else 0.0
    decision = score > params.threshold and indoor >= params.min_indoor_mass
    top = tuple((int(i), float(p)) for i, p in zip(index, prob))
    return Vote(score, bool(decision), indoor, outdoor, top)


def vote(probs: np.ndarray, io: np.ndarray, params: VoteParams) -> Vote:
    """Vote from a full probability vector over the categories labelled by ``io``."""
    if len(probs) != len(io):
        raise ValueError(f"{len(probs)} probabilities for {len(io)} labelled categories")
    index, prob = top_categories(probs, params.top_k)
    return vote_top(index, prob, io, params)


def format_top(top: Sequence[tuple[int, float]], names: Sequence[str], n: int | None = None) -> str:
    """``"espresso=0.953, cup=0.012"``: the first ``n`` (default all) top categories with probabilities."""
    return ", ".join(f"{names[i]}={p:.3f}" for i, p in list(top)[: n if n is not None else len(top)])
