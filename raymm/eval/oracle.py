"""The ceiling of the synthetic benchmark: rank by the generator's true affinity.

:mod:`raymm.data.synth` draws each user's items by Gumbel-top-k on
``affinity / temperature + popularity_bias * log_popularity``, where ``affinity`` sums the user's
weights of the item's facet values. An oracle that knows the facets and the preferences ranks by
exactly that logit; no recommender that sees only content and events can do better in
expectation, so every variant is reported as a fraction of the oracle's Recall@20 / NDCG@20.

The truth is saved at synth time outside the training inputs: ``oracle_users`` (each user's
preference weights) and the ``facets`` table (facet codes and ``log_popularity``), plus the
constants in the manifest's ``oracle`` entry. Training and features never read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raymm.data.dataset import load_dataset
from raymm.recommend.catalog import Catalog
from raymm.recommend.itemsets import ItemSets
from raymm.recommend.scorers import Scorer
from raymm.recommend.topk import TopK, top_k_of_scores

FACET_COLUMNS: tuple[str, ...] = ("genre", "style", "mood", "topic", "palette")


@dataclass
class Oracle:
    """The generator's truth: users' preferences and items' facet codes and popularity."""

    user_ids: np.ndarray  # (U,) str
    preferences: np.ndarray  # (U, P) float32
    item_ids: np.ndarray  # (N,) str
    codes: np.ndarray  # (N, F) int64 columns of ``preferences``
    log_popularity: np.ndarray  # (N,) float32
    temperature: float
    popularity_bias: float


def load_oracle(data_dir: str) -> Oracle | None:
    """The oracle of the synthetic dataset at ``data_dir``; None for a dataset without one (imported
    data, or synthesized before the oracle was saved)."""
    dataset = load_dataset(data_dir, tables=("facets", "oracle_users"))
    entry = dataset.manifest.get("oracle")
    if entry is None or "oracle_users" not in dataset.tables or "facets" not in dataset.tables:
        return None
    users, facets = dataset.tables["oracle_users"], dataset.tables["facets"]
    column = users.column("preferences").combine_chunks()
    width = column.type.list_size
    offsets = np.asarray(entry["facet_offsets"], dtype=np.int64)
    codes = np.stack([facets.column(name).to_numpy() for name in FACET_COLUMNS], axis=1) + offsets
    return Oracle(
        user_ids=np.asarray(users.column("user_id").to_pylist(), dtype=object).astype(str),
        preferences=column.flatten().to_numpy().astype(np.float32).reshape(-1, width),
        item_ids=np.asarray(facets.column("item_id").to_pylist(), dtype=object).astype(str),
        codes=codes.astype(np.int64),
        log_popularity=facets.column("log_popularity").to_numpy().astype(np.float32),
        temperature=float(entry["affinity_temperature"]),
        popularity_bias=float(entry["popularity_bias"]),
    )


class OracleScorer(Scorer):
    """Ranks each user's items by the generator's logit (see the module docstring); needs user ids."""

    name = "oracle"

    def __init__(self, oracle: Oracle, catalog: Catalog) -> None:
        self.oracle = oracle
        self.user_row = {u: i for i, u in enumerate(oracle.user_ids)}
        rows = catalog.positions(pa.array(oracle.item_ids))
        known = rows >= 0
        # (N_catalog, F) facet columns and (N_catalog,) popularity term, in catalog order.
        self.codes = np.zeros((catalog.n_items, oracle.codes.shape[1]), dtype=np.int64)
        self.codes[rows[known]] = oracle.codes[known]
        self.bias = np.full(catalog.n_items, -1e30, dtype=np.float64)
        self.bias[rows[known]] = oracle.popularity_bias * oracle.log_popularity[known]

    def recommend(
        self,
        history: np.ndarray,
        k: int,
        *,
        exclude: ItemSets | None = None,
        candidates: np.ndarray | None = None,
        recency: np.ndarray | None = None,
        user_ids: np.ndarray | None = None,
    ) -> TopK:
        if user_ids is None:
            raise ValueError("the oracle needs the users' ids")
        missing = [u for u in user_ids if str(u) not in self.user_row]
        if missing:
            raise ValueError(f"the oracle has no preferences for user {missing[0]!r}")
        preferences = self.oracle.preferences[[self.user_row[str(u)] for u in user_ids]]
        # Facet by facet: one (U, N) at a time, never the (U, N, F) gather.
        affinity = np.zeros((len(preferences), self.codes.shape[0]), dtype=np.float64)
        for facet in range(self.codes.shape[1]):
            affinity += preferences[:, self.codes[:, facet]]
        scores = affinity / self.oracle.temperature + self.bias
        return top_k_of_scores(scores.astype(np.float32), k, exclude=exclude, candidates=candidates)
