"""The item-item part: EASE in a dot-product form, exact at full rank, and content for new items."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymm.recommend import collab
from raymm.recommend.catalog import Catalog
from raymm.recommend.collab import CollaborativeScorer, PersonalScorer, map_content
from raymm.recommend.scorers import FitContext
from tests.recommend.fixed import FixedScorer


def _catalog(n: int) -> Catalog:
    return Catalog(
        np.array([f"i{k:02d}" for k in range(n)], dtype=object),
        {"text": torch.zeros(n, 1)},
        {"text": torch.ones(n, dtype=torch.bool)},
        torch.zeros(n, dtype=torch.long),
        [[] for _ in range(n)],
        [],
    )


def _context(matrix: np.ndarray, catalog: Catalog) -> FitContext:
    users, items = np.nonzero(matrix)
    return FitContext(
        catalog,
        pa.table(
            {
                "user_id": [f"u{u:03d}" for u in users],
                "item_id": [f"i{i:02d}" for i in items],
                "event": ["like"] * len(users),
                "ts": pa.array(np.arange(len(users)) * 1000, pa.timestamp("ms", tz="UTC")),
                "event_id": [f"e{k}" for k in range(len(users))],
            }
        ),
        ["like"],
    )


def _ease(matrix: np.ndarray, l2: float) -> np.ndarray:
    """Steck's closed form: B = I - P / diag(P), P = (X^T X + l2 I)^-1."""
    gram = matrix.T @ matrix + l2 * np.eye(matrix.shape[1])
    inverse = np.linalg.inv(gram)
    return np.eye(matrix.shape[1]) - inverse / np.diag(inverse)


@pytest.fixture
def interactions() -> tuple[np.ndarray, Catalog]:
    rng = np.random.default_rng(3)
    matrix = (rng.random((60, 14)) < 0.3).astype(float)
    matrix[:, 13] = 0.0  # item 13 was never interacted with
    return matrix, _catalog(14)


def test_full_rank_scores_unseen_items_exactly_as_dense_ease(
    interactions: tuple[np.ndarray, Catalog],
) -> None:
    matrix, catalog = interactions
    scorer = CollaborativeScorer(l2=0.5, rank=64).fit(_context(matrix, catalog))
    l2 = 0.5 * matrix.sum(axis=0).mean()  # relative to the Gram matrix's mean diagonal
    dense = matrix @ _ease(matrix, l2)
    history = np.full((len(matrix), 14), -1)
    for user, row in enumerate(matrix):
        items = np.flatnonzero(row)
        history[user, -len(items) :] = items if len(items) else history[user, -len(items) :]
    factored = (scorer.user_vectors(history) @ scorer.item_vectors().T).numpy()
    unseen = matrix == 0
    unseen[:, 13] = False  # no interactions: EASE's row is 0/0, ours is 0 until content fills it
    np.testing.assert_allclose(factored[unseen], dense[unseen], atol=2e-4)
    # A larger l2 shrinks every weight: the same decomposition, no refit.
    before = scorer.item_vectors().abs().sum()
    assert scorer.set_l2(4.0).item_vectors().abs().sum() < before


def test_the_sparse_truncated_path_agrees_with_the_dense_one_at_full_rank(
    interactions: tuple[np.ndarray, Catalog], monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix, catalog = interactions
    context = _context(matrix, catalog)
    dense = CollaborativeScorer(l2=1.0, rank=64).fit(context)
    monkeypatch.setattr(collab, "DENSE_MAX_ITEMS", 4)
    truncated = CollaborativeScorer(l2=1.0, rank=64).fit(context)
    history = np.array([[0, 3, 5], [-1, 2, 7]])
    np.testing.assert_allclose(
        (truncated.user_vectors(history) @ truncated.item_vectors().T).numpy(),
        (dense.user_vectors(history) @ dense.item_vectors().T).numpy(),
        atol=1e-3,
    )
    assert CollaborativeScorer(l2=1.0, rank=3).fit(context).width == 3


def test_items_without_interactions_get_their_vectors_from_content(
    interactions: tuple[np.ndarray, Catalog],
) -> None:
    matrix, catalog = interactions
    scorer = CollaborativeScorer(l2=1.0).fit(_context(matrix, catalog))
    assert float(scorer.item_vectors()[13].abs().sum()) == 0.0
    content = torch.from_numpy(np.random.default_rng(0).normal(size=(14, 5)).astype(np.float32))
    content[13] = content[4]  # the new item looks exactly like item 4
    scorer.fill_from_content(content)
    assert scorer.map is not None
    query, items = map_content(content[4:5], scorer.map)
    torch.testing.assert_close(scorer.item_vectors()[13], items[0])
    torch.testing.assert_close(scorer.query_vectors()[13], query[0])
    assert float(scorer.item_vectors()[13].abs().sum()) > 0
    # Rows with interactions keep their own vectors; a new l2 keeps the content rows filled.
    assert float(scorer.set_l2(2.0).item_vectors()[13].abs().sum()) > 0
    with pytest.raises(ValueError, match="one row per catalog item"):
        scorer.fill_from_content(content[:3])


def test_bad_settings_and_missing_vectors_are_refused() -> None:
    with pytest.raises(ValueError, match="l2 must be positive"):
        CollaborativeScorer(l2=0.0)
    with pytest.raises(ValueError, match="rank must be positive"):
        CollaborativeScorer(rank=0)
    with pytest.raises(ValueError, match="both query_vectors and item_vectors"):
        CollaborativeScorer(query_vectors=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="differ in shape"):
        CollaborativeScorer(query_vectors=torch.zeros(2, 2), item_vectors=torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="call fit"):
        CollaborativeScorer().set_l2(1.0)


def test_the_personal_score_adds_the_weighted_item_item_score() -> None:
    saved = CollaborativeScorer(
        query_vectors=torch.eye(3),
        item_vectors=torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0]]),
    )
    two_tower = FixedScorer([0.3, 0.2, 0.1])
    history = np.array([[-1, 2]])  # item 2's query vector points at item 1
    assert PersonalScorer(two_tower, saved, 0.0).recommend(history, 3).rows.tolist() == [[0, 1, 2]]
    assert PersonalScorer(two_tower, saved, 1.0).recommend(history, 3).rows.tolist()[0][0] == 1
    with pytest.raises(ValueError, match="collab weight"):
        PersonalScorer(two_tower, saved, -1.0)


def test_a_decomposition_is_reused_for_the_same_interactions_only(
    interactions: tuple[np.ndarray, Catalog],
) -> None:
    matrix, catalog = interactions
    first = CollaborativeScorer(l2=1.0).fit(_context(matrix, catalog))
    again = CollaborativeScorer(l2=4.0).fit(_context(matrix, catalog))
    assert again.factors is first.factors  # same pairs, same rank and seed: not decomposed again
    before = first.item_vectors().clone()
    again.fill_from_content(torch.randn(matrix.shape[1], 3))
    first.set_l2(1.0)
    torch.testing.assert_close(first.item_vectors()[:13], before[:13])  # shared factors unchanged
    other = matrix.copy()
    other[0, 13] = 1.0
    changed = CollaborativeScorer(l2=1.0).fit(_context(other, catalog))
    assert changed.factors is not first.factors
    assert CollaborativeScorer(l2=1.0, rank=5).fit(_context(matrix, catalog)).factors is not first.factors


def test_a_decayed_query_weighs_each_item_by_how_many_came_after_it() -> None:
    """decay ** a for the item a positions before the newest, wherever the padding is; 1 is
    EASE's binary history. The item vectors do not change, and the part it was copied from
    keeps its own decay."""
    query = torch.eye(4)
    saved = CollaborativeScorer(query_vectors=query, item_vectors=torch.ones(4, 4))
    left = np.array([[-1, -1, 0, 1, 2], [-1, -1, -1, -1, -1]])
    right = np.array([[0, 1, 2, -1, -1], [-1, -1, -1, -1, -1]])
    decayed = saved.with_decay(0.5)
    wanted = torch.tensor([[0.25, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(decayed.user_vectors(left), wanted)
    torch.testing.assert_close(decayed.user_vectors(right), wanted)
    torch.testing.assert_close(saved.user_vectors(left), torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0] * 4]))
    assert saved.decay == 1.0 and decayed.item_vectors() is saved.item_vectors()
    # A repeated item counts at each of its places.
    torch.testing.assert_close(decayed.user_vectors(np.array([[3, 0, 3]])), torch.tensor([[0.5, 0, 0, 1.25]]))


def test_a_decay_outside_zero_to_one_is_refused() -> None:
    for decay in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="decay must be in"):
            CollaborativeScorer(decay=decay)
        with pytest.raises(ValueError, match="decay must be in"):
            CollaborativeScorer(query_vectors=torch.eye(2), item_vectors=torch.eye(2)).with_decay(decay)
