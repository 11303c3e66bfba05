"""The evaluate stage as ``raymm evaluate`` runs it: one model against the baselines (and its ranking
stage when the artifact has one), or the ablation experiment (:mod:`raymm.workflows.ablation`).

Paths are keywords; ``None`` takes the configuration's default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raymm.config import RaymmConfig
from raymm.console import Plan, StageResult
from raymm.workflows.extract import features_for


def plan_evaluate(config: RaymmConfig, *, model: str | None = None, out: str | None = None) -> Plan:
    model = model or config.stage_dir("model")
    plan = Plan("evaluate")
    plan.add(f"rank {model}, popularity and content at K={config.evaluate.ks}: test, cold-start", model)
    if out:
        plan.add("write evaluation.json", out)
    return plan


def headline_k(ks: list[int]) -> int:
    """The K a summary shows: 20 when evaluated, else the largest."""
    return 20 if 20 in ks else max(ks)


@dataclass
class EvaluateRun(StageResult):
    """The evaluation document of ``model`` (:func:`raymm.eval.evaluate.evaluate`, plus ``rank`` for an
    artifact with a ranking stage), and where it was written (``written_to``, or None)."""

    dataset: str
    features: str
    model: str
    document: dict[str, Any]
    k: int
    written_to: str | None = None
    elapsed_s: float | None = None
    title = "evaluate"

    def summary_rows(self) -> list[tuple[str, Any]]:
        result, k = self.document, self.k
        rows: list[tuple[str, Any]] = [
            ("dataset", self.dataset),
            ("features", self.features),
            ("model", self.model),
        ]
        rows.append(("model version", result["model"]["model_version"]))
        rows.append(("served blend", result["model"]["blend"]))
        recent_half_life = result["recent_popularity"]["half_life_days"]
        recent = "recent pop (= all)" if recent_half_life is None else f"recent pop {recent_half_life:g}d"
        # Side by side: what serving answers, its parts, and the two popularity yardsticks.
        columns = {
            "served": result["model"]["metrics"],
            "no fallback": result["model"]["personal_metrics"],
            "two-tower": result["model"]["two_tower_metrics"],
            recent: result["recent_popularity"]["metrics"],
            "all-time pop": result["popularity"]["metrics"],
            "content": result["content"]["metrics"],
        }
        for protocol, about in result["protocols"].items():
            rows.append((f"{protocol} users / candidates", f"{about['users']:,} / {about['candidates']:,}"))
            rows += [
                (
                    f"{protocol} {name}@{k}",
                    "   ".join(
                        f"{label} {metrics[protocol][f'{name}@{k}']:.4f}"
                        for label, metrics in columns.items()
                    ),
                )
                for name in ("recall", "ndcg")
            ]
        rows += [(f"{protocol} skipped", why) for protocol, why in result["skipped"].items()]
        if "rank" in result:
            point, listwise = result["rank"]["pointwise"], result["rank"]["listwise"]
            rows.append(
                (
                    "rank test auc / log-loss / f1",
                    f"{point['auc']:.4f} / {point['log_loss']:.4f} / {point['f1']:.4f}",
                )
            )
            rows += [
                (
                    f"test {name}@{k}",
                    f"retrieval {listwise['retrieval'][f'{name}@{k}']:.4f}   "
                    f"retrieve-then-rank {listwise['retrieve_then_rank'][f'{name}@{k}']:.4f}",
                )
                for name in ("recall", "ndcg")
            ]
        if self.written_to is not None:
            rows.append(("written to", self.written_to))
        return rows


def evaluate(
    config: RaymmConfig,
    *,
    data: str | None = None,
    features: str | None = None,
    model: str | None = None,
    out: str | None = None,
    say: Callable[[str], None] | None = None,
) -> EvaluateRun:
    """Rank the artifact at ``model`` (default ``<out>/model``), popularity and content offline, and
    the artifact's ranking stage when it has one; with ``out``, write ``evaluation.json`` there.

    ``say`` is told when the features fall back to the dataset's imported ones. Raises what
    :func:`raymm.eval.evaluate.evaluate` raises.
    """
    from raymm.data import io
    from raymm.eval import evaluate as offline
    from raymm.eval.rank import evaluate_rank, has_ranker

    data = data or config.stage_dir("data")
    features = features_for(config, data, features, say)
    model = model or config.stage_dir("model")
    start = time.perf_counter()
    document = offline.evaluate(config, data, features, model)
    if has_ranker(model):
        document["rank"] = evaluate_rank(config, data, features, model, out_dir=out)
    written_to = None
    if out:
        io.write_json(document, io.join(out, "evaluation.json"))
        written_to = f"{out}/evaluation.json"
    k = headline_k(list(config.evaluate.ks))
    return EvaluateRun(data, features, model, document, k, written_to, time.perf_counter() - start)


def plan_ablation(config: RaymmConfig, *, out: str | None = None) -> Plan:
    from raymm.workflows.ablation import variant

    out = out or config.stage_dir("report")
    cfg = config.ablation
    plan = Plan("evaluate --ablation")
    for name in cfg.variants:
        entry = variant(name)
        what = f"Ray Train {name}" if entry.trained else f"{name} baseline (no training)"
        plan.add(what, f"{out}/models/{name}" if entry.trained else out)
    if cfg.missing_modality is not None:
        plan.add(f"hide {cfg.missing_rate:.0%} of {cfg.missing_modality} rows in a features copy", out)
        plan.add(f"re-evaluate every variant, re-train {cfg.missing_retrain}", f"{out}/models")
    plan.add("write report.md, report.json and plots", out)
    return plan


def ablation_rows(document: dict[str, Any]) -> list[tuple[str, Any]]:
    """One summary row per ablation row: recall at the report's K on each protocol."""
    k = document["k"]
    rows: list[tuple[str, Any]] = []
    for row in document["rows"]:
        metrics = row["metrics"]
        cells = [f"{p} R@{k} {metrics[p][f'recall@{k}']:.4f}" for p in document["protocols"] if p in metrics]
        rows.append((row["label"], "   ".join(cells)))
    return rows


@dataclass
class AblationRun(StageResult):
    """The ablation report (:func:`raymm.workflows.ablation.ablation`'s document) on ``dataset``."""

    dataset: str
    features: str
    document: dict[str, Any]
    title = "evaluate --ablation"

    @property
    def elapsed_s(self) -> float | None:
        return float(self.document["elapsed_s"])

    def summary_rows(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            ("dataset", self.dataset),
            ("features", self.features),
            ("report", self.document["report"]),
        ]
        return rows + ablation_rows(self.document)

    def details(self) -> list[str]:
        from raymm.eval.report import orderings_line

        return [f"  orderings: {orderings_line(self.document['orderings'])}"]


def run_ablation(
    config: RaymmConfig,
    *,
    data: str | None = None,
    features: str | None = None,
    out: str | None = None,
    progress: Callable[[str], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> AblationRun:
    """Train and compare ``ablation.variants``; the report goes to ``out`` (default
    ``<out>/report``). ``progress`` hears each step, ``say`` the features fallback."""
    from raymm.workflows.ablation import ablation

    data = data or config.stage_dir("data")
    features = features_for(config, data, features, say)
    out = out or config.stage_dir("report")
    return AblationRun(data, features, ablation(config, data, features, out, progress=progress))
