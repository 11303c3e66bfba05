"""What the ranker trains and is evaluated on: labelled (user state, item) examples, vectorised.

Plain NumPy/PyTorch (no Ray); training, validation and the test-split evaluation build them the
same way. For one split (train, validation or test), read after the earlier splits that give
each user's history (its ``context``):

* every event of the split whose kind is in ``model.user_state.events`` (label 1) or
  ``rank.negative_events`` (label 0; ``skip``: a logged impression turned down) is one example,
  weighted by ``rank.event_weights``;
* its user state is the user's previous ``user_state.max_history`` positive items
  (:func:`~raymm.recommend.history.history_before`), context included, held once per distinct
  state (:class:`RankExamples`); its recency is ``log1p`` hours since the user's previous event
  of any kind (NaN for the first);
* each positive brings ``rank.negatives_per_positive`` sampled negatives sharing its state and
  recency: a ``hard_negative_share`` from the retriever's top ``retriever_top_n`` for that state,
  the rest uniform over the catalog; never an item the user interacted with in the context or
  the split (draws that hit one are redrawn a few times, then dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raymm.data.dataset import CATALOG_ITEM_COLUMNS, load_dataset
from raymm.errors import DataError
from raymm.features.store import load_features
from raymm.models.artifact import load_artifact, read_manifest
from raymm.models.config import RankerConfig, UserStateConfig
from raymm.models.errors import ModelLoadError
from raymm.models.ranker import RankerInputs
from raymm.models.towers import TwoTower
from raymm.recommend.catalog import Catalog, build_catalog
from raymm.recommend.history import (
    by_user_and_time,
    counts_event,
    distinct_histories,
    item_counts,
    user_codes,
)
from raymm.recommend.rerank import Reranker, ranker_inputs
from raymm.recommend.topk import top_k
from raymm.recommend.vectors import user_vectors

#: ``RankExamples.kind`` codes.
LOGGED, UNIFORM, HARD = 0, 1, 2
_REDRAWS = 5
_MS_PER_HOUR = 3_600_000.0


@dataclass
class RankExamples:
    """n labelled examples over S user states: ``states`` (S, L) int32 catalog rows oldest first, -1
    padded, each distinct history once (the sampled negatives of a positive, and the events of a
    user with no positive between them, share one); ``state`` (n,) int32, each example's row of
    ``states``; ``item`` (n,) rows; ``label``/``weight``/``recency``/``popularity`` (n,) float32
    (raw context features); ``kind`` (n,) int8 (LOGGED, UNIFORM, HARD)."""

    states: np.ndarray
    state: np.ndarray
    item: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    recency: np.ndarray
    popularity: np.ndarray
    kind: np.ndarray

    def __len__(self) -> int:
        return len(self.item)

    @property
    def history(self) -> np.ndarray:
        """(n, L) int32 history of each example: a copy per example, so expand a slice (:meth:`take`)."""
        return self.states[self.state]

    def take(self, index: np.ndarray) -> RankExamples:
        """The examples at ``index`` (an int or bool array); they share this one's ``states``."""
        return RankExamples(
            self.states,
            self.state[index],
            self.item[index],
            self.label[index],
            self.weight[index],
            self.recency[index],
            self.popularity[index],
            self.kind[index],
        )

    @staticmethod
    def concat(parts: list[RankExamples]) -> RankExamples:
        """The examples of every part, in order (``states`` held once when the parts share it)."""
        states = parts[0].states
        offsets = np.zeros(len(parts), dtype=np.int64)
        if any(p.states is not states for p in parts):
            states = np.concatenate([p.states for p in parts])
            offsets = np.cumsum([0] + [len(p.states) for p in parts[:-1]])
        state = np.concatenate([p.state + offset for p, offset in zip(parts, offsets, strict=True)])
        per_example = [f for f in RankExamples.__dataclass_fields__ if f not in ("states", "state")]
        return RankExamples(
            states,
            state.astype(np.int32),
            *(np.concatenate([getattr(p, f) for p in parts]) for f in per_example),
        )

    def to_columns(self) -> dict[str, np.ndarray]:
        """The per-example columns of a Ray Dataset (state, item, label, weight, recency, popularity):
        ``states`` goes to the workers once, beside the dataset."""
        return {
            "state": self.state,
            "item": self.item,
            "label": self.label,
            "weight": self.weight,
            "recency": self.recency,
            "popularity": self.popularity,
        }


def build_rank_examples(
    context: pa.Table | None,
    split: pa.Table,
    catalog: Catalog,
    spec: UserStateConfig,
    rank: RankerConfig,
    model: TwoTower,
    inputs: RankerInputs,
    seed: int,
    counted: bool = False,
) -> RankExamples:
    """Labelled examples of ``split`` with histories from ``context`` (earlier events); see the module docstring.

    ``inputs`` are the ranker's per-item inputs: their vectors retrieve the hard negatives, their
    popularity is each example's popularity feature. ``counted`` says that the popularity counts
    came from this split (the training split): an example of an event the count includes then
    gets its item's count less one, so that a training positive never sees itself counted (a
    validation or test event is not in the counts either).
    """
    tables = [split] if context is None else [context.select(split.column_names), split]
    marked = by_user_and_time(
        pa.concat_tables(
            [
                t.append_column("in_split", pa.array(np.full(t.num_rows, k == len(tables) - 1)))
                for k, t in enumerate(tables)
            ]
        )
    )
    rows = catalog.positions(marked.column("item_id"))
    known = rows >= 0
    # Items the catalog lacks hold their place in the window, as in the live state (the module
    # docstring of raymm.recommend.history); they are never examples.
    positive = counts_event(marked, spec.events)
    log_users, log_rows = user_codes(marked), rows
    marked, rows, history_positive = marked.filter(pa.array(known)), rows[known], positive[known]
    users = user_codes(marked)
    ts = marked.column("ts").cast(pa.int64()).to_numpy().astype(np.float64)
    event = marked.column("event")
    first = np.r_[True, users[1:] != users[:-1]]
    gap_hours = np.r_[np.nan, np.diff(ts)] / _MS_PER_HOUR
    recency = np.where(first, np.nan, np.log1p(np.maximum(gap_hours, 0.0))).astype(np.float32)

    is_positive = history_positive
    is_negative = np.asarray(pc.is_in(event, value_set=pa.array(rank.negative_events, pa.string())))
    keep = np.asarray(marked.column("in_split")) & (is_positive | is_negative)
    # One weight per event kind, spread over the examples through the kinds' codes.
    names, codes = np.unique(
        np.asarray(event.to_numpy(zero_copy_only=False), dtype=str)[keep], return_inverse=True
    )
    weight = np.array([rank.event_weights.get(str(n), 1.0) for n in names], dtype=np.float32)[codes]
    popularity = inputs.popularity.numpy()[rows]
    if counted:
        popularity = np.where(
            history_positive, np.log1p(np.maximum(np.expm1(popularity) - 1.0, 0.0)), popularity
        ).astype(np.float32)
    # Windows of the examples' events alone (not of the context's), each distinct one once.
    states, state = distinct_histories(
        log_users, log_rows, positive, spec.max_history, np.flatnonzero(known)[keep]
    )
    logged = RankExamples(
        states,
        state,
        rows[keep],
        is_positive[keep].astype(np.float32),
        weight,
        recency[keep],
        popularity[keep],
        np.full(int(keep.sum()), LOGGED, dtype=np.int8),
    )
    interacted = np.unique(users * catalog.n_items + rows)
    example_users = users[keep]
    sampled = _sampled_negatives(
        logged, example_users, interacted, catalog.n_items, rank, model, inputs, seed
    )
    return RankExamples.concat([logged, *sampled])


def _sampled_negatives(
    logged: RankExamples,
    example_users: np.ndarray,
    interacted: np.ndarray,
    n_items: int,
    rank: RankerConfig,
    model: TwoTower,
    inputs: RankerInputs,
    seed: int,
) -> list[RankExamples]:
    """Uniform and hard negatives for each positive of ``logged`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    positives = np.flatnonzero(logged.label == 1.0)
    n_hard = round(rank.negatives_per_positive * rank.hard_negative_share)
    n_uniform = rank.negatives_per_positive - n_hard
    parts = []
    owners = example_users[positives]
    if n_uniform:
        draws = np.repeat(positives, n_uniform)
        items = _draw_unseen(rng, np.repeat(owners, n_uniform), interacted, n_items)
        parts.append(_negatives(logged, draws, items, inputs, UNIFORM))
    if n_hard and positives.size:
        top_n = min(rank.retriever_top_n, n_items)
        retrieved = _retrieved(model, inputs.vectors, logged.take(positives).history, top_n)  # (P, top_n)
        # Only positives the retriever itself puts in the top-N get hard negatives: elsewhere the
        # top-N items would be the only high-score examples and all negative, teaching the ranker
        # that a high retrieval score means "no" (on validation it then inverts retrieval).
        candidate = (retrieved == logged.item[positives][:, None]).any(axis=1)
        slot = np.repeat(np.flatnonzero(candidate), n_hard)
        items = _draw_unseen(rng, owners[slot], interacted, n_items, retrieved, slot)
        parts.append(_negatives(logged, positives[slot], items, inputs, HARD))
    return parts


def _draw_unseen(
    rng: np.random.Generator,
    owners: np.ndarray,
    interacted: np.ndarray,
    n_items: int,
    pool: np.ndarray | None = None,
    pool_row: np.ndarray | None = None,
) -> np.ndarray:
    """One item per entry of ``owners`` that the owner never interacted with, or -1 if the redraws fail.

    Uniform over the catalog, or (with ``pool`` (P, m) and ``pool_row`` (n,)) uniform over the
    row ``pool_row[i]`` of the pool. ``interacted`` holds sorted ``user * n_items + item`` keys.
    """

    def sample(index: np.ndarray) -> np.ndarray:
        if pool is None or pool_row is None:
            return rng.integers(0, n_items, index.size)
        return pool[pool_row[index], rng.integers(0, pool.shape[1], index.size)]

    items = sample(np.arange(owners.size))
    for _ in range(_REDRAWS):
        clash = np.flatnonzero(np.isin(owners * n_items + items, interacted))
        if clash.size == 0:
            return items
        items[clash] = sample(clash)
    return np.where(np.isin(owners * n_items + items, interacted), -1, items)


def _negatives(
    logged: RankExamples, source: np.ndarray, items: np.ndarray, inputs: RankerInputs, kind: int
) -> RankExamples:
    """Negatives on ``items`` sharing the state of the examples ``source``; -1 items are dropped."""
    keep = items >= 0
    source, items = source[keep], items[keep]
    return RankExamples(
        logged.states,
        logged.state[source],
        items,
        np.zeros(items.size, np.float32),
        np.ones(items.size, np.float32),
        logged.recency[source],
        inputs.popularity.numpy()[items],
        np.full(items.size, kind, dtype=np.int8),
    )


@torch.no_grad()
def _retrieved(model: TwoTower, item_vectors: torch.Tensor, history: np.ndarray, top_n: int) -> np.ndarray:
    """(P, top_n) catalog rows the retriever ranks highest for each history (the one top-k scorer)."""
    return top_k(user_vectors(model, item_vectors, history), item_vectors, top_n).rows.numpy()


@dataclass
class RankSetup:
    """The frozen retriever, the catalog it reads and the ranker's per-item inputs."""

    two_tower: TwoTower
    catalog: Catalog
    inputs: RankerInputs

    def without_features(self) -> RankSetup:
        """This setup without the catalog's raw features: once ``inputs`` are computed the ranker,
        its examples and the retriever (``inputs.vectors``) need none of them."""
        return RankSetup(self.two_tower, self.catalog.without_features(), self.inputs)


def rank_setup(
    data_dir: str, features_dir: str, model_dir: str, spec: UserStateConfig | None = None
) -> RankSetup:
    """Load the two-tower artifact and the catalog it reads, and compute the per-item ranker inputs.

    Popularity counts the training split's events of the artifact's user-state spec (or
    ``spec``). Raises :class:`~raymm.models.errors.ModelLoadError` if the artifact is missing,
    does not fit the features, or was trained on another catalog.
    """
    dataset = load_dataset(data_dir, tables=(), item_columns=CATALOG_ITEM_COLUMNS)
    train = dataset.interactions("train")
    modalities = list(read_manifest(model_dir).input_dims)  # the manifest alone: the model is read once
    catalog = build_catalog(load_features(features_dir), dataset.items, train, modalities)
    artifact = load_artifact(model_dir, expected_dims=catalog.dims)
    saved_ids = np.asarray(artifact.item_vectors.column("item_id").to_pylist(), dtype=object)
    if saved_ids.shape != catalog.item_ids.shape or not np.array_equal(saved_ids, catalog.item_ids):
        raise ModelLoadError(
            f"{model_dir}: the artifact's {saved_ids.size} item vectors are not the {catalog.n_items} "
            f"catalog items of {data_dir}; train the two-tower stage on this dataset first"
        )
    two_tower = artifact.model.requires_grad_(False)
    spec = spec or two_tower.config.user_state
    inputs = ranker_inputs(two_tower, catalog, item_counts(train, catalog, spec.events))
    return RankSetup(two_tower, catalog, inputs)


SPLITS: tuple[str, ...] = ("train", "validation", "test")


def split_examples(
    setup: RankSetup, rank: RankerConfig, data_dir: str, split: str, seed: int
) -> RankExamples:
    """Labelled examples of ``split`` (train, validation or test), histories from the splits before it."""
    if split not in SPLITS:
        raise DataError(f"rank examples come from {', '.join(SPLITS)}, not {split!r}")
    dataset = load_dataset(data_dir, tables=(), item_columns=CATALOG_ITEM_COLUMNS)
    earlier = [dataset.interactions(s) for s in SPLITS[: SPLITS.index(split)]]
    return build_rank_examples(
        pa.concat_tables(earlier) if earlier else None,
        dataset.interactions(split),
        setup.catalog,
        setup.two_tower.config.user_state,
        rank,
        setup.two_tower,
        setup.inputs,
        seed,
        counted=split == "train",
    )


@torch.no_grad()
def predict(reranker: Reranker, two_tower: TwoTower, examples: RankExamples, chunk: int = 8192) -> np.ndarray:
    """(n,) P(engage) of every example, scored as serving scores it (:meth:`Reranker.score_rows`).

    The item's popularity is the reranker's (not the example's leave-one-out count): use it on
    validation and test examples, whose events the counts never include.
    """
    parts = []
    for start in range(0, len(examples), chunk):
        part = examples.take(np.arange(start, min(start + chunk, len(examples))))
        users = user_vectors(two_tower, reranker.inputs.vectors, part.history)
        logits = reranker.score_rows(
            users, torch.from_numpy(part.item).unsqueeze(1), torch.from_numpy(part.recency)
        )
        parts.append(torch.sigmoid(logits[:, 0]).numpy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
