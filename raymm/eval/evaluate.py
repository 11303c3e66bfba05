"""``raymm evaluate``: the offline protocols of design.md on one trained model artifact.

Two protocols, each a set of users with held-out truth, a history and the items they may be
recommended; the model and the popularity baseline are ranked on both:

* ``test`` (temporal): users with positive events in the test split; their history and seen items
  come from train + validation (everything before the test period); full ranking over every
  catalog item, seen items excluded.
* ``cold_start``: truth is each user's positive events in the ``cold_start`` table (items held
  out of training entirely); candidates are the cold items only (``cold_items`` table); history
  from train + validation. Skipped, with the reason in ``skipped``, when the dataset has no cold
  items (imported datasets usually have none).

The popularity baseline scores each item by its positive events in train + validation. Cold
items have none by construction, so on the cold-start protocol it ranks them in a fixed random
order (seeded by ``config.seed``): that is what popularity knows about new items, reported as is.
Ties between equally popular warm items are broken by the same seeded order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raymm.config import RaymmConfig
from raymm.data import io
from raymm.data.dataset import Dataset, load_dataset
from raymm.eval.metrics import ItemSets, popularity_scores, ranking_metrics
from raymm.features.pipeline import load_features
from raymm.models.artifact import load_artifact
from raymm.models.towers import TwoTower
from raymm.train.data import Catalog, EvalUsers, build_catalog, eval_users, positive_events
from raymm.train.loop import catalog_vectors, evaluate_ranking, restrict, user_vectors

PROTOCOLS: tuple[str, ...] = ("test", "cold_start")


@dataclass
class Protocol:
    """One evaluation protocol: who is evaluated, and which catalog rows may be recommended."""

    name: str
    description: str
    users: EvalUsers
    candidates: np.ndarray | None  # catalog rows; None ranks the whole catalog


@dataclass
class EvalSetup:
    """What every model evaluated on one (dataset, features) pair shares.

    ``catalog`` holds every modality of the features (a model sees its own subset);
    ``popularity`` (N,) float32 scores, distinct per item (ties broken by the seeded order).
    """

    catalog: Catalog
    protocols: dict[str, Protocol]
    skipped: dict[str, str]
    popularity: np.ndarray


def eval_setup(config: RaymmConfig, data_dir: str, features_dir: str) -> EvalSetup:
    """Load the dataset and features once and build both protocols' users and the popularity scores.

    Raises :class:`~raymm.errors.DataError` for a missing dataset, split or features directory.
    """
    dataset = load_dataset(data_dir, tables=("cold_items", "cold_start"))
    train = dataset.interactions("train")
    context = pa.concat_tables([train, dataset.interactions("validation")])
    catalog = build_catalog(load_features(features_dir), dataset.items, train)
    events, history = config.train.positive_events, config.train.max_history
    protocols = {
        "test": Protocol(
            "test",
            "temporal: test-period positives, full ranking, train+validation items excluded",
            eval_users(context, dataset.interactions("test"), catalog, events, history),
            None,
        )
    }
    skipped: dict[str, str] = {}
    cold = _cold_rows(dataset, catalog)
    if isinstance(cold, str):
        skipped["cold_start"] = cold
    else:
        protocols["cold_start"] = Protocol(
            "cold_start",
            f"cold-start: positives on the {len(cold)} cold items, ranked among them only",
            eval_users(context, dataset.interactions("cold_start"), catalog, events, history),
            cold,
        )
    popularity = popularity_ranking(popularity_counts(context, catalog, events), config.seed)
    return EvalSetup(catalog, protocols, skipped, popularity)


def _cold_rows(dataset: Dataset, catalog: Catalog) -> np.ndarray | str:
    """Catalog rows of the cold items, or why the cold-start protocol cannot run."""
    if "cold_items" not in dataset.tables or "cold_start" not in dataset.tables:
        return "the dataset has no cold_items/cold_start tables (no items held out of training)"
    rows = catalog.positions(dataset.tables["cold_items"].column("item_id"))
    rows = np.unique(rows[rows >= 0])
    if rows.size == 0:
        return "the cold_items table lists no item of the catalog"
    return rows


def popularity_counts(context: pa.Table, catalog: Catalog, events: Sequence[str]) -> np.ndarray:
    """(N,) positive events per catalog item in ``context`` (what the popularity baseline knows)."""
    rows = catalog.positions(positive_events(context, events).column("item_id"))
    return np.bincount(rows[rows >= 0], minlength=catalog.n_items)


def popularity_ranking(counts: np.ndarray, seed: int) -> np.ndarray:
    """(N,) float32 popularity scores from (N,) counts, ties broken in a fixed order drawn from ``seed``.

    The scores are the items' ranks (0 = least popular): every item has its own score, and items
    with equal counts are ordered by ``np.random.default_rng(seed).permutation(N)``.
    """
    counts = popularity_scores(counts)
    tie_break = np.random.default_rng(seed).permutation(counts.size)
    order = np.lexsort((tie_break, counts))  # ascending by count, then by the seeded order
    scores = np.empty(counts.size, dtype=np.float32)
    scores[order] = np.arange(counts.size, dtype=np.float32)
    return scores


def _ranked_sets(protocol: Protocol, n_items: int) -> tuple[ItemSets, ItemSets]:
    """(truth, seen) of a protocol, re-indexed onto its candidates when it has them."""
    truth, seen = protocol.users.truth, protocol.users.seen
    if protocol.candidates is None:
        return truth, seen
    return restrict(truth, protocol.candidates, n_items), restrict(seen, protocol.candidates, n_items)


def popularity_metrics(setup: EvalSetup, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """The popularity baseline's metrics on every protocol of ``setup``."""
    results = {}
    for name, protocol in setup.protocols.items():
        truth, seen = _ranked_sets(protocol, setup.catalog.n_items)
        scores = setup.popularity if protocol.candidates is None else setup.popularity[protocol.candidates]
        results[name] = ranking_metrics(truth, scores=scores, seen=seen, ks=tuple(ks))
    return results


def model_catalog(model: TwoTower, catalog: Catalog) -> Catalog:
    """The catalog as ``model`` reads it: its modalities, in its order."""
    return catalog.subset(model.modalities)


def model_metrics(model: TwoTower, setup: EvalSetup, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """The model's metrics on every protocol of ``setup`` (via :func:`evaluate_ranking`)."""
    catalog = model_catalog(model, setup.catalog)
    return {
        name: evaluate_ranking(model, catalog, protocol.users, ks, candidates=protocol.candidates)
        for name, protocol in setup.protocols.items()
    }


@torch.no_grad()
def mean_fusion_weights(model: TwoTower, catalog: Catalog, chunk: int = 4096) -> dict[str, float] | None:
    """Mean fusion weight per modality over items with any modality present; None if the fusion has none.

    Gated and attention fusion weigh modalities (weights sum to 1 over an item's present ones);
    concat does not.
    """
    catalog = model_catalog(model, catalog)
    was_training = model.training
    model.eval()
    totals, n_items = torch.zeros(len(model.modalities), dtype=torch.float64), 0
    try:
        for start in range(0, catalog.n_items, chunk):
            rows = slice(start, start + chunk)
            encoding = model.encode_items(
                {m: v[rows] for m, v in catalog.features.items()},
                {m: v[rows] for m, v in catalog.present.items()},
                catalog.id_index[rows],
            )
            if encoding.fusion_weights is None:
                return None
            weights = encoding.fusion_weights.to(torch.float64)
            any_present = weights.sum(dim=1) > 0
            totals += weights[any_present].sum(dim=0)
            n_items += int(any_present.sum())
    finally:
        model.train(was_training)
    means = totals / max(n_items, 1)
    return {m: float(means[k]) for k, m in enumerate(model.modalities)}


def top_k_items(
    model: TwoTower, catalog: Catalog, users: EvalUsers, k: int, candidates: np.ndarray | None = None
) -> np.ndarray:
    """(U, k) catalog rows each user is recommended, best first; their seen items are never among them.

    ``catalog`` must hold the model's modalities; ``candidates`` (catalog rows) limits what may be
    recommended. Slots beyond a user's unseen candidates hold -1.
    """
    catalog = model_catalog(model, catalog)
    items = catalog_vectors(model, catalog)
    people = user_vectors(model, items, users.history)
    rows = np.arange(catalog.n_items) if candidates is None else np.asarray(candidates, dtype=np.int64)
    seen = restrict(users.seen, rows, catalog.n_items)
    scores = people @ items[torch.as_tensor(rows)].T
    owners = np.repeat(np.arange(seen.n_users), seen.sizes)
    scores[torch.as_tensor(owners), torch.as_tensor(seen.indices)] = float("-inf")
    top = torch.topk(scores, min(k, rows.size), dim=1)
    ranked = np.where(top.values.numpy() > float("-inf"), rows[top.indices.numpy()], -1)
    return np.pad(ranked, ((0, 0), (0, k - ranked.shape[1])), constant_values=-1)


def evaluate_model(model_dir: str, setup: EvalSetup, ks: Sequence[int]) -> dict[str, Any]:
    """Load the artifact at ``model_dir`` (validated against the features) and rank it on ``setup``.

    Returns ``{"model_dir", "model_version", "modalities", "metrics": {protocol: {...}},
    "fusion_weights", "history"}``. Raises :class:`~raymm.models.errors.ModelLoadError` for an
    artifact that does not fit the features.
    """
    artifact = load_artifact(model_dir, expected_dims=setup.catalog.dims)
    model = artifact.model
    return {
        "model_dir": model_dir,
        "model_version": artifact.version,
        "modalities": model.modalities,
        "metrics": model_metrics(model, setup, ks),
        "fusion_weights": mean_fusion_weights(model, setup.catalog),
        "history": artifact.manifest.get("metrics", {}).get("history", []),
    }


def describe(setup: EvalSetup) -> dict[str, Any]:
    """Who each protocol evaluates: users with truth, candidate count, and what was skipped."""
    protocols = {
        name: {
            "description": protocol.description,
            "users": int((protocol.users.truth.sizes > 0).sum()),
            "candidates": setup.catalog.n_items if protocol.candidates is None else len(protocol.candidates),
        }
        for name, protocol in setup.protocols.items()
    }
    return {"n_items": setup.catalog.n_items, "protocols": protocols, "skipped": dict(setup.skipped)}


def evaluate(config: RaymmConfig, data_dir: str, features_dir: str, model_dir: str) -> dict[str, Any]:
    """Evaluate the model artifact at ``model_dir`` and the popularity baseline on both protocols.

    Metrics at ``config.evaluate.ks`` (see :mod:`raymm.eval.metrics`). Returns::

        {"ks", "n_items", "protocols": {name: {"description", "users", "candidates"}},
         "skipped": {name: why}, "model": {... see evaluate_model ...},
         "popularity": {"metrics": {protocol: {...}}}}

    Raises :class:`~raymm.errors.DataError` for missing inputs and
    :class:`~raymm.models.errors.ModelLoadError` for an artifact that does not fit the features.
    """
    ks = config.evaluate.ks
    setup = eval_setup(config, io.absolute(data_dir), io.absolute(features_dir))
    return {
        "ks": list(ks),
        **describe(setup),
        "model": evaluate_model(model_dir, setup, ks),
        "popularity": {"metrics": popularity_metrics(setup, ks)},
    }
