"""The items follower against real brokers (Tansu and noida): valid items reach ``on_items`` in
order, refused ones land in the dead-letter topic and are counted by reason, ``restart`` reads the
topic again from its start, and a follower started before its topic exists picks it up."""

from __future__ import annotations

import json
import time
import uuid

from kafka import KafkaConsumer, TopicPartition

from raymm.stream.broker import EmbeddedBroker, ensure_topics
from raymm.stream.events import DeadLetter, ItemMessage
from raymm.stream.items import ItemsFollower
from tests.stream.test_consumer import _produce


def _poll_until(follower: ItemsFollower, done: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        follower.poll_once(timeout_ms=200)


def test_the_follower_hands_on_valid_items_and_dead_letters_the_rest(broker: EmbeddedBroker) -> None:
    topic = f"items.{uuid.uuid4().hex[:10]}"
    dlq = f"{topic}.dlq"
    ensure_topics(broker.bootstrap_servers, {topic: 2, dlq: 1})
    good = [ItemMessage(item_id=f"it{i}", text=f"item {i}") for i in range(4)]
    _produce(
        broker.bootstrap_servers,
        topic,
        [item.encode() for item in good]
        + [(b"bad-1", b"{not json"), (b"it9", json.dumps({"item_id": "it9"}).encode())],
    )
    received: list[ItemMessage] = []
    follower = ItemsFollower(broker.bootstrap_servers, received.extend, topic=topic, dead_letter_topic=dlq)
    reasons: list[str] = []
    follower.on_dead_letter = reasons.append
    follower.open()
    try:
        _poll_until(follower, lambda: len(received) == 4 and follower.loop_metrics().dead_letters == 2)
        assert sorted(item.item_id for item in received) == [f"it{i}" for i in range(4)]
        metrics = follower.loop_metrics()
        assert metrics.dead_letters_by_reason == {"bad_json": 1, "no_content": 1}
        assert sorted(reasons) == ["bad_json", "no_content"]
        assert metrics.handled == 6 and sum(metrics.lag.values()) == 0

        follower.restart()  # a roll-out: the new model reads every item again
        _poll_until(follower, lambda: len(received) == 8)
        assert sorted(item.item_id for item in received[4:]) == [f"it{i}" for i in range(4)]
        follower._producer.flush()  # type: ignore[union-attr]
    finally:
        follower.close()
    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest")
    try:
        reader.assign([TopicPartition(dlq, 0)])
        letters = [
            DeadLetter.model_validate_json(r.value)
            for batch in reader.poll(timeout_ms=5000).values()
            for r in batch
        ]
    finally:
        reader.close()
    assert {letter.reason for letter in letters} == {"bad_json", "no_content"}
    assert {letter.original()[1] for letter in letters if letter.reason == "bad_json"} == {b"{not json"}


def test_a_follower_started_before_its_topic_exists_picks_it_up(broker: EmbeddedBroker) -> None:
    topic = f"items.{uuid.uuid4().hex[:10]}"
    received: list[ItemMessage] = []
    follower = ItemsFollower(broker.bootstrap_servers, received.extend, topic=topic, liveness_timeout_s=5)
    follower.start()
    try:
        time.sleep(0.5)
        assert follower.alive()  # waiting for the topic is not being stuck
        ensure_topics(broker.bootstrap_servers, {topic: 1})
        _produce(broker.bootstrap_servers, topic, [ItemMessage(item_id="late", text="a late item").encode()])
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [item.item_id for item in received] == ["late"]
    finally:
        follower.stop()
