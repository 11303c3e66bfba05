"""``raymm evaluate``: the offline protocols of design.md, one evaluator over any list of scorers.

Two protocols, each a set of users with held-out truth, a history and the items they may be
recommended:

* ``test`` (temporal): users with positive events in the test split; their history and seen items
  come from train + validation (everything before the test period); full ranking over every
  catalog item, seen items excluded.
* ``cold_start``: truth is each user's positive events in the ``cold_start`` table (items held
  out of training entirely); candidates are the cold items only (``cold_items`` table); history
  from train + validation. Skipped, with the reason in ``skipped``, when the dataset has no cold
  items (imported datasets usually have none).

:func:`evaluate_scorer` ranks one :class:`~raymm.recommend.scorers.Scorer` on a protocol, users
in chunks, so no users x items matrix is ever built. :func:`evaluate` runs the artifact's
recommender (two-tower with its popularity fallback for users with little history, as serving
answers), the two-tower alone, retrieve-then-rank when the artifact has a ranker, and the
popularity and content baselines. Popularity knows nothing of cold items (no events), so on the
cold-start protocol it is a fixed seeded order: what popularity knows about new items.
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
from raymm.data.dataset import CATALOG_ITEM_COLUMNS, Dataset, load_dataset
from raymm.eval.metrics import RankingMetrics
from raymm.features.store import load_features
from raymm.models.artifact import Artifact, load_artifact
from raymm.models.config import UserStateConfig
from raymm.models.towers import TwoTower
from raymm.recommend.blend import BlendSettings, choose_blend_settings, fit_served_retriever
from raymm.recommend.catalog import Catalog, build_catalog
from raymm.recommend.collab import PersonalScorer
from raymm.recommend.history import EvalUsers, eval_users, held_out_recency
from raymm.recommend.scorers import (
    HALF_LIFE_GRID_DAYS,
    ContentScorer,
    FallbackScorer,
    FitContext,
    PopularityScorer,
    Scorer,
    TwoTowerScorer,
)
from raymm.recommend.vectors import encode_catalog

PROTOCOLS: tuple[str, ...] = ("test", "cold_start")
#: Users ranked per call of a scorer: bounds memory at any user count.
USER_CHUNK = 4096


@dataclass
class Protocol:
    """One evaluation protocol: who is evaluated, and which catalog rows may be recommended."""

    name: str
    description: str
    users: EvalUsers
    candidates: np.ndarray | None  # catalog rows; None ranks the whole catalog
    recency: np.ndarray | None = None  # (U,) raw log1p hours to the period's start


@dataclass
class EvalSetup:
    """What every scorer evaluated on one (dataset, features) pair shares.

    ``catalog`` holds every modality of the features (a model sees its own subset); ``context``
    the interactions before the evaluated period (what baselines are fitted on); ``validation``
    users of the validation split (history from train) for choices made on validation.
    """

    catalog: Catalog
    protocols: dict[str, Protocol]
    skipped: dict[str, str]
    context: FitContext
    validation: EvalUsers
    train_context: FitContext


def eval_setup(config: RaymmConfig, data_dir: str, features_dir: str) -> EvalSetup:
    """Load the dataset and features once and build both protocols' users.

    Raises :class:`~raymm.errors.DataError` for a missing dataset, split or features directory.
    """
    dataset = load_dataset(data_dir, tables=("cold_items", "cold_start"), item_columns=CATALOG_ITEM_COLUMNS)
    train = dataset.interactions("train")
    validation = dataset.interactions("validation")
    context = pa.concat_tables([train, validation])
    catalog = build_catalog(load_features(features_dir), dataset.items, train)
    spec: UserStateConfig = config.model.user_state
    events, history = spec.events, spec.max_history
    test = dataset.interactions("test")
    test_users = eval_users(context, test, catalog, events, history)
    protocols = {
        "test": Protocol(
            "test",
            "temporal: test-period positives, full ranking, train+validation items excluded",
            test_users,
            None,
            held_out_recency(context, test, test_users.user_ids),
        )
    }
    skipped: dict[str, str] = {}
    cold = _cold_rows(dataset, catalog)
    if isinstance(cold, str):
        skipped["cold_start"] = cold
    else:
        cold_events = dataset.interactions("cold_start")
        cold_users = eval_users(context, cold_events, catalog, events, history)
        protocols["cold_start"] = Protocol(
            "cold_start",
            f"cold-start: positives on the {len(cold)} cold items, ranked among them only",
            cold_users,
            cold,
            held_out_recency(context, cold_events, cold_users.user_ids),
        )
    return EvalSetup(
        catalog,
        protocols,
        skipped,
        FitContext(catalog, context, events, config.seed),
        eval_users(train, validation, catalog, events, history).sample(
            config.train.validation_users, config.seed
        ),
        FitContext(catalog, train, events, config.seed),
    )


def _cold_rows(dataset: Dataset, catalog: Catalog) -> np.ndarray | str:
    """Catalog rows of the cold items, or why the cold-start protocol cannot run."""
    if "cold_items" not in dataset.tables or "cold_start" not in dataset.tables:
        return "the dataset has no cold_items/cold_start tables (no items held out of training)"
    rows = catalog.positions(dataset.tables["cold_items"].column("item_id"))
    rows = np.unique(rows[rows >= 0])
    if rows.size == 0:
        return "the cold_items table lists no item of the catalog"
    return rows


def evaluate_scorer(
    scorer: Scorer,
    users: EvalUsers,
    ks: Sequence[int],
    n_items: int,
    candidates: np.ndarray | None = None,
    recency: np.ndarray | None = None,
    user_chunk: int = USER_CHUNK,
) -> dict[str, float]:
    """Ranking metrics (:class:`~raymm.eval.metrics.RankingMetrics`) of ``scorer`` on ``users``.

    Users go to the scorer ``user_chunk`` at a time with their seen items excluded; with
    ``candidates`` (catalog rows) only those may be recommended and the truth is restricted to
    them. Memory is bounded by the chunk, whatever the user count.
    """
    return _rank_users(scorer, users, ks, n_items, candidates, recency, user_chunk, False).result()


def per_user_metrics(
    scorer: Scorer,
    users: EvalUsers,
    ks: Sequence[int],
    n_items: int,
    candidates: np.ndarray | None = None,
    recency: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """What :func:`evaluate_scorer` averages, user by user, for paired tests between scorers.

    Returns ``(user_ids, {metric: (U',) values})`` over the users with a non-empty truth (in the
    order of ``users``), so two scorers ranked on the same users line up row for row.
    """
    metrics = _rank_users(scorer, users, ks, n_items, candidates, recency, USER_CHUNK, True)
    truth = users.truth if candidates is None else users.truth.restrict(candidates, n_items)
    return users.user_ids[truth.sizes > 0], metrics.per_user()


def _rank_users(
    scorer: Scorer,
    users: EvalUsers,
    ks: Sequence[int],
    n_items: int,
    candidates: np.ndarray | None,
    recency: np.ndarray | None,
    user_chunk: int,
    keep_per_user: bool,
) -> RankingMetrics:
    truth = users.truth
    position: np.ndarray | None = None
    n_ranked = n_items
    if candidates is not None:
        truth = truth.restrict(candidates, n_items)
        position = np.full(n_items, -1, dtype=np.int64)
        position[candidates] = np.arange(len(candidates))
        n_ranked = len(candidates)
    metrics = RankingMetrics(ks, n_ranked, keep_per_user=keep_per_user)
    depth = min(max(metrics.ks), n_ranked)
    active = np.flatnonzero(truth.sizes > 0)
    for start in range(0, active.size, user_chunk):
        chunk = active[start : start + user_chunk]
        top = scorer.recommend(
            users.history[chunk],
            depth,
            exclude=users.seen.take(chunk),
            candidates=candidates,
            recency=None if recency is None else recency[chunk],
            user_ids=users.user_ids[chunk],
        )
        rows = top.rows
        if position is not None:
            rows = torch.where(rows >= 0, torch.from_numpy(position)[rows.clamp(min=0)], -1)
        metrics.add(truth.take(chunk), rows)
    return metrics


def protocol_metrics(scorer: Scorer, setup: EvalSetup, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """``scorer``'s metrics on every protocol of ``setup``."""
    return {
        name: evaluate_scorer(
            scorer, protocol.users, ks, setup.catalog.n_items, protocol.candidates, protocol.recency
        )
        for name, protocol in setup.protocols.items()
    }


def validation_ndcg(scorer: Scorer, setup: EvalSetup, ks: Sequence[int]) -> float:
    """NDCG at 20 (or the largest K) of ``scorer`` on the validation users (history from train)."""
    k = 20 if 20 in ks else max(ks)
    return evaluate_scorer(scorer, setup.validation, (k,), setup.catalog.n_items)[f"ndcg@{k}"]


@torch.no_grad()
def mean_fusion_weights(model: TwoTower, catalog: Catalog) -> dict[str, float] | None:
    """Mean fusion weight per modality over items with any modality present; None if the fusion has none."""
    weights = encode_catalog(model, catalog).fusion_weights
    if weights is None:
        return None
    weights = weights.to(torch.float64)
    any_present = weights.sum(dim=1) > 0
    means = weights[any_present].sum(dim=0) / max(int(any_present.sum()), 1)
    return {m: float(means[k]) for k, m in enumerate(model.modalities)}


def served_scorer(
    artifact: Artifact, setup: EvalSetup, ks: Sequence[int], context: FitContext | None = None
) -> tuple[FallbackScorer, float]:
    """The artifact's recommender as serving answers: two-tower + item-item + popularity.

    The blend (:class:`~raymm.recommend.blend.BlendSettings`) is the one training chose on
    validation, recorded in the manifest; an artifact without one (trained before the popularity
    half-life existed) gets the two-tower's blend with popularity chosen here on the same
    validation users, popularity counted on the training split. The item-item part and popularity
    are then fitted on ``context`` (default ``setup.context``, the interactions before the test
    period; ``setup.train_context`` for choices on validation), as serving's were on everything
    before it. Returns the scorer and its shrinkage; ``scorer.primary`` is the personal part
    (no fallback) and ``scorer.popularity.half_life_days`` the half-life.
    """
    context = setup.context if context is None else context
    two_tower = TwoTowerScorer(artifact.model, setup.catalog.subset(artifact.model.modalities))
    settings = BlendSettings.from_metrics(artifact.manifest.metrics)
    if settings is None:
        settings, _ = choose_blend_settings(
            lambda scorer: validation_ndcg(scorer, setup, ks),
            two_tower,
            None,
            setup.train_context,
            setup.validation.history,
        )
    return fit_served_retriever(two_tower, settings, context, artifact.manifest.config), settings.shrinkage


def recent_popularity(setup: EvalSetup, ks: Sequence[int]) -> PopularityScorer:
    """Recent popularity alone: the half-life of :data:`HALF_LIFE_GRID_DAYS` (every event alike
    included) with the best validation NDCG, counted on the training split, then fitted on
    ``setup.context``. The yardstick the served model must beat on users with history too."""
    best: tuple[float, float | None] | None = None
    for half_life in HALF_LIFE_GRID_DAYS:
        score = validation_ndcg(
            PopularityScorer(half_life_days=half_life).fit(setup.train_context), setup, ks
        )
        if best is None or score > best[0]:
            best = (score, half_life)
    assert best is not None
    scorer = PopularityScorer(half_life_days=best[1]).fit(setup.context)
    scorer.name = "recent popularity" if best[1] is not None else "popularity"
    return scorer


def evaluate_model(model_dir: str, setup: EvalSetup, ks: Sequence[int]) -> dict[str, Any]:
    """Load the artifact at ``model_dir`` (validated against the features) and rank it on ``setup``.

    Returns ``{"model_dir", "model_version", "modalities", "metrics": {protocol: {...}},
    "personal_metrics", "two_tower_metrics", "fallback_shrinkage", "fallback_half_life_days",
    "blend", "validation_ndcg", "fusion_weights", "history", "best_epoch", "notes"}``:
    ``metrics`` are the served recommender's (with the popularity fallback),
    ``personal_metrics`` its personal part without popularity (two-tower + item-item),
    ``two_tower_metrics`` the two-tower alone, ``blend`` the settings' label; ``validation_ndcg`` is the served
    recommender's NDCG at 20 (or the largest K) on the validation users, its fallback's
    popularity counted on the training split only (what choices between models are made on);
    ``history`` (one row per epoch, validation metrics prefixed ``val_``), ``best_epoch`` and
    ``notes`` come from the manifest. Raises :class:`~raymm.models.errors.ModelLoadError` for an
    artifact that does not fit.
    """
    artifact = load_artifact(model_dir, expected_dims=setup.catalog.dims)
    served, shrinkage = served_scorer(artifact, setup, ks)
    # On validation users the item-item part and popularity may only know the training split.
    validation = validation_ndcg(served_scorer(artifact, setup, ks, setup.train_context)[0], setup, ks)
    recorded = artifact.manifest.metrics
    two_tower = served.primary.two_tower if isinstance(served.primary, PersonalScorer) else served.primary
    return {
        "model_dir": model_dir,
        "model_version": artifact.version,
        "modalities": artifact.model.modalities,
        "metrics": protocol_metrics(served, setup, ks),
        "personal_metrics": protocol_metrics(served.primary, setup, ks),
        "two_tower_metrics": protocol_metrics(two_tower, setup, ks),
        "fallback_shrinkage": shrinkage,
        "fallback_half_life_days": served.popularity.half_life_days,
        "blend": (BlendSettings.from_metrics(recorded) or BlendSettings()).label(),
        "validation_ndcg": validation,
        "fusion_weights": mean_fusion_weights(
            artifact.model, setup.catalog.subset(artifact.model.modalities)
        ),
        "history": recorded.get("history", []),
        "best_epoch": recorded.get("best_epoch"),
        "notes": list(artifact.manifest.notes),
    }


def baseline_metrics(setup: EvalSetup, ks: Sequence[int]) -> dict[str, dict[str, dict[str, float]]]:
    """The training-free baselines on every protocol: popularity and the content baseline."""
    baselines: list[Scorer] = [PopularityScorer().fit(setup.context), ContentScorer().fit(setup.context)]
    return {b.name: protocol_metrics(b, setup, ks) for b in baselines}


def describe(setup: EvalSetup) -> dict[str, Any]:
    """Who each protocol evaluates: users with truth, candidate count, and what was skipped."""
    protocols = {
        name: {
            "description": protocol.description,
            "users": int((protocol.users.truth.sizes > 0).sum()),
            "users_without_history": int(
                ((protocol.users.truth.sizes > 0) & (protocol.users.history_length == 0)).sum()
            ),
            "candidates": setup.catalog.n_items if protocol.candidates is None else len(protocol.candidates),
        }
        for name, protocol in setup.protocols.items()
    }
    return {"n_items": setup.catalog.n_items, "protocols": protocols, "skipped": dict(setup.skipped)}


def evaluate(config: RaymmConfig, data_dir: str, features_dir: str, model_dir: str) -> dict[str, Any]:
    """Evaluate the model artifact at ``model_dir`` and the baselines on both protocols.

    Metrics at ``config.evaluate.ks`` (see :mod:`raymm.eval.metrics`). Returns::

        {"ks", "n_items", "protocols": {name: {"description", "users", "users_without_history",
         "candidates"}}, "skipped": {name: why}, "model": {... see evaluate_model ...},
         "popularity": {"metrics": {protocol: {...}}}, "content": {"metrics": ...},
         "recent_popularity": {"metrics": ..., "half_life_days"}}

    Raises :class:`~raymm.errors.DataError` for missing inputs and
    :class:`~raymm.models.errors.ModelLoadError` for an artifact that does not fit the features.
    """
    ks = config.evaluate.ks
    setup = eval_setup(config, io.absolute(data_dir), io.absolute(features_dir))
    baselines = baseline_metrics(setup, ks)
    recent = recent_popularity(setup, ks)
    return {
        "ks": list(ks),
        **describe(setup),
        "model": evaluate_model(model_dir, setup, ks),
        **{name: {"metrics": metrics} for name, metrics in baselines.items()},
        "recent_popularity": {
            "metrics": protocol_metrics(recent, setup, ks),
            "half_life_days": recent.half_life_days,
        },
    }
