"""A Ray worker process killed with SIGKILL under a state shard, and under the recommender replica,
mid-stream: Serve starts a new one, the shard recovers from its snapshot and the log, requests
are answered again, and the state of every shard equals the oracle of every event produced.

(tests/serve/test_app.py kills a shard's actor with ``ray.kill`` and compares with one clean pass
through Kafka; here the process dies as on an OOM kill, and the comparison is with the events.)"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray
import requests
from kafka import KafkaProducer
from ray import serve
from ray.util.state import list_actors

from raymm.serve.app import build_app
from raymm.serve.runner import recommender_handle
from raymm.stream.broker import EmbeddedBroker, ensure_topics
from raymm.stream.events import EVENTS_TOPIC, UserEvent
from raymm.stream.ownership import owned_partitions, owner_rank
from raymm.stream.snapshot import SnapshotStore
from raymm.stream.state import StateSpec
from tests.conftest import Trained
from tests.fixtures import free_port
from tests.reliability.faults import app_config, end_offsets, oracle, shard_users, until

PARTITIONS, SHARDS = 4, 2


@dataclass
class App:
    url: str
    bootstrap: str
    spec: StateSpec
    snapshots: SnapshotStore
    items: list[str]
    #: every event produced to the app so far, in order (the oracle's input)
    produced: list[UserEvent] = field(default_factory=list)

    def recommend(self, user: str) -> requests.Response:
        return requests.get(f"{self.url}/v1/recommendations/{user}", params={"k": 5}, timeout=30)

    def applied_offsets(self) -> dict[int, int]:
        offsets: dict[int, int] = {}
        for rank in range(SHARDS):
            offsets.update(recommender_handle("raymm").shard_call.remote(rank, "offsets").result())
        return offsets

    def caught_up(self) -> None:
        """Wait until the shards applied every message on the topic (a recreated one included)."""
        ends = {p: end - 1 for p, end in end_offsets(self.bootstrap, EVENTS_TOPIC, PARTITIONS).items()}

        def done() -> bool:
            try:
                return self.applied_offsets() == ends
            except Exception:  # a shard or the replica is still being recreated
                return False

        until(done, 180, f"the shards applying every message up to {ends}")

    def users(self) -> dict[str, Any]:
        return shard_users(SHARDS)


@pytest.fixture(scope="module")
def app(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    root = tmp_path_factory.mktemp("killed")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    with EmbeddedBroker("noida") as broker:
        ensure_topics(broker.bootstrap_servers, {EVENTS_TOPIC: PARTITIONS})
        config = app_config(trained.config, broker.bootstrap_servers, root, PARTITIONS, SHARDS)
        try:
            serve.run(
                build_app(config, bootstrap_servers=broker.bootstrap_servers, model=str(trained.model)),
                name="raymm",
                route_prefix="/",
            )
            items = pq.read_table(trained.data / "items.parquet", columns=["item_id"]).column("item_id")
            live = App(
                f"http://127.0.0.1:{port}",
                broker.bootstrap_servers,
                StateSpec.from_artifact(trained.model, config.stream.dedupe_window),
                SnapshotStore(str(root / "state")),
                items.to_pylist(),
            )
            until(lambda: _status(f"{live.url}/healthz") == 200, 120, "the app answering /healthz")
            yield live
        finally:
            serve.delete("raymm")
            serve.shutdown()


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return None


def _pid(class_name: str, name: str = "") -> int:
    """The pid of the one live actor of ``class_name`` whose name contains ``name``."""
    actors = [
        a
        # the session's cluster by its address: other Ray instances may run on this machine
        for a in list_actors(
            address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")], limit=10_000
        )
        if a.class_name == class_name and name in (a.name or "")
    ]
    assert len(actors) == 1, f"{len(actors)} live {class_name} actors named *{name}*: {actors}"
    assert actors[0].pid
    return int(actors[0].pid)


def _events(app: App, n: int, prefix: str, users: int) -> list[UserEvent]:
    rng = random.Random(prefix)
    now = dt.datetime.now(dt.UTC)
    return [
        UserEvent(
            event_id=f"{prefix}-{i}",
            user_id=f"{prefix}-user-{rng.randrange(users)}",
            item_id=rng.choice(app.items),
            event=rng.choice(["view", "click", "like", "play", "skip"]),
            ts=now + dt.timedelta(milliseconds=i),
        )
        for i in range(n)
    ]


def test_a_shard_worker_killed_mid_stream_recovers_from_its_snapshot_and_the_log(app: App) -> None:
    events = _events(app, 3000, "shard", users=60)
    producer = KafkaProducer(bootstrap_servers=app.bootstrap, acks="all", linger_ms=2)
    killed = threading.Event()

    def produce() -> None:
        for i, event in enumerate(events):
            if i == 2000:  # the last third arrives while the shard is dead or being recreated
                killed.wait(120)
            key, value = event.encode()
            producer.send(EVENTS_TOPIC, key=key, value=value)
            if i % 50 == 0:
                time.sleep(0.02)
        producer.flush()

    writer = threading.Thread(target=produce)
    writer.start()
    mine = owned_partitions(PARTITIONS, 0, SHARDS)

    def snapshotted() -> dict[int, int] | None:
        found = {p: app.snapshots.restore(EVENTS_TOPIC, p).snapshot for p in mine}
        offsets = {p: s.applied_offset for p, s in found.items() if s is not None}
        return offsets if len(offsets) == len(mine) and min(offsets.values()) >= 200 else None

    try:
        before = until(snapshotted, 60, "shard 0 snapshotting each of its partitions")
        victim = _pid("StateShard", "state-0")
        os.kill(victim, signal.SIGKILL)
    finally:
        killed.set()
        writer.join()
        producer.close()
        app.produced += events
    app.caught_up()
    assert _pid("StateShard", "state-0") != victim
    # The new shard restored a snapshot at least as new as `before` and replayed only the rest.
    ends = end_offsets(app.bootstrap, EVENTS_TOPIC, PARTITIONS)
    applied = recommender_handle("raymm").shard_call.remote(0, "metrics").result()["applied"]
    assert 0 < applied <= sum(ends[p] - 1 - before[p] for p in mine)
    assert app.users() == oracle(app.produced, app.spec)
    user = next(e.user_id for e in events if owner_rank(e.user_id, PARTITIONS, SHARDS) == 0)
    answer = app.recommend(user)
    assert answer.status_code == 200 and answer.json()["fallback"] is None, answer.text


def test_a_replica_worker_killed_mid_stream_is_replaced_and_no_posted_event_is_lost_or_doubled(
    app: App,
) -> None:
    """Events posted over HTTP while the replica dies: each is retried until accepted (202), as a
    client does; one that reached Kafka before its answer was lost is a repeat of its event id,
    which the state skips."""
    events = _events(app, 200, "replica", users=10)
    victim = _pid("ServeReplica:raymm:Recommender")
    failed: list[str] = []

    def post_all() -> None:
        for i, event in enumerate(events):
            if i == 40:
                os.kill(victim, signal.SIGKILL)
            body = json.loads(event.encode()[1])
            deadline = time.monotonic() + 120
            while True:
                try:
                    response = requests.post(f"{app.url}/v1/events", json=body, timeout=10)
                    if response.status_code == 202:
                        break
                    failed.append(f"{response.status_code}")
                except requests.RequestException as exc:
                    failed.append(type(exc).__name__)
                assert time.monotonic() < deadline, f"event {i} not accepted in 120 s: {failed[-5:]}"
                time.sleep(0.2)

    try:
        post_all()
    finally:
        app.produced += events  # each accepted at least once, or the test failed here
    app.produced += events
    app.caught_up()
    assert _pid("ServeReplica:raymm:Recommender") != victim
    assert app.users() == oracle(app.produced, app.spec)
    until(lambda: _status(f"{app.url}/healthz") == 200, 60, "the new replica healthy")
    answer = app.recommend(events[-1].user_id)
    assert answer.status_code == 200 and answer.json()["fallback"] is None, answer.text
