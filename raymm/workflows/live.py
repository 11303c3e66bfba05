"""The quickstart's live part: deploy the app, replay events, and show that they change answers.

:func:`live_demo` runs inside :func:`raymm.serve.runner.running_app`: it replays the start of the
dataset's ``stream.parquet`` onto ``raymm.events`` at a steady rate, shows one user's
recommendations before and after their events arrived, measures freshness (from posting an event
to the first recommendation that reflects it) over fresh users, and, when the artifact supports
it, answers a text query that finds an item with no text.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymm.config import RaymmConfig
from raymm.serve.runner import LiveClient, RunningApp, freshness, running_app
from raymm.stream.producer import replay


@dataclass
class LiveDemo:
    """What the live part showed; see :func:`live_demo`."""

    url: str
    docs_url: str
    bootstrap_servers: str
    replayed: int
    replay_rate: float
    user: str
    user_events: list[dict[str, Any]]
    before: dict[str, Any]
    after: dict[str, Any]
    freshness_s: list[float]
    search: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def freshness_p50_ms(self) -> float:
        return float(np.percentile(self.freshness_s, 50) * 1000)

    @property
    def freshness_p99_ms(self) -> float:
        return float(np.percentile(self.freshness_s, 99) * 1000)


def live_demo(
    config: RaymmConfig,
    model: str | None = None,
    *,
    events: int = 2000,
    rate: float = 1000.0,
    samples: int = 20,
    progress: bool = True,
    keep_running: Callable[[RunningApp], None] | None = None,
) -> LiveDemo:
    """Deploy, replay ``events`` of ``stream.parquet`` at ``rate``, and measure; see the module
    docstring. ``keep_running`` is called with the app before it is taken down (the CLI waits for
    Ctrl-C there)."""
    stream = f"{config.stage_dir('data')}/stream.parquet"
    table = pq.read_table(stream).slice(0, events)
    user = _busiest_user(table, config.model.user_state.events)
    with running_app(config, model) as app:
        client = app.client()
        before = client.recommendations(user, k=10)
        result = replay(
            table, app.bootstrap_servers, rate=rate, progress=progress, **config.kafka.client_options()
        )
        mine = table.filter(pc.equal(table.column("user_id"), user))
        expected = mine.num_rows
        after = _until_applied(client, user, expected)
        fresh = [freshness(client, f"fresh-{uuid.uuid4().hex[:8]}", _item(table, i)) for i in range(samples)]
        demo = LiveDemo(
            url=app.url,
            docs_url=app.docs_url,
            bootstrap_servers=app.bootstrap_servers,
            replayed=result.sent,
            replay_rate=result.rate,
            user=user,
            user_events=mine.select(["item_id", "event"]).to_pylist(),
            before=before,
            after=after,
            freshness_s=fresh,
        )
        status, paths = client.request("GET", "/openapi.json")
        if status == 200 and "/v1/search" in paths.get("paths", {}):
            demo.search = _text_less_search(client, config)
        if keep_running is not None:
            keep_running(app)
    return demo


def _busiest_user(table: Any, positive: list[str]) -> str:
    """The user with the most positive events in ``table`` (their answer changes visibly)."""
    counted = table.filter(pc.is_in(table.column("event"), value_set=pa.array(positive)))
    counts = (
        counted.group_by("user_id")
        .aggregate([("item_id", "count")])
        .sort_by([("item_id_count", "descending")])
    )
    return str(counts.column("user_id")[0])


def _item(table: Any, i: int) -> str:
    return str(table.column("item_id")[i % table.num_rows])


def _until_applied(client: LiveClient, user: str, expected: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """The user's recommendations once their ``expected`` events are applied (their state answers
    and stops changing), or the last answer after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = client.recommendations(user, k=10)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        answer = client.recommendations(user, k=10)
        if answer["fallback"] is None and answer["items"] == last["items"]:
            return answer
        last = answer
    return last


def _text_less_search(client: LiveClient, config: RaymmConfig) -> dict[str, Any] | None:
    """A text query built from a text-less item's tags, answered by image and audio vectors."""
    items = pq.read_table(f"{config.stage_dir('data')}/items.parquet", columns=["item_id", "text", "tags"])
    textless = items.filter(pc.is_null(items.column("text")))
    for row in textless.to_pylist():
        if row["tags"]:
            query = " ".join(row["tags"])
            answer = client.search(query, k=10, modality="fused")
            ids = [i["item_id"] for i in answer["items"]]
            return {
                "query": query,
                "item_id": row["item_id"],
                "rank": ids.index(row["item_id"]) + 1 if row["item_id"] in ids else None,
                "answer": answer,
            }
    return None
