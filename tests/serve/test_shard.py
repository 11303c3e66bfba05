"""A state shard on its own (no Serve): it answers as ready only once its replay has caught up,
and stays ready; it refuses a topic whose partition count is not the deployment's."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from raymm.serve.shard import ServedLog, StateShard
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
