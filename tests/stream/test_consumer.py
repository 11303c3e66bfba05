"""The consumer core against real Kafka-protocol brokers (Tansu and noida): a consumer killed
mid-stream, a partition owner that dies, poison messages and corrupt snapshots all end in exactly
the state one clean pass produces, compared as whole states (every user's record and every
partition's applied offset), and that clean pass matches an oracle that applies the good events
in order without Kafka."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from raymm.stream import loop as poll_loop
from raymm.stream.broker import EmbeddedBroker, ensure_topics
from raymm.stream.consumer import ConsumerMetrics, EventConsumer
from raymm.stream.events import (
    MAX_KEY_BYTES,
    DeadLetter,
    Event,
    EventDecoder,
    EventLimits,
    Rejected,
    UserEvent,
    decode_event,
)
from raymm.stream.ownership import owned_partitions, owner_rank, partition_for
from raymm.stream.snapshot import SnapshotStore, encode_snapshot
from raymm.stream.state import StateSpec, UserRecord, UserStateStore

REPO = Path(__file__).resolve().parents[2]
SPEC = StateSpec(max_history=5, events=frozenset({"click", "like", "purchase", "play"}), dedupe_window=8)
SNAPSHOT_EVERY = 300
PARTITIONS = 4
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

State = dict[int, tuple[int, dict[str, UserRecord]]]


def _topic(broker: EmbeddedBroker) -> str:
    topic = f"events.{uuid.uuid4().hex[:10]}"
    ensure_topics(broker.bootstrap_servers, {topic: PARTITIONS, f"{topic}.dlq": 1})
    return topic


def _events(n: int, seed: int, users: int = 60) -> list[UserEvent]:
    """Good events of every kind; one in 25 is an earlier event sent again (a producer retry)."""
    rng = random.Random(seed)
    events: list[UserEvent] = []
    for i in range(n):
        if events and rng.random() < 0.04:
            events.append(rng.choice(events[-20:]))
            continue
        events.append(
            UserEvent(
                event_id=f"e{seed}-{i}",
                user_id=f"user-{rng.randrange(users)}",
                item_id=f"item-{rng.randrange(80)}",
                event=rng.choice(["view", "click", "like", "purchase", "play", "skip"]),
                ts=EPOCH + dt.timedelta(seconds=i),
            )
        )
    return events


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def _consumer(
    broker: EmbeddedBroker, topic: str, snapshots: SnapshotStore | None, **options: object
) -> EventConsumer:
    settings: dict[str, object] = {
        "dead_letter_topic": f"{topic}.dlq",
        "snapshot_every_events": SNAPSHOT_EVERY,
        "poll_max_records": 100,
    }
    return EventConsumer(
        broker.bootstrap_servers,
        UserStateStore(SPEC, topic=topic),
        snapshots,
        **{**settings, **options},  # type: ignore[arg-type]
    )


def _clean_pass(broker: EmbeddedBroker, topic: str) -> State:
    """One consumer, no snapshots, from the start of every partition to its end."""
    consumer = _consumer(broker, topic, None).open()
    try:
        consumer.drain()
        return consumer.state.export()
    finally:
        consumer.close()


def _oracle(events: list[UserEvent]) -> dict[str, UserRecord]:
    """Every user's record from the good events applied in order, without Kafka or offsets."""
    users: dict[str, UserRecord] = {}
    for event in events:
        users.setdefault(event.user_id, UserRecord()).apply(Event.of(event), SPEC)
    return users


def _users(state: State) -> dict[str, UserRecord]:
    merged: dict[str, UserRecord] = {}
    for _, users in state.values():
        merged.update(users)
    return merged


def _snapshotted(snapshots: SnapshotStore, topic: str) -> dict[int, int]:
    """Each partition's applied offset in its newest valid snapshot."""
    found = {}
    for partition in range(PARTITIONS):
        restored = snapshots.restore(topic, partition)
        if restored.snapshot is not None:
            found[partition] = restored.snapshot.applied_offset
    return found


def test_ownership_follows_kafkas_partitioner() -> None:
    assert owned_partitions(8, 1, 3) == [1, 4, 7]
    assert sorted(p for rank in range(3) for p in owned_partitions(8, rank, 3)) == list(range(8))
    for user in ("alice", "bob", "user-17"):
        assert partition_for(user, 8) in owned_partitions(8, owner_rank(user, 8, 3), 3)
    with pytest.raises(ValueError, match="rank must be in"):
        owned_partitions(8, 3, 3)


def test_a_killed_consumer_process_restarts_into_the_clean_pass_state(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = _topic(broker)
    events = _events(4000, seed=1)
    _produce(broker.bootstrap_servers, topic, [e.encode() for e in events])
    snapshots = SnapshotStore(str(tmp_path / "state"))

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.stream.consumer_process",
            broker.bootstrap_servers,
            topic,
            snapshots.root,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    applied = 0
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while applied < len(events) // 2 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            applied = int(line)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(events) // 2 <= applied < len(events), f"the kill did not land mid-stream ({applied} applied)"
    snapshotted = _snapshotted(snapshots, topic)
    # Whatever was applied after the newest snapshots is gone with the process, so the restart replays.
    assert snapshotted and sum(offset + 1 for offset in snapshotted.values()) < applied

    restarted = _consumer(broker, topic, snapshots).open()
    try:
        assert restarted.state.offsets() == {p: snapshotted.get(p, -1) for p in range(PARTITIONS)}
        restarted.drain()
        recovered = restarted.state.export()
    finally:
        restarted.close()
    clean = _clean_pass(broker, topic)
    assert recovered == clean
    assert _users(clean) == _oracle(events)


def test_a_dead_owners_partitions_are_taken_over_from_its_snapshots(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = _topic(broker)
    events = _events(3000, seed=2)
    _produce(broker.bootstrap_servers, topic, [e.encode() for e in events[:2000]])
    snapshots = SnapshotStore(str(tmp_path / "state"))
    rank0 = _consumer(broker, topic, snapshots, rank=0, world_size=2).open()
    rank1 = _consumer(broker, topic, snapshots, rank=1, world_size=2).open()
    try:
        assert rank0.state.partitions() == [0, 2] and rank1.state.partitions() == [1, 3]
        rank0.drain()
        rank1.drain()
        before_death = rank1.state.offsets()
        rank1.abort()  # dies without its final snapshot
        snapshotted = _snapshotted(snapshots, topic)
        assert any(snapshotted.get(p, -1) < offset for p, offset in before_death.items()), (
            "rank 1 had nothing unsnapshotted when it died: the takeover would replay nothing"
        )

        _produce(broker.bootstrap_servers, topic, [e.encode() for e in events[2000:]])
        rank0.set_ownership(0, 1)
        assert rank0.state.partitions() == [0, 1, 2, 3]
        for partition in (1, 3):
            assert rank0.state.applied_offset(partition) == snapshotted.get(partition, -1)
        rank0.drain()
        final = rank0.state.export()
    finally:
        rank0.close()
        rank1.close()
    clean = _clean_pass(broker, topic)
    assert final == clean
    assert _users(clean) == _oracle(events)


def _poison(good: UserEvent) -> list[tuple[str, bytes | None, bytes | None]]:
    """(expected reason, key, value) of one malformed message of every kind the decoder refuses."""
    document = json.loads(good.encode()[1])
    key = good.user_id.encode()

    def value(**changes: object) -> bytes:
        return json.dumps({**document, **changes}).encode()

    without_item = {k: v for k, v in document.items() if k != "item_id"}
    return [
        ("oversized_key", b"k" * (MAX_KEY_BYTES + 1), value()),
        ("oversized_value", key, value(padding="x" * 20_000)),
        ("undecodable", key, b"\xff\xfe{}"),
        ("bad_json", key, b'{"user_id": '),
        ("not_an_object", key, b"[1, 2, 3]"),
        ("missing_field", key, json.dumps(without_item).encode()),
        ("missing_field", key, None),  # a tombstone
        ("wrong_type", key, value(item_id=5)),
        ("unknown_event", key, value(event="teleport")),
        ("ts_out_of_range", key, value(ts=315_532_800_000)),  # 1980
        ("ts_out_of_range", key, value(ts="2199-01-01T00:00:00+00:00")),
        ("key_mismatch", b"somebody-else", value()),
    ]


def test_poison_messages_go_to_the_dead_letter_topic_and_the_stream_goes_on(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = _topic(broker)
    events = _events(1200, seed=3)
    poison = _poison(events[0])
    messages: list[tuple[bytes | None, bytes | None]] = []
    step = len(events) // len(poison)
    for i, e in enumerate(events):
        if i % step == 0 and i // step < len(poison):
            _, key, value = poison[i // step]
            messages.append((key, value))
        messages.append(e.encode())
    _produce(broker.bootstrap_servers, topic, messages)

    consumer = _consumer(broker, topic, SnapshotStore(str(tmp_path / "state")))
    consumer.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            metrics = consumer.metrics()
            if (
                metrics.applied + metrics.duplicates + metrics.dead_letters == len(messages)
                and not metrics.total_lag
            ):
                break
            time.sleep(0.05)
        assert consumer.alive()
        metrics = consumer.metrics()
    finally:
        consumer.stop()
    assert not consumer.alive()
    assert metrics.dead_letters == len(poison) and metrics.loop_errors == 0
    assert metrics.dead_letters_by_reason == Counter(reason for reason, _, _ in poison)
    # the loop polled just now, within the 5 s the rate looks back over, and had applied events
    # there (the exact rate, on a clock the test sets: test_events_per_s_is_...)
    assert metrics.latency_ms_p99 is not None and metrics.events_per_s > 0
    assert _users(consumer.state.export()) == _oracle(events)

    letters = _read(broker, f"{topic}.dlq", len(poison))
    by_original = {
        DeadLetter.model_validate_json(value).original(): DeadLetter.model_validate_json(value)
        for value in letters
    }
    for reason, key, value in poison:
        letter = by_original[(key, value)]
        assert letter.reason == reason and letter.topic == topic and letter.detail
    sources = {(letter.partition, letter.offset) for letter in by_original.values()}
    assert len(sources) == len(poison)


def _read(broker: EmbeddedBroker, topic: str, expected: int) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False, consumer_timeout_ms=500
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        values: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(values) < expected and time.monotonic() < deadline:
            values.extend(message.value for message in consumer)
        return values
    finally:
        consumer.close()


def test_events_per_s_is_the_events_applied_per_second_of_the_last_5_s(
    broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rate counts applied events, not duplicates or dead letters, per second of the loop's
    clock over its last 5 s; polled here by hand on a clock the test sets."""
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(poll_loop, "time", SimpleNamespace(monotonic=lambda: clock.now, time=time.time))
    topic = _topic(broker)
    consumer = _consumer(broker, topic, None).open()

    def poll_until_handled(n_messages: int) -> ConsumerMetrics:
        deadline = time.monotonic() + 30
        metrics = consumer.metrics()
        while metrics.applied + metrics.duplicates + metrics.dead_letters < n_messages:
            assert time.monotonic() < deadline, metrics
            consumer.poll_once(timeout_ms=200)
            metrics = consumer.metrics()
        return metrics

    try:
        assert consumer.poll_once(timeout_ms=100) == 0  # the empty topic: 0 applied at t = 100 s
        events = _events(200, seed=9)
        poison = [(key, value) for _, key, value in _poison(events[0])[:3]]
        _produce(broker.bootstrap_servers, topic, [e.encode() for e in events] + poison)
        clock.now = 102.5
        first = poll_until_handled(len(events) + len(poison))
        assert first.duplicates > 0 and first.dead_letters == len(poison)
        assert first.events_per_s == pytest.approx(first.applied / 2.5)
        clock.now = 108.0  # 5.5 s on, nothing new: only this poll's sample is left in the window
        consumer.poll_once(timeout_ms=100)
        assert consumer.metrics().events_per_s == 0.0
        more = _events(60, seed=10)
        _produce(broker.bootstrap_servers, topic, [e.encode() for e in more])
        clock.now = 109.5
        second = poll_until_handled(len(events) + len(poison) + len(more))
        assert second.events_per_s == pytest.approx((second.applied - first.applied) / 1.5)
    finally:
        consumer.close()


def test_corrupt_snapshots_fall_back_and_still_end_in_the_clean_pass_state(
    broker: EmbeddedBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = _topic(broker)
    events = _events(4000, seed=4)
    _produce(broker.bootstrap_servers, topic, [e.encode() for e in events])
    snapshots = SnapshotStore(str(tmp_path / "state"))
    first = _consumer(broker, topic, snapshots).open()
    first.drain()
    first.abort()
    # Partition 0 loses every snapshot to corruption (a full replay); the others their newest one.
    for partition in range(PARTITIONS):
        kept = snapshots.list(topic, partition)
        assert len(kept) >= 2, f"partition {partition} has {len(kept)} snapshots"
        for uri in kept if partition == 0 else kept[:1]:
            data = bytearray(Path(uri).read_bytes())
            data[len(data) // 2] ^= 0xFF
            Path(uri).write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="raymm.stream.snapshot"):
        second = _consumer(broker, topic, snapshots).open()
    try:
        assert second.state.applied_offset(0) == -1
        assert all(second.state.applied_offset(p) >= 0 for p in range(1, PARTITIONS))
        second.drain()
        recovered = second.state.export()
    finally:
        second.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("previous good snapshot" in m for m in messages) == PARTITIONS - 1
    assert any("replaying the partition from the start of the log" in m for m in messages)
    assert recovered == _clean_pass(broker, topic)


def test_a_subscribed_consumer_with_static_membership_commits_its_snapshots(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    if broker.kind == "tansu":
        pytest.skip("Tansu's first consumer-group join takes ~23 s; the group path runs on noida")
    topic = _topic(broker)
    events = _events(800, seed=5)
    _produce(broker.bootstrap_servers, topic, [e.encode() for e in events])
    group = f"raymm-{uuid.uuid4().hex[:8]}"
    consumer = _consumer(
        broker, topic, SnapshotStore(str(tmp_path / "state")), group_id=group, group_instance_id="replica-0"
    )
    consumer.open()
    try:
        consumer.drain(timeout_s=60)
        state = consumer.state.export()
        offsets = consumer.state.offsets()
    finally:
        consumer.close()
    assert _users(state) == _oracle(events) and sorted(offsets) == list(range(PARTITIONS))
    assert state == _clean_pass(broker, topic)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        committed = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    assert {tp.partition: meta.offset for tp, meta in committed.items()} == {
        p: o + 1 for p, o in offsets.items()
    }


def test_the_items_contract_refuses_what_cannot_be_encoded() -> None:
    from raymm.stream.events import ItemLimits, ItemMessage, Rejected, decode_item

    limits = ItemLimits()
    png = base64.b64encode(b"\x89PNG...").decode()
    item = ItemMessage.model_validate(
        {"item_id": "i1", "text": "a song", "image": {"base64": png}, "tags": ["jazz"]}
    )
    assert decode_item(*item.encode(), limits) == item
    assert decode_item(
        b"i2", b'{"item_id": "i2", "audio": {"uri": "s3://b/a.wav"}, "extra": 1}', limits
    ).audio.uri == (  # type: ignore[union-attr]
        "s3://b/a.wav"
    )
    for value, reason in [
        (b'{"item_id": "i1"}', "no_content"),
        (b'{"item_id": "i1", "image": {"uri": "x", "base64": "eA=="}}', "wrong_type"),
        (b'{"item_id": "i1", "image": {"base64": "%%%"}}', "wrong_type"),
        (b'{"item_id": "i1", "text": 3}', "wrong_type"),
        (b'{"text": "t"}', "missing_field"),
        (b"nope", "bad_json"),
    ]:
        with pytest.raises(Rejected) as refused:
            decode_item(b"i1", value, limits)
        assert refused.value.reason == reason, value
    with pytest.raises(Rejected, match="key_mismatch"):
        decode_item(b"other", item.encode()[1], limits)


def test_a_running_consumer_snapshots_on_its_interval_and_reports_itself_alive(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = _topic(broker)
    events = _events(120, seed=6)
    _produce(broker.bootstrap_servers, topic, [e.encode() for e in events])
    snapshots = SnapshotStore(str(tmp_path / "state"))
    consumer = _consumer(broker, topic, snapshots, snapshot_every_events=10**9, snapshot_interval_s=0.3)
    consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_snapshotted(snapshots, topic)) < PARTITIONS:
            time.sleep(0.05)
        assert consumer.alive()
        # Taken on the interval, while running: neither the event count nor a shutdown asked for them.
        assert sum(offset + 1 for offset in _snapshotted(snapshots, topic).values()) == len(events)
    finally:
        consumer.stop()
    assert not consumer.alive()


def test_a_log_that_ends_below_the_applied_offset_is_reported_as_messages_the_broker_lost(
    broker: EmbeddedBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that lost acknowledged messages (noida SIGKILLed before its write) comes back with
    a log ending below what a snapshot applied: the offsets it reuses would be skipped as
    replays, so the consumer says so, naming the partition and the offsets."""
    topic = _topic(broker)
    events = _events(40, seed=8)
    _produce(broker.bootstrap_servers, topic, [e.encode() for e in events])
    snapshots = SnapshotStore(str(tmp_path / "state"))
    snapshots.save(encode_snapshot(topic, 0, 999, SPEC, []), topic, 0, 999)  # the log lost 0..999
    consumer = _consumer(broker, topic, snapshots)
    consumer.open()
    try:
        with caplog.at_level(logging.ERROR, logger="raymm.stream.loop"):
            consumer.drain(timeout_s=30)
            consumer.poll_once(timeout_ms=100)
    finally:
        consumer.close()
    lost = [r.getMessage() for r in caplog.records if "lost messages it had acknowledged" in r.getMessage()]
    assert len(lost) == 1 and f"{topic} partition 0: the log ends at offset " in lost[0], lost
    assert "below offset 1000 already handled" in lost[0]


def test_the_fast_decoder_accepts_and_refuses_exactly_what_decode_event_does() -> None:
    limits = EventLimits()
    decoder = EventDecoder(limits)
    good = _events(50, seed=7)
    messages = [e.encode() for e in good]
    messages += [(key, value) for _, key, value in _poison(good[0])]
    iso = json.loads(good[1].encode()[1]) | {"ts": "2026-01-01T00:00:00+01:00"}
    messages += [(None, good[2].encode()[1]), (good[3].encode()[0], json.dumps(iso).encode())]
    messages += [(b"u", b'{"event_id": "e", "user_id": "u", "item_id": "i", "event": "view", "ts": true}')]
    for key, value in messages:
        try:
            expected: Event | str = Event.of(decode_event(key, value, limits, decoder.now))
        except Rejected as exc:
            expected = exc.reason
        try:
            got: Event | str = decoder(key, value)
        except Rejected as exc:
            got = exc.reason
        assert got == expected, (key, value)
