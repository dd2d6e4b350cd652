"""The top-k indoor/outdoor vote (pure numpy): masses, threshold, minimum indoor mass, ties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.scene.vote import (
    INDOOR,
    NEUTRAL,
    OUTDOOR,
    VoteParams,
    format_top,
    majority_vote,
    rule_for,
    top_categories,
    vote,
    vote_top,
    weighted_vote,
)

# categories: 0-2 indoor, 3-5 outdoor, 6-9 neutral
IO = np.array([INDOOR] * 3 + [OUTDOOR] * 3 + [NEUTRAL] * 4, np.int8)
NAMES = [f"c{k}" for k in range(10)]


def probs(**mass: float) -> np.ndarray:
    """A probability vector from ``c3=0.5``-style keywords; the rest spread evenly."""
    p = np.zeros(10)
    for name, value in mass.items():
        p[int(name[1:])] = value
    rest = [k for k in range(10) if p[k] == 0]
    p[rest] = (1 - p.sum()) / len(rest)
    return p


def test_indoor_mass_above_outdoor_mass_is_indoor():
    v = vote(probs(c0=0.5, c1=0.2, c3=0.1), IO, VoteParams(top_k=3))
    assert v.is_indoor
    assert v.indoor_mass == pytest.approx(0.7)
    assert v.outdoor_mass == pytest.approx(0.1)
    assert v.indoor_score == pytest.approx(0.7 / 0.8)
    assert [i for i, _ in v.top] == [0, 1, 3]


def test_outdoor_majority_is_not_indoor():
    v = vote(probs(c3=0.6, c0=0.3), IO, VoteParams(top_k=2))
    assert not v.is_indoor
    assert v.indoor_score == pytest.approx(1 / 3)


def test_neutral_categories_do_not_vote():
    # a cat photo: almost all mass neutral, a trace of indoor evidence
    v = vote(probs(c6=0.6, c7=0.3, c0=0.02), IO, VoteParams(top_k=3, min_indoor_mass=0.15))
    assert v.indoor_score == pytest.approx(1.0)
    assert v.indoor_mass == pytest.approx(0.02)
    assert not v.is_indoor  # below the minimum indoor mass


def test_minimum_indoor_mass_gates_the_decision():
    p = probs(c0=0.2, c6=0.7)
    assert vote(p, IO, VoteParams(top_k=2, min_indoor_mass=0.15)).is_indoor
    assert not vote(p, IO, VoteParams(top_k=2, min_indoor_mass=0.25)).is_indoor


def test_threshold_is_strict_so_a_tie_is_outdoor():
    v = vote(probs(c0=0.3, c3=0.3), IO, VoteParams(top_k=2, threshold=0.5, min_indoor_mass=0.0))
    assert v.indoor_score == pytest.approx(0.5)
    assert not v.is_indoor


def test_only_the_top_k_categories_count():
    p = probs(c3=0.4, c4=0.3, c0=0.2)
    assert not vote(p, IO, VoteParams(top_k=2)).is_indoor
    assert vote(p, IO, VoteParams(top_k=3)).indoor_mass == pytest.approx(0.2)


def test_no_evidence_scores_zero():
    v = vote(probs(c6=0.5, c7=0.5), IO, VoteParams(top_k=2))
    assert (v.indoor_score, v.indoor_mass, v.outdoor_mass, v.is_indoor) == (0.0, 0.0, 0.0, False)


def test_ties_are_broken_by_lower_index():
    order, _ = top_categories(np.full(10, 0.1), 4)
    assert order.tolist() == [0, 1, 2, 3]


def test_vote_top_uses_presorted_categories_and_rejects_short_lists():
    v = vote_top([0, 3, 6], [0.5, 0.3, 0.1], IO, VoteParams(top_k=2))
    assert v.indoor_mass == pytest.approx(0.5) and v.outdoor_mass == pytest.approx(0.3)
    with pytest.raises(ValueError, match="top 5"):
        vote_top([0, 3], [0.5, 0.3], IO, VoteParams(top_k=5))


def test_vote_checks_label_count():
    with pytest.raises(ValueError, match="labelled categories"):
        vote(np.ones(5) / 5, IO, VoteParams())


def test_format_top_names_and_rounds():
    assert format_top(((2, 0.95312), (7, 0.0123)), NAMES) == "c2=0.953, c7=0.012"
    assert format_top(((2, 0.9), (7, 0.1)), NAMES, 1) == "c2=0.900"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=10, max_size=10).filter(lambda xs: sum(xs) > 0),
    st.integers(1, 10),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_vote_invariants(raw, k, threshold, min_mass):
    p = np.asarray(raw) / sum(raw)
    v = vote(p, IO, VoteParams(k, threshold, min_mass))
    assert 0.0 <= v.indoor_score <= 1.0
    assert v.indoor_mass + v.outdoor_mass <= sum(sorted(p, reverse=True)[:k]) + 1e-9
    if v.is_indoor:
        assert v.indoor_score > threshold and v.indoor_mass >= min_mass
    assert [q for _, q in v.top] == sorted((q for _, q in v.top), reverse=True)


# ---------------------------------------------------------------- Places365's majority rule (WITW)

PLACES = VoteParams(top_k=10, rule="majority")


def places_io(outdoor: int) -> tuple[list[int], list[float], np.ndarray]:
    """A hand-built top-10 of a Places365-like model: ``outdoor`` outdoor categories, the rest indoor.

    The indoor ones are given most of the probability, so a weighted vote would disagree.
    """
    io = np.array([OUTDOOR] * outdoor + [INDOOR] * (10 - outdoor) + [OUTDOOR] * 5, np.int8)
    order = list(range(outdoor, 10)) + list(range(outdoor))  # indoor first: the most probable
    prob = sorted(np.linspace(0.3, 0.01, 10), reverse=True)
    return order, prob, io


@pytest.mark.parametrize("outdoor, indoor", [(10, False), (6, False), (5, False), (4, True), (0, True)])
def test_majority_rule_is_outdoor_when_at_least_half_of_the_top_ten_are_outdoor(outdoor, indoor):
    order, prob, io = places_io(outdoor)
    v = vote_top(order, prob, io, PLACES)
    assert v.is_indoor is indoor
    assert v.indoor_score == pytest.approx(1 - outdoor / 10)


def test_majority_rule_counts_categories_not_probability():
    # five outdoor categories with little probability against five indoor ones with almost all of it
    order, prob, io = places_io(5)
    majority = vote_top(order, prob, io, PLACES)
    weighted = vote_top(order, prob, io, VoteParams(top_k=10, rule="weighted"))
    assert majority.indoor_mass > 3 * majority.outdoor_mass
    assert not majority.is_indoor and weighted.is_indoor


def test_majority_rule_ignores_threshold_and_minimum_mass():
    order, prob, io = places_io(3)
    for threshold, min_mass in ((0.0, 0.0), (0.99, 0.99)):
        assert vote_top(order, prob, io, VoteParams(10, threshold, min_mass, "majority")).is_indoor


def test_majority_and_weighted_rules_as_pure_functions():
    assert majority_vote([INDOOR] * 6 + [OUTDOOR] * 4) == (pytest.approx(0.6), True)
    assert majority_vote([INDOOR] * 5 + [OUTDOOR] * 5) == (pytest.approx(0.5), False)
    assert majority_vote([]) == (0.0, False)
    assert weighted_vote(0.6, 0.2, 0.5, 0.15) == (pytest.approx(0.75), True)
    assert weighted_vote(0.1, 0.0, 0.5, 0.15) == (pytest.approx(1.0), False)  # too little indoor mass
    assert weighted_vote(0.0, 0.0, 0.5, 0.0) == (0.0, False)


def test_places365_votes_by_majority_and_imagenet_by_weight_unless_told():
    assert rule_for("places365") == "majority"
    assert rule_for("imagenet") == "weighted"
    assert rule_for("places365", "weighted") == "weighted"
    assert rule_for("imagenet", "majority") == "majority"
    with pytest.raises(ValueError, match="auto, majority or weighted"):
        rule_for("imagenet", "mean")


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="majority or weighted"):
        vote_top([0, 3], [0.5, 0.3], IO, VoteParams(top_k=2, rule="mean"))
