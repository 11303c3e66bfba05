"""A state shard on its own (no Serve): it answers as ready only once its replay has caught up,
and stays ready; it refuses a topic whose partition count is not the deployment's; it answers with
the state it consumed and counts online hits on what it was told was served."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path

import pytest

from raymm.serve.shard import ServedLog, StateShard, shard_name
from raymm.stream.broker import EmbeddedBroker, ensure_topics
from raymm.stream.consumer import ConsumerError
from raymm.stream.events import UserEvent
from raymm.stream.state import StateSpec
from tests.stream.test_consumer import EPOCH, _produce

SPEC = StateSpec(max_history=5, events=frozenset({"like"}))


@pytest.fixture(scope="module")
def bootstrap() -> str:
    with EmbeddedBroker("noida") as broker:
        yield broker.bootstrap_servers


def _shard(bootstrap: str, topic: str, tmp_path: Path, **options: object) -> StateShard:
    return StateShard(
        rank=0,
        world_size=1,
        bootstrap_servers=bootstrap,
        spec=SPEC.to_json(),
        snapshot_uri=str(tmp_path / "state"),
        stream={"ready_max_lag": 0, "poll_max_records": 50},
        topic=topic,
        **options,  # type: ignore[arg-type]
    )


def test_a_shard_is_ready_only_once_it_has_caught_up(
    ray_session: None, bootstrap: str, tmp_path: Path
) -> None:
    topic = f"events.{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: 2})
    events = [
        UserEvent(
            event_id=f"e{i}", user_id=f"u{i % 50}", item_id=f"i{i % 7}", event="like", ts=EPOCH
        ).encode()
        for i in range(20_000)
    ]
    _produce(bootstrap, topic, events)
    shard = _shard(bootstrap, topic, tmp_path)
    try:
        seen = [shard.health()]
        deadline = time.monotonic() + 60
        while not seen[-1]["ready"] and time.monotonic() < deadline:
            time.sleep(0.02)
            seen.append(shard.health())
        behind = [h for h in seen if h["lag"]]
        assert behind and not any(h["ready"] for h in behind), "ready while its replay was behind"
        assert seen[-1]["ready"] and seen[-1]["lag"] == 0
        _produce(bootstrap, topic, events[:500])  # behind again under load: still ready
        assert shard.health()["ready"]
    finally:
        shard.stop()


def test_a_shard_refuses_a_topic_with_another_partition_count(
    ray_session: None, bootstrap: str, tmp_path: Path
) -> None:
    topic = f"events.{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: 3})
    with pytest.raises(ConsumerError, match=r"has 3 partitions, but this deployment is configured for 4"):
        _shard(bootstrap, topic, tmp_path, partitions=4)


def test_the_served_log_counts_hits_within_the_window_and_stays_bounded() -> None:
    log = ServedLog(window_s=10.0, max_users=3, per_user=2)
    log.record("u", ["a", "b"], at=0.0)
    assert log.hit("u", "a", now=5.0) is True and log.hit("u", "z", now=5.0) is False
    assert log.hit("nobody", "a", now=5.0) is None  # never served: not counted
    log.record("u", ["c"], at=6.0)
    log.record("u", ["d"], at=7.0)  # per_user 2: the first answer (a, b) is gone
    assert log.hit("u", "a", now=8.0) is False and log.hit("u", "c", now=8.0) is True
    assert log.hit("u", "d", now=18.0) is None and len(log) == 0  # out of the window: forgotten
    for i in range(5):
        log.record(f"v{i}", ["a"], at=20.0 + i)
    assert len(log) == 3 and log.hit("v0", "a", now=25.0) is None  # the least recently served went
    log.prune(now=32.5)  # v2 (at 22) is older than the window, v3 and v4 are not
    assert len(log) == 2 and log.hit("v4", "a", now=32.5) is True


def _event(i: int, user: str, item: str, kind: str = "like") -> tuple[bytes, bytes]:
    return UserEvent(
        event_id=f"e{i}", user_id=user, item_id=item, event=kind, ts=EPOCH + dt.timedelta(seconds=i)
    ).encode()


def _applied(shard: StateShard, n: int) -> dict[str, object]:
    """The shard's metrics once it has applied ``n`` events (at most 60 s)."""
    deadline = time.monotonic() + 60
    while shard.metrics()["applied"] < n and time.monotonic() < deadline:
        time.sleep(0.02)
    metrics = shard.metrics()
    assert metrics["applied"] == n
    return metrics


def test_a_shard_answers_with_the_state_it_consumed_and_counts_online_hits(
    ray_session: None, bootstrap: str, tmp_path: Path
) -> None:
    topic = f"events.{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: 2})
    _produce(bootstrap, topic, [_event(0, "u0", "i1"), _event(1, "u0", "i2"), _event(2, "u0", "i3", "view")])
    _produce(bootstrap, topic, [_event(3, "u1", "i4")])
    shard = _shard(bootstrap, topic, tmp_path)
    try:
        _applied(shard, 4)
        ms = [int((EPOCH + dt.timedelta(seconds=i)).timestamp() * 1000) for i in range(10)]
        assert shard.get_users(["u0", "u1", "nobody"]) == [
            {"history": ["i1", "i2"], "seen": ["i1", "i2", "i3"], "n_events": 3, "last_ts_ms": ms[2]},
            {"history": ["i4"], "seen": ["i4"], "n_events": 1, "last_ts_ms": ms[3]},
            None,
        ]
        assert shard.partitions() == [0, 1] and sum(o + 1 for o in shard.offsets().values()) == 4
        assert shard.hit_rate() is None  # nothing served yet: no rate, not 0
        shard.record_served([("u0", ["i5", "i6"], 0.0), ("u1", ["i7"], 0.0)])
        # u0 takes a served item and one not served, u1 a served one; u2 was never served
        _produce(bootstrap, topic, [_event(4, "u0", "i5"), _event(5, "u0", "i9"), _event(6, "u1", "i7")])
        _produce(bootstrap, topic, [_event(7, "u2", "i5")])
        metrics = _applied(shard, 8)
        assert (metrics["hits"], metrics["hit_checked"], metrics["served_answers"]) == (2, 3, 2)
        assert metrics["hit_rate"] == shard.hit_rate() == pytest.approx(2 / 3)
        # served before the window: the next event is not counted
        shard.record_served([("u2", ["i8"], shard.hit_window_s + 5)])
        _produce(bootstrap, topic, [_event(8, "u2", "i8")])
        assert (_applied(shard, 9)["hits"], shard.metrics()["hit_checked"]) == (2, 3)
        assert shard.metrics()["served_answers"] == 3
        assert shard_name(3) == "state-3"
    finally:
        shard.stop()
