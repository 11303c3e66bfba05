"""The train stage as ``raymm train`` runs it: the two towers, or the ranker added to their artifact.

Paths are keywords; ``None`` takes the configuration's default (``<out>/data``, the features
:func:`~raymm.workflows.extract.resolve_features` picks, ``<out>/model``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from raymm.config import RaymmConfig
from raymm.console import Plan, StageResult
from raymm.workflows.extract import features_for

if TYPE_CHECKING:
    from raymm.training.rank_trainer import RankTrainResult
    from raymm.training.trainer import TrainResult


class _Timed(Protocol):
    @property
    def elapsed_s(self) -> float: ...


RunResult = TypeVar("RunResult", bound=_Timed)


@dataclass
class _ModelRun(StageResult, Generic[RunResult]):
    """A training run on ``dataset`` with ``features`` whose artifact is at ``model``."""

    dataset: str
    features: str
    model: str
    result: RunResult

    @property
    def elapsed_s(self) -> float | None:
        return self.result.elapsed_s

    def _inputs(self) -> list[tuple[str, Any]]:
        return [("dataset", self.dataset), ("features", self.features), ("model", self.model)]


def _storage(config: RaymmConfig) -> str:
    return config.train.run.storage_path or config.stage_dir("train")


def plan_train(config: RaymmConfig, *, out: str | None = None) -> Plan:
    cfg = config.train
    plan = Plan("train")
    plan.add(
        f"Ray Train: {cfg.run.num_workers} worker(s), {cfg.epochs} epochs, "
        f"{config.model.align.method} alignment + {config.model.fusion.method} fusion",
        _storage(config),
    )
    plan.add("write the model artifact", out or config.stage_dir("model"))
    return plan


@dataclass
class TrainRun(StageResult):
    """The two towers trained on ``dataset`` with ``features`` and written to ``model``."""

    dataset: str
    features: str
    model: str
    result: TrainResult
    title = "train"

    @property
    def elapsed_s(self) -> float | None:
        return self.result.elapsed_s

    def summary_rows(self) -> list[tuple[str, Any]]:
        from raymm.recommend.blend import BlendSettings

        manifest = self.result.manifest
        rows: list[tuple[str, Any]] = [
            ("dataset", self.dataset),
            ("features", self.features),
            ("model", self.model),
        ]
        rows.append(("model version", manifest.model_version))
        best = manifest.metrics["validation"]
        rows += [(f"best epoch {k}", f"{best[k]:.4f}") for k in ("val_recall@20", "val_ndcg@20") if k in best]
        rows.append(("epochs run", len(self.result.history)))
        rows.append(("served blend", BlendSettings.chosen(manifest.metrics)))
        return rows


def train(
    config: RaymmConfig,
    *,
    data: str | None = None,
    features: str | None = None,
    out: str | None = None,
    say: Callable[[str], None] | None = None,
) -> TrainRun:
    """Train the two towers with Ray Train and write the artifact to ``out`` (default ``<out>/model``).

    ``say`` is told which features are used when they fall back to the dataset's imported ones.
    Raises what :func:`raymm.training.trainer.train` raises.
    """
    from raymm.training import trainer

    data = data or config.stage_dir("data")
    features = features_for(config, data, features, say)
    out = out or config.stage_dir("model")
    return TrainRun(data, features, out, trainer.train(config, data, features, out))


def plan_train_ranker(config: RaymmConfig, *, model: str | None = None) -> Plan:
    rank = config.rank
    plan = Plan("train --stage rank")
    plan.add(
        f"Ray Train: {config.train.run.num_workers} worker(s), up to {rank.epochs} epochs, {rank.loss} loss, "
        f"{rank.negatives_per_positive} negatives/positive ({rank.hard_negative_share:.0%} hard)",
        _storage(config),
    )
    plan.add("add ranker/ to the two-tower artifact", model or config.stage_dir("model"))
    return plan


@dataclass
class RankTrainRun(StageResult):
    """The ranker trained on ``dataset`` with ``features`` and added to the artifact at ``model``."""

    dataset: str
    features: str
    model: str
    result: RankTrainResult
    title = "train --stage rank"

    @property
    def elapsed_s(self) -> float | None:
        return self.result.elapsed_s

    def summary_rows(self) -> list[tuple[str, Any]]:
        metrics = self.result.metrics
        validation = metrics["validation"]
        rows: list[tuple[str, Any]] = [
            ("dataset", self.dataset),
            ("features", self.features),
            ("model", self.model),
        ]
        rows += [(f"validation {k}", f"{validation[k]:.4f}") for k in ("auc", "log_loss", "f1", "threshold")]
        rows.append(("best epoch / epochs run", f"{metrics['best_epoch']} / {len(self.result.history)}"))
        from raymm.training.rank_trainer import served_top_n_label

        if served_top_n_label(metrics):
            rows.append(("candidates re-ranked", served_top_n_label(metrics)))
        return rows


def train_ranker(
    config: RaymmConfig,
    *,
    data: str | None = None,
    features: str | None = None,
    model: str | None = None,
    say: Callable[[str], None] | None = None,
) -> RankTrainRun:
    """Train the ranker with Ray Train and add it to the two-tower artifact at ``model`` (default
    ``<out>/model``); the Ray Train run follows ``train.run``, as the two-tower run does. Raises
    what :func:`raymm.training.rank_trainer.train_ranker` raises."""
    from raymm.training import rank_trainer

    data = data or config.stage_dir("data")
    features = features_for(config, data, features, say)
    model = model or config.stage_dir("model")
    return RankTrainRun(
        data, features, model, rank_trainer.train_ranker(config, data, features, model, run=config.train.run)
    )
