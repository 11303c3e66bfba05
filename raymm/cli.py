"""The ``raymm`` command line: ``raymm data synth|validate|import|export``, ``extract``, ``train``,
``evaluate``, ``quickstart``, ``serve``, the stream: ``broker``, ``produce`` and ``consume``,
``deploy render`` (the Serve config and Kubernetes manifests), and ``submit`` (a stage as a job on a
Ray cluster).

Every command takes ``--config FILE``, ``--set key=value`` (repeatable), ``--out DIR`` and
``--dry-run`` (validate the configuration, print the plan, run nothing). Errors caused by input
print one clear message and exit 2; validation findings exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

from raymm import __version__, console
from raymm.config import ImportFormat, RaymmConfig, SizeName, load_config
from raymm.errors import RaymmError

if TYPE_CHECKING:
    from raymm.data.validate import ValidationReport

EXIT_OK, EXIT_FINDINGS, EXIT_INPUT_ERROR = 0, 1, 2


@dataclass
class Plan:
    """What a command will do: the steps and where each writes. Printed by ``--dry-run``."""

    command: str
    steps: list[tuple[str, str]] = field(default_factory=list)

    def add(self, step: str, target: str) -> None:
        self.steps.append((step, target))

    def dry_run(self, args: argparse.Namespace, config: RaymmConfig) -> bool:
        """With ``--dry-run``, print the plan and the resolved config and say so (the caller stops)."""
        if args.dry_run:
            print(self.render(config))
        return bool(args.dry_run)

    def render(self, config: RaymmConfig) -> str:
        lines = [f"plan for `raymm {self.command}` (dry run: nothing is written)"]
        lines += [f"  {i}. {step:<34} -> {target}" for i, (step, target) in enumerate(self.steps, 1)]
        lines += ["", "resolved configuration:", config.to_yaml()]
        return "\n".join(lines)


def print_summary(title: str, rows: Sequence[tuple[str, Any]], elapsed_s: float | None = None) -> None:
    """Print a one-screen summary block: counts and where outputs went (:func:`raymm.console.summary`)."""
    console.summary(title, rows, elapsed_s)


def print_warning(message: str) -> None:
    """Print one ``raymm: warning: ...`` line on stderr, the form of ``raymm: error: ...``.

    Not a Python warning: the console routing sends those to the log file, and these are for people.
    """
    print(f"raymm: warning: {message}", file=sys.stderr, flush=True)


def _counts_rows(manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    counts = manifest.get("counts", {})
    return [(f"{name} rows", f"{count:,}") for name, count in counts.items()]


# --- commands -------------------------------------------------------------------------------


def cmd_data_synth(args: argparse.Namespace, config: RaymmConfig) -> int:
    from raymm.data.synth import synthesize

    out = args.out or config.stage_dir("data")
    plan = Plan("data synth")
    plan.add(f"synthesize '{config.synth.size}' benchmark (seed {_synth_seed(config)})", out)
    if plan.dry_run(args, config):
        return EXIT_OK
    start = time.perf_counter()
    manifest = synthesize(config.synth, out, seed=config.seed, progress=not args.quiet)
    rows = [("dataset", out), ("size", config.synth.size), ("seed", _synth_seed(config))]
    print_summary("data synth", rows + _counts_rows(manifest), time.perf_counter() - start)
    return EXIT_OK


def _synth_seed(config: RaymmConfig) -> int:
    return config.synth.seed if config.synth.seed is not None else config.seed


def cmd_data_validate(args: argparse.Namespace, config: RaymmConfig) -> int:
    from raymm.data.validate import validate_dataset

    path = args.path or config.stage_dir("data")
    plan = Plan("data validate")
    plan.add("validate dataset (schemas, ids, timestamps, media)", path)
    if plan.dry_run(args, config):
        return EXIT_OK
    start = time.perf_counter()
    report = validate_dataset(path, config.validate_, progress=not args.quiet)
    if args.out:
        _write_report(report, args.out)
    rows: list[tuple[str, Any]] = [("dataset", path)]
    rows += [(name, f"{count:,}") for name, count in report.counts.items()]
    rows.append(("problems", len(report.problems)))
    if args.out:
        rows.append(("report", f"{args.out}/validation.json"))
    print_summary("data validate", rows, time.perf_counter() - start)
    for problem in report.problems:
        print(f"  problem: {problem}")
    return EXIT_OK if report.ok else EXIT_FINDINGS


def _write_report(report: ValidationReport, out: str) -> None:
    from raymm.data import io

    document = {"path": report.path, "ok": report.ok, "counts": report.counts}
    document["problems"] = [dataclasses.asdict(problem) for problem in report.problems]
    io.write_json(document, io.join(out, "validation.json"))


def cmd_data_import(args: argparse.Namespace, config: RaymmConfig) -> int:
    from raymm.data.importers import import_dataset

    cfg = config.import_
    if cfg.format is None or cfg.source is None:
        raise RaymmError("data import needs --format and --source (or import.format / import.source)")
    out = args.out or config.stage_dir("data")
    plan = Plan("data import")
    plan.add(f"import {cfg.format} from {cfg.source}", out)
    if plan.dry_run(args, config):
        return EXIT_OK
    start = time.perf_counter()
    manifest = import_dataset(cfg, out, progress=not args.quiet, events=config.model.user_state.events)
    rows = [("dataset", out), ("format", cfg.format), ("source", cfg.source)]
    rows += _counts_rows(manifest)
    rows += [
        (
            f"{split} users",
            f"{users['users']:,} ({users['without_history']:,} with an empty history, "
            f"{users['without_train']:,} without train events)",
        )
        for split, users in manifest.get("split_users", {}).items()
    ]
    warnings = manifest.get("warnings", [])
    rows.append(("warnings", f"{len(warnings)} (below, and in {out}/dataset.json)" if warnings else "none"))
    print_summary("data import", rows, time.perf_counter() - start)
    for warning in warnings:
        print_warning(warning)
    return EXIT_OK


def cmd_data_export(args: argparse.Namespace, config: RaymmConfig) -> int:
    from raymm.data.export import export_mmrec

    data = args.data or config.stage_dir("data")
    out = args.out or config.stage_dir("export")
    plan = Plan("data export")
    plan.add(f"export {data} as {args.format} ({args.name})", out)
    if plan.dry_run(args, config):
        return EXIT_OK
    start = time.perf_counter()
    summary = export_mmrec(data, out, name=args.name)
    rows = [("dataset", data), ("format", args.format), ("written to", out)]
    rows += [(str(k), v) for k, v in summary.items() if k != "out"]
    print_summary("data export", rows, time.perf_counter() - start)
    return EXIT_OK


def cmd_extract(args: argparse.Namespace, config: RaymmConfig) -> int:
    from raymm.features.pipeline import extract

    data = args.data or config.stage_dir("data")
    out = args.out or config.stage_dir("features")
    plan = Plan("extract")
    _plan_extract(plan, config, data, out, args.incremental)
    if plan.dry_run(args, config):
        return EXIT_OK
    from raymm.data import io
    from raymm.data.dataset import ITEMS, imported_features
    from raymm.features.pipeline import catalog_presence

    imported = imported_features(data)
    if imported is not None:
        presence = catalog_presence(io.join(data, ITEMS), list(config.extract.modalities))
        if not any(presence.values()):
            # An MMRec import: vectors, no media. Extract has nothing to encode; say where the features are.
            print_summary(
                "extract",
                [
                    ("dataset", data),
                    ("features", f"already imported: {_describe_features(imported)}"),
                    ("nothing to encode", f"its items have no {' / '.join(presence)} to extract"),
                    ("next", "`raymm train` and `raymm evaluate` use them when --features is not given"),
                ],
            )
            return EXIT_OK
    result = extract(config, data, out, incremental=args.incremental, progress=not args.quiet)
    rows: list[tuple[str, Any]] = [("dataset", data), ("features", out)]
    rows += _extract_rows(result)
    if imported is not None:
        rows.append(("imported features", f"{imported} too; pass --features {imported} to use those instead"))
    print_summary("extract", rows, result.elapsed_s)
    return EXIT_OK


def _plan_extract(plan: Plan, config: RaymmConfig, data: str, out: str, incremental: bool) -> None:
    for modality in config.extract.modalities:
        section = getattr(config.extract, modality)
        model = section.model or section.kind
        pool = f"{section.min_actors}-{section.max_actors} actors x {section.num_cpus} CPU/{section.num_gpus} GPU"
        plan.add(f"encode {modality} with {model} ({pool})", out)
    if incremental:
        plan.add("only items without features (--incremental)", out)


def _extract_rows(result: Any) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("items encoded this run", f"{result.encoded_items:,}")]
    for modality in result.manifest["modalities"]:
        encoder = result.manifest["encoders"][modality]
        counts = result.manifest["counts"][modality]
        rows.append(
            (
                f"{modality} ({encoder['encoder_id']}, {encoder['dim']}-d)",
                f"{counts['encoded']:,} encoded, {counts['missing']:,} missing, {counts['failed']:,} failed",
            )
        )
    rows += [(f"{modality} skipped", why) for modality, why in result.skipped.items()]
    return rows


def resolve_features(features: str | None, default: str, data: str) -> tuple[str, bool]:
    """(features to use, whether they are the dataset's imported ones) for train and evaluate.

    ``features`` (``--features``) when given, else ``default`` (``<out>/features``, what
    ``raymm extract`` writes); when that does not exist and the dataset carries precomputed features
    (an MMRec import's ``features.parquet``), those.
    """
    from raymm.data import io
    from raymm.data.dataset import imported_features

    if features is not None:
        return features, False
    if io.exists(default):
        return default, False
    imported = imported_features(data)
    return (default, False) if imported is None else (imported, True)


def _features_for(args: argparse.Namespace, config: RaymmConfig, data: str) -> str:
    """:func:`resolve_features` for a command, saying on the console when it falls back to imported ones."""
    default = config.stage_dir("features")
    features, imported = resolve_features(args.features, default, data)
    if imported:
        print(
            f"features: {default} does not exist, so using the features imported with the dataset: "
            f"{_describe_features(features)}; --features chooses others",
            flush=True,
        )
    return features


def _describe_features(uri: str) -> str:
    """``<uri> (text, image: precomputed:mmrec)``: a features file and the modalities and encoders it holds."""
    import pyarrow.parquet as pq

    from raymm.data import io

    filesystem, path = io.resolve(uri)
    schema = pq.read_schema(path, filesystem=filesystem)
    metadata = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    modalities = [name for name in ("text", "image", "audio") if name in schema.names]
    encoders = sorted({metadata[f"encoder.{m}"] for m in modalities if f"encoder.{m}" in metadata})
    return f"{uri} ({', '.join(modalities) or 'no modality'}" + (
        f": {', '.join(encoders)})" if encoders else ")"
    )


def cmd_train(args: argparse.Namespace, config: RaymmConfig) -> int:
    data = args.data or config.stage_dir("data")
    features = _features_for(args, config, data)
    out = args.out or config.stage_dir("model")
    if args.stage == "rank":
        return _train_ranker(args, config, data, features, out)
    from raymm.train.trainer import train

    cfg = config.train
    plan = Plan("train")
    plan.add(
        f"Ray Train: {cfg.num_workers} worker(s), {cfg.epochs} epochs, "
        f"{config.model.align.method} alignment + {config.model.fusion.method} fusion",
        config.train.storage_path or config.stage_dir("train"),
    )
    plan.add("write the model artifact", out)
    if plan.dry_run(args, config):
        return EXIT_OK
    result = train(config, data, features, out)
    rows: list[tuple[str, Any]] = [("dataset", data), ("features", features), ("model", out)]
    rows.append(("model version", result.manifest.model_version))
    best = result.manifest.metrics["validation"]
    rows += [(f"best epoch {k}", f"{best[k]:.4f}") for k in ("val_recall@20", "val_ndcg@20") if k in best]
    rows.append(("epochs run", len(result.history)))
    from raymm.recommend.blend import BlendSettings

    rows.append(("served blend", BlendSettings.chosen(result.manifest.metrics)))
    print_summary("train", rows, result.elapsed_s)
    return EXIT_OK


def _train_ranker(args: argparse.Namespace, config: RaymmConfig, data: str, features: str, out: str) -> int:
    from raymm.train.rank_trainer import train_ranker

    rank = config.rank
    plan = Plan("train --stage rank")
    plan.add(
        f"Ray Train: {config.train.num_workers} worker(s), up to {rank.epochs} epochs, {rank.loss} loss, "
        f"{rank.negatives_per_positive} negatives/positive ({rank.hard_negative_share:.0%} hard)",
        config.train.storage_path or config.stage_dir("train"),
    )
    plan.add("add ranker/ to the two-tower artifact", out)
    if plan.dry_run(args, config):
        return EXIT_OK
    result = train_ranker(config, data, features, out)
    validation = result.metrics["validation"]
    rows: list[tuple[str, Any]] = [("dataset", data), ("features", features), ("model", out)]
    rows += [(f"validation {k}", f"{validation[k]:.4f}") for k in ("auc", "log_loss", "f1", "threshold")]
    rows.append(("best epoch / epochs run", f"{result.metrics['best_epoch']} / {len(result.history)}"))
    print_summary("train --stage rank", rows, result.elapsed_s)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace, config: RaymmConfig) -> int:
    data = args.data or config.stage_dir("data")
    features = _features_for(args, config, data)
    if args.ablation:
        return _run_ablation(args, config, data, features)
    from raymm.eval.evaluate import evaluate

    model = args.model or config.stage_dir("model")
    plan = Plan("evaluate")
    plan.add(f"rank {model}, popularity and content at K={config.evaluate.ks}: test, cold-start", model)
    if args.out:
        plan.add("write evaluation.json", args.out)
    if plan.dry_run(args, config):
        return EXIT_OK
    start = time.perf_counter()
    result = evaluate(config, data, features, model)
    from raymm.eval.rank import evaluate_rank, has_ranker

    if has_ranker(model):
        result["rank"] = evaluate_rank(config, data, features, model, out_dir=args.out)
    if args.out:
        from raymm.data import io

        io.write_json(result, io.join(args.out, "evaluation.json"))
    rows: list[tuple[str, Any]] = [("dataset", data), ("features", features), ("model", model)]
    rows.append(("model version", result["model"]["model_version"]))
    k = 20 if 20 in config.evaluate.ks else max(config.evaluate.ks)
    rows.append(("served blend", result["model"]["blend"]))
    recent_half_life = result["recent_popularity"]["half_life_days"]
    # Side by side: what serving answers, its parts, and the two popularity yardsticks.
    columns = {
        "served": result["model"]["metrics"],
        "no fallback": result["model"]["personal_metrics"],
        "two-tower": result["model"]["two_tower_metrics"],
        "recent pop (= all)" if recent_half_life is None else f"recent pop {recent_half_life:g}d": result[
            "recent_popularity"
        ]["metrics"],
        "all-time pop": result["popularity"]["metrics"],
        "content": result["content"]["metrics"],
    }
    for protocol, about in result["protocols"].items():
        rows.append((f"{protocol} users / candidates", f"{about['users']:,} / {about['candidates']:,}"))
        rows += [
            (
                f"{protocol} {name}@{k}",
                "   ".join(
                    f"{label} {metrics[protocol][f'{name}@{k}']:.4f}" for label, metrics in columns.items()
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
    if args.out:
        rows.append(("written to", f"{args.out}/evaluation.json"))
    print_summary("evaluate", rows, time.perf_counter() - start)
    return EXIT_OK


def _run_ablation(args: argparse.Namespace, config: RaymmConfig, data: str, features: str) -> int:
    from raymm.eval.report import orderings_line
    from raymm.workflows.ablation import ablation, variant

    out = args.out or config.stage_dir("report")
    cfg = config.evaluate
    plan = Plan("evaluate --ablation")
    for name in cfg.ablation:
        entry = variant(name)
        what = f"Ray Train {name}" if entry.trained else f"{name} baseline (no training)"
        plan.add(what, f"{out}/models/{name}" if entry.trained else out)
    if cfg.missing_modality is not None:
        plan.add(f"hide {cfg.missing_rate:.0%} of {cfg.missing_modality} rows in a features copy", out)
        plan.add(f"re-evaluate every variant, re-train {cfg.missing_retrain}", f"{out}/models")
    plan.add("write report.md, report.json and plots", out)
    if plan.dry_run(args, config):
        return EXIT_OK
    progress = None if args.quiet else (lambda message: print(f"[ablation] {message}", flush=True))
    document = ablation(config, data, features, out, progress=progress)
    k = document["k"]
    rows: list[tuple[str, Any]] = [("dataset", data), ("features", features), ("report", document["report"])]
    for row in document["rows"]:
        metrics = row["metrics"]
        cells = [f"{p} R@{k} {metrics[p][f'recall@{k}']:.4f}" for p in document["protocols"] if p in metrics]
        rows.append((row["label"], "   ".join(cells)))
    print_summary("evaluate --ablation", rows, document["elapsed_s"])
    print(f"  orderings: {orderings_line(document['orderings'])}")
    return EXIT_OK


def cmd_quickstart(args: argparse.Namespace, config: RaymmConfig) -> int:
    """synth -> validate -> extract -> train (two towers, then the ranker) -> ablation report."""
    from raymm.eval.report import orderings_line, report_table
    from raymm.workflows.quickstart import STAGES, quickstart

    if args.out:
        config.out = args.out
    data, features = config.stage_dir("data"), config.stage_dir("features")
    model, report_dir = config.stage_dir("model"), config.stage_dir("report")
    cfg = config.train
    plan = Plan("quickstart")
    plan.add(f"synthesize '{config.synth.size}' benchmark", data)
    plan.add("validate it", data)
    _plan_extract(plan, config, data, features, incremental=False)
    plan.add(
        f"Ray Train the two towers ({config.model.align.method} + {config.model.fusion.method}, "
        f"{cfg.num_workers} worker(s), up to {cfg.epochs} epochs)",
        model,
    )
    plan.add(f"Ray Train the ranker (up to {config.rank.epochs} epochs)", f"{model}/ranker")
    plan.add(f"ablation {config.evaluate.ablation} + the ranking stage", report_dir)
    plan.add(
        "serve it live (broker, Ray Serve app, replayed stream.parquet, freshness)",
        f"http://{config.serve.host}:{config.serve.port}",
    )
    if plan.dry_run(args, config):
        return EXIT_OK

    def stage(index: int, message: str) -> console.Stage:
        return console.Stage(index + 1, len(STAGES), message)

    say = None if args.quiet else (lambda message: print(f"[ablation] {message}", flush=True))

    def keep_running(app: Any) -> None:
        print(f"\nthe live app stays up at {app.url} (docs: {app.docs_url}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)

    result = quickstart(
        config,
        progress=not args.quiet,
        stage=stage,
        say=say,
        keep_running=keep_running if args.keep_running else None,
    )
    if result.report is None:
        for problem in result.problems:
            print(f"  problem: {problem}")
        return EXIT_FINDINGS
    document = result.report
    rows: list[tuple[str, Any]] = [("output root", config.out), ("dataset", data), ("features", features)]
    rows += _counts_rows(result.dataset)
    rows += _extract_rows(result.extracted)
    best = result.trained.manifest.metrics["validation"]
    from raymm.recommend.blend import BlendSettings

    rows += [
        ("model", model),
        ("two-tower best val_ndcg@20", f"{best.get('val_ndcg@20', float('nan')):.4f}"),
        ("served blend", BlendSettings.chosen(result.trained.manifest.metrics)),
        ("ranker val auc", f"{result.ranked.metrics['validation']['auc']:.4f}"),
        ("report", document["report"]),
    ]
    print_summary("quickstart", rows, result.elapsed_s)
    print(report_table(document))
    print(f"  orderings: {orderings_line(document['orderings'])}")
    if result.live is not None:
        print(live_lines(result.live))
    return EXIT_OK


def live_lines(demo: Any) -> str:
    """The quickstart's live part for people: one user before and after, freshness, a search."""

    def items(answer: dict[str, Any]) -> str:
        flag = f"  [fallback: {answer['fallback']}]" if answer.get("fallback") else ""
        return ", ".join(i["item_id"] for i in answer["items"][:10]) + flag

    lines = [
        "",
        f"live: {demo.url} (docs {demo.docs_url}); Kafka {demo.bootstrap_servers}",
        f"  replayed {demo.replayed:,} events of stream.parquet at {demo.replay_rate:,.0f} events/s",
        f"  user {demo.user}: {len(demo.user_events)} events, e.g. "
        + ", ".join(f"{e['event']} {e['item_id']}" for e in demo.user_events[:4]),
        f"    before: {items(demo.before)}",
        f"    after:  {items(demo.after)}",
        f"  freshness (event posted -> reflected in a recommendation), {len(demo.freshness_s)} users: "
        f"p50 {demo.freshness_p50_ms:.0f} ms, p99 {demo.freshness_p99_ms:.0f} ms (target p99 < 1000 ms)",
    ]
    if demo.search is not None:
        rank = demo.search["rank"]
        lines.append(
            f"  search (by image) {demo.search['query'][:70]!r}...: the text-less item {demo.search['item_id']}, "
            f"posted live with {demo.search['source']}'s image and audio, "
            + (f"ranks #{rank}" if rank else "is not in the top 10")
            + f" of: {items(demo.search['answer'])}"
        )
    return "\n".join(lines)


def cmd_submit(args: argparse.Namespace, config: RaymmConfig) -> int:
    """Run ``raymm extract|train|evaluate ...`` as a job on a Ray cluster (:mod:`raymm.workflows.submit`)."""
    from raymm.workflows import submit

    options, stage_words = submit.split_options(args)
    # The stage's own arguments and configuration are checked here, before anything is submitted.
    stage_args = build_parser().parse_args([args.stage, *stage_words])
    stage_config = load_config(stage_args.config, _overrides(stage_args))
    return submit.run(options, args.stage, stage_words, stage_args, stage_config)


# --- the stream ---------------------------------------------------------------------------------


def _bootstrap(args: argparse.Namespace, config: RaymmConfig, command: str) -> str:
    """The Kafka to use: ``--bootstrap``, else ``kafka.bootstrap_servers``; an error naming both."""
    bootstrap = getattr(args, "bootstrap", None) or config.kafka.bootstrap_servers
    if bootstrap is None:
        raise RaymmError(
            f"raymm {command} needs a Kafka: pass --bootstrap HOST:PORT or set kafka.bootstrap_servers "
            "(`raymm broker` starts an embedded one on this machine and prints its address)"
        )
    return str(bootstrap)


def cmd_broker(args: argparse.Namespace, config: RaymmConfig) -> int:
    """Start an embedded Kafka-protocol broker, create raymm's topics, and serve until Ctrl-C."""
    from raymm.stream.broker import EmbeddedBroker, ensure_topics

    kind = args.kind or config.kafka.embedded_broker
    plan = Plan("broker")
    plan.add(f"start the embedded {kind} broker on loopback", f"port {args.port or 'free'}")
    plan.add("create the topics", ", ".join(f"{t} ({n})" for t, n in config.kafka.topics().items()))
    if plan.dry_run(args, config):
        return EXIT_OK
    with EmbeddedBroker(kind, port=args.port, data_dir=args.data_dir) as broker:
        ensure_topics(broker.bootstrap_servers, config.kafka.topics(), configs=config.kafka.topic_configs())
        print_summary(
            "broker",
            [
                ("broker", f"{kind} (embedded, {'in memory' if kind == 'tansu' else 'on disk'})"),
                ("bootstrap servers", broker.bootstrap_servers),
                ("topics", ", ".join(f"{t} x{n}" for t, n in config.kafka.topics().items())),
                ("use it with", f"--set kafka.bootstrap_servers={broker.bootstrap_servers}"),
                ("stop", "Ctrl-C"),
            ],
        )
        while broker.running:
            time.sleep(0.5)
        print(f"raymm: the broker stopped on its own; its last output:\n{broker.log_tail()}", file=sys.stderr)
        return EXIT_FINDINGS


def cmd_produce(args: argparse.Namespace, config: RaymmConfig) -> int:
    """Replay a dataset's ``stream.parquet`` onto ``raymm.events`` at a steady rate."""
    from raymm.stream.broker import ensure_topics
    from raymm.stream.events import EVENTS_TOPIC
    from raymm.stream.producer import replay

    if args.out:
        config.out = args.out

    events = args.events or f"{config.stage_dir('data')}/stream.parquet"
    rate = "as fast as it goes" if args.rate is None else f"{args.rate:g} events/s"
    plan = Plan("produce")
    plan.add(f"replay {events} ({rate}, {args.limit or 'all'} events)", EVENTS_TOPIC)
    if plan.dry_run(args, config):
        return EXIT_OK
    bootstrap = _bootstrap(args, config, "produce")
    from raymm.data import io

    if not io.exists(events):
        raise RaymmError(f"no events to replay: {events} does not exist (--events FILE)")
    ensure_topics(bootstrap, config.kafka.topics(), configs=config.kafka.topic_configs(), kafka=config.kafka)
    result = replay(
        events,
        bootstrap,
        rate=args.rate,
        limit=args.limit,
        progress=not args.quiet,
        partitioner=config.kafka.partitioner,
        kafka=config.kafka,
    )
    print_summary(
        "produce",
        [
            ("events", events),
            ("sent", f"{result.sent:,} to {EVENTS_TOPIC} on {bootstrap}"),
            ("rate", f"{result.rate:,.0f} events/s"),
            ("per partition", ", ".join(f"{p}: {n:,}" for p, n in result.partitions.items())),
        ],
        result.elapsed_s,
    )
    return EXIT_OK


def cmd_consume(args: argparse.Namespace, config: RaymmConfig) -> int:
    """Keep user state from ``raymm.events`` by a model's user-state spec, with snapshots."""
    from raymm.stream.consumer import EventConsumer
    from raymm.stream.snapshot import SnapshotStore
    from raymm.stream.state import StateSpec, UserStateStore

    if args.out:
        config.out = args.out

    model = args.model or config.stage_dir("model")
    settings = config.stream
    snapshots = config.snapshot_uri()
    plan = Plan("consume")
    plan.add(f"user state by the spec of {model}", f"rank {args.rank} of {args.world_size}")
    plan.add("snapshots", snapshots)
    if plan.dry_run(args, config):
        return EXIT_OK
    if not 0 <= args.rank < args.world_size:
        raise RaymmError(f"--rank must be in [0, --world-size), got {args.rank} of {args.world_size}")
    bootstrap = _bootstrap(args, config, "consume")
    state = UserStateStore(
        StateSpec.from_artifact(model, settings.dedupe_window, settings.max_seen),
        max_users_in_memory=settings.max_users_in_memory,
        spill_dir=settings.spill_dir,
    )
    consumer = EventConsumer.from_settings(
        bootstrap,
        state,
        SnapshotStore(snapshots, settings.keep_snapshots),
        settings,
        rank=args.rank,
        world_size=args.world_size,
        kafka=config.kafka,
    )
    start = time.monotonic()
    consumer.open()
    try:
        if args.drain:
            consumer.drain(timeout_s=args.timeout)
        else:
            consumer.start()
            while True:  # until Ctrl-C; the snapshot on the way out is in `finally`
                time.sleep(10)
                m = consumer.metrics()
                health = "" if consumer.alive() else " (NOT ALIVE: see the log)"
                print(
                    f"[consume] {m.applied:,} applied, {m.events_per_s:,.0f} events/s, lag {m.total_lag:,}, "
                    f"dead letters {m.dead_letters:,}{health}",
                    flush=True,
                )
    finally:
        consumer.stop()
        state.close()
    m = consumer.metrics()
    print_summary(
        "consume",
        [
            ("partitions", ", ".join(map(str, m.partitions)) or "none"),
            ("events applied", f"{m.applied:,} ({m.duplicates:,} duplicates skipped)"),
            ("dead letters", f"{m.dead_letters:,} {dict(m.dead_letters_by_reason) or ''}"),
            ("users", f"{m.users_in_memory:,} in memory, {m.users_spilled:,} spilled"),
            ("snapshots", f"{m.snapshots} written to {snapshots} ({m.snapshot_failures} failed)"),
        ],
        time.monotonic() - start,
    )
    return EXIT_OK if m.snapshot_failures == 0 else EXIT_FINDINGS


def cmd_serve(args: argparse.Namespace, config: RaymmConfig) -> int:
    """Deploy the live application and keep it up until Ctrl-C."""
    from raymm.serve.runner import running_app

    if args.out:
        config.out = args.out
    if args.port is not None:
        config.serve.port = args.port
    if args.host is not None:
        config.serve.host = args.host
    model = args.model or config.serve.model or config.stage_dir("model")
    plan = Plan("serve")
    plan.add("start or join Ray", config.ray.address or "a local instance")
    plan.add("Kafka", config.kafka.bootstrap_servers or f"an embedded {config.kafka.embedded_broker} broker")
    plan.add(
        f"deploy {model} with {config.serve.state_shards} state shard(s)",
        f"{config.serve.host}:{config.serve.port}",
    )
    if plan.dry_run(args, config):
        return EXIT_OK
    with running_app(config, model) as app:
        print_summary(
            "serve",
            [
                ("url", app.url),
                ("docs", app.docs_url),
                ("kafka", app.bootstrap_servers + (" (embedded)" if app.embedded_broker else "")),
                ("model", app.model),
                ("state shards", f"{app.state_shards}, snapshots in {config.snapshot_uri()}"),
                ("try", f"curl '{app.url}/v1/recommendations/some-user?k=5'"),
                ("stop", "Ctrl-C (each shard writes a final snapshot)"),
            ],
        )
        while True:
            time.sleep(1)


def cmd_deploy_render(args: argparse.Namespace, config: RaymmConfig) -> int:
    """Write deploy/serve.yaml and k8s/<variant>/*.yaml under --out (default: here), or --check them."""
    from raymm.deploy.render import render, stale, write

    root = args.out or "."
    files = render(config)
    plan = Plan("deploy render")
    for path in files:
        plan.add("render", f"{root}/{path}")
    if plan.dry_run(args, config):
        return EXIT_OK
    if args.check:
        outdated = stale(files, root)
        for path in outdated:
            print_warning(f"{path} differs from what this configuration renders: run `raymm deploy render`")
        return EXIT_FINDINGS if outdated else EXIT_OK
    changed = write(files, root)
    print_summary("deploy render", [("files", f"{len(files)} under {root}, {len(changed)} changed")])
    return EXIT_OK


# --- argument parsing -----------------------------------------------------------------------


#: What ``--out`` names for each command: one flag, one meaning per command, said in its help.
OUT_MEANING = {
    "synth": "the dataset directory to write (default: <out>/data)",
    "validate": "a directory for validation.json (default: none)",
    "import": "the dataset directory to write (default: <out>/data)",
    "export": "the export directory (default: <out>/export)",
    "extract": "the features directory (default: <out>/features)",
    "train": "the model artifact directory (default: <out>/model)",
    "evaluate": "where evaluation.json or the ablation report goes (default: none, or <out>/report)",
    "quickstart": "the output root, replacing the config's `out`",
    "broker": "the output root (unused: the broker writes nothing there)",
    "produce": "the output root whose data/stream.parquet is replayed by default",
    "consume": "the output root; snapshots go to stream.snapshot_uri or <out>/state",
    "serve": "the output root: the model at <out>/model, snapshots in <out>/state",
    "render": "the directory that gets deploy/ and k8s/ (default: the current directory)",
}


def _common_options(command: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--config", metavar="FILE", help="YAML configuration file (configs/*.yaml)")
    group.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a config key, dotted (repeatable), e.g. --set synth.size=tiny",
    )
    group.add_argument("--out", metavar="DIR", help=f"{OUT_MEANING[command]}; a path or URI")
    group.add_argument(
        "--dry-run", action="store_true", help="validate the config, print the plan, run nothing"
    )
    group.add_argument("--quiet", action="store_true", help="no progress bars")
    group.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own logs and worker output on the console (default: <out>/logs/raymm.log)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``raymm`` console script."""
    parser = argparse.ArgumentParser(
        prog="raymm", description="Distributed, streaming, multimodal recommender on Ray."
    )
    parser.add_argument("--version", action="version", version=f"raymm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="make, check, import and export datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    synth = data_commands.add_parser(
        "synth", parents=[_common_options("synth")], help="generate the synthetic benchmark"
    )
    synth.add_argument("--size", choices=get_args(SizeName), help="preset (synth.size)")
    synth.add_argument("--seed", type=int, help="random seed (seed)")
    synth.set_defaults(handler=cmd_data_synth)

    validate = data_commands.add_parser(
        "validate",
        parents=[_common_options("validate")],
        help="check a dataset and report every problem with row numbers",
    )
    validate.add_argument("path", nargs="?", help="dataset directory (default: <out>/data)")
    validate.set_defaults(handler=cmd_data_validate)

    imp = data_commands.add_parser(
        "import", parents=[_common_options("import")], help="import a public dataset"
    )
    imp.add_argument("--format", choices=get_args(ImportFormat), help="import.format")
    imp.add_argument("--source", help="source directory or file (import.source)")
    imp.add_argument("--name", help="dataset name inside the source, for recbole/mmrec (import.name)")
    imp.set_defaults(handler=cmd_data_import)

    export = data_commands.add_parser(
        "export", parents=[_common_options("export")], help="export a dataset for peer libraries"
    )
    export.add_argument("--format", choices=["mmrec"], default="mmrec")
    export.add_argument("--data", help="dataset directory to export (default: <out>/data)")
    export.add_argument("--name", default="raymm", help="dataset name in the exported files")
    export.set_defaults(handler=cmd_data_export)

    extract = commands.add_parser(
        "extract",
        parents=[_common_options("extract")],
        help="encode items' text, images and audio with Ray Data actor pools",
    )
    extract.add_argument("--data", help="dataset directory (default: <out>/data)")
    extract.add_argument("--incremental", action="store_true", help="encode only items without features")
    extract.set_defaults(handler=cmd_extract)

    train = commands.add_parser(
        "train", parents=[_common_options("train")], help="align, fuse and train the two towers on Ray Train"
    )
    train.add_argument("--data", help="dataset directory (default: <out>/data)")
    train.add_argument(
        "--features",
        help="features directory (default: <out>/features, else the dataset's imported features.parquet)",
    )
    train.add_argument(
        "--stage",
        choices=["retrieval", "rank"],
        default="retrieval",
        help="retrieval: the two towers, written to --out (default <out>/model); rank: the ranker, added "
        "to the two-tower artifact already at --out",
    )
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        parents=[_common_options("evaluate")],
        help="rank a model and popularity offline (test and cold-start protocols), or run the ablation",
    )
    evaluate.add_argument("--data", help="dataset directory (default: <out>/data)")
    evaluate.add_argument(
        "--features",
        help="features directory (default: <out>/features, else the dataset's imported features.parquet)",
    )
    evaluate.add_argument("--model", help="model artifact directory (default: <out>/model)")
    evaluate.add_argument(
        "--ablation",
        action="store_true",
        help="train and compare evaluate.ablation's variants; report into --out (default: <out>/report)",
    )
    evaluate.set_defaults(handler=cmd_evaluate)

    from raymm.workflows.submit import STAGES, add_options

    submit_cmd = commands.add_parser(
        "submit",
        help="run extract, train or evaluate as a job on a Ray cluster, following its logs",
        description="Run `raymm STAGE ARGS` as a job on a Ray cluster (its job API, --address), in the "
        "runtime environment of a local run; stream its logs and exit with its status (0 succeeded, "
        "else the stage's exit code, 3 failed without one, 130 stopped). Ctrl-C asks whether to stop it.",
    )
    submit_cmd.add_argument("stage", choices=STAGES, help="the stage to run on the cluster")
    submit_cmd.add_argument(
        "stage_args",
        nargs=argparse.REMAINDER,
        metavar="ARGS",
        help="the stage's own arguments, as for a local run",
    )
    add_options(submit_cmd)
    submit_cmd.set_defaults(handler=cmd_submit, starts_ray=False, config=None, overrides=[])

    quickstart = commands.add_parser(
        "quickstart",
        parents=[_common_options("quickstart")],
        help="run the main job end to end on the embedded defaults",
    )
    quickstart.add_argument(
        "--keep-running", action="store_true", help="leave the live app up at the end, until Ctrl-C"
    )
    quickstart.set_defaults(handler=cmd_quickstart)

    serve_cmd = commands.add_parser(
        "serve",
        parents=[_common_options("serve")],
        help="deploy the live app on Ray Serve (an embedded broker when kafka.bootstrap_servers is unset)",
    )
    serve_cmd.add_argument("--model", help="model artifact (default: serve.model, else <out>/model)")
    serve_cmd.add_argument("--host", help="serve.host")
    serve_cmd.add_argument("--port", type=int, help="serve.port")
    serve_cmd.set_defaults(handler=cmd_serve)

    deploy = commands.add_parser("deploy", help="render the Serve config and the Kubernetes manifests")
    deploy_commands = deploy.add_subparsers(dest="deploy_command", required=True, metavar="SUBCOMMAND")
    render = deploy_commands.add_parser(
        "render",
        parents=[_common_options("render")],
        help="write deploy/serve.yaml and k8s/{dev,prod}/*.yaml from the configuration (deploy: section)",
    )
    render.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 naming the files that differ"
    )
    render.set_defaults(handler=cmd_deploy_render, starts_ray=False)

    broker = commands.add_parser(
        "broker",
        parents=[_common_options("broker")],
        help="run an embedded Kafka-protocol broker on loopback (for a laptop; production brings its Kafka)",
    )
    broker.add_argument("--kind", choices=["noida", "tansu"], help="kafka.embedded_broker")
    broker.add_argument("--port", type=int, help="listen port (default: a free one)")
    broker.add_argument("--data-dir", help="noida's data directory (kept across restarts)")
    broker.set_defaults(handler=cmd_broker)

    produce = commands.add_parser(
        "produce", parents=[_common_options("produce")], help="replay stream.parquet onto raymm.events"
    )
    produce.add_argument("--events", help="interactions parquet (default: <out>/data/stream.parquet)")
    produce.add_argument(
        "--rate", type=_positive_float, help="events per second (default: as fast as it goes)"
    )
    produce.add_argument("--limit", type=_positive_int, help="send only the first LIMIT events")
    produce.add_argument("--bootstrap", help="Kafka bootstrap servers (kafka.bootstrap_servers)")
    produce.set_defaults(handler=cmd_produce)

    consume = commands.add_parser(
        "consume",
        parents=[_common_options("consume")],
        help="keep user state from raymm.events with exactly-once effect and snapshots",
    )
    consume.add_argument(
        "--model", help="model artifact whose user-state spec to keep (default: <out>/model)"
    )
    consume.add_argument(
        "--rank", type=int, default=0, help="this consumer's rank (owns partition %% world == rank)"
    )
    consume.add_argument("--world-size", type=_positive_int, default=1, help="number of consumers")
    consume.add_argument("--bootstrap", help="Kafka bootstrap servers (kafka.bootstrap_servers)")
    consume.add_argument("--drain", action="store_true", help="stop once caught up with the end of the log")
    consume.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds --drain may take")
    consume.set_defaults(handler=cmd_consume)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


# Command-line flags that are shorthands for config keys.
_FLAG_KEYS = {"size": "synth.size", "seed": "seed", "format": "import.format", "source": "import.source"}


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None and not (args.handler is cmd_data_export and flag == "format"):
            overrides.append(f"{key}={value}")
    if args.handler is cmd_data_import and args.name is not None:
        overrides.append(f"import.name={args.name}")
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``raymm`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace, RaymmConfig], int] = args.handler
    routing: console.ConsoleRouting | None = None
    try:
        config = load_config(args.config, _overrides(args))
        if getattr(args, "quiet", False):
            config.ray.log_to_driver = False
        # A command that starts no Ray keeps no log file (deploy render writes into the repository).
        if not getattr(args, "dry_run", False) and getattr(args, "starts_ray", True):
            routing = console.configure_logging(console.log_file_for(args.out or config.out), args.verbose)
        return handler(args, config)
    except RaymmError as exc:
        print(f"raymm: error: {exc}", file=sys.stderr)
        if routing is not None and routing.log_file:
            print(f"raymm: Ray's logs of this run: {routing.log_file}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("raymm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:
        if not type(exc).__module__.startswith("kafka."):
            raise
        # kafka-python's errors (an unreachable or refusing broker) are input, not a crash.
        print(f"raymm: error: Kafka: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    finally:
        if routing is not None:  # called in-process (tests, notebooks): give the console back
            routing.close()


if __name__ == "__main__":
    sys.exit(main())
