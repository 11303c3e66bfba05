"""The quickstart pipeline: synth -> validate -> extract -> train (two towers, then the ranker) -> ablation
-> live (the Serve app over Kafka, :mod:`raymm.workflows.live`).

What ``make quickstart`` runs on the embedded defaults (``configs/quickstart.yaml``); the CLI's
``raymm quickstart`` only prints what :func:`quickstart` returns.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raymm.config import RaymmConfig
from raymm.console import Plan, Stage, StageResult

#: The stages, in order, as the console numbers them.
STAGES: tuple[str, ...] = ("synthesize", "validate", "extract", "train", "rank", "report", "live")


@dataclass
class QuickstartResult(StageResult):
    """What each stage produced: the dataset manifest, the extraction, the two training runs and
    the ablation document (None from the first stage that did not run: validation findings stop
    the pipeline, and ``problems`` lists them)."""

    out: str
    dataset: dict[str, Any]
    problems: list[str]
    extracted: Any = None
    trained: Any = None
    ranked: Any = None
    report: dict[str, Any] | None = None
    live: Any = None
    elapsed_s: float | None = 0.0
    title = "quickstart"

    @property
    def ok(self) -> bool:
        return self.report is not None

    def summary_rows(self) -> list[tuple[str, Any]]:
        """The block of a finished run (none when validation stopped it)."""
        if self.report is None:
            return []
        from raymm.recommend.blend import BlendSettings
        from raymm.workflows.data import counts_rows
        from raymm.workflows.extract import extract_rows

        root = self.out.rstrip("/")  # as RaymmConfig.stage_dir joins
        data, features, model = (f"{root}/{stage}" for stage in ("data", "features", "model"))
        rows: list[tuple[str, Any]] = [("output root", self.out), ("dataset", data), ("features", features)]
        rows += counts_rows(self.dataset)
        rows += extract_rows(self.extracted)
        from raymm.training.rank_trainer import served_top_n_label

        best = self.trained.manifest.metrics["validation"]
        rows += [
            ("model", model),
            ("two-tower best val_ndcg@20", f"{best.get('val_ndcg@20', float('nan')):.4f}"),
            ("served blend", BlendSettings.chosen(self.trained.manifest.metrics)),
            ("ranker val auc", f"{self.ranked.metrics['validation']['auc']:.4f}"),
            ("ranker candidates", served_top_n_label(self.ranked.metrics)),
            ("report", self.report["report"]),
        ]
        return rows

    def details(self) -> list[str]:
        """The report table, its orderings and the live part; or the problems that stopped the run."""
        if self.report is None:
            return [f"  problem: {problem}" for problem in self.problems]
        from raymm.eval.report import orderings_line, report_table

        lines = [report_table(self.report), f"  orderings: {orderings_line(self.report['orderings'])}"]
        if self.live is not None:
            lines.append(self.live.render())
        return lines


def plan_quickstart(config: RaymmConfig, *, out: str | None = None) -> Plan:
    """The quickstart's steps under ``out`` (default: the configuration's ``out``)."""
    from raymm.workflows.extract import plan_extract

    config = _rooted(config, out)
    data, features = config.stage_dir("data"), config.stage_dir("features")
    model, report_dir = config.stage_dir("model"), config.stage_dir("report")
    cfg = config.train
    plan = Plan("quickstart")
    plan.add(f"synthesize '{config.synth.size}' benchmark", data)
    plan.add("validate it", data)
    plan_extract(config, out=features, plan=plan)
    plan.add(
        f"Ray Train the two towers ({config.model.align.method} + {config.model.fusion.method}, "
        f"{cfg.run.num_workers} worker(s), up to {cfg.epochs} epochs)",
        model,
    )
    plan.add(f"Ray Train the ranker (up to {config.rank.epochs} epochs)", f"{model}/ranker")
    plan.add(f"ablation {config.ablation.variants} + the ranking stage", report_dir)
    plan.add(
        "serve it live (broker, Ray Serve app, replayed stream.parquet, freshness)",
        f"http://{config.serve.host}:{config.serve.port}",
    )
    return plan


def _rooted(config: RaymmConfig, out: str | None) -> RaymmConfig:
    if out is None:
        return config
    rooted = config.model_copy(deep=True)
    rooted.out = out
    return rooted


def _wait_for_interrupt(app: Any) -> None:
    print(f"\nthe live app stays up at {app.url} (docs: {app.docs_url}); Ctrl-C stops it", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(1)


def quickstart(
    config: RaymmConfig,
    *,
    out: str | None = None,
    progress: bool = True,
    keep_running: bool = False,
) -> QuickstartResult:
    """Run the whole job under ``out`` (default: the configuration's ``out``).

    Each stage is numbered on the console (:class:`raymm.console.Stage`); ``progress`` adds progress
    bars and the ablation's steps. With ``keep_running``, the live app stays up at the end
    until Ctrl-C. Raises what the stages raise (:class:`~raymm.errors.RaymmError` for bad input).
    """
    from raymm.data.synth import synthesize
    from raymm.data.validate import validate_dataset
    from raymm.features.pipeline import extract
    from raymm.training.rank_trainer import train_ranker
    from raymm.training.trainer import train
    from raymm.workflows.ablation import ablation, headline_variant
    from raymm.workflows.live import live_demo

    config = _rooted(config, out)

    def announce(index: int, message: str) -> AbstractContextManager[Any]:
        return Stage(index + 1, len(STAGES), message)

    say = (lambda message: print(f"[ablation] {message}", flush=True)) if progress else None
    started = time.perf_counter()
    data, features = config.stage_dir("data"), config.stage_dir("features")
    model, report_dir = config.stage_dir("model"), config.stage_dir("report")
    with announce(0, f"synthesizing the '{config.synth.size}' benchmark into {data}"):
        manifest = synthesize(config.synth, data, seed=config.seed, progress=progress)
    with announce(1, f"validating {data}"):
        report = validate_dataset(data, config.validate_, progress=progress)
    result = QuickstartResult(config.out, manifest, [str(p) for p in report.problems])
    if not report.ok:
        return result
    with announce(2, f"extracting features into {features} (Ray Data actor pools)"):
        result.extracted = extract(config, data, features, progress=progress)
    with announce(3, f"training the two towers into {model} (Ray Train)"):
        result.trained = train(config, data, features, model)
    with announce(4, f"training the ranker into {model}/ranker (Ray Train)"):
        result.ranked = train_ranker(config, data, features, model, run=config.train.run)
    headline = headline_variant(config, list(config.ablation.variants))
    with announce(5, f"ablation and ranking report into {report_dir}"):
        result.report = ablation(
            config,
            data,
            features,
            report_dir,
            progress=say,
            trained_models={headline: model} if headline else None,
            ranked_model=model,
        )
    with announce(6, "serving it live: broker, Ray Serve app, replayed events, freshness"):
        forget_previous_live_state(config)
        result.live = live_demo(
            config, model, progress=progress, keep_running=_wait_for_interrupt if keep_running else None
        )
    result.elapsed_s = time.perf_counter() - started
    return result


def forget_previous_live_state(config: RaymmConfig) -> list[str]:
    """Remove an earlier quickstart's user-state snapshots and embedded broker log under a local
    ``out``; returns what was removed.

    The quickstart has just rebuilt the data and the model, and its live part replays the same
    ``stream.parquet``. State kept from an earlier run already holds those event ids, so the
    replay would change nothing (exactly-once), and the before/after it shows would be equal.
    Only the defaults under ``out`` are removed: a configured ``stream.snapshot_uri`` or
    ``kafka.bootstrap_servers`` is the user's, and is left alone.
    """
    if "://" in config.out or config.kafka.bootstrap_servers or config.stream.snapshot_uri:
        return []
    removed = []
    for stage in ("state", "broker"):
        path = Path(config.stage_dir(stage))
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(str(path))
    return removed
