"""Next-item training examples: for each positive event, the user's history before it and the item.

Plain NumPy (no Ray). The history is the recommendation core's window
(:func:`~raymm.recommend.history.history_before`), so a training example sees exactly the state
evaluation and serving build for that user at that moment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from raymm.models.losses import log_sampling_probs
from raymm.recommend.catalog import Catalog
from raymm.recommend.history import history_before, positive_events, user_codes


@dataclass
class Examples:
    """Next-item training examples: ``history`` (n, L) catalog rows, oldest first, -1 padded."""

    user: np.ndarray
    history: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.target)

    def to_table(self) -> pa.Table:
        """Flat columns ``h0..h{L-1}`` and ``target`` (what the Ray Dataset and the loop read)."""
        columns = {f"h{k}": self.history[:, k] for k in range(self.history.shape[1])}
        columns["target"] = self.target
        return pa.table(columns)


def build_examples(
    interactions: pa.Table, catalog: Catalog, events: Sequence[str], max_history: int
) -> Examples:
    """One example per positive event that has at least one earlier positive event of its user."""
    return examples_by_position(interactions, catalog.positions, events, max_history)


def examples_by_position(
    interactions: pa.Table,
    positions: Callable[[pa.ChunkedArray], np.ndarray],
    events: Sequence[str],
    max_history: int,
) -> Examples:
    """:func:`build_examples` with the catalog reduced to ``positions`` (item ids -> rows, -1 for
    ids not in it), for callers that have the item ids but not the features (bench/scale.py)."""
    positives = positive_events(interactions, events)
    rows = positions(positives.column("item_id"))
    users = user_codes(positives)
    # Items the catalog lacks hold their place in the window, as in the live state (the module
    # docstring of raymm.recommend.history), and are never targets.
    history = history_before(users, rows, np.ones(len(rows), dtype=bool), max_history)
    keep = (rows >= 0) & (history[:, -1] >= 0)
    return Examples(users[keep], history[keep], rows[keep])


def target_log_q(examples: Examples, n_items: int) -> np.ndarray:
    """(N,) log P(item is a batch target), for the logQ correction (:func:`log_sampling_probs`)."""
    counts = torch.from_numpy(np.bincount(examples.target, minlength=n_items).astype(np.float64))
    return log_sampling_probs(counts).numpy()
