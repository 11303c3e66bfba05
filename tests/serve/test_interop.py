"""Events from users' own producers reach their user's state, with 2 and 3 state shards.

A real Serve app over the session's model and a real noida broker; events are produced the ways
users produce them: kcat with its defaults (librdkafka's CRC32 partitioner), kcat without a key,
kafka-python without a key, confluent-kafka (librdkafka in Python) with its defaults, and raymm's
own producer. Each user of each route skips the items an unknown user is shown first, and likes
one more. Through ``GET /v1/recommendations``: the user is known, and no skipped item comes back.
The forwarded-events count in ``/healthz`` equals the events that landed off their owner
partition, read back from the topic.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from raymm.stream.consumer import forwarded_source
from raymm.stream.events import EVENTS_TOPIC, UserEvent
from raymm.stream.ownership import partition_for
from raymm.stream.producer import replay
from tests.conftest import Trained
from tests.serve.live import LiveApp, live_app
from tests.serve.test_app import _until

PARTITIONS = 6
SKIPS = 5
USERS_PER_ROUTE = 3


@pytest.fixture(scope="module", params=[2, 3], ids=["2-shards", "3-shards"])
def app(
    request: pytest.FixtureRequest, trained: Trained, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApp]:
    root = tmp_path_factory.mktemp(f"interop-{request.param}")
    with live_app(trained, root, shards=request.param, partitions=PARTITIONS) as running:
        yield running


def _events(route: str, skipped: list[str], liked: str) -> list[UserEvent]:
    now = int(time.time() * 1000)
    events = []
    for u in range(USERS_PER_ROUTE):
        user = f"{route}-{uuid.uuid4().hex[:8]}-{u}"
        kinds = [("skip", item) for item in skipped] + [("like", liked)]
        for i, (kind, item) in enumerate(kinds):
            events.append(
                UserEvent(
                    event_id=uuid.uuid4().hex, user_id=user, item_id=item, event=kind, ts=now - 1000 + i
                )
            )
    return events


def _lines(events: list[UserEvent], keyed: bool) -> bytes:
    encoded = [event.encode() for event in events]
    if keyed:
        return "".join(f"{k.decode()}\t{v.decode()}\n" for k, v in encoded).encode()
    return "".join(f"{v.decode()}\n" for _, v in encoded).encode()


def _kcat(kcat: str, bootstrap: str, events: list[UserEvent], keyed: bool) -> None:
    keys = ["-K", "\t"] if keyed else []
    subprocess.run([kcat, "-P", "-b", bootstrap, "-t", EVENTS_TOPIC, *keys], input=_lines(events, keyed), check=True, timeout=30)  # fmt: skip


def _kafka_python_no_key(bootstrap: str, events: list[UserEvent]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for event in events:
            producer.send(EVENTS_TOPIC, key=None, value=event.encode()[1])
        producer.flush()
    finally:
        producer.close()


def _confluent(bootstrap: str, events: list[UserEvent]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})  # default: consistent_random
    for event in events:
        key, value = event.encode()
        producer.produce(EVENTS_TOPIC, key=key, value=value)
    assert producer.flush(30) == 0


def _raymm(bootstrap: str, events: list[UserEvent]) -> None:
    import pyarrow as pa

    table = pa.table(
        {
            "user_id": [e.user_id for e in events],
            "item_id": [e.item_id for e in events],
            "event": [e.event for e in events],
            "ts": pa.array([e.ts for e in events], pa.timestamp("ms", tz="UTC")),
            "event_id": [e.event_id for e in events],
        }
    )
    assert replay(table, bootstrap).sent == len(events)


def _misrouted(bootstrap: str) -> int:
    """Events on the topic that are not forwards and sit off their user's owner partition."""
    reader = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    count = 0
    try:
        parts = [TopicPartition(EVENTS_TOPIC, p) for p in range(PARTITIONS)]
        reader.assign(parts)
        ends = reader.end_offsets(parts)
        done = dict.fromkeys(parts, False)
        deadline = time.monotonic() + 30
        while not all(done.values()) and time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=500).values():
                for record in records:
                    user = json.loads(record.value)["user_id"]
                    if forwarded_source(record.headers) is None and record.partition != partition_for(
                        user, PARTITIONS
                    ):
                        count += 1
            done = {tp: reader.position(tp) >= ends[tp] for tp in parts}
    finally:
        reader.close()
    return count


def test_events_from_every_producer_change_the_users_next_recommendation(app: LiveApp, kcat: str) -> None:
    first = app.get(f"/v1/recommendations/nobody-{uuid.uuid4().hex}", k=SKIPS + 1)
    assert first["fallback"] == "unknown_user"
    shown = [item["item_id"] for item in first["items"]]
    skipped, liked = shown[:SKIPS], shown[SKIPS]
    routes: dict[str, tuple[Callable[[list[UserEvent]], None], list[UserEvent]]] = {
        "kcat": (lambda events: _kcat(kcat, app.bootstrap, events, keyed=True), []),
        "kcat-no-key": (lambda events: _kcat(kcat, app.bootstrap, events, keyed=False), []),
        "kafka-python-no-key": (lambda events: _kafka_python_no_key(app.bootstrap, events), []),
        "confluent-kafka": (lambda events: _confluent(app.bootstrap, events), []),
        "raymm": (lambda events: _raymm(app.bootstrap, events), []),
    }
    for route, (send, sent) in routes.items():
        sent.extend(_events(route, skipped, liked))
        send(sent)

    misrouted = _misrouted(app.bootstrap)
    assert misrouted > 0  # kcat's CRC32 and the keyless routes miss the murmur2 owner

    users = sorted({e.user_id for _, sent in routes.values() for e in sent})

    def wrong() -> dict[str, str]:
        """Each user whose answer is not yet right, and why."""
        problems = {}
        for user in users:
            body = app.get(f"/v1/recommendations/{user}", k=20)
            returned = {item["item_id"] for item in body["items"]}
            if body["fallback"] is not None:
                problems[user] = f"fallback {body['fallback']}"
            elif returned & {*skipped, liked}:
                problems[user] = f"shown items they had: {sorted(returned & {*skipped, liked})}"
        return problems

    _until(lambda: not wrong(), 60)
    assert wrong() == {}, "events did not reach the shard that answers for their user"

    def forwarded() -> int:
        return sum(shard["forwarded"] for shard in app.get("/healthz")["shards"])

    _until(lambda: forwarded() == misrouted, 10)
    health = app.get("/healthz")
    assert len(health["shards"]) == app.shards
    assert forwarded() == misrouted
