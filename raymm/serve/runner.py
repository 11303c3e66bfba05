"""Run the live application: Ray, a broker, Serve and the app, together, for ``raymm serve`` and
the quickstart.

:func:`running_app` starts (or joins) Ray, starts the embedded broker when ``kafka.bootstrap_servers``
is not set, deploys :func:`~raymm.serve.app.build_app` (which creates the topics, or checks their
partition counts) and waits until ``/healthz`` says ok. On the way out it asks every state shard
for its final snapshot, then deletes the application (and the broker it started). :class:`LiveClient` is a small HTTP client
of the API that the quickstart and the benchmarks use.

**SIGTERM**, as Kubernetes stops a pod, takes the same way out: every shard writes its final
snapshot, and the process exits 0 (:func:`_stop_on_sigterm`). It never stops Ray itself: a local
instance ends with the process, a joined cluster keeps running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raymm.config import RaymmConfig
from raymm.data import io
from raymm.errors import RaymmError

log = logging.getLogger(__name__)

#: How long each state shard has to stop and write its final snapshot on the way out. A pod running
#: ``raymm serve`` needs a termination grace period above it, or SIGKILL cuts the snapshots short
#: (the shards then resume from their last periodic snapshot and replay the rest of the log).
_FINAL_SNAPSHOT_S = 90.0


class ServeError(RaymmError):
    """The application did not come up healthy; the message says what ``/healthz`` answered."""


@dataclass(frozen=True)
class RunningApp:
    """A deployed application: where it answers, and the Kafka it reads."""

    url: str
    bootstrap_servers: str
    embedded_broker: bool
    model: str
    state_shards: int
    #: The key the API requires (``serve.api_key``), which :meth:`client` sends.
    api_key: str | None = field(default=None, repr=False)

    @property
    def docs_url(self) -> str:
        return f"{self.url}/docs"

    def client(self) -> LiveClient:
        return LiveClient(self.url, api_key=self.api_key)


@contextlib.contextmanager
def running_app(
    config: RaymmConfig, model: str | None = None, *, timeout_s: float = 180.0
) -> Iterator[RunningApp]:
    """Deploy the app for ``config`` (see the module docstring) for the duration of the block."""
    from ray import serve

    from raymm.runtime import init_ray
    from raymm.serve.app import build_app, serve_logging
    from raymm.serve.auth import export_secrets
    from raymm.stream.broker import kafka_bootstrap

    settings = config.serve
    model_uri = io.absolute(model or settings.model or config.stage_dir("model"))
    export_secrets(config)  # before a local Ray starts: its processes read them from the environment
    init_ray(config.ray)
    broker_dir = config.stage_dir("broker") if "://" not in config.out else None
    with _stop_on_sigterm(), kafka_bootstrap(config.kafka, data_dir=broker_dir) as bootstrap:
        # An already running Serve keeps the HTTP options it was started with.
        _route_logs()
        serve.start(
            http_options={"host": settings.host, "port": settings.port}, logging_config=serve_logging(config)
        )
        _route_logs()  # Serve gives its logger a console handler when it starts
        app = build_app(config, bootstrap_servers=bootstrap, model=model_uri)
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        prefix = settings.route_prefix.rstrip("/")
        running = RunningApp(
            f"http://{host}:{settings.port}{prefix}",
            bootstrap,
            config.kafka.bootstrap_servers is None,
            model_uri,
            settings.state_shards,
            _api_key(config),
        )
        # From serve.run on, the way out stops the shards: the app answers (and its shards apply
        # events) before serve.run returns, so a SIGTERM can come while it still waits.
        try:
            serve.run(app, name=settings.app_name, route_prefix=settings.route_prefix)
            wait_healthy(running.client(), timeout_s)
            yield running
        finally:
            _stop(settings.app_name)


def _api_key(config: RaymmConfig) -> str | None:
    """The API key clients of the app must send, if it has one."""
    if config.serve.api_key is not None:
        return config.serve.api_key.get_secret_value()
    if config.serve.api_key_file is not None:
        return Path(config.serve.api_key_file).read_text().strip()
    return None


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(0)`` in the main thread, so the block's cleanup
    runs (final snapshots, the app deleted, the embedded broker stopped) and the process exits 0.

    Installed after Ray is up: ``ray.init`` makes SIGTERM ``sys.exit(15)``, and the driver's core
    worker then puts its crash handler in front, which aborts the process (SIGABRT) 3 s after a
    SIGTERM, cutting the final snapshots short. A second SIGTERM during the shutdown is ignored
    (Kubernetes sends SIGKILL when its grace period ends). Outside the main thread (a notebook's
    worker thread) nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.warning("SIGTERM: stopping the app; each state shard writes its final snapshot")
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _route_logs() -> None:
    """Re-apply the CLI's log routing (Serve's INFO lines to the log file, not the console)."""
    from raymm import console

    routing = console.current()
    if routing is not None:
        routing.route_ray_loggers()


def recommender_handle(app_name: str) -> Any:
    """A handle on the app's Recommender deployment usable from plain (non-async) code.

    Its router runs on a loop of its own, as Serve's default does: with
    ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` the default router shares the caller's event loop, and a
    driver has none. Ray's own broadcast helpers initialise their handles the same way.
    """
    from ray import serve

    handle = serve.get_deployment_handle("Recommender", app_name=app_name)
    if not handle.is_initialized:  # Serve hands out one cached handle per deployment
        handle._init(_run_router_in_separate_loop=True)
    return handle


def _stop(app_name: str) -> None:
    """Final snapshots from every shard, then the app goes (Serve kills deployment actors)."""
    from ray import serve

    try:
        recommender = recommender_handle(app_name)
        failed = recommender.stop_shards.remote(_FINAL_SNAPSHOT_S).result(timeout_s=_FINAL_SNAPSHOT_S + 30)
        for rank, why in sorted(failed.items()):
            if why is not None:  # it resumes from its last snapshot and replays the rest of the log
                log.error("state shard %d wrote no final snapshot: %s", rank, why)
    except Exception as exc:  # the app still goes; the shards resume from their last snapshots
        log.error("the state shards' final snapshots were not confirmed: %s: %s", type(exc).__name__, exc)
    finally:
        serve.delete(app_name)


def wait_healthy(client: LiveClient, timeout_s: float) -> dict[str, Any]:
    """Poll ``/healthz`` until it says ok; :class:`ServeError` with its last answer if not in time."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, body = client.request("GET", "/healthz")
            if status == 200:
                return dict(body)
            last = body
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise ServeError(f"the app was not healthy within {timeout_s:.0f} s; /healthz said: {last}")


class LiveClient:
    """A minimal JSON client of the raymm HTTP API (standard library only); ``api_key`` is sent
    as a bearer token when the API requires one."""

    def __init__(self, url: str, timeout_s: float = 30.0, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"content-type": "application/json"}
        if api_key is not None:
            self._headers["authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> tuple[int, Any]:
        """(status, decoded JSON body) of one request; HTTP errors are returned, not raised."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}{query}", data=data, method=method, headers=self._headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload)
            except ValueError:
                return error.code, payload.decode(errors="replace")

    def recommendations(self, user_id: str, k: int = 10) -> dict[str, Any]:
        status, body = self.request("GET", f"/v1/recommendations/{urllib.parse.quote(user_id)}", k=k)
        if status != 200:
            raise ServeError(f"GET recommendations for {user_id!r}: {status} {body}")
        return dict(body)

    def post_event(self, user_id: str, item_id: str, event: str = "like") -> dict[str, Any]:
        status, body = self.request(
            "POST",
            "/v1/events",
            {
                "event_id": uuid.uuid4().hex,
                "user_id": user_id,
                "item_id": item_id,
                "event": event,
                "ts": int(time.time() * 1000),
            },
        )
        if status != 202:
            raise ServeError(f"POST event: {status} {body}")
        return dict(body)

    def search(self, query: str, k: int = 10, modality: str = "fused") -> dict[str, Any]:
        status, body = self.request("GET", "/v1/search", q=query, k=k, modality=modality)
        if status != 200:
            raise ServeError(f"GET search {query!r}: {status} {body}")
        return dict(body)


def freshness(client: LiveClient, user_id: str, item_id: str, timeout_s: float = 10.0) -> float:
    """Seconds from posting ``user_id``'s like of ``item_id`` until a recommendation reflects it
    (the item is then seen, so it is out of the answer and the user is no longer unknown)."""
    start = time.perf_counter()
    client.post_event(user_id, item_id)
    while time.perf_counter() - start < timeout_s:
        answer = client.recommendations(user_id, k=10)
        if answer["fallback"] in (None, "no_history") and item_id not in {
            i["item_id"] for i in answer["items"]
        }:
            return time.perf_counter() - start
        time.sleep(0.005)
    raise ServeError(f"user {user_id!r}'s event did not show within {timeout_s} s")
