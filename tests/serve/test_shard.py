"""A state shard on its own (no Serve): it answers as ready only once its replay has caught up,
and stays ready; it refuses a topic whose partition count is not the deployment's."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from raymm.serve.shard import StateShard
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
