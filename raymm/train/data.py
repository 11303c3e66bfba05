"""What training and evaluation read: the catalog as tensors, and (history -> next item) examples.

Plain NumPy/PyTorch (no Ray): the Ray Train loop, the evaluator and the benchmarks share it.

* :class:`Catalog` holds every item (warm and cold) in one fixed order: per-modality feature
  matrices with presence masks, item-id-embedding indices (0 for items never seen in training,
  so cold items run on content alone) and tag lists for knowledge-graph alignment.
* :func:`build_examples` turns time-ordered interactions into next-item examples: for every
  positive event of a user, the target item and the user's previous ``max_history`` positive
  items (oldest first, -1 padded), vectorised over all users at once.
* :func:`user_histories` / :func:`item_sets` give evaluation its inputs: each user's recent
  history, seen items and held-out truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raymm.data.schema import MODALITIES
from raymm.errors import DataError
from raymm.eval.metrics import ItemSets

#: Events that say the user wanted the item; ``skip`` (and anything else) is not a positive.
DEFAULT_POSITIVE_EVENTS: tuple[str, ...] = ("click", "like", "purchase", "play", "view")


@dataclass
class Catalog:
    """Every item as tensors, row ``i`` being ``item_ids[i]``.

    ``features`` modality -> (N, d) float32 (zeros where absent); ``present`` modality -> (N,)
    bool; ``id_index`` (N,) long in [0, n_warm], 0 for items outside training; ``tags`` per item a
    list of tag indices into ``tag_names``.
    """

    item_ids: np.ndarray
    features: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    id_index: torch.Tensor
    tags: list[list[int]]
    tag_names: list[str]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def dims(self) -> dict[str, int]:
        """Input width of each modality, in the order the model sees them."""
        return {m: int(v.shape[1]) for m, v in self.features.items()}

    def positions(self, item_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Row of each item id (-1 for ids not in the catalog), vectorised."""
        lookup = pa.array(self.item_ids, pa.string())
        return np.asarray(
            pc.fill_null(pc.index_in(item_ids, value_set=lookup), -1).to_numpy(zero_copy_only=False)
        )

    def subset(self, modalities: Sequence[str]) -> Catalog:
        """The same catalog seeing only ``modalities`` (for single-modality ablations)."""
        missing = [m for m in modalities if m not in self.features]
        if missing:
            raise DataError(f"catalog has no {missing} features; it has {list(self.features)}")
        return Catalog(
            self.item_ids,
            {m: self.features[m] for m in modalities},
            {m: self.present[m] for m in modalities},
            self.id_index,
            self.tags,
            self.tag_names,
        )


def build_catalog(
    features: pa.Table, items: pa.Table, train: pa.Table, modalities: Sequence[str] | None = None
) -> Catalog:
    """Assemble the catalog from a features table (features contract), the items and training events.

    Items without a features row get every modality absent. ``modalities`` defaults to every
    modality column the features hold. Raises :class:`DataError` if none is there.
    """
    features = features.sort_by("item_id")
    available = [m for m in MODALITIES if m in features.column_names]
    chosen = list(modalities) if modalities is not None else available
    if not chosen or any(m not in available for m in chosen):
        raise DataError(f"features hold modalities {available}; asked for {chosen}")
    item_ids = np.asarray(items.column("item_id").to_pylist(), dtype=object)
    order = np.argsort(item_ids.astype(str), kind="stable")
    item_ids = item_ids[order]
    rows = np.asarray(
        pc.fill_null(pc.index_in(pa.array(item_ids, pa.string()), value_set=features.column("item_id")), -1)
    )
    feature_tensors: dict[str, torch.Tensor] = {}
    present: dict[str, torch.Tensor] = {}
    for modality in chosen:
        column = features.column(modality).combine_chunks()
        dim = column.type.list_size
        valid = np.asarray(column.is_valid())
        matrix = np.zeros((len(column), dim), dtype=np.float32)
        flat = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        matrix[valid] = flat if flat.shape[0] == valid.sum() else flat[valid]
        out = np.zeros((len(item_ids), dim), dtype=np.float32)
        mask = np.zeros(len(item_ids), dtype=bool)
        known = rows >= 0
        out[known] = matrix[rows[known]]
        mask[known] = valid[rows[known]]
        feature_tensors[modality] = torch.from_numpy(out)
        present[modality] = torch.from_numpy(mask)
    warm = np.unique(
        np.asarray(pc.index_in(train.column("item_id"), value_set=pa.array(item_ids, pa.string())))
    )
    id_index = np.zeros(len(item_ids), dtype=np.int64)
    id_index[warm[warm >= 0]] = np.arange(1, int((warm >= 0).sum()) + 1)
    tag_lists, tag_names = _tag_lists(items, order)
    return Catalog(item_ids, feature_tensors, present, torch.from_numpy(id_index), tag_lists, tag_names)


def _tag_lists(items: pa.Table, order: np.ndarray) -> tuple[list[list[int]], list[str]]:
    if "tags" not in items.column_names:
        return [[] for _ in order], []
    raw = items.column("tags").to_pylist()
    names = sorted({tag for tags in raw if tags for tag in tags})
    position = {name: k for k, name in enumerate(names)}
    return [[position[t] for t in (raw[i] or [])] for i in order], names


@dataclass
class Examples:
    """Next-item training examples: ``history`` (n, L) catalog rows, oldest first, -1 padded."""

    user: np.ndarray
    history: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


def positive_events(interactions: pa.Table, events: Sequence[str]) -> pa.Table:
    """Interactions whose event counts as a positive, sorted by user then time."""
    keep = pc.is_in(interactions.column("event"), value_set=pa.array(list(events)))
    return interactions.filter(keep).sort_by([("user_id", "ascending"), ("ts", "ascending")])


def _windows(rows: np.ndarray, starts: np.ndarray, max_history: int) -> np.ndarray:
    """(n, L) for each position: the L previous rows of the same group, oldest first, -1 padded."""
    n = len(rows)
    position = np.arange(n)
    lags = np.arange(max_history, 0, -1)  # oldest (lag L) first, newest (lag 1) last
    source = position[:, None] - lags[None, :]
    valid = source >= starts[:, None]
    return np.where(valid, rows[np.clip(source, 0, None)], -1)


def build_examples(
    interactions: pa.Table, catalog: Catalog, events: Sequence[str], max_history: int
) -> Examples:
    """One example per positive event that has at least one earlier positive event of its user."""
    positives = positive_events(interactions, events)
    rows = catalog.positions(positives.column("item_id"))
    users = np.asarray(pc.dictionary_encode(positives.column("user_id")).combine_chunks().indices)
    keep = rows >= 0
    rows, users = rows[keep], users[keep]
    first = np.r_[True, users[1:] != users[:-1]]
    starts = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0))
    history = _windows(rows, starts, max_history)
    has_history = history[:, -1] >= 0
    return Examples(users[has_history], history[has_history], rows[has_history])


def target_log_q(examples: Examples, n_items: int) -> np.ndarray:
    """log P(item is a batch target) per catalog row, for the logQ correction (unseen items: min)."""
    counts = np.bincount(examples.target, minlength=n_items).astype(np.float64)
    probs = counts / max(counts.sum(), 1.0)
    floor = 1.0 / max(counts.sum(), 1.0)
    return np.log(np.maximum(probs, floor)).astype(np.float32)


@dataclass
class EvalUsers:
    """Users to evaluate: recent history (U, L), what they had seen, and held-out truth."""

    user_ids: np.ndarray
    history: np.ndarray
    seen: ItemSets
    truth: ItemSets


def eval_users(
    context: pa.Table, held_out: pa.Table, catalog: Catalog, events: Sequence[str], max_history: int
) -> EvalUsers:
    """Users with positives in ``held_out``: history from ``context`` (earlier events), truth from ``held_out``.

    Seen items are every item of the user in ``context`` (any event), excluded from ranking.
    """
    truth_events = positive_events(held_out, events)
    truth_rows = catalog.positions(truth_events.column("item_id"))
    truth_users = np.asarray(truth_events.column("user_id").to_pylist(), dtype=object)
    user_ids = np.unique(truth_users[truth_rows >= 0].astype(str))
    lookup = pa.array(user_ids, pa.string())

    ctx_positive = positive_events(context, events)
    ctx_users = np.asarray(pc.fill_null(pc.index_in(ctx_positive.column("user_id"), value_set=lookup), -1))
    ctx_rows = catalog.positions(ctx_positive.column("item_id"))
    keep = (ctx_users >= 0) & (ctx_rows >= 0)
    ctx_users, ctx_rows = ctx_users[keep], ctx_rows[keep]
    history = np.full((len(user_ids), max_history), -1, dtype=np.int64)
    if len(ctx_users):
        # ctx is sorted by user then time: take each user's last max_history rows, right-aligned.
        ends = np.r_[np.flatnonzero(np.diff(ctx_users)) + 1, len(ctx_users)]
        starts = np.r_[0, ends[:-1]]
        window = _windows(ctx_rows, np.repeat(starts, ends - starts), max_history)
        last = ends - 1
        # the history *including* the last event: shift the window of the last row by one
        full = np.concatenate([window[last][:, 1:], ctx_rows[last][:, None]], axis=1)
        history[ctx_users[last]] = full

    all_ctx_users = np.asarray(pc.fill_null(pc.index_in(context.column("user_id"), value_set=lookup), -1))
    all_ctx_rows = catalog.positions(context.column("item_id"))
    seen_keep = (all_ctx_users >= 0) & (all_ctx_rows >= 0)
    seen = ItemSets.from_pairs(all_ctx_users[seen_keep], all_ctx_rows[seen_keep], len(user_ids))
    t_users = np.asarray(pc.index_in(pa.array(truth_users.astype(str)), value_set=lookup))
    t_keep = truth_rows >= 0
    truth = ItemSets.from_pairs(t_users[t_keep], truth_rows[t_keep], len(user_ids))
    return EvalUsers(user_ids, history, seen, truth)
