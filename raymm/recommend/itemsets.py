"""Per-user item sets in CSR form: what a user has seen, or their held-out truth.

Plain NumPy. The top-k scorer excludes a user's seen set; evaluation compares a top-k list with
the truth set. One type serves both, for one user (serving) or a million (evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

ArrayLike = np.ndarray | Tensor


@dataclass(frozen=True)
class ItemSets:
    """One set of item rows per user in CSR form: user u's items are
    ``indices[indptr[u]:indptr[u + 1]]``. ``indptr`` (U + 1,) int64 non-decreasing from 0;
    ``indices`` (nnz,) int64 item rows in [0, N)."""

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
    def empty(cls, n_users: int) -> ItemSets:
        """``n_users`` empty sets."""
        return cls(np.zeros(n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int] | np.ndarray]) -> ItemSets:
        """From one list of item rows per user (duplicates are kept; avoid them)."""
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

    def take(self, users: np.ndarray) -> ItemSets:
        """The sets of ``users`` (row indices), in that order."""
        positions, items = self.gather(np.asarray(users, dtype=np.int64))
        return ItemSets.from_pairs(positions, items, len(users))

    def gather(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in ``users``, item) arrays of the items of the given users (vectorised CSR gather)."""
        starts, stops = self.indptr[users], self.indptr[users + 1]
        sizes = stops - starts
        positions = np.repeat(np.arange(users.size, dtype=np.int64), sizes)
        offsets = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return positions, self.indices[np.repeat(starts, sizes) + offsets]

    def restrict(self, candidates: np.ndarray, n_items: int) -> ItemSets:
        """The sets re-indexed onto ``candidates`` (catalog rows), dropping items outside them."""
        position = np.full(n_items, -1, dtype=np.int64)
        position[candidates] = np.arange(len(candidates))
        users = np.repeat(np.arange(self.n_users), self.sizes)
        mapped = position[self.indices]
        keep = mapped >= 0
        return ItemSets.from_pairs(users[keep], mapped[keep], self.n_users)
