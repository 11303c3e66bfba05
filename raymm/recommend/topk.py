"""The one seen-masked top-k scorer: dot products of users against items, best k per user.

Evaluation (millions of users against a catalog), training's validation, the retrieve stage of
retrieve-then-rank and the exact item index all call :func:`top_k`. It walks users in chunks and,
inside each, items in chunks, merging a running top k, so memory is
O(user_chunk x (item_chunk + k)) whatever the catalog and user counts: the (U, N) score matrix is
never built. Every scorer that is a dot product (two-tower, content, popularity, a blend of them
with augmented vectors) goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from raymm.recommend.itemsets import ItemSets

USER_CHUNK = 1024
ITEM_CHUNK = 16384


@dataclass
class TopK:
    """Best-first results for U users: ``rows`` (U, k) int64 catalog rows and ``scores`` (U, k)
    float32. Slots past a user's available items (all seen, or k > candidates) hold row -1 and
    score -inf."""

    rows: Tensor
    scores: Tensor

    @property
    def valid(self) -> Tensor:
        """(U, k) bool: slots holding a real item."""
        return self.rows >= 0


def _as_float(value: Tensor | np.ndarray) -> Tensor:
    tensor = value if isinstance(value, Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return tensor.float()


@torch.no_grad()
def top_k(
    user_vectors: Tensor | np.ndarray,
    item_vectors: Tensor | np.ndarray,
    k: int,
    *,
    exclude: ItemSets | None = None,
    candidates: np.ndarray | None = None,
    user_chunk: int = USER_CHUNK,
    item_chunk: int = ITEM_CHUNK,
) -> TopK:
    """The k items with the highest ``user . item`` score per user, excluding each user's ``exclude`` set.

    ``user_vectors`` (U, E); ``item_vectors`` (N, E) for the whole catalog; ``exclude`` rows of
    the catalog per user (U sets), e.g. what the user has seen; ``candidates`` (C,) catalog rows
    that may be recommended (None: all N). Returned rows are catalog rows. Raises
    :class:`ValueError` for mismatched widths or user counts, k < 1 or non-positive chunks.
    """
    users, items = _as_float(user_vectors), _as_float(item_vectors)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(
            f"user_vectors (U, E) and item_vectors (N, E) must share E, got {tuple(users.shape)} "
            f"and {tuple(items.shape)}"
        )
    if k < 1 or user_chunk < 1 or item_chunk < 1:
        raise ValueError(
            f"k, user_chunk and item_chunk must be positive, got {k}, {user_chunk}, {item_chunk}"
        )
    n_users, n_catalog = users.shape[0], items.shape[0]
    if exclude is not None and exclude.n_users != n_users:
        raise ValueError(f"exclude holds {exclude.n_users} users, user_vectors {n_users}")
    if exclude is not None and exclude.indices.size and exclude.indices.max() >= n_catalog:
        raise ValueError(f"exclude holds item row {exclude.indices.max()}, the catalog has {n_catalog}")
    rows_of: Tensor | None = None
    if candidates is not None:
        candidates = np.asarray(candidates, dtype=np.int64)
        rows_of = torch.from_numpy(candidates)
        items = items[rows_of]
        if exclude is not None:
            exclude = exclude.restrict(candidates, n_catalog)
    n_items = items.shape[0]
    depth = min(k, n_items)
    out_rows = torch.full((n_users, k), -1, dtype=torch.long)
    out_scores = torch.full((n_users, k), float("-inf"))
    for start in range(0, n_users, user_chunk):
        chunk = np.arange(start, min(start + user_chunk, n_users))
        block_users = users[start : start + chunk.size]
        owners, seen = exclude.gather(chunk) if exclude is not None else (None, None)
        best_scores = torch.full((chunk.size, 0), float("-inf"))
        best_rows = torch.zeros((chunk.size, 0), dtype=torch.long)
        for item_start in range(0, n_items, item_chunk):
            item_stop = min(item_start + item_chunk, n_items)
            block = block_users @ items[item_start:item_stop].T
            if owners is not None and seen is not None:
                inside = (seen >= item_start) & (seen < item_stop)
                block[torch.from_numpy(owners[inside]), torch.from_numpy(seen[inside] - item_start)] = float(
                    "-inf"
                )
            # The block's own top k first, then a merge of 2k columns: concatenating the running
            # top k onto the whole block copied it (and a row-index matrix as wide) every time,
            # which cost more than the dot products and the top-k together.
            block_top = torch.topk(block, min(depth, block.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, block_top.values], dim=1)
            merged_rows = torch.cat([best_rows, block_top.indices + item_start], dim=1)
            top = torch.topk(merged_scores, min(depth, merged_scores.shape[1]), dim=1)
            best_scores, best_rows = top.values, torch.gather(merged_rows, 1, top.indices)
        real = best_scores > float("-inf")
        if rows_of is not None:
            best_rows = rows_of[best_rows]
        out_rows[start : start + chunk.size, :depth] = torch.where(real, best_rows, -1)
        out_scores[start : start + chunk.size, :depth] = best_scores
    return TopK(out_rows, out_scores)


def top_k_of_scores(
    scores: Tensor | np.ndarray,
    k: int,
    *,
    exclude: ItemSets | None = None,
    candidates: np.ndarray | None = None,
) -> TopK:
    """:func:`top_k` for a score matrix given outright: ``scores`` (U, N), one row per user.

    For scores another system computed (peers' full score matrices); same exclusion, candidates
    and output as :func:`top_k`. Raises :class:`ValueError` for a non-2-D matrix, k < 1 or an
    ``exclude`` of another user count.
    """
    matrix = _as_float(scores)
    if matrix.ndim != 2 or k < 1:
        raise ValueError(f"scores must be (U, N) and k positive, got {tuple(matrix.shape)} and k={k}")
    n_users, n_catalog = matrix.shape
    if exclude is not None and exclude.n_users != n_users:
        raise ValueError(f"exclude holds {exclude.n_users} users, scores {n_users}")
    matrix = matrix.clone()
    if exclude is not None:
        owners, seen = exclude.gather(np.arange(n_users))
        matrix[torch.from_numpy(owners), torch.from_numpy(seen)] = float("-inf")
    rows_of = torch.arange(n_catalog)
    if candidates is not None:
        rows_of = torch.from_numpy(np.asarray(candidates, dtype=np.int64))
        matrix = matrix[:, rows_of]
    depth = min(k, matrix.shape[1])
    top = torch.topk(matrix, depth, dim=1)
    out_rows = torch.full((n_users, k), -1, dtype=torch.long)
    out_scores = torch.full((n_users, k), float("-inf"))
    real = top.values > float("-inf")
    out_rows[:, :depth] = torch.where(real, rows_of[top.indices], -1)
    out_scores[:, :depth] = top.values
    return TopK(out_rows, out_scores)
