"""The indoor/outdoor vote over a scene classifier's top-k categories (pure numpy, no torch).

Each category carries a label: indoor (+1), outdoor (-1) or neutral (0; ImageNet animals, people
and small objects say nothing about the scene). Two rules, both over the k most probable categories:

* ``majority`` (Places365's and WITW's rule, ``run_placesCNN_unified.py``): a photo is outdoor when
  at least half of the top-k categories are outdoor, each counted once whatever its probability;
  the indoor score is the share of the top-k that is not outdoor. ``threshold`` and
  ``min_indoor_mass`` play no part.
* ``weighted`` (the ImageNet model's rule): the vote sums the probability of the indoor categories
  (indoor mass) and of the outdoor ones (outdoor mass); the indoor score is the indoor share of
  that evidence, ``indoor / (indoor + outdoor)`` (0 when there is none). A photo is indoor when the
  score is above ``threshold`` *and* the indoor mass reaches ``min_indoor_mass``, so a photo with
  almost no indoor evidence (a pet, a portrait: neutral categories) is not called indoor because
  its few outdoor categories are even weaker.

Both rules report both masses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INDOOR, NEUTRAL, OUTDOOR = 1, 0, -1
IO_CODES = {"indoor": INDOOR, "neutral": NEUTRAL, "outdoor": OUTDOOR}
RULES = ("majority", "weighted")


@dataclass(frozen=True)
class VoteParams:
    """How the vote counts: ``top_k`` categories, the rule, and (weighted rule) threshold and minimum indoor mass."""

    top_k: int = 10
    threshold: float = 0.5
    min_indoor_mass: float = 0.15
    rule: str = "weighted"  # "majority" (Places365 / WITW) or "weighted"


def rule_for(model: str, rule: str = "auto") -> str:
    """A scene model's vote rule: ``rule`` if given, else majority for places365 (its release's), weighted otherwise."""
    if rule == "auto":
        return "majority" if model == "places365" else "weighted"
    if rule not in RULES:
        raise ValueError(f"vote rule must be auto, majority or weighted, got {rule!r}")
    return rule


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
    if params.rule == "majority":
        score, decision = majority_vote(labels)
    elif params.rule == "weighted":
        score, decision = weighted_vote(indoor, outdoor, params.threshold, params.min_indoor_mass)
    else:
        raise ValueError(f"vote rule must be majority or weighted, got {params.rule!r}")
    top = tuple((int(i), float(p)) for i, p in zip(index, prob))
    return Vote(score, bool(decision), indoor, outdoor, top)


def majority_vote(labels: Sequence[int]) -> tuple[float, bool]:
    """Places365's rule over the top-k labels: (share not outdoor, indoor); outdoor when at least half are outdoor."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0.0, False
    outdoor = int((labels == OUTDOOR).sum())
    return 1 - outdoor / labels.size, 2 * outdoor < labels.size


def weighted_vote(indoor_mass: float, outdoor_mass: float, threshold: float, min_indoor_mass: float
                  ) -> tuple[float, bool]:
    """The probability-weighted rule: (indoor share of the evidence, indoor); see the module docstring."""
    evidence = indoor_mass + outdoor_mass
    score = indoor_mass / evidence if evidence > 0 else 0.0
    return score, score > threshold and indoor_mass >= min_indoor_mass


def vote(probs: np.ndarray, io: np.ndarray, params: VoteParams) -> Vote:
    """Vote from a full probability vector over the categories labelled by ``io``."""
    if len(probs) != len(io):
        raise ValueError(f"{len(probs)} probabilities for {len(io)} labelled categories")
    index, prob = top_categories(probs, params.top_k)
    return vote_top(index, prob, io, params)


def format_top(top: Sequence[tuple[int, float]], names: Sequence[str], n: int | None = None) -> str:
    """``"espresso=0.953, cup=0.012"``: the first ``n`` (default all) top categories with probabilities."""
    return ", ".join(f"{names[i]}={p:.3f}" for i, p in list(top)[: n if n is not None else len(top)])
