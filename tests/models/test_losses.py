"""Recommendation losses against hand-written formulas: logQ, collisions, mixed negatives, BPR."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raymm.models.losses import bpr_loss, log_sampling_probs, mixture_log_q, sampled_softmax_loss


def _vectors(n: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_sampled_softmax_is_cross_entropy_over_in_batch_candidates() -> None:
    users, items = _vectors(3, 0), _vectors(3, 1)
    loss = sampled_softmax_loss(users, items, temperature=0.5)
    logits = users @ items.T / 0.5
    expected = -torch.stack([logits[i].log_softmax(0)[i] for i in range(3)]).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_logq_correction_subtracts_log_sampling_probability_from_every_logit() -> None:
    users, items = _vectors(3, 0), _vectors(3, 1)
    log_q = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    loss = sampled_softmax_loss(users, items, temperature=1.0, log_q=log_q)
    logits = users @ items.T - log_q
    expected = -torch.stack([logits[i].log_softmax(0)[i] for i in range(3)]).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_same_item_twice_in_a_batch_is_not_a_negative() -> None:
    users, items = _vectors(3, 0), _vectors(3, 1)
    items[2] = items[0]  # users 0 and 2 bought the same item
    ids = torch.tensor([7, 8, 7])
    masked = sampled_softmax_loss(users, items, temperature=1.0, item_ids=ids)
    logits = users @ items.T
    row0 = torch.stack([logits[0, 0], logits[0, 1]]).log_softmax(0)[0]  # column 2 removed
    row1 = logits[1].log_softmax(0)[1]
    row2 = torch.stack([logits[2, 1], logits[2, 2]]).log_softmax(0)[1]  # column 0 removed
    assert float(masked) == pytest.approx(float(-(row0 + row1 + row2) / 3), rel=1e-6)


def test_mixed_negatives_join_the_candidates_and_collisions_are_masked() -> None:
    users, items, negatives = _vectors(2, 0), _vectors(2, 1), _vectors(3, 2)
    ids, negative_ids = torch.tensor([0, 1]), torch.tensor([1, 5, 6])
    log_q, negative_log_q = torch.tensor([-1.0, -2.0]), torch.full((3,), -3.0)
    loss = sampled_softmax_loss(
        users,
        items,
        temperature=1.0,
        item_ids=ids,
        log_q=log_q,
        negative_vectors=negatives,
        negative_ids=negative_ids,
        negative_log_q=negative_log_q,
    )
    logits = users @ torch.cat([items, negatives]).T - torch.cat([log_q, negative_log_q])
    row0 = logits[0].log_softmax(0)[0]
    row1 = logits[1, [0, 1, 3, 4]].log_softmax(0)[1]  # negative 0 is user 1's own positive
    assert float(loss) == pytest.approx(float(-(row0 + row1) / 2), rel=1e-6)
    with pytest.raises(ValueError, match="negative_log_q"):
        sampled_softmax_loss(users, items, temperature=1.0, log_q=log_q, negative_vectors=negatives)


def test_bpr_averages_pairwise_log_sigmoid_without_collisions() -> None:
    users, items = _vectors(3, 0), _vectors(3, 1)
    items[2] = items[0]
    ids = torch.tensor([4, 5, 4])
    loss = bpr_loss(users, items, temperature=0.5, item_ids=ids)
    scores = users @ items.T / 0.5
    pairs = [(0, 1), (1, 0), (1, 2), (2, 1)]  # (0, 2) and (2, 0) are the same item
    expected = sum(-F.logsigmoid(scores[u, u] - scores[u, j]) for u, j in pairs) / len(pairs)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_bpr_prefers_ranking_positives_first() -> None:
    users = _vectors(4, 0)
    good = bpr_loss(users, users.clone())  # every positive is the user itself: the best ranking
    bad = bpr_loss(users, -users)
    assert float(good) < float(bad)


def test_sampling_probabilities() -> None:
    log_p = log_sampling_probs(torch.tensor([3.0, 1.0, 0.0]))
    assert torch.allclose(log_p[:2].exp(), torch.tensor([0.75, 0.25]))
    assert math.isfinite(float(log_p[2]))
    probs = torch.tensor([0.7, 0.2, 0.1, 0.0])
    mixed = mixture_log_q(probs, batch_size=6, n_uniform=2).exp()
    assert float(mixed.sum()) == pytest.approx(1.0)
    assert float(mixed[3]) == pytest.approx((2 / 4) / 8)
    with pytest.raises(ValueError, match="non-negative"):
        log_sampling_probs(torch.tensor([1.0, -1.0]))
