"""The quickstart pipeline: synth -> validate -> extract -> train (two towers, then the ranker) -> ablation
-> live (the Serve app over Kafka, :mod:`raymm.workflows.live`).

What ``make quickstart`` runs on the embedded defaults (``configs/quickstart.yaml``); the CLI's
``raymm quickstart`` only prints what :func:`quickstart` returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from raymm.config import RaymmConfig

#: The stages, in order, as the console numbers them.
STAGES: tuple[str, ...] = ("synthesize", "validate", "extract", "train", "rank", "report", "live")


@dataclass
class QuickstartResult:
    """What each stage produced: the dataset manifest, the extraction, the two training runs and
    the ablation document (None from the first stage that did not run: validation findings stop
    the pipeline, and ``problems`` lists them)."""

    dataset: dict[str, Any]
    problems: list[str]
    extracted: Any = None
    trained: Any = None
    ranked: Any = None
    report: dict[str, Any] | None = None
    live: Any = None
    elapsed_s: float = 0.0


def quickstart(
    config: RaymmConfig,
    *,
    progress: bool = True,
    stage: Callable[[int, str], AbstractContextManager[Any]] | None = None,
    say: Callable[[str], None] | None = None,
    keep_running: Callable[[Any], None] | None = None,
) -> QuickstartResult:
    """Run the whole job under ``config.out``; each stage runs inside ``stage(i, message)`` (a
    context manager, e.g. :class:`raymm.console.Stage`, that shows it to people).

    Raises what the stages raise (:class:`~raymm.errors.RaymmError` for bad input).
    """
    from raymm.data.synth import synthesize
    from raymm.data.validate import validate_dataset
    from raymm.features.pipeline import extract
    from raymm.train.rank_trainer import train_ranker
    from raymm.train.trainer import train
    from raymm.workflows.ablation import ablation, headline_variant
    from raymm.workflows.live import live_demo

    announce = stage or (lambda _i, _message: nullcontext())
    started = time.perf_counter()
    data, features = config.stage_dir("data"), config.stage_dir("features")
    model, report_dir = config.stage_dir("model"), config.stage_dir("report")
    with announce(0, f"synthesizing the '{config.synth.size}' benchmark into {data}"):
        manifest = synthesize(config.synth, data, seed=config.seed, progress=progress)
    with announce(1, f"validating {data}"):
        report = validate_dataset(data, config.validate_, progress=progress)
    result = QuickstartResult(manifest, [str(p) for p in report.problems])
    if not report.ok:
        return result
    with announce(2, f"extracting features into {features} (Ray Data actor pools)"):
        result.extracted = extract(config, data, features, progress=progress)
    with announce(3, f"training the two towers into {model} (Ray Train)"):
        result.trained = train(config, data, features, model)
    with announce(4, f"training the ranker into {model}/ranker (Ray Train)"):
        result.ranked = train_ranker(config, data, features, model)
    headline = headline_variant(config, list(config.evaluate.ablation))
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
        result.live = live_demo(config, model, progress=progress, keep_running=keep_running)
    result.elapsed_s = time.perf_counter() - started
    return result
