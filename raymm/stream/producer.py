"""Replay interactions onto ``raymm.events``.

Every event is keyed by its ``user_id`` and sent to its user's owner partition
(:func:`raymm.stream.ownership.partition_for` with the deployment's partitioner), so raymm's own
producer never makes a consumer forward; other producers may (see :mod:`raymm.stream.consumer`).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from kafka import KafkaProducer

from raymm import console
from raymm.data import io
from raymm.data.schema import conform_interactions
from raymm.errors import RaymmError
from raymm.stream.clients import kafka_client
from raymm.stream.events import EVENTS_TOPIC, UserEvent
from raymm.stream.ownership import Ownership, Partitioner
from raymm.stream.settings import KafkaSettings

__all__ = ["ReplayError", "ReplayResult", "replay"]

_BATCH_ROWS = 4096


class ReplayError(RaymmError):
    """The broker refused some replayed events; the message counts them and names the first error."""


@dataclass(frozen=True)
class ReplayResult:
    """What :func:`replay` sent: the count, the seconds it took (flush included) and the
    number of events acknowledged on each partition."""

    sent: int
    elapsed_s: float
    partitions: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Events per second over the whole replay."""
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def replay(
    events: pa.Table | str | Path,
    bootstrap_servers: str,
    topic: str = EVENTS_TOPIC,
    *,
    rate: float | None = None,
    limit: int | None = None,
    progress: bool = False,
    partitioner: Partitioner = "murmur2",
    kafka: KafkaSettings | None = None,
) -> ReplayResult:
    """Produce the interactions ``events`` (a table or a ``stream.parquet`` path) to ``topic``.

    Each row becomes a :class:`UserEvent` keyed by its user, in table order (stream.parquet is
    time-ordered). A null or missing ``event_id`` is replaced by a deterministic one (a hash of the
    row's fields and position), so replaying the same file twice sends the same ids. ``rate``
    (events/s) paces the sends with a token bucket that sleeps rather than spins (None: as fast as
    the producer goes); ``limit`` sends only the first rows. Returns once every event is
    acknowledged (``acks="all"``).

    The topic should exist with its partition count (:func:`raymm.stream.broker.ensure_topics`):
    a broker that auto-creates topics would give it its default count. ``kafka`` gives the producer
    its client id and security settings (default: plaintext); ``partitioner`` is the owner
    rule's hash (``kafka.partitioner``): each event goes to its user's owner partition. Raises ``DataError`` for a table
    off the interactions contract, ``ValueError`` for a bad ``rate`` or ``limit``,
    :class:`ReplayError` when the broker refuses events, and kafka-python's ``KafkaError`` when it
    cannot be reached.
    """
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be positive events/s or None, got {rate}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be a non-negative number of events or None, got {limit}")
    table = io.read_table(str(events), "events parquet") if isinstance(events, str | Path) else events
    table = conform_interactions(table)
    if limit is not None:
        table = table.slice(0, limit)

    producer = kafka_client(
        KafkaProducer, bootstrap_servers, kafka or KafkaSettings(), acks="all", linger_ms=5
    )
    partitions = producer.partitions_for(topic)  # waits for the metadata; a missing topic raises
    owner_partition = Ownership(len(partitions), partitioner=partitioner).partition_cache()
    acked: Counter[int] = Counter()
    failures: list[BaseException] = []
    lock = threading.Lock()

    def on_sent(metadata: Any) -> None:
        with lock:
            acked[metadata.partition] += 1

    def on_error(exc: BaseException) -> None:
        with lock:
            failures.append(exc)

    bucket = _TokenBucket(rate) if rate is not None else None
    start = time.monotonic()
    try:
        bar: console.ProgressBar[Any] = console.progress(
            total=table.num_rows, desc=f"replay -> {topic}", unit="event", enabled=progress
        )
        with contextlib.closing(bar):
            row = 0
            for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
                for event in _events(batch, row):
                    if bucket is not None:
                        bucket.take()
                    key, value = event.encode()
                    partition = owner_partition(event.user_id)
                    producer.send(topic, key=key, value=value, partition=partition).add_callback(
                        on_sent
                    ).add_errback(on_error)
                bar.update(batch.num_rows)
                row += batch.num_rows
        producer.flush()
    finally:
        producer.close()
    elapsed = time.monotonic() - start
    if failures:
        raise ReplayError(
            f"{len(failures)} of {table.num_rows} events were not acknowledged by {bootstrap_servers} "
            f"(topic {topic!r}); the first error: {failures[0]!r}"
        )
    return ReplayResult(sent=sum(acked.values()), elapsed_s=elapsed, partitions=dict(sorted(acked.items())))


def _events(batch: pa.RecordBatch, first_row: int) -> list[UserEvent]:
    """The batch's rows as events; ``ts`` as epoch ms, missing ids made from the row."""
    users = batch.column("user_id").to_pylist()
    items = batch.column("item_id").to_pylist()
    kinds = batch.column("event").to_pylist()
    ts_ms = pc.cast(batch.column("ts"), pa.int64()).to_pylist()
    ids = batch.column("event_id").to_pylist()
    return [
        UserEvent(
            event_id=event_id or _event_id(user, item, kind, ts, first_row + i),
            user_id=user,
            item_id=item,
            event=kind,
            ts=ts,
        )
        for i, (event_id, user, item, kind, ts) in enumerate(
            zip(ids, users, items, kinds, ts_ms, strict=True)
        )
    ]


def _event_id(user_id: str, item_id: str, event: str, ts_ms: int, row: int) -> str:
    text = "\x1f".join((user_id, item_id, event, str(ts_ms), str(row)))
    return "replay-" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class _TokenBucket:
    """Allows ``rate`` takes per second with bursts of at most 10 ms worth; sleeps when empty."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate / 100)
        self.tokens = 1.0
        self.last = time.monotonic()

    def take(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            time.sleep((1.0 - self.tokens) / self.rate)
            now = time.monotonic()
            # Credit an oversleep, so the average rate holds even with a coarse sleep.
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
        self.tokens -= 1.0
