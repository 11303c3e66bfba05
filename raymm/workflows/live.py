"""The quickstart's live part: deploy the app, replay events, and show that they change answers.

:func:`live_demo` runs inside :func:`raymm.serve.runner.running_app`: it replays the start of the
dataset's ``stream.parquet`` onto ``raymm.events`` at a steady rate, shows one user's
recommendations before and after their events arrived, measures freshness (from posting an event
to the first recommendation that reflects it) over fresh users, and, when the artifact supports
search, posts an item with no text (a catalog item's image and audio) live and searches its
source's description by image.
"""

from __future__ import annotations

import base64
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
from raymm.settings_base import MODALITIES
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

    def render(self) -> str:
        """The live part for people: one user before and after, freshness, a search."""

        def items(answer: dict[str, Any]) -> str:
            flag = f"  [fallback: {answer['fallback']}]" if answer.get("fallback") else ""
            return ", ".join(i["item_id"] for i in answer["items"][:10]) + flag

        lines = [
            "",
            f"live: {self.url} (docs {self.docs_url}); Kafka {self.bootstrap_servers}",
            f"  replayed {self.replayed:,} events of stream.parquet at {self.replay_rate:,.0f} events/s",
            f"  user {self.user}: {len(self.user_events)} events, e.g. "
            + ", ".join(f"{e['event']} {e['item_id']}" for e in self.user_events[:4]),
            f"    before: {items(self.before)}",
            f"    after:  {items(self.after)}",
            f"  freshness (event posted -> reflected in a recommendation), {len(self.freshness_s)} users: "
            f"p50 {self.freshness_p50_ms:.0f} ms, p99 {self.freshness_p99_ms:.0f} ms (target p99 < 1000 ms)",
        ]
        if self.search is not None:
            rank = self.search["rank"]
            lines.append(
                f"  search (by image) {self.search['query'][:70]!r}...: the text-less item {self.search['item_id']}, "
                f"posted live with {self.search['source']}'s image and audio, "
                + (f"ranks #{rank}" if rank else "is not in the top 10")
                + f" of: {items(self.search['answer'])}"
            )
        return "\n".join(lines)


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
            table,
            app.bootstrap_servers,
            rate=rate,
            progress=progress,
            partitioner=config.kafka.partitioner,
            kafka=config.kafka,
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
    """Post a text-less item live (a catalog item's image and audio, no text), then search its
    source's description by image: the answer shows the new item found by a text query."""
    items = pq.read_table(f"{config.stage_dir('data')}/items.parquet", columns=["item_id", *MODALITIES])
    usable = items.filter(
        pc.and_(
            pc.is_valid(items.column("text")),
            pc.and_(pc.is_valid(items.column("image")), pc.is_valid(items.column("audio"))),
        )
    )
    if usable.num_rows == 0:
        return None
    source = usable.slice(0, 1).to_pylist()[0]
    status, health = client.request("GET", "/healthz")
    if status != 200 or health.get("search") != "ok":
        return None
    twin = f"live-textless-{uuid.uuid4().hex[:6]}"
    media = {m: {"base64": base64.b64encode(source[m]).decode()} for m in ("image", "audio")}
    client.request("POST", "/v1/items", {"item_id": twin, **media})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, now = client.request("GET", "/healthz")
        if status == 200 and now["live_items"] > health["live_items"]:
            break
        time.sleep(0.2)
    query = source["text"]
    answer = client.search(query, k=10, modality="image")
    ids = [i["item_id"] for i in answer["items"]]
    return {
        "query": query,
        "item_id": twin,
        "source": source["item_id"],
        "rank": ids.index(twin) + 1 if twin in ids else None,
        "answer": answer,
    }
