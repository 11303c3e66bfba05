"""The one seen-masked top-k scorer against a brute-force NumPy ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymm.recommend.itemsets import ItemSets
from raymm.recommend.topk import top_k


def _brute_force(
    users: np.ndarray, items: np.ndarray, k: int, seen: list[list[int]], allowed: np.ndarray | None
) -> list[list[int]]:
    scores = users @ items.T
    result = []
    for u, row in enumerate(scores):
        order = [
            int(i)
            for i in np.argsort(-row, kind="stable")
            if i not in seen[u] and (allowed is None or i in allowed)
        ]
        result.append(order[:k])
    return result


@pytest.mark.parametrize(("user_chunk", "item_chunk"), [(1024, 16384), (3, 7), (1, 1)])
def test_top_k_equals_brute_force_whatever_the_chunks(user_chunk: int, item_chunk: int) -> None:
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(11, 5)).astype(np.float32), rng.normal(size=(40, 5)).astype(np.float32)
    seen = [sorted(rng.choice(40, size=rng.integers(0, 10), replace=False).tolist()) for _ in range(11)]
    top = top_k(
        users, items, 8, exclude=ItemSets.from_lists(seen), user_chunk=user_chunk, item_chunk=item_chunk
    )
    assert top.rows.tolist() == _brute_force(users, items, 8, seen, None)
    expected_scores = np.take_along_axis(users @ items.T, top.rows.numpy(), axis=1)
    assert np.allclose(top.scores.numpy(), expected_scores, atol=1e-5)


def test_candidates_restrict_what_is_returned_and_rows_stay_catalog_rows() -> None:
    rng = np.random.default_rng(1)
    users, items = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(30, 3)).astype(np.float32)
    allowed = np.array([2, 5, 11, 17, 23, 29])
    seen = [[5], [], [2, 11], [29]]
    top = top_k(users, items, 3, exclude=ItemSets.from_lists(seen), candidates=allowed, item_chunk=4)
    assert top.rows.tolist() == _brute_force(users, items, 3, seen, allowed)


def test_fewer_available_items_than_k_pad_with_minus_one() -> None:
    users, items = torch.ones(2, 1), torch.arange(4, dtype=torch.float32).unsqueeze(1)
    top = top_k(users, items, 6, exclude=ItemSets.from_lists([[3, 2, 1, 0], [0]]))
    assert top.rows.tolist() == [[-1] * 6, [3, 2, 1, -1, -1, -1]]
    assert torch.isinf(top.scores[0]).all() and not top.valid[0].any()


def test_bad_shapes_are_refused_with_the_shapes_named() -> None:
    with pytest.raises(ValueError, match=r"must share E, got \(2, 3\) and \(5, 4\)"):
        top_k(torch.zeros(2, 3), torch.zeros(5, 4), 1)
    with pytest.raises(ValueError, match="exclude holds 1 users, user_vectors 2"):
        top_k(torch.zeros(2, 3), torch.zeros(5, 3), 1, exclude=ItemSets.from_lists([[1]]))
    with pytest.raises(ValueError, match="must be positive"):
        top_k(torch.zeros(2, 3), torch.zeros(5, 3), 0)
