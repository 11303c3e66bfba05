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
excluded) but would still count in ``|truth|``: keep the two disjoint, as
:func:`raymm.recommend.history.eval_users` does by dropping repeats from the truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from raymm.recommend.itemsets import ItemSets
from raymm.recommend.topk import top_k

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)

ArrayLike = np.ndarray | Tensor


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


class RankingMetrics:
    """Accumulates the metrics of ranked lists user chunk by user chunk (bounded memory at any scale).

    ``n_items`` is the number of items that could be recommended (for coverage). Call
    :meth:`add` with each chunk's truth sets and ranked rows, then :meth:`result`.
    """

    def __init__(self, ks: Sequence[int], n_items: int, keep_per_user: bool = False) -> None:
        if not ks or min(ks) <= 0:
            raise ValueError(f"ks must be positive integers, got {list(ks)}")
        self.ks = sorted({int(k) for k in ks})
        self.n_items = n_items
        self.totals = {f"{name}@{k}": 0.0 for k in self.ks for name in _PER_USER}
        self.reached = {k: torch.zeros(n_items, dtype=torch.bool) for k in self.ks}
        self.n_users = 0
        #: With ``keep_per_user``, every added user's values (paired tests need them).
        self.kept: dict[str, list[np.ndarray]] | None = (
            {key: [] for key in self.totals} if keep_per_user else None
        )

    def add(self, truth: ItemSets, ranked: Tensor) -> None:
        """Add users whose held-out items are ``truth`` (U sets) and whose ranked rows are ``ranked``
        (U, K) long, best first, -1 for empty slots. Users with an empty truth set are skipped."""
        if ranked.ndim != 2 or ranked.shape[0] != truth.n_users:
            raise ValueError(f"ranked must be ({truth.n_users}, K), got {tuple(ranked.shape)}")
        if truth.indices.size and truth.indices.max() >= self.n_items:
            raise ValueError(f"truth holds item {truth.indices.max()}, the catalog has {self.n_items} items")
        evaluated = np.flatnonzero(truth.sizes > 0)
        if evaluated.size == 0:
            return
        ranked = ranked[torch.from_numpy(evaluated)]
        depth_all = ranked.shape[1]
        real = ranked >= 0
        truth_rows, truth_items = truth.gather(evaluated)
        truth_keys = torch.from_numpy(truth_rows * self.n_items + truth_items)
        ranked_keys = torch.arange(evaluated.size).unsqueeze(1) * self.n_items + ranked.clamp(min=0)
        hits = (torch.isin(ranked_keys, truth_keys) & real).to(torch.float64)
        n_truth = torch.from_numpy(truth.sizes[evaluated]).to(torch.float64)
        first_hit = torch.where(hits.any(dim=1), hits.argmax(dim=1), depth_all)
        discounts = 1.0 / torch.log2(torch.arange(depth_all, dtype=torch.float64) + 2.0)
        ideal = torch.cat([torch.zeros(1, dtype=torch.float64), discounts.cumsum(0)])
        for k in self.ks:
            depth = min(k, depth_all)
            n_hits = hits[:, :depth].sum(dim=1)
            recall = n_hits / n_truth
            precision = n_hits / k
            f1 = torch.where(n_hits > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300), 0.0)
            dcg = (hits[:, :depth] * discounts[:depth]).sum(dim=1)
            idcg = ideal[torch.clamp(n_truth.long(), max=depth)]
            reciprocal = torch.where(first_hit < depth, 1.0 / (first_hit.to(torch.float64) + 1.0), 0.0)
            values = {
                "recall": recall,
                "ndcg": dcg / idcg,
                "hit_rate": (n_hits > 0).to(torch.float64),
                "mrr": reciprocal,
                "precision": precision,
                "f1": f1,
            }
            for name in _PER_USER:
                self.totals[f"{name}@{k}"] += float(values[name].sum())
                if self.kept is not None:
                    self.kept[f"{name}@{k}"].append(values[name].numpy())
            self.reached[k][ranked[:, :depth][real[:, :depth]]] = True
        self.n_users += int(evaluated.size)

    def per_user(self) -> dict[str, np.ndarray]:
        """Each metric's (users added,) values in the order added; needs ``keep_per_user``."""
        if self.kept is None:
            raise RuntimeError("RankingMetrics was built without keep_per_user")
        return {key: np.concatenate(parts) if parts else np.zeros(0) for key, parts in self.kept.items()}

    def result(self) -> dict[str, float]:
        """Per-user means over the users added, plus coverage at each K."""
        result = {key: value / max(self.n_users, 1) for key, value in self.totals.items()}
        for k in self.ks:
            result[f"coverage@{k}"] = float(self.reached[k].sum()) / max(self.n_items, 1)
        return result


_PER_USER = ("recall", "ndcg", "hit_rate", "mrr", "precision", "f1")


def ranking_metrics(
    truth: ItemSets,
    *,
    scores: ArrayLike | None = None,
    user_vectors: ArrayLike | None = None,
    item_vectors: ArrayLike | None = None,
    seen: ItemSets | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Full-ranking metrics at every K of ``ks`` of dot-product scores; see the module docstring.

    Scores come as ``user_vectors`` (U, E) and ``item_vectors`` (N, E), or as ``scores``: (N,)
    for one ranking shared by all users (popularity), or a small (U, N) matrix (tests). Ranking
    is :func:`~raymm.recommend.topk.top_k` (seen items excluded, users in chunks of
    ``chunk_size``). Returns ``{"recall@10": ..., "ndcg@10", "hit_rate@10", "mrr@10",
    "precision@10", "f1@10", "coverage@10", ...}``. Raises :class:`ValueError` for inconsistent
    shapes, an item outside the catalog, non-positive K, or both/neither score forms.
    """
    if (scores is None) == (user_vectors is None or item_vectors is None):
        raise ValueError("pass either scores, or both user_vectors and item_vectors")
    if scores is not None:
        matrix = torch.as_tensor(np.asarray(scores) if not isinstance(scores, Tensor) else scores).float()
        if matrix.ndim == 1:  # one shared ranking: a dot product with a constant user
            users, items = torch.ones(truth.n_users, 1), matrix.unsqueeze(1)
        elif matrix.ndim == 2:
            users, items = matrix, torch.eye(matrix.shape[1])
        else:
            raise ValueError(f"scores must be (U, N) or (N,), got shape {tuple(matrix.shape)}")
    else:
        users, items = torch.as_tensor(user_vectors).float(), torch.as_tensor(item_vectors).float()
    if users.shape[0] != truth.n_users:
        raise ValueError(f"truth has {truth.n_users} users, the scores have {users.shape[0]}")
    accumulator = RankingMetrics(ks, int(items.shape[0]))
    top = top_k(
        users, items, min(max(accumulator.ks), int(items.shape[0])), exclude=seen, user_chunk=chunk_size
    )
    accumulator.add(truth, top.rows)
    return accumulator.result()
