"""Full-ranking top-K metrics, computed in user chunks with ``torch.topk``.

Every user is ranked against the whole catalog; the items a user has already seen (training
interactions) are excluded from their ranking. With ``hits@K`` the relevant items among a user's
top K and ``truth`` their held-out relevant items (binary relevance):

* ``recall@K = |hits@K| / |truth|``. The denominator is ``|truth|``, *not* ``min(K, |truth|)``:
  a user with more relevant items than K cannot reach recall 1.
* ``precision@K = |hits@K| / K``; ``f1@K``: per-user harmonic mean of the two (0 if both are 0).
* ``hit_rate@K``: 1 if ``|hits@K| > 0``.
* ``mrr@K``: 1 / rank of the first relevant item within the top K (ranks from 1), else 0.
* ``ndcg@K = DCG / IDCG`` with ``DCG = sum_{r < K} rel_r / log2(r + 2)`` (r from 0) and the
  ideal DCG over ``min(|truth|, K)`` relevant items at the top.
* ``coverage@K``: the fraction of catalog items that appear in at least one evaluated user's
  top K (a property of the whole run, not a per-user mean).

Per-user values are averaged over the users with a non-empty truth set; users without one are
skipped. Relevant items that are also in a user's seen set cannot be retrieved (they are
excluded) but still count in ``|truth|``; keep the two disjoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)

ArrayLike = np.ndarray | Tensor


@dataclass(frozen=True)
class ItemSets:
    """One set of item indices per user in CSR form: user u's items are
    ``indices[indptr[u]:indptr[u + 1]]``. ``indptr`` (U + 1,) int64 non-decreasing from 0;
    ``indices`` (nnz,) int64 item indices in [0, N)."""

    indptr: np.ndarray
    indices: np.ndarray

    def __post_init__(self) -> None:
        indptr = np.asarray(self.indptr, dtype=np.int64)
        indices = np.asarray(self.indices, dtype=np.int64)
        if indptr.ndim != 1 or indptr.size == 0 or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise ValueError("indptr must be a non-empty, non-decreasing 1-D array starting at 0")
        if indices.ndim != 1 or indptr[-1] != indices.size:
            raise ValueError(f"indptr ends at {indptr[-1]} but there are {indices.size} indices")
        if indices.size and indices.min() < 0:
            raise ValueError(f"item indices must be non-negative, got {indices.min()}")
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)

    @property
    def n_users(self) -> int:
        """Number of users (rows)."""
        return int(self.indptr.size - 1)

    @property
    def sizes(self) -> np.ndarray:
        """(U,) number of items per user."""
        return np.diff(self.indptr)

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int] | np.ndarray]) -> ItemSets:
        """From one list of item indices per user (duplicates are kept; avoid them)."""
        sizes = np.fromiter((len(items) for items in lists), dtype=np.int64, count=len(lists))
        indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        indices = np.fromiter((i for items in lists for i in items), dtype=np.int64, count=int(indptr[-1]))
        return cls(indptr, indices)

    @classmethod
    def from_pairs(cls, users: ArrayLike, items: ArrayLike, n_users: int) -> ItemSets:
        """From parallel (user, item) index arrays, e.g. an interactions table; duplicates dropped."""
        user_array = np.asarray(users, dtype=np.int64)
        item_array = np.asarray(items, dtype=np.int64)
        if user_array.shape != item_array.shape:
            raise ValueError(f"users {user_array.shape} and items {item_array.shape} must have one shape")
        if user_array.size and (user_array.min() < 0 or user_array.max() >= n_users):
            raise ValueError(
                f"user indices must lie in [0, {n_users}), got [{user_array.min()}, {user_array.max()}]"
            )
        pairs = (
            np.unique(np.stack([user_array, item_array], axis=1), axis=0)
            if user_array.size
            else np.zeros((0, 2))
        )
        counts = np.bincount(pairs[:, 0].astype(np.int64), minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, pairs[:, 1].astype(np.int64))


def popularity_scores(train_item_counts: ArrayLike) -> np.ndarray:
    """The most-popular baseline: one score per item, its training interaction count.

    Returns (N,) float32; pass it as ``scores`` to :func:`ranking_metrics` (a 1-D score vector
    ranks every user the same way). Raises :class:`ValueError` for a non-1-D input or a
    negative count.
    """
    counts = np.asarray(train_item_counts, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError(f"train_item_counts must be 1-D (N,), got shape {counts.shape}")
    if counts.size and counts.min() < 0:
        raise ValueError(f"train_item_counts must be non-negative, got {counts.min()}")
    return counts.astype(np.float32)


def _as_tensor(value: ArrayLike, device: torch.device) -> Tensor:
    tensor = value if isinstance(value, Tensor) else torch.from_numpy(np.asarray(value))
    return tensor.to(device=device, dtype=torch.float32)


def ranking_metrics(
    truth: ItemSets,
    *,
    scores: ArrayLike | None = None,
    user_vectors: ArrayLike | None = None,
    item_vectors: ArrayLike | None = None,
    seen: ItemSets | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Full-ranking metrics at every K of ``ks``; see the module docstring for definitions.

    Scores come either as ``scores`` (U, N), or (N,) for one ranking shared by all users
    (popularity), or as ``user_vectors`` (U, E) and ``item_vectors`` (N, E) scored by dot
    product chunk by chunk (the (U, N) matrix is never built). Row u of the scores belongs to
    row u of ``truth`` and of ``seen`` (items to exclude). Memory is O(chunk_size x N).
    Returns ``{"recall@10": ..., "ndcg@10": ..., "hit_rate@10", "mrr@10", "precision@10",
    "f1@10", "coverage@10", ...}`` as floats. Raises :class:`ValueError` for inconsistent
    shapes, an item index outside the catalog, non-positive K or chunk size, or both/neither
    score forms.
    """
    torch_device = torch.device(device)
    if (scores is None) == (user_vectors is None or item_vectors is None):
        raise ValueError("pass either scores, or both user_vectors and item_vectors")
    if not ks or min(ks) <= 0:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if scores is not None:
        score_matrix = _as_tensor(scores, torch_device)
        if score_matrix.ndim not in (1, 2):
            raise ValueError(f"scores must be (U, N) or (N,), got shape {tuple(score_matrix.shape)}")
        n_items = score_matrix.shape[-1]
        n_rows = score_matrix.shape[0] if score_matrix.ndim == 2 else truth.n_users
        users, items = None, None
    else:
        assert user_vectors is not None and item_vectors is not None
        users, items = _as_tensor(user_vectors, torch_device), _as_tensor(item_vectors, torch_device)
        if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
            raise ValueError(
                f"user_vectors (U, E) and item_vectors (N, E) must share E, got {tuple(users.shape)} "
                f"and {tuple(items.shape)}"
            )
        n_items, n_rows = items.shape[0], users.shape[0]
    for name, sets in (("truth", truth), ("seen", seen)):
        if sets is None:
            continue
        if sets.n_users != n_rows:
            raise ValueError(f"{name} has {sets.n_users} users, the scores have {n_rows}")
        if sets.indices.size and sets.indices.max() >= n_items:
            raise ValueError(f"{name} holds item {sets.indices.max()}, the catalog has {n_items} items")

    ks = sorted({int(k) for k in ks})
    top_k = min(max(ks), n_items)
    evaluated = np.flatnonzero(truth.sizes > 0)
    # Per-user sums of each metric, and the items reached in any top K.
    totals = {
        f"{name}@{k}": 0.0 for k in ks for name in ("recall", "ndcg", "hit_rate", "mrr", "precision", "f1")
    }
    reached = {k: torch.zeros(n_items, dtype=torch.bool, device=torch_device) for k in ks}
    discounts = 1.0 / torch.log2(torch.arange(top_k, device=torch_device, dtype=torch.float64) + 2.0)
    ideal = torch.cat([torch.zeros(1, device=torch_device, dtype=torch.float64), discounts.cumsum(0)])

    for start in range(0, evaluated.size, chunk_size):
        chunk = evaluated[start : start + chunk_size]
        rows_t = torch.from_numpy(chunk).to(torch_device)
        if users is not None and items is not None:
            block = users[rows_t] @ items.T
        elif score_matrix.ndim == 1:
            block = score_matrix.unsqueeze(0).expand(chunk.size, -1).clone()
        else:
            block = score_matrix[rows_t].clone()
        if seen is not None:
            seen_rows, seen_items = _gather(seen, chunk)
            block[
                torch.from_numpy(seen_rows).to(torch_device), torch.from_numpy(seen_items).to(torch_device)
            ] = float("-inf")
        top = torch.topk(block, top_k, dim=1)
        ranked = top.indices  # (C, top_k)
        # When K exceeds a user's unseen items, topk pads with excluded (-inf) items: never count them.
        ranks_real = top.values > float("-inf")
        truth_rows, truth_items = _gather(truth, chunk)
        truth_keys = torch.from_numpy(truth_rows * n_items + truth_items).to(torch_device)
        ranked_keys = torch.arange(chunk.size, device=torch_device).unsqueeze(1) * n_items + ranked
        hits = (torch.isin(ranked_keys, truth_keys) & ranks_real).to(torch.float64)  # (C, top_k)
        n_truth = torch.from_numpy(truth.sizes[chunk]).to(torch_device, torch.float64)
        first_hit = torch.where(hits.any(dim=1), hits.argmax(dim=1), top_k)
        for k in ks:
            depth = min(k, top_k)
            n_hits = hits[:, :depth].sum(dim=1)
            recall = n_hits / n_truth
            precision = n_hits / k
            f1 = torch.where(n_hits > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300), 0.0)
            dcg = (hits[:, :depth] * discounts[:depth]).sum(dim=1)
            idcg = ideal[torch.clamp(n_truth.long(), max=depth)]
            reciprocal = torch.where(first_hit < depth, 1.0 / (first_hit.to(torch.float64) + 1.0), 0.0)
            for name, values in (
                ("recall", recall),
                ("ndcg", dcg / idcg),
                ("hit_rate", (n_hits > 0).to(torch.float64)),
                ("mrr", reciprocal),
                ("precision", precision),
                ("f1", f1),
            ):
                totals[f"{name}@{k}"] += float(values.sum())
            reached[k][ranked[:, :depth][ranks_real[:, :depth]]] = True

    n_evaluated = max(evaluated.size, 1)
    result = {key: value / n_evaluated for key, value in totals.items()}
    for k in ks:
        result[f"coverage@{k}"] = float(reached[k].sum()) / max(n_items, 1)
    return result


def _gather(sets: ItemSets, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``users``, item) arrays of the items of the given users (vectorised CSR gather)."""
    starts, stops = sets.indptr[users], sets.indptr[users + 1]
    sizes = stops - starts
    positions = np.repeat(np.arange(users.size, dtype=np.int64), sizes)
    offsets = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return positions, sets.indices[np.repeat(starts, sizes) + offsets]
