"""The ``raymm`` command line: ``raymm data synth|validate|import|export``, ``extract``, ``train``,
``evaluate``, ``quickstart``, ``serve``, the stream: ``broker``, ``produce`` and ``consume``,
``deploy render`` (the Serve config and Kubernetes manifests), and ``submit`` (a stage as a job on a
Ray cluster).

Every command takes ``--config FILE``, ``--set key=value`` (repeatable), ``--out DIR`` and
``--dry-run`` (validate the configuration, print the plan, run nothing). Errors caused by input
print one clear message and exit 2; validation findings exit 1.

Each command parses its flags and delegates to one function of the package (``raymm.workflows``,
``raymm.deploy.render``), the same function the Python API calls; the typed result it returns
prints its own summary (:func:`print_summary`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, get_args

from raymm import __version__, console
from raymm.config import RaymmConfig, load_config
from raymm.console import Plan, StageResult
from raymm.data.settings import ImportFormat, SizeName
from raymm.errors import RaymmError

EXIT_OK, EXIT_FINDINGS, EXIT_INPUT_ERROR = 0, 1, 2


def print_summary(result: StageResult) -> int:
    """Print a stage's summary (:func:`raymm.console.print_result`); its exit code: 0, or 1 for findings."""
    console.print_result(result)
    return EXIT_OK if result.ok else EXIT_FINDINGS


#: What a command's handler returns: the plan ``--dry-run`` prints (None: the command has its own),
#: and the call that runs the stage: a result to summarise, an exit code, or None (served until Ctrl-C).
Delegation = tuple[Plan | None, Callable[[], StageResult | int | None]]


def _say(message: str) -> None:
    print(message, flush=True)


def _ablation_progress(message: str) -> None:
    print(f"[ablation] {message}", flush=True)


def _root(args: argparse.Namespace, config: RaymmConfig) -> RaymmConfig:
    """The config with ``--out`` as its output root, for the commands where it names the root."""
    if args.out:
        config.out = args.out
    return config


# --- commands: each parses its flags and hands them to one function of the package -------------


def cmd_data_synth(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    from raymm.workflows import data

    run = partial(data.synth, config, out=args.out, progress=not args.quiet)
    return data.plan_synth(config, out=args.out), run


def cmd_data_validate(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    from raymm.workflows import data

    run = partial(data.validate, config, path=args.path, report_dir=args.out, progress=not args.quiet)
    return data.plan_validate(config, path=args.path), run


def cmd_data_import(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    from raymm.workflows import data

    run = partial(data.import_data, config, out=args.out, progress=not args.quiet)
    return data.plan_import(config, out=args.out), run


def cmd_data_export(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    from raymm.workflows import data

    paths = {"data": args.data, "out": args.out, "name": args.name}
    return data.plan_export(config, **paths), partial(data.export_data, config, **paths)


def cmd_extract(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    from raymm.workflows import extract

    options = {"out": args.out, "incremental": args.incremental}
    run = partial(extract.extract, config, data=args.data, **options, progress=not args.quiet)
    return extract.plan_extract(config, **options), run


def cmd_train(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    from raymm.workflows import train

    paths = {"data": args.data, "features": args.features}
    if args.stage == "rank":
        run = partial(train.train_ranker, config, **paths, model=args.out, say=_say)
        return train.plan_train_ranker(config, model=args.out), run
    return train.plan_train(config, out=args.out), partial(
        train.train, config, **paths, out=args.out, say=_say
    )


def cmd_evaluate(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    from raymm.workflows import evaluate

    paths = {"data": args.data, "features": args.features, "out": args.out}
    if args.ablation:
        progress = None if args.quiet else _ablation_progress
        ablation = partial(evaluate.run_ablation, config, **paths, progress=progress, say=_say)
        return evaluate.plan_ablation(config, out=args.out), ablation
    run = partial(evaluate.evaluate, config, **paths, model=args.model, say=_say)
    return evaluate.plan_evaluate(config, model=args.model, out=args.out), run


def cmd_quickstart(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    """synth -> validate -> extract -> train (two towers, then the ranker) -> ablation report -> live."""
    from raymm.workflows.quickstart import plan_quickstart, quickstart

    config = _root(args, config)
    run = partial(quickstart, config, progress=not args.quiet, keep_running=args.keep_running)
    return plan_quickstart(config), run


def cmd_submit(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    """Run ``raymm extract|train|evaluate ...`` as a job on a Ray cluster (:mod:`raymm.workflows.submit`)."""
    from raymm.workflows import submit

    options, stage_words = submit.split_options(args)
    # The stage's own arguments and configuration are checked here, before anything is submitted.
    stage_args = build_parser().parse_args([args.stage, *stage_words])
    stage_config = load_config(stage_args.config, _overrides(stage_args))
    return None, partial(submit.run, options, args.stage, stage_words, stage_args, stage_config)


def cmd_broker(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    """Start an embedded Kafka-protocol broker, create raymm's topics, and serve until Ctrl-C."""
    from raymm.workflows import stream

    options = {"kind": args.kind, "port": args.port}

    def run() -> int:
        stopped = stream.run_broker(config, **options, data_dir=args.data_dir, on_ready=console.print_result)
        print(f"raymm: the broker stopped on its own; its last output:\n{stopped.log_tail}", file=sys.stderr)
        return EXIT_FINDINGS

    return stream.plan_broker(config, **options), run


def cmd_produce(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    """Replay a dataset's ``stream.parquet`` onto ``raymm.events`` at a steady rate."""
    from raymm.workflows import stream

    config = _root(args, config)
    replay = {"events": args.events, "rate": args.rate, "limit": args.limit}
    run = partial(stream.produce, config, **replay, bootstrap=args.bootstrap, progress=not args.quiet)
    return stream.plan_produce(config, **replay), run


def cmd_consume(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    """Keep user state from ``raymm.events`` by a model's user-state spec, with snapshots."""
    from raymm.workflows import stream

    config = _root(args, config)
    plan = stream.plan_consume(config, model=args.model, rank=args.rank, world_size=args.world_size)
    options = stream.ConsumeOptions(args.rank, args.world_size, drain=args.drain, timeout_s=args.timeout)
    return plan, partial(
        stream.consume, config, model=args.model, bootstrap=args.bootstrap, options=options, say=_say
    )


def cmd_serve(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    """Deploy the live application and keep it up until Ctrl-C."""
    from raymm.workflows.serve import plan_serve, serve

    config = _root(args, config)
    if args.port is not None:
        config.serve.port = args.port
    if args.host is not None:
        config.serve.host = args.host
    run = partial(serve, config, model=args.model, on_ready=console.print_result)
    return plan_serve(config, model=args.model), run


def cmd_deploy_render(args: argparse.Namespace, config: RaymmConfig) -> Delegation:
    """Write deploy/serve.yaml and k8s/<variant>/*.yaml under --out (default: here), or --check them."""
    from raymm.deploy.render import plan_render, render_deploy

    root = args.out or "."
    return plan_render(config, root=root), partial(render_deploy, config, root=root, check=args.check)


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


def _command(
    parent: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Callable[[argparse.Namespace, RaymmConfig], Delegation],
    help_text: str,
    **defaults: Any,
) -> argparse.ArgumentParser:
    """The subcommand ``name`` of ``parent``, with the common options, run by ``handler``."""
    command = parent.add_parser(name, parents=[_common_options(name)], help=help_text)
    command.set_defaults(handler=handler, **defaults)
    return command


def _inputs(command: argparse.ArgumentParser) -> None:
    """``--data`` and ``--features``, the inputs of train and evaluate."""
    command.add_argument("--data", help="dataset directory (default: <out>/data)")
    command.add_argument(
        "--features",
        help="features directory (default: <out>/features, else the dataset's imported features.parquet)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``raymm`` console script."""
    parser = argparse.ArgumentParser(
        prog="raymm", description="Distributed, streaming, multimodal recommender on Ray."
    )
    parser.add_argument("--version", action="version", version=f"raymm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="make, check, import and export datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    synth = _command(data_commands, "synth", cmd_data_synth, "generate the synthetic benchmark")
    synth.add_argument("--size", choices=get_args(SizeName), help="preset (synth.size)")
    synth.add_argument("--seed", type=int, help="random seed (seed)")

    validate = _command(
        data_commands,
        "validate",
        cmd_data_validate,
        "check a dataset and report every problem with row numbers",
    )
    validate.add_argument("path", nargs="?", help="dataset directory (default: <out>/data)")

    imp = _command(data_commands, "import", cmd_data_import, "import a public dataset")
    imp.add_argument("--format", choices=get_args(ImportFormat), help="import.format")
    imp.add_argument("--source", help="source directory or file (import.source)")
    imp.add_argument("--name", help="dataset name inside the source, for recbole/mmrec (import.name)")

    export = _command(data_commands, "export", cmd_data_export, "export a dataset for peer libraries")
    export.add_argument("--format", choices=["mmrec"], default="mmrec")
    export.add_argument("--data", help="dataset directory to export (default: <out>/data)")
    export.add_argument("--name", default="raymm", help="dataset name in the exported files")

    extract = _command(
        commands, "extract", cmd_extract, "encode items' text, images and audio with Ray Data actor pools"
    )
    extract.add_argument("--data", help="dataset directory (default: <out>/data)")
    extract.add_argument("--incremental", action="store_true", help="encode only items without features")

    train = _command(commands, "train", cmd_train, "align, fuse and train the two towers on Ray Train")
    _inputs(train)
    train.add_argument(
        "--stage",
        choices=["retrieval", "rank"],
        default="retrieval",
        help="retrieval: the two towers, written to --out (default <out>/model); rank: the ranker, added "
        "to the two-tower artifact already at --out",
    )

    evaluate = _command(
        commands,
        "evaluate",
        cmd_evaluate,
        "rank a model and popularity offline (test and cold-start protocols), or run the ablation",
    )
    _inputs(evaluate)
    evaluate.add_argument("--model", help="model artifact directory (default: <out>/model)")
    evaluate.add_argument(
        "--ablation",
        action="store_true",
        help="train and compare ablation.variants; report into --out (default: <out>/report)",
    )

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

    quickstart = _command(
        commands, "quickstart", cmd_quickstart, "run the main job end to end on the embedded defaults"
    )
    quickstart.add_argument(
        "--keep-running", action="store_true", help="leave the live app up at the end, until Ctrl-C"
    )

    serve_cmd = _command(
        commands,
        "serve",
        cmd_serve,
        "deploy the live app on Ray Serve (an embedded broker when kafka.bootstrap_servers is unset)",
    )
    serve_cmd.add_argument("--model", help="model artifact (default: serve.model, else <out>/model)")
    serve_cmd.add_argument("--host", help="serve.host")
    serve_cmd.add_argument("--port", type=int, help="serve.port")

    deploy = commands.add_parser("deploy", help="render the Serve config and the Kubernetes manifests")
    deploy_commands = deploy.add_subparsers(dest="deploy_command", required=True, metavar="SUBCOMMAND")
    render = _command(
        deploy_commands,
        "render",
        cmd_deploy_render,
        "write deploy/serve.yaml and k8s/{dev,prod}/*.yaml from the configuration (deploy: section)",
        starts_ray=False,
    )
    render.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 naming the files that differ"
    )

    broker = _command(
        commands,
        "broker",
        cmd_broker,
        "run an embedded Kafka-protocol broker on loopback (for a laptop; production brings its Kafka)",
    )
    broker.add_argument("--kind", choices=["noida", "tansu"], help="kafka.embedded_broker")
    broker.add_argument("--port", type=int, help="listen port (default: a free one)")
    broker.add_argument("--data-dir", help="noida's data directory (kept across restarts)")

    produce = _command(commands, "produce", cmd_produce, "replay stream.parquet onto raymm.events")
    produce.add_argument("--events", help="interactions parquet (default: <out>/data/stream.parquet)")
    produce.add_argument(
        "--rate", type=_positive_float, help="events per second (default: as fast as it goes)"
    )
    produce.add_argument("--limit", type=_positive_int, help="send only the first LIMIT events")
    produce.add_argument("--bootstrap", help="Kafka bootstrap servers (kafka.bootstrap_servers)")

    consume = _command(
        commands,
        "consume",
        cmd_consume,
        "keep user state from raymm.events with exactly-once effect and snapshots",
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
    handler: Callable[[argparse.Namespace, RaymmConfig], Delegation] = args.handler
    routing: console.ConsoleRouting | None = None
    try:
        config = load_config(args.config, _overrides(args))
        if getattr(args, "quiet", False):
            config.ray.log_to_driver = False
        # A command that starts no Ray keeps no log file (deploy render writes into the repository).
        if not getattr(args, "dry_run", False) and getattr(args, "starts_ray", True):
            routing = console.configure_logging(console.log_file_for(args.out or config.out), args.verbose)
        plan, run = handler(args, config)
        if plan is not None and args.dry_run:
            print(plan.render(config.to_yaml()))
            return EXIT_OK
        outcome = run()
        if outcome is None or isinstance(outcome, int):
            return outcome or EXIT_OK
        return print_summary(outcome)
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
