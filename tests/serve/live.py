"""One way for tests to run the app: the session's model on a fresh noida broker, deployed by
``build_app`` on the session's Ray, healthy before the block starts, deleted after it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from ray import serve

from raymm.serve.app import build_app
from raymm.stream.broker import EmbeddedBroker
from tests.conftest import Trained
from tests.fixtures import free_port


@dataclass
class LiveApp:
    url: str
    bootstrap: str
    shards: int

    def get(self, path: str, **params: object) -> dict[str, Any]:
        """The JSON of ``GET path`` (``/healthz`` answers 503 while degraded, with a body)."""
        response = requests.get(f"{self.url}{path}", params=params, timeout=30)  # type: ignore[arg-type]
        assert response.status_code in (200, 503), response.text
        return dict(response.json())


@contextlib.contextmanager
def live_app(
    trained: Trained,
    root: Path,
    *,
    shards: int,
    partitions: int,
    kafka: dict[str, Any] | None = None,
    serve_settings: dict[str, Any] | None = None,
) -> Iterator[LiveApp]:
    """The app with ``shards`` state shards over ``partitions`` partitions; snapshots under ``root``;
    ``kafka`` and ``serve_settings`` update those sections of the session's config."""
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    with EmbeddedBroker("noida") as broker:
        config = trained.config.model_copy(deep=True)
        config.kafka = config.kafka.model_copy(
            update={"bootstrap_servers": broker.bootstrap_servers, "partitions": partitions, **(kafka or {})}
        )
        config.stream = config.stream.model_copy(update={"snapshot_uri": str(root / "state")})
        config.serve = config.serve.model_copy(
            update={"state_shards": shards, "state_timeout_s": 5.0, **(serve_settings or {})}
        )
        serve.run(
            build_app(config, bootstrap_servers=broker.bootstrap_servers, model=str(trained.model)),
            name="raymm",
            route_prefix="/",
        )
        app = LiveApp(f"http://127.0.0.1:{port}", broker.bootstrap_servers, shards)
        try:
            deadline = time.monotonic() + 90
            while app.get("/healthz").get("status") != "ok":
                assert time.monotonic() < deadline, f"the app was not healthy in 90 s: {app.get('/healthz')}"
                time.sleep(0.2)
            yield app
        finally:
            serve.delete("raymm")
            serve.shutdown()
