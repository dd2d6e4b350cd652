"""Losses (soft-margin triplet, InfoNCE) and retrieval metrics on hand-made matrices and a tiny learnable set."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from pipeline.config import TimmParams, WitwFovParams
from pipeline.train.losses import info_nce, soft_margin_triplet
from pipeline.train.metrics import chance, one_percent_k, recall_at, recall_curve, retrieve, summary
from pipeline.train.models import TimmContrastive, WitwFov


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and on a busy 2-core machine OpenMP barriers cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Rows are photos, columns chips; own chips on the diagonal: 0.1 (rank 1), 0.5 (rank 2), 0.9 (rank 4), 0.3 (rank 1)
HAND = torch.tensor(
    [
        [0.1, 0.5, 0.7, 0.9],
        [0.2, 0.5, 0.6, 0.8],
        [0.1, 0.2, 0.9, 0.3],
        [0.9, 0.8, 0.7, 0.3],
    ]
)


def table_distances(matrix: torch.Tensor):
    """A distance function over row/column indices smuggled in as 1-element feature vectors."""
    def distances(photos: torch.Tensor, chips: torch.Tensor):
        d = matrix[photos[:, 0].long()][:, chips[:, 0].long()]
        return d, (photos[:, 0, None] * 10 + chips[:, 0]).double()  # a recognisable "bearing"
    return distances


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 100])
def test_ranks_from_a_hand_made_distance_matrix_whatever_the_chunk(chunk):
    idx = torch.arange(4, dtype=torch.float32)[:, None]
    result = retrieve(table_distances(HAND), idx, idx, chunk=chunk)
    assert result.rank.tolist() == [1, 2, 4, 1]
    assert result.rank_ties_favour.tolist() == [1, 2, 4, 1]  # no ties in this matrix
    assert result.distance.tolist() == pytest.approx([0.1, 0.5, 0.9, 0.3])
    assert result.top1.tolist() == [0, 0, 0, 3]
    assert result.top1_distance.tolist() == pytest.approx([0.1, 0.2, 0.1, 0.3])
    assert result.bearing_deg.tolist() == [0.0, 11.0, 22.0, 33.0]  # the diagonal: the own chip's bearing


def test_summary_recalls_ranks_and_chance():
    rank = np.array([1, 2, 4, 1])
    s = summary(rank)
    assert (s["recall_at_1"], s["recall_at_5"], s["recall_at_10"]) == (0.5, 1.0, 1.0)
    assert s["mean_rank"] == 2.0 and s["median_rank"] == 1.5 and s["pairs"] == 4
    assert s["chance_recall_at_1"] == 0.25 and s["chance_mean_rank"] == 2.5 and s["chance_median_rank"] == 2.5
    assert s["chance_recall_at_5"] == 1.0 and s["chance_recall_at_10"] == 1.0  # k >= N: every chip
    assert s["recall_at_1pct"] == 0.0 and s["chance_recall_at_1pct"] == 0.0  # N < 100
    assert "ties count against" in s["convention"]
    assert recall_at(rank, 2) == 0.75
    assert [r["recall"] for r in recall_curve(rank, max_k=10)] == [0.5, 0.75, 0.75, 1.0]


def test_chance_levels_scale_with_n():
    c = chance(250)
    assert c["chance_recall_at_1"] == pytest.approx(1 / 250) and c["chance_recall_at_10"] == pytest.approx(10 / 250)
    assert c["chance_recall_at_1pct"] == pytest.approx(2 / 250) and c["chance_mean_rank"] == 125.5


def test_top_one_percent_is_a_hit_when_rank_times_100_is_at_most_n():
    assert summary(np.arange(1, 1001))["recall_at_1pct"] == pytest.approx(10 / 1000)
    assert summary(np.arange(1, 151))["recall_at_1pct"] == pytest.approx(1 / 150)  # only rank 1: 100 <= 150 < 200
    assert summary(np.ones(99, np.int64))["recall_at_1pct"] == 0.0  # N < 100: never, even at rank 1
    assert summary(np.ones(100, np.int64))["recall_at_1pct"] == 1.0


def test_the_nearest_k_top_one_percent_is_kept_under_its_own_name():
    assert one_percent_k(13) == 1 and one_percent_k(8884) == 89 and one_percent_k(50_000) == 500
    s = summary(np.array([1, 2, 3] + [100] * 147))  # N = 150: k = round(1.5) = 2
    assert s["k_1pct_nearest"] == 2 and s["recall_at_1pct_nearest_k"] == pytest.approx(2 / 150)
    assert s["recall_at_1pct"] == pytest.approx(1 / 150)
    assert summary(np.ones(13, np.int64))["recall_at_1pct_nearest_k"] == 1.0


def test_ties_count_against_the_photo_as_in_witw():
    d = torch.tensor([[0.5, 0.5, 0.9], [0.5, 0.5, 0.1], [0.3, 0.3, 0.3]])
    idx = torch.arange(3, dtype=torch.float32)[:, None]
    result = retrieve(table_distances(d), idx, idx, chunk=2)
    assert result.rank.tolist() == [2, 3, 3]  # chips at distance <= the own one, itself included
    assert result.rank_ties_favour.tolist() == [1, 2, 1]  # 1 + chips strictly closer
    s = summary(result.rank, result.rank_ties_favour)
    assert s["recall_at_1"] == 0.0 and s["recall_at_1_ties_favour"] == pytest.approx(2 / 3)
    assert s["mean_rank"] == pytest.approx(8 / 3) and s["mean_rank_ties_favour"] == pytest.approx(4 / 3)


def test_memory_stays_bounded_by_the_chunk():
    seen = []

    def distances(p, c):
        seen.append(p.shape[0] * c.shape[0])
        return torch.cdist(p, c), None

    x = torch.randn(1000, 4)
    result = retrieve(distances, x, x + 0.01, chunk=128)
    assert max(seen) <= 128 * 128 and result.bearing_deg is None
    assert (result.rank >= 1).all() and np.median(result.rank) == 1


def test_soft_margin_triplet_matches_its_formula_in_both_directions():
    d = torch.tensor([[0.2, 1.0], [0.6, 0.4]])
    alpha = 10.0
    terms = [math.log1p(math.exp(alpha * (0.2 - 1.0))), math.log1p(math.exp(alpha * (0.4 - 0.6))),  # photo→chip
             math.log1p(math.exp(alpha * (0.2 - 0.6))), math.log1p(math.exp(alpha * (0.4 - 1.0)))]  # chip→photo
    expected = (terms[0] + terms[1]) / 4 + (terms[2] + terms[3]) / 4
    assert float(soft_margin_triplet(d, alpha)) == pytest.approx(expected, rel=1e-5)
    assert float(soft_margin_triplet(d.T, alpha)) == pytest.approx(expected, rel=1e-5)  # symmetric
    assert float(soft_margin_triplet(torch.tensor([[0.0, 2.0], [2.0, 0.0]]))) < 1e-8


def test_info_nce_is_log_n_for_uninformative_and_small_for_perfect_similarity():
    n = 8
    assert float(info_nce(torch.zeros(n, n), torch.tensor(0.0))) == pytest.approx(math.log(n), rel=1e-6)
    assert float(info_nce(torch.eye(n), torch.tensor(math.log(100.0)))) < 1e-3
    with pytest.raises(ValueError):
        info_nce(torch.zeros(1, 1), torch.tensor(0.0))


def learnable_set(n: int, photo_hw: tuple[int, int], chip_hw: tuple[int, int], seed: int = 0):
    """Pairs that share a colour: photo i and chip i are the same random colour plus noise."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g) * 4 - 2
    photos = colour + 0.3 * torch.randn(n, 3, *photo_hw, generator=g)
    chips = colour + 0.3 * torch.randn(n, 3, *chip_hw, generator=g)
    return photos, chips


def _train(model, photos, chips, lr: float, steps: int) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = model.loss(model.embed_photo(photos), model.embed_chip(chips))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_info_nce_loss_decreases_on_a_tiny_learnable_set():
    torch.manual_seed(0)
    model = TimmContrastive(TimmParams(backbone="test_byobnet", embed_dim=16))
    losses = _train(model, *learnable_set(16, (24, 32), (24, 24)), lr=3e-3, steps=25)
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])


def test_soft_margin_triplet_loss_decreases_for_a_tiny_witw_fov():
    torch.manual_seed(0)
    model = WitwFov(WitwFovParams(vgg_convs=2, polar_height=8, polar_width=32, chip_px=16, channels=4, lr=1e-3))
    photos, chips = learnable_set(12, (8, model.spec.photo_width), (8, 32))
    losses = _train(model, photos, chips, lr=1e-3, steps=25)
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
