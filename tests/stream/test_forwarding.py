"""Events on any partition reach their owner's state, against real brokers (Tansu and noida).

Producers partition as they like: kafka-python by murmur2 of the key, librdkafka clients by CRC32,
keyless producers anywhere. Two consumers (ranks 0 and 1 of 2) forward what is not theirs to the
owner partition, and the whole state ends equal to an oracle that applies every good event to its
user, with every user in their owner partition. A consumer killed between a forward and its next
snapshot forwards again on restart, and the owner applies the event once.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from raymm.stream.broker import EmbeddedBroker
from raymm.stream.consumer import FORWARD_HEADER, EventConsumer, forwarded_source
from raymm.stream.events import DeadLetter, UserEvent
from raymm.stream.ownership import Partitioner, partition_for
from raymm.stream.snapshot import SnapshotStore
from raymm.stream.state import UserRecord
from tests.stream.test_consumer import PARTITIONS, _consumer, _events, _oracle, _topic, _users

#: How each event is produced: keyed and hashed by murmur2 (kafka-python, Java), keyed and hashed
#: by CRC32 (librdkafka's default), or without a key (spread over the partitions).
ROUTES = ("murmur2", "crc32", "no-key")


def _send(bootstrap: str, topic: str, events: list[UserEvent]) -> dict[str, int]:
    """Produce ``events``, each by a route its event id picks; returns how many went each way and
    how many landed off their owner partition (``misrouted``).

    A retried event (the same id) takes its first copy's route and partition, as a producer's retry
    does: the dedupe window counts a user's events in arrival order, and two copies sent by
    different producers through a forward could arrive further apart than the window.
    """
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    counts = dict.fromkeys((*ROUTES, "misrouted"), 0)
    futures = []
    try:
        for event in events:
            pick = zlib.crc32(event.event_id.encode())
            route = ROUTES[pick % len(ROUTES)]
            key, value = event.encode()
            if route == "murmur2":
                futures.append((event, producer.send(topic, key=key, value=value)))
            elif route == "crc32":
                partition = partition_for(event.user_id, PARTITIONS, "crc32")
                futures.append((event, producer.send(topic, key=key, value=value, partition=partition)))
            else:
                futures.append(
                    (event, producer.send(topic, key=None, value=value, partition=pick // 3 % PARTITIONS))
                )
            counts[route] += 1
        producer.flush()
        for event, future in futures:
            if future.get(10).partition != partition_for(event.user_id, PARTITIONS):
                counts["misrouted"] += 1
    finally:
        producer.close()
    return counts


def _settle(*consumers: EventConsumer, rounds: int = 3) -> None:
    """Drain every consumer, flush their forwards, and drain again until nothing is forwarded."""
    for _ in range(rounds):
        before = sum(c.metrics().forwarded for c in consumers)
        for consumer in consumers:
            consumer.drain()
        for consumer in consumers:
            consumer.flush()
        for consumer in consumers:
            consumer.drain()
        if sum(c.metrics().forwarded for c in consumers) == before:
            return


def _owners_hold_their_users(*consumers: EventConsumer, partitioner: Partitioner = "murmur2") -> None:
    for consumer in consumers:
        for partition, (_, users) in consumer.state.export().items():
            strays = [u for u in users if partition_for(u, PARTITIONS, partitioner) != partition]
            assert not strays, f"partition {partition} holds users it does not own: {strays[:5]}"


def _records(*consumers: EventConsumer) -> dict[str, tuple[object, ...]]:
    merged: dict[str, UserRecord] = {}
    for consumer in consumers:
        merged.update(_users(consumer.state.export()))
    return _views(merged)


def _views(users: dict[str, UserRecord]) -> dict[str, tuple[object, ...]]:
    """What a user's state answers with: history, seen counts, event count, last time. The dedupe
    window (``recent_ids``) holds the last ids in arrival order, which forwarding changes."""
    return {u: (tuple(r.history), dict(r.seen), r.n_events, r.last_ts_ms) for u, r in users.items()}


def test_events_from_every_route_reach_their_owner_once(broker: EmbeddedBroker) -> None:
    topic = _topic(broker)
    events = _events(900, seed=11)
    counts = _send(broker.bootstrap_servers, topic, events)
    assert counts["misrouted"] > len(events) // 3, counts  # the CRC32 and keyless routes miss often

    ranks = [_consumer(broker, topic, None, rank=r, world_size=2).open() for r in range(2)]
    try:
        _settle(*ranks)
        metrics = [c.metrics() for c in ranks]
        assert sum(m.forwarded for m in metrics) == counts["misrouted"]
        assert sum(m.forwarded_again for m in metrics) == 0
        assert sum(m.dead_letters for m in metrics) == 0
        _owners_hold_their_users(*ranks)
        assert _records(*ranks) == _views(_oracle(events))
    finally:
        for consumer in ranks:
            consumer.close()


def test_a_consumer_killed_between_forward_and_snapshot_forwards_again_and_the_owner_applies_once(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = _topic(broker)
    events = _events(600, seed=12)
    counts = _send(broker.bootstrap_servers, topic, events)
    snapshots = SnapshotStore(str(tmp_path / "snapshots"))
    # Snapshots far apart: the kill lands after the forwards and before any snapshot records them.
    spaced = {"snapshot_every_events": 10**9, "snapshot_interval_s": 3600.0}
    forwarder = _consumer(broker, topic, snapshots, rank=0, world_size=2, **spaced).open()
    owner = _consumer(broker, topic, snapshots, rank=1, world_size=2, **spaced).open()
    try:
        forwarder.drain()
        forwarder.flush()  # the forwards are on the topic ...
        sent_first = forwarder.metrics().forwarded
        assert sent_first > 0
        forwarder.abort()  # ... and no snapshot says so
        assert all(snapshots.restore(topic, p).snapshot is None for p in forwarder.ownership.partitions_of(0))  # type: ignore[union-attr]

        restarted = _consumer(broker, topic, snapshots, rank=0, world_size=2, **spaced).open()
        try:
            _settle(restarted, owner)
            again = restarted.metrics().forwarded
            assert again >= sent_first  # every forward of partitions 0 and 2 was sent a second time
            skipped = owner.metrics().forwarded_again + restarted.metrics().forwarded_again
            assert skipped == sent_first, (sent_first, skipped)
            _owners_hold_their_users(restarted, owner)
            assert _records(restarted, owner) == _views(_oracle(events))
        finally:
            restarted.close()
        assert counts["misrouted"] == again + owner.metrics().forwarded
    finally:
        owner.close()


def test_a_forwarded_event_off_its_owner_partition_is_a_dead_letter_not_forwarded_again(
    broker: EmbeddedBroker,
) -> None:
    topic = _topic(broker)
    event = UserEvent(event_id="f1", user_id="user-7", item_id="i1", event="like", ts=dt.datetime.now(dt.UTC))
    owner = partition_for(event.user_id, PARTITIONS)
    wrong = (owner + 1) % PARTITIONS
    key, value = event.encode()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    try:
        producer.send(topic, key=key, value=value, partition=wrong, headers=[(FORWARD_HEADER, b"3:41")])
        producer.flush()
    finally:
        producer.close()
    consumer = _consumer(broker, topic, None).open()
    try:
        _settle(consumer)
        metrics = consumer.metrics()
        assert metrics.forwarded == 0
        assert metrics.dead_letters_by_reason == {"misrouted": 1}
        assert consumer.state.get(event.user_id) is None
    finally:
        consumer.close()
    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest")
    try:
        reader.assign([TopicPartition(f"{topic}.dlq", 0)])
        records = [r for batch in reader.poll(timeout_ms=5000).values() for r in batch]
    finally:
        reader.close()
    letter = DeadLetter.model_validate(json.loads(records[0].value))
    assert (letter.reason, letter.partition) == ("misrouted", wrong)
    assert f"owner partition is {owner}" in letter.detail


@pytest.mark.parametrize("partitioner", ["crc32"])
def test_an_owner_rule_that_matches_the_producers_forwards_nothing(
    broker: EmbeddedBroker, partitioner: Partitioner
) -> None:
    topic = _topic(broker)
    events = _events(300, seed=13)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5)
    try:
        for event in events:
            key, value = event.encode()
            producer.send(
                topic, key=key, value=value, partition=partition_for(event.user_id, PARTITIONS, partitioner)
            )
        producer.flush()
    finally:
        producer.close()
    ranks = [
        _consumer(broker, topic, None, rank=r, world_size=2, partitioner=partitioner).open() for r in range(2)
    ]
    try:
        _settle(*ranks)
        assert sum(c.metrics().forwarded for c in ranks) == 0
        _owners_hold_their_users(*ranks, partitioner=partitioner)
        assert _records(*ranks) == _views(_oracle(events))
    finally:
        for consumer in ranks:
            consumer.close()


def test_the_forward_header_names_its_source() -> None:
    assert forwarded_source([("other", b"x"), (FORWARD_HEADER, b"3:41")]) == (3, 41)
    assert forwarded_source([]) is None
    with pytest.raises(ValueError, match="not <partition>:<offset>"):
        forwarded_source([(FORWARD_HEADER, b"3-41")])
