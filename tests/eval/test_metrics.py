"""Full-ranking metrics: a hand-computed example, seen-item exclusion, chunking, score forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raymm.eval.metrics import ItemSets, popularity_scores, ranking_metrics

LOG3 = math.log2(3)

# Three users, six items. User 0 has seen item 1 (excluded), user 2 has no held-out items.
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.2, 0.3, 0.9, 0.8, 0.0],
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],
    ],
    dtype=np.float32,
)
TRUTH = ItemSets.from_lists([[2, 5], [4], []])
SEEN = ItemSets.from_lists([[1], [], []])


def test_hand_computed_example() -> None:
    # user 0 ranks 0, 2, 3, 4, 5 (item 1 excluded): relevant 2 at rank 2; user 1 ranks 3, 4, ...: 4 at rank 2.
    metrics = ranking_metrics(TRUTH, scores=SCORES, seen=SEEN, ks=[2, 3])
    ndcg_user0 = (1 / LOG3) / (1 + 1 / LOG3)  # ideal DCG over min(|truth|=2, K) items
    ndcg_user1 = 1 / LOG3
    expected = {
        "recall@2": (1 / 2 + 1) / 2,
        "precision@2": (1 / 2 + 1 / 2) / 2,
        "f1@2": (0.5 + 2 * 0.5 * 1 / 1.5) / 2,
        "hit_rate@2": 1.0,
        "mrr@2": 0.5,
        "ndcg@2": (ndcg_user0 + ndcg_user1) / 2,
        "coverage@2": 4 / 6,  # {0, 2} and {3, 4}
        "recall@3": (1 / 2 + 1) / 2,
        "precision@3": 1 / 3,
        "f1@3": (2 * (1 / 3) * (1 / 2) / (5 / 6) + 2 * (1 / 3) / (4 / 3)) / 2,
        "hit_rate@3": 1.0,
        "mrr@3": 0.5,
        "ndcg@3": (ndcg_user0 + ndcg_user1) / 2,
        "coverage@3": 4 / 6,  # {0, 2, 3} and {3, 4, 2}
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_seen_items_are_excluded() -> None:
    with_seen = ranking_metrics(TRUTH, scores=SCORES, seen=SEEN, ks=[2])
    without = ranking_metrics(TRUTH, scores=SCORES, ks=[2])
    # Without exclusion user 0's top 2 is [0, 1]: no hit; user 1 is unchanged.
    assert without["recall@2"] == pytest.approx(0.5)
    assert with_seen["recall@2"] == pytest.approx(0.75)


def test_seen_relevant_item_cannot_be_retrieved_even_when_k_exceeds_candidates() -> None:
    truth = ItemSets.from_lists([[0, 1]])
    seen = ItemSets.from_lists([[0, 2, 3]])
    scores = np.array([[0.9, 0.1, 0.8, 0.7]], dtype=np.float32)
    metrics = ranking_metrics(truth, scores=scores, seen=seen, ks=[4])
    # Only item 1 is rankable; the seen relevant item 0 padding the top 4 is not a hit.
    assert metrics["recall@4"] == pytest.approx(0.5)
    assert metrics["precision@4"] == pytest.approx(0.25)
    assert metrics["coverage@4"] == pytest.approx(0.25)


def test_chunked_equals_unchunked_and_vectors_equal_scores() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(37, 8)), rng.normal(size=(120, 8))
    truth = ItemSets.from_lists([rng.choice(120, size=rng.integers(0, 6), replace=False) for _ in range(37)])
    seen = ItemSets.from_lists([rng.choice(120, size=rng.integers(0, 10), replace=False) for _ in range(37)])
    one_chunk = ranking_metrics(truth, user_vectors=users, item_vectors=items, seen=seen, chunk_size=1000)
    chunked = ranking_metrics(truth, user_vectors=users, item_vectors=items, seen=seen, chunk_size=5)
    from_scores = ranking_metrics(truth, scores=torch.from_numpy(users @ items.T), seen=seen, chunk_size=3)
    assert one_chunk.keys() == chunked.keys() == from_scores.keys()
    for key in one_chunk:
        assert chunked[key] == pytest.approx(one_chunk[key], abs=1e-12), key
        assert from_scores[key] == pytest.approx(one_chunk[key], abs=1e-6), key
    assert {"recall@10", "ndcg@20", "coverage@50"} <= one_chunk.keys()


def test_popularity_scores_rank_every_user_alike() -> None:
    counts = np.array([5, 0, 9, 2, 7, 1])
    popularity = popularity_scores(counts)
    shared = ranking_metrics(TRUTH, scores=popularity, seen=SEEN, ks=[2, 3])
    tiled = ranking_metrics(TRUTH, scores=np.tile(popularity, (3, 1)), seen=SEEN, ks=[2, 3])
    assert shared == tiled
    # Popularity order 2, 4, 0, 3, 5, 1: user 0 hits 2 at rank 1, user 1 hits 4 at rank 2.
    assert shared["mrr@2"] == pytest.approx((1 + 0.5) / 2)
    with pytest.raises(ValueError, match="non-negative"):
        popularity_scores(np.array([1, -2]))


def test_item_sets_from_pairs_matches_from_lists() -> None:
    sets = ItemSets.from_pairs(np.array([2, 0, 2, 0, 2]), np.array([4, 1, 3, 1, 4]), n_users=4)
    assert sets.indptr.tolist() == [0, 1, 1, 3, 3]
    assert sets.indices.tolist() == [1, 3, 4]


def test_inconsistent_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="truth has 3 users, the scores have 2"):
        ranking_metrics(TRUTH, scores=SCORES[:2])
    with pytest.raises(ValueError, match="catalog has 6 items"):
        ranking_metrics(ItemSets.from_lists([[9], [], []]), scores=SCORES)
    with pytest.raises(ValueError, match="either scores"):
        ranking_metrics(TRUTH)
    with pytest.raises(ValueError, match="indptr ends at 3"):
        ItemSets(np.array([0, 3]), np.array([1]))
