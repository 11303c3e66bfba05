"""``raymm submit``: run ``raymm extract|train|evaluate`` as a job on a Ray cluster.

The job runs the command a local run would, ``raymm <stage> <args>``, on the cluster, through
Ray's job API (:class:`ray.job_submission.JobSubmissionClient`, the dashboard's HTTP port), in
the runtime environment of a local run:

- the same command line, plus ``--set ray.address=auto``: the job's driver joins the cluster it
  runs on (a Ray job's driver finds it in ``RAY_ADDRESS``) instead of starting a local instance;
- the same code: this machine's ``raymm`` package goes along as a ``py_modules`` entry, ahead of
  any raymm installed on the nodes (``--cluster-raymm`` runs the nodes' own, e.g. the image's);
- the same files: ``--working-dir`` (default: the current directory) is uploaded and is the job's
  working directory, so ``--config configs/x.yaml`` names the same file there as here;
- the environment variables that ``--env NAME`` (this shell's value) or ``--env NAME=VALUE``
  names, for the driver and every worker of the job.

A local run's own Ray settings (``raymm.runtime``: no preemption watcher, a 1 s Serve health
check) are for a one-node instance and do not go along; a cluster keeps its defaults.
The nodes need raymm's dependencies (``deploy/Dockerfile``); they share no disk, so data, features,
models and checkpoints belong on object storage (``s3://...``), and a warning names any local path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import raymm
from raymm import console
from raymm.config import RaymmConfig
from raymm.errors import RaymmError

#: The stages that run as jobs.
STAGES = ("extract", "train", "evaluate")
#: Exit codes besides the stage's own: a job stopped (or left running after Ctrl-C), like an
#: interrupted local run; a job that failed without an exit code of the stage (its runtime
#: environment or the cluster failed before or around the command).
EXIT_STOPPED, EXIT_JOB_FAILED = 130, 3
#: Never uploaded with the working directory (Ray also skips what its .gitignore files list).
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", ".pytest_cache"]
#: Ray lets these override an explicit address; ``--address`` wins here.
_ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
#: Job statuses after which nothing changes.
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def add_options(parser: argparse.ArgumentParser) -> None:
    """``raymm submit``'s own options (the rest of the command line is the stage's)."""
    group = parser.add_argument_group("submit options (anywhere on the line; the others are the stage's)")
    group.add_argument(
        "--address",
        help="the cluster's job API: the head's dashboard URL, e.g. http://HEAD:8265 "
        "(default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS)",
    )
    group.add_argument(
        "--working-dir",
        help="directory uploaded as the job's working directory (default: the current one); "
        "--config must name a file inside it",
    )
    group.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="an environment variable for the job's processes, this shell's value unless given "
        "(repeatable); values are visible to whoever can read the cluster's dashboard",
    )
    group.add_argument(
        "--cluster-raymm",
        action="store_true",
        help="run the raymm installed on the nodes (their image) instead of this machine's",
    )
    group.add_argument("--submission-id", help="the job's id (default: raymm-<stage>-<time>-<random>)")
    group.add_argument(
        "--no-wait", action="store_true", help="submit, print the job's id, and return without following it"
    )
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="print the job and the equivalent `ray job submit`; submit nothing",
    )


def split_options(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """(submit's options, the stage's arguments) from ``args.stage_args``, the words after the stage.

    Submit's options may come before or after the stage; those after it are taken out of the
    stage's words here, and the rest go to the stage unchanged (a leading ``--`` is dropped).
    """
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_options(own)
    words = list(args.stage_args)
    if words[:1] == ["--"]:
        words = words[1:]
    options, stage_words = own.parse_known_args(words, namespace=argparse.Namespace(**vars(args)))
    return options, stage_words


@dataclass(frozen=True)
class JobSpec:
    """What is submitted: the command, its runtime environment, its id and metadata."""

    stage: str
    entrypoint: list[str]
    runtime_env: dict[str, Any]
    submission_id: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The entrypoint as the shell line Ray runs."""
        return shlex.join(self.entrypoint)

    def shown_runtime_env(self) -> dict[str, Any]:
        """The runtime environment with environment values masked (they may be credentials)."""
        shown = dict(self.runtime_env)
        if "env_vars" in shown:
            shown["env_vars"] = dict.fromkeys(shown["env_vars"], "***")
        return shown

    def ray_job_submit(self, address: str) -> list[str]:
        """The equivalent ``ray job submit`` command line (environment values masked)."""
        env = {k: v for k, v in self.shown_runtime_env().items() if k != "working_dir"}
        return [
            "ray",
            "job",
            "submit",
            "--address",
            address,
            "--submission-id",
            self.submission_id,
            "--working-dir",
            str(self.runtime_env["working_dir"]),
            "--runtime-env-json",
            json.dumps(env),
            "--",
            *self.entrypoint,
        ]


def job_spec(
    stage: str,
    stage_args: Sequence[str],
    *,
    config_file: str | None,
    working_dir: str | None = None,
    env: Sequence[str] = (),
    cluster_raymm: bool = False,
    submission_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> JobSpec:
    """The job that runs ``raymm <stage> <stage_args>`` on a cluster as it would run here.

    ``config_file`` is the ``--config`` among ``stage_args``: it must lie inside ``working_dir``
    (default: the current directory), and the job names it relative to it. ``env`` holds
    ``NAME`` (this process's value, from ``environ``) or ``NAME=VALUE``. Raises
    :class:`~raymm.errors.RaymmError` naming a missing directory, a config outside it, or an
    unset variable.
    """
    if stage not in STAGES:
        raise RaymmError(f"raymm submit runs one of {', '.join(STAGES)}, got {stage!r}")
    root = Path(working_dir or os.getcwd()).resolve()
    if not root.is_dir():
        raise RaymmError(f"--working-dir {working_dir} is not a directory")
    words = list(stage_args)
    if config_file is not None:
        words = _replace_option(words, "--config", _inside(root, config_file))
    runtime_env: dict[str, Any] = {"working_dir": str(root), "excludes": list(EXCLUDES)}
    if not cluster_raymm:
        runtime_env["py_modules"] = [str(Path(raymm.__file__).resolve().parent)]
    env_vars = job_env(env, os.environ if environ is None else environ)
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return JobSpec(
        stage=stage,
        # The driver joins the cluster it runs on; the last --set wins over the config's ray.address.
        entrypoint=["raymm", stage, *words, "--set", "ray.address=auto"],
        runtime_env=runtime_env,
        submission_id=submission_id
        or f"raymm-{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}",
        metadata={"raymm_stage": stage, "raymm_version": raymm.__version__},
    )


def job_env(items: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """``--env`` items (``NAME`` or ``NAME=VALUE``) as a mapping; an unset ``NAME`` is an error."""
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name or not name.replace("_", "a").isalnum():
            raise RaymmError(f"--env expects NAME or NAME=VALUE, got {item!r}")
        if not sep:
            if name not in environ:
                raise RaymmError(f"--env {name}: {name} is not set here (give its value: --env {name}=VALUE)")
            value = environ[name]
        env[name] = value
    return env


def _inside(root: Path, config_file: str) -> str:
    """``config_file`` relative to ``root``, the job's working directory, or an error."""
    path = Path(config_file).expanduser().resolve()
    if not path.is_file():
        raise RaymmError(f"--config {config_file} does not exist")
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise RaymmError(
            f"--config {config_file} is outside the working directory {root}, which is all the job "
            "gets: move it inside, or pass --working-dir DIR that holds it"
        ) from None


def _replace_option(words: list[str], option: str, value: str) -> list[str]:
    """``words`` with every ``option VALUE`` / ``option=VALUE`` given ``value``."""
    out: list[str] = []
    skip = False
    for index, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word == option and index + 1 < len(words):
            out += [option, value]
            skip = True
        elif word.startswith(option + "="):
            out.append(f"{option}={value}")
        else:
            out.append(word)
    return out


def stage_paths(stage: str, args: argparse.Namespace, config: RaymmConfig) -> dict[str, str]:
    """Where ``raymm <stage>`` with ``args`` reads and writes: name -> path or URI."""
    paths = {"data": getattr(args, "data", None) or config.stage_dir("data")}
    if stage == "extract":
        paths["features"] = args.out or config.stage_dir("features")
        return paths
    paths["features"] = getattr(args, "features", None) or config.stage_dir("features")
    if stage == "train" or getattr(args, "ablation", False):
        paths["checkpoints"] = config.train.run.storage_path or config.stage_dir("train")
    if stage == "train":
        paths["model"] = args.out or config.stage_dir("model")
    else:
        paths["model"] = getattr(args, "model", None) or config.stage_dir("model")
        if getattr(args, "ablation", False):
            paths["report"] = args.out or config.stage_dir("report")
        elif args.out:
            paths["report"] = args.out
    return paths


def local_paths(paths: Mapping[str, str]) -> dict[str, str]:
    """Of ``paths``, those on a node's own disk (no scheme, or ``file://``)."""
    return {name: path for name, path in paths.items() if "://" not in path or path.startswith("file://")}


class JobClient(Protocol):
    """The part of :class:`ray.job_submission.JobSubmissionClient` that ``raymm submit`` uses."""

    def submit_job(
        self,
        *,
        entrypoint: str,
        runtime_env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        submission_id: str | None = None,
    ) -> str: ...
    def get_job_info(self, job_id: str) -> Any: ...
    def stop_job(self, job_id: str) -> bool: ...
    def tail_job_logs(self, job_id: str) -> Any: ...


def connect(address: str) -> JobClient:
    """A job client for the cluster whose job API (the head's dashboard) is at ``address``.

    Raises :class:`~raymm.errors.RaymmError` when nothing answers there.
    """
    from ray.job_submission import JobSubmissionClient

    with _without(_ADDRESS_VARIABLES):  # Ray would let them override ``address``
        try:
            return JobSubmissionClient(address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RaymmError(
                f"no Ray job API at {address}: {exc} (--address is the head's dashboard, e.g. http://HEAD:8265)"
            ) from exc


@contextlib.contextmanager
def _without(names: Sequence[str]) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def resolve_address(address: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``; an error without any."""
    environ = os.environ if environ is None else environ
    found = address or next((environ[name] for name in _ADDRESS_VARIABLES if environ.get(name)), None)
    if not found:
        raise RaymmError(
            "raymm submit needs the cluster's job API: --address http://HEAD:8265 (the head's "
            "dashboard), or RAY_API_SERVER_ADDRESS"
        )
    return found


def describe(spec: JobSpec, address: str) -> list[tuple[str, Any]]:
    """Summary rows for a job about to be submitted (environment values are never shown)."""
    env = spec.runtime_env.get("env_vars", {})
    return [
        ("cluster", address),
        ("job", spec.submission_id),
        ("entrypoint", spec.command),
        ("working dir", f"{spec.runtime_env['working_dir']} (uploaded)"),
        (
            "raymm code",
            "this machine's (py_modules)" if "py_modules" in spec.runtime_env else "the nodes' own",
        ),
        ("environment", ", ".join(env) + " (values not shown)" if env else "none passed (--env NAME)"),
    ]


def submit(
    client: JobClient,
    spec: JobSpec,
    address: str,
    *,
    wait: bool = True,
    write: Callable[[str], None] | None = None,
    ask: Callable[[str], str] | None = None,
) -> int:
    """Submit ``spec``, stream its logs until it ends, and return the exit code it earned.

    0 when it succeeded; the stage's own exit code when it failed (1 findings, 2 input errors, as
    a local run); :data:`EXIT_JOB_FAILED` when it failed without one; :data:`EXIT_STOPPED` when it
    was stopped, or when Ctrl-C left it running. Ctrl-C asks ``ask`` (default: the terminal)
    whether to stop the job. ``write`` receives the log text (default: stdout).
    """
    write = write or _write_stdout
    start = time.monotonic()
    try:
        job_id = client.submit_job(
            entrypoint=spec.command,
            runtime_env=spec.runtime_env,
            submission_id=spec.submission_id,
            metadata=spec.metadata,
        )
    except (RuntimeError, ValueError, OSError) as exc:  # the job API refused it, or the upload failed
        raise RaymmError(f"the cluster at {address} did not take the job: {exc}") from exc
    dashboard = f"{address.rstrip('/')}/#/jobs/{job_id}"
    if not wait:
        console.summary("submit", [("job", job_id), ("dashboard", dashboard), *_next_steps(job_id, address)])
        return 0
    print(
        f"raymm submit: job {job_id} submitted; its logs follow (Ctrl-C asks whether to stop it)", flush=True
    )
    try:
        info = follow(client, job_id, write)
    except KeyboardInterrupt:
        return interrupted(client, job_id, address, ask or _ask_terminal)
    return finished(info, job_id, dashboard, time.monotonic() - start)


def follow(client: JobClient, job_id: str, write: Callable[[str], None]) -> Any:
    """Stream the job's logs to ``write`` until the job ends; its final info."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the log stream broke (head restarted, a proxy timed out): the job goes on
        _warn(f"the log stream of job {job_id} broke ({exc}); waiting for the job to end")
    return wait_until_done(client, job_id)


def wait_until_done(
    client: JobClient, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0
) -> Any:
    """Poll the job every ``poll_s`` until its status is terminal (or ``timeout_s`` passes); its last info."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    info = client.get_job_info(job_id)
    while str(info.status) not in _TERMINAL and (deadline is None or time.monotonic() < deadline):
        time.sleep(poll_s)
        info = client.get_job_info(job_id)
    return info


def exit_code(info: Any) -> int:
    """The exit code ``raymm submit`` returns for a job in its final state (see :func:`submit`)."""
    status = str(info.status)
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return EXIT_STOPPED
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else EXIT_JOB_FAILED


def finished(info: Any, job_id: str, dashboard: str, elapsed_s: float) -> int:
    """Report the job's end (a summary, or one error line naming its status) and its exit code."""
    code = exit_code(info)
    if code == 0:
        console.summary(
            "submit", [("job", job_id), ("status", "SUCCEEDED"), ("dashboard", dashboard)], elapsed_s
        )
        return code
    # Ray's message goes on with the last logs, which were streamed above.
    reason = (info.message or "").strip().split(", last available logs")[0].splitlines()[:1]
    print(
        f"raymm: error: job {job_id} {info.status}"
        + (f": {reason[0]}" if reason else "")
        + f" ({dashboard})",
        file=sys.stderr,
        flush=True,
    )
    return code


def interrupted(client: JobClient, job_id: str, address: str, ask: Callable[[str], str]) -> int:
    """After Ctrl-C: ask whether to stop the job; stop it (and wait for it) or leave it running."""
    answer = ask(f"\nStop job {job_id} on the cluster? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        _warn(
            f"job {job_id} goes on running on the cluster; "
            + "; ".join(f"{what}: {how}" for what, how in _next_steps(job_id, address))
        )
        return EXIT_STOPPED
    client.stop_job(job_id)
    print(f"raymm submit: stopping job {job_id} ...", file=sys.stderr, flush=True)
    info = wait_until_done(client, job_id, timeout_s=60)
    status = str(info.status)
    if status not in _TERMINAL:
        _warn(f"job {job_id} is still {status} a minute after the stop request")
        return EXIT_STOPPED
    print(f"raymm submit: job {job_id} {status}", file=sys.stderr, flush=True)
    return exit_code(info)


def _next_steps(job_id: str, address: str) -> list[tuple[str, str]]:
    quoted = shlex.quote(address)
    return [
        ("follow", f"ray job logs --follow {job_id} --address {quoted}"),
        ("status", f"ray job status {job_id} --address {quoted}"),
        ("stop", f"ray job stop {job_id} --address {quoted}"),
    ]


def _ask_terminal(question: str) -> str:
    """Ask on the terminal; no terminal, end of input or a second Ctrl-C answer no."""
    if not console.is_interactive(sys.stdin):
        return ""
    try:
        return input(question)
    except (EOFError, KeyboardInterrupt):
        return ""


def _write_stdout(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


def _warn(message: str) -> None:
    """One ``raymm: warning: ...`` line on stderr."""
    print(f"raymm: warning: {message}", file=sys.stderr, flush=True)


def run(
    options: argparse.Namespace,
    stage: str,
    stage_words: Sequence[str],
    stage_args: argparse.Namespace,
    config: RaymmConfig,
) -> int:
    """``raymm submit``: build the job for ``raymm <stage> <stage_words>``, then submit and follow it.

    ``stage_args`` and ``config`` are the stage's parsed arguments and configuration (validated
    here, before anything is submitted).
    """
    spec = job_spec(
        stage,
        stage_words,
        config_file=stage_args.config,
        working_dir=options.working_dir,
        env=options.env,
        cluster_raymm=options.cluster_raymm,
        submission_id=options.submission_id,
    )
    address = resolve_address(options.address)
    local = local_paths(stage_paths(stage, stage_args, config))
    if local:
        _warn(
            "the job uses paths on each node's own disk ("
            + ", ".join(f"{name} {path}" for name, path in local.items())
            + "): a cluster's nodes share no disk, so use s3://... (or a filesystem every node mounts at one path)"
        )
    if options.dry_run:
        print(f"job for `raymm submit {stage}` (dry run: nothing is submitted)")
        for name, value in describe(spec, address):
            print(f"  {name:<12} {value}")
        print("  runtime env  " + json.dumps(spec.shown_runtime_env()))
        print(
            "\nthe same with Ray's CLI (environment values masked):\n  "
            + shlex.join(spec.ray_job_submit(address))
        )
        return 0
    client = connect(address)
    console.summary("submit", describe(spec, address))
    return submit(client, spec, address, wait=not options.no_wait)
