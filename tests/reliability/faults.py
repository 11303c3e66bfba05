"""What the fault tests share: the oracle of produced events, a consumer resumed from snapshots, a
noida broker the test owns (so it may kill it), waiting for a condition, and a topic's end
offsets."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition

from raymm.config import RaymmConfig
from raymm.stream.broker import EmbeddedBroker
from raymm.stream.consumer import EventConsumer
from raymm.stream.events import Event, UserEvent
from raymm.stream.snapshot import SnapshotStore
from raymm.stream.state import StateSpec, UserRecord, UserStateStore
from tests.fixtures import free_port

T = TypeVar("T")


def until(check: Callable[[], T], timeout_s: float, what: str) -> T:
    """``check()``'s first truthy result, polled every 0.1 s; AssertionError naming ``what`` and
    the last result after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s (last: {result!r})")
        time.sleep(0.1)


def oracle(events: list[UserEvent], spec: StateSpec) -> dict[str, UserRecord]:
    """Every user's record from ``events`` applied in order, without Kafka, offsets or snapshots."""
    users: dict[str, UserRecord] = {}
    for event in events:
        users.setdefault(event.user_id, UserRecord()).apply(Event.of(event), spec)
    return users


def resumed_users(bootstrap: str, topic: str, spec: StateSpec, snapshot_root: str) -> dict[str, UserRecord]:
    """Every user's record after one consumer restores ``snapshot_root``'s snapshots and reads each
    partition of ``topic`` from them to its end (what a restarted deployment ends with)."""
    consumer = EventConsumer(bootstrap, UserStateStore(spec, topic=topic), SnapshotStore(snapshot_root))
    consumer.open()
    try:
        consumer.drain()
        users: dict[str, UserRecord] = {}
        for _, partition_users in consumer.state.export().values():
            users.update(partition_users)
        return users
    finally:
        consumer.abort()  # no snapshots of its own: the directory stays as the deployment left it


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's end offset (the offset the next message will get)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


class OwnedNoida:
    """A noida broker of the test's own on a fixed port and data directory, so the test can kill
    it and start it again where clients expect it (the session's shared brokers must stay up)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.broker: EmbeddedBroker | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> OwnedNoida:
        self.broker = EmbeddedBroker("noida", data_dir=self.data_dir, port=self.port).start()
        return self

    def kill(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the broker process only, and wait until it is gone."""
        assert self.broker is not None and self.broker.process is not None
        os.kill(self.broker.process.pid, sig)
        self.broker.process.wait(timeout=30)
        self.broker.stop()  # reaps and removes its working directory; data_dir stays
        self.broker = None

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def persisted_ends(self, topic: str) -> dict[int, int]:
        """Each partition's high watermark as noida last wrote it to disk (it writes about once a
        second, so a SIGKILL loses what came after)."""
        try:
            document = json.loads((self.data_dir / "kafka.json").read_text())
        except (OSError, ValueError):
            return {}
        for name, described in document["topics"]:
            if name == topic:
                return {int(p): part["high_watermark"] for p, part in described["partitions"]}
        return {}


def app_config(config: RaymmConfig, bootstrap: str, root: Path, partitions: int, shards: int) -> RaymmConfig:
    """A copy of ``config`` for an app of the fault tests on ``bootstrap``: ``partitions``
    partitions, ``shards`` state shards, snapshots under ``root/state`` every 200 events or second
    (so a kill lands between snapshots with events to replay), a short state timeout."""
    config = config.model_copy(deep=True)
    config.kafka = config.kafka.model_copy(update={"bootstrap_servers": bootstrap, "partitions": partitions})
    config.stream = config.stream.model_copy(
        update={"snapshot_uri": str(root / "state"), "snapshot_every_events": 200, "snapshot_interval_s": 1.0}
    )
    config.serve = config.serve.model_copy(update={"state_shards": shards, "state_timeout_s": 2.0})
    return config


def shard_users(shards: int, app: str = "raymm") -> dict[str, Any]:
    """Every user the ``shards`` state shards of ``app`` hold, exported through the recommender."""
    from raymm.serve.runner import recommender_handle

    users: dict[str, Any] = {}
    for rank in range(shards):
        exported = recommender_handle(app).shard_call.remote(rank, "export").result()
        for _, partition_users in exported.values():
            users.update(partition_users)
    return users
