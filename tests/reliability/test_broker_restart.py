"""The broker stopped and started again mid-stream (noida keeps its log in its data directory):
the running event consumer and items follower reconnect by themselves, and the user state ends
equal to the oracle of every produced event (nothing lost, nothing applied twice), the catalog
holds every item once."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from raymm.stream.broker import ensure_topics
from raymm.stream.consumer import EventConsumer
from raymm.stream.events import Event, ItemMessage
from raymm.stream.items import ItemsFollower
from raymm.stream.snapshot import SnapshotStore
from raymm.stream.state import UserStateStore
from tests.reliability.faults import OwnedNoida, end_offsets, until
from tests.stream.conftest import NOIDA_MISSING_ON_ARM
from tests.stream.test_consumer import PARTITIONS, SPEC, _events, _oracle, _produce, _users

BEFORE, AFTER = 3000, 1000


def _items(first: int, n: int) -> list[ItemMessage]:
    return [ItemMessage(item_id=f"item-{k}", text=f"item number {k}") for k in range(first, first + n)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_consumers_reconnect_after_a_broker_restart_and_lose_nothing(
    sig: signal.Signals, tmp_path: Path
) -> None:
    if NOIDA_MISSING_ON_ARM:
        pytest.skip("noida-db has no aarch64 Linux wheel")
    broker = OwnedNoida(tmp_path / "noida").start()
    topic, items_topic = f"events.{uuid.uuid4().hex[:8]}", f"items.{uuid.uuid4().hex[:8]}"
    dlq = f"{topic}.dlq"
    try:
        ensure_topics(broker.bootstrap_servers, {topic: PARTITIONS, dlq: 1, items_topic: 1})
        events = _events(BEFORE + AFTER, seed=25)
        _produce(broker.bootstrap_servers, topic, [e.encode() for e in events[:BEFORE]])
        _produce(broker.bootstrap_servers, items_topic, [i.encode() for i in _items(0, 30)])

        def throttle(applied: Sequence[Event]) -> None:
            time.sleep(0.01)  # ~2,000 events/s, so the broker goes while the consumer is mid-log

        consumer = EventConsumer(
            broker.bootstrap_servers,
            UserStateStore(SPEC, topic=topic),
            SnapshotStore(str(tmp_path / "state")),
            dead_letter_topic=dlq,
            snapshot_every_events=300,
            poll_max_records=20,
            observer=throttle,
        )
        catalog: dict[str, ItemMessage] = {}
        follower = ItemsFollower(
            broker.bootstrap_servers,
            lambda batch: catalog.update((item.item_id, item) for item in batch),
            topic=items_topic,
            dead_letter_topic=dlq,
        )
        consumer_thread, follower_thread = consumer.start(), follower.start()
        try:
            until(lambda: consumer.metrics().applied >= BEFORE // 4, 60, "the consumer's first quarter")
            until(lambda: follower.items_seen == 30, 60, "the follower's first items")
            if sig == signal.SIGKILL:  # what noida acknowledged but had not yet written is lost to it
                until(
                    lambda: (
                        sum(broker.persisted_ends(topic).values()) == BEFORE
                        and sum(broker.persisted_ends(items_topic).values()) == 30
                    ),
                    30,
                    "noida's write of both topics",
                )
            broker.kill(sig)
            at_kill = consumer.metrics().applied
            assert at_kill < BEFORE, f"the broker went after the consumer had read everything ({at_kill})"
            time.sleep(2)  # down: both loops poll a broker that is not there
            broker.start()

            _produce(broker.bootstrap_servers, topic, [e.encode() for e in events[BEFORE:]])
            _produce(broker.bootstrap_servers, items_topic, [i.encode() for i in _items(20, 30)])
            ends = end_offsets(broker.bootstrap_servers, topic, PARTITIONS)
            assert sum(ends.values()) == BEFORE + AFTER
            until(
                lambda: consumer.state.offsets() == {p: end - 1 for p, end in ends.items()},
                90,
                "the consumer reading to the end of the restarted broker's log",
            )
            until(lambda: follower.items_seen >= 60, 60, "the follower reading the new items")
            # the very loops that were running when the broker went, never restarted
            assert consumer._thread is consumer_thread and follower._thread is follower_thread
            assert consumer.alive() and follower.alive()
            state = consumer.state.export()
        finally:
            consumer.stop()
            follower.stop()
        assert _users(state) == _oracle(events)
        metrics = consumer.metrics()
        assert metrics.dead_letters == 0 and metrics.applied + metrics.duplicates == BEFORE + AFTER
        assert follower.items_seen == 60  # each item message read once: no re-read from the start
        assert sorted(catalog) == sorted(f"item-{k}" for k in range(50))
        assert catalog == {i.item_id: i for i in _items(0, 20) + _items(20, 30)}
    finally:
        broker.stop()
