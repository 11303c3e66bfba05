"""The live application as ``raymm serve`` runs it: deployed on Ray Serve until Ctrl-C."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raymm.config import RaymmConfig
from raymm.console import Plan, StageResult

if TYPE_CHECKING:
    from raymm.serve.runner import RunningApp


def _model(config: RaymmConfig, model: str | None) -> str:
    return model or config.serve.model or config.stage_dir("model")


def plan_serve(config: RaymmConfig, *, model: str | None = None) -> Plan:
    plan = Plan("serve")
    plan.add("start or join Ray", config.ray.address or "a local instance")
    plan.add("Kafka", config.kafka.bootstrap_servers or f"an embedded {config.kafka.embedded_broker} broker")
    plan.add(
        f"deploy {_model(config, model)} with {config.serve.state_shards} state shard(s)",
        f"{config.serve.host}:{config.serve.port}",
    )
    return plan


@dataclass
class ServeRunning(StageResult):
    """A deployed application: where it answers and what it serves."""

    app: RunningApp
    snapshots: str
    title = "serve"

    def summary_rows(self) -> list[tuple[str, Any]]:
        app = self.app
        return [
            ("url", app.url),
            ("docs", app.docs_url),
            ("kafka", app.bootstrap_servers + (" (embedded)" if app.embedded_broker else "")),
            ("model", app.model),
            ("state shards", f"{app.state_shards}, snapshots in {self.snapshots}"),
            ("try", f"curl '{app.url}/v1/recommendations/some-user?k=5'"),
            ("stop", "Ctrl-C (each shard writes a final snapshot)"),
        ]


def serve(
    config: RaymmConfig, *, model: str | None = None, on_ready: Callable[[ServeRunning], None] | None = None
) -> None:
    """Deploy the live application for ``model`` (default ``serve.model``, else ``<out>/model``),
    call ``on_ready``, and keep it up until Ctrl-C (``KeyboardInterrupt`` goes on to the caller
    once the app is taken down)."""
    from raymm.serve.runner import running_app

    with running_app(config, _model(config, model)) as app:
        if on_ready is not None:
            on_ready(ServeRunning(app, config.snapshot_uri()))
        while True:
            time.sleep(1)
