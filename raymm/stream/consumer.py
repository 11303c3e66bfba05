"""The event consumer: ``raymm.events`` -> decode and validate -> dead letters or user state.

:class:`EventConsumer` is a plain class. Tests and benchmarks drive it step by step
(:meth:`~EventConsumer.open`, :meth:`~EventConsumer.poll_once`, :meth:`~EventConsumer.drain`,
:meth:`~EventConsumer.close`); serving runs it in a thread of its own
(:meth:`~EventConsumer.start`), so it never blocks an asyncio loop, and reads the state from any
thread (:meth:`UserStateStore.get`).

**Ownership.** By default the consumer *assigns* itself the partitions with
``partition % world_size == rank`` (:func:`owned_partitions`). Serving routes a user's request to
the owner of ``partition_for(user_id)`` by the same rule (:func:`owner_rank`), so three hashes
agree: Kafka's default partitioner, the assignment, and the routing. With ``group_id`` it
*subscribes* instead and lets the group coordinator assign (``group_instance_id`` gives static
membership); routing then needs the group's assignment.

**Exactly-once effect.** Offsets are kept by the state, not by Kafka: on gaining a partition the
consumer restores its newest valid snapshot and seeks to the offset after the one it had applied
(the start of the log without one). Re-delivered messages are skipped by offset. A snapshot of a
partition is taken every ``snapshot_every_events`` events, every ``snapshot_interval_s`` seconds,
on giving the partition up and on shutdown; the dead-letter producer is flushed first, so a
refused message is in the dead-letter topic before any snapshot records it as done. A consumer
killed between snapshots loses nothing: its successor replays from the last snapshot. (Dead
letters are at-least-once: a replay can send one again.) In group mode the consumer also commits
each snapshot's offsets to the group, so Kafka tools show its progress; it never reads them back.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from raymm.errors import RaymmError
from raymm.stream.events import DEAD_LETTER_TOPIC, DeadLetter, Event, EventDecoder, EventLimits, Rejected
from raymm.stream.ownership import owned_partitions, owner_rank
from raymm.stream.settings import StreamSettings
from raymm.stream.snapshot import SnapshotStore, encode_snapshot
from raymm.stream.state import UserStateStore

__all__ = ["ConsumerError", "ConsumerMetrics", "EventConsumer", "owned_partitions", "owner_rank"]

log = logging.getLogger(__name__)

_LATENCY_SAMPLES = 8192
_RATE_WINDOW_S = 5.0
#: How long an idle consumer sleeps between non-blocking polls, at first and at most: each idle
#: poll doubles the sleep up to the most, an event resets it. The most is what idleness can add
#: to freshness; a state shard's idle poll costs ~3 ms of CPU here, so the backoff took two idle
#: shards from ~0.28 of a core to ~0.1 (bench/serve_latency.py ``idle_cores``).
_IDLE_WAIT_S = 0.01
_IDLE_MAX_WAIT_S = 0.08


class ConsumerError(RaymmError):
    """The consumer could not start: the topic is missing, or the ownership is impossible."""


@dataclass(frozen=True)
class ConsumerMetrics:
    """A consumer's counters and gauges, as of its last loop.

    ``lag`` is per partition: the high watermark minus the next offset to read. Event-to-state
    latency is from the record's Kafka timestamp (set by the producer) to its apply, sampled on
    the last record of each partition's batch, over the last 8,192 samples.
    """

    partitions: tuple[int, ...]
    applied: int
    replayed: int
    duplicates: int
    dead_letters: int
    dead_letters_by_reason: dict[str, int]
    events_per_s: float
    lag: dict[int, int]
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    snapshots: int
    snapshot_failures: int
    loop_errors: int
    users_in_memory: int
    users_spilled: int

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())


@dataclass
class _Partition:
    """The consumer's bookkeeping for one owned partition."""

    since_snapshot: int = 0
    last_snapshot_t: float = field(default_factory=time.monotonic)
    #: The applied offset of the newest snapshot taken, of the newest one written, and the
    #: offset committed to the group (group mode).
    snapshot_offset: int = -1
    durable_offset: int = -1
    committed_offset: int = -1


class EventConsumer:
    """Consume ``topic`` into ``state``; see the module docstring.

    ``observer`` (optional) sees every batch's newly delivered events after they are applied, in the
    consumer thread (serving counts online hits with it); it must be quick and must not raise.
    ``snapshots=None`` keeps no snapshots (a restart then replays every owned partition from the
    start of the log). ``client_options`` go to kafka-python's consumer and producer (security
    settings: :meth:`raymm.stream.settings.KafkaSettings.client_options`).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        state: UserStateStore,
        snapshots: SnapshotStore | None,
        *,
        rank: int = 0,
        world_size: int = 1,
        group_id: str | None = None,
        group_instance_id: str | None = None,
        dead_letter_topic: str = DEAD_LETTER_TOPIC,
        limits: EventLimits | None = None,
        snapshot_every_events: int = 50_000,
        snapshot_interval_s: float = 30.0,
        poll_max_records: int = 2000,
        poll_timeout_ms: int = 200,
        liveness_timeout_s: float = 30.0,
        client_options: dict[str, Any] | None = None,
        observer: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if group_instance_id is not None and group_id is None:
            raise ValueError("group_instance_id (static membership) needs a group_id")
        self.bootstrap_servers = bootstrap_servers
        self.state = state
        self.topic = state.topic
        self.snapshots = snapshots
        self.rank = rank
        self.world_size = world_size
        self.group_id = group_id
        self.group_instance_id = group_instance_id
        self.dead_letter_topic = dead_letter_topic
        self.limits = limits or EventLimits()
        self._decode = EventDecoder(self.limits)
        self.snapshot_every_events = snapshot_every_events
        self.snapshot_interval_s = snapshot_interval_s
        self.poll_max_records = poll_max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.liveness_timeout_s = liveness_timeout_s
        self.client_options = dict(client_options or {})
        self.observer = observer

        self._consumer: KafkaConsumer | None = None
        self._dlq: KafkaProducer | None = None
        self._owned: dict[int, _Partition] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raymm-snapshot")
        self._pending: list[Future[None]] = []
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._abort = False
        self._last_beat = time.monotonic()
        self.error: BaseException | None = None
        # counters: written by the consumer thread, read by anyone
        self._applied = self._replayed = self._duplicates = self._dead = 0
        self._dead_by_reason: collections.Counter[str] = collections.Counter()
        self._snapshots = self._snapshot_failures = self._loop_errors = 0
        self._latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self._rate_samples: collections.deque[tuple[float, int]] = collections.deque()
        self._lag: dict[int, int] = {}

    @classmethod
    def from_settings(
        cls,
        bootstrap_servers: str,
        state: UserStateStore,
        snapshots: SnapshotStore | None,
        settings: StreamSettings,
        **options: Any,
    ) -> EventConsumer:
        """A consumer configured by the ``stream:`` section; ``options`` as the constructor takes
        them (rank, world_size, group_id, client_options, observer, ...)."""
        return cls(
            bootstrap_servers,
            state,
            snapshots,
            limits=settings.limits,
            snapshot_every_events=settings.snapshot_every_events,
            snapshot_interval_s=settings.snapshot_interval_s,
            poll_max_records=settings.poll_max_records,
            poll_timeout_ms=settings.poll_timeout_ms,
            liveness_timeout_s=settings.liveness_timeout_s,
            **options,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> EventConsumer:
        """Connect, take the partitions this rank owns (or subscribe) and restore their state."""
        if self._consumer is not None:
            raise ConsumerError("the consumer is open already")
        common = {"bootstrap_servers": self.bootstrap_servers, **self.client_options}
        self._consumer = KafkaConsumer(
            group_id=self.group_id,
            group_instance_id=self.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.poll_max_records,
            fetch_max_wait_ms=min(self.poll_timeout_ms, 500),
            **common,
        )
        self._dlq = KafkaProducer(acks="all", linger_ms=20, **common)
        if self.group_id is None:
            self._assign(owned_partitions(self._partition_count(), self.rank, self.world_size))
        else:
            self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        self._last_beat = time.monotonic()
        return self

    def start(self) -> threading.Thread:
        """Open if needed and consume in a daemon thread until :meth:`stop` or :meth:`abort`."""
        if self._thread is not None:
            raise ConsumerError("the consumer runs already")
        if self._consumer is None:
            self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"raymm-consumer-{self.rank}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop consuming, snapshot every owned partition, and close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        else:
            self.close()

    def abort(self) -> None:
        """Stop without a final snapshot, as if the process had died (for tests and drills)."""
        self._abort = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:
            self._close(final_snapshot=False)

    def close(self) -> None:
        """Snapshot every owned partition that changed, wait for the writes, and disconnect."""
        self._close(final_snapshot=True)

    def _close(self, final_snapshot: bool) -> None:
        if self._consumer is None:
            return
        try:
            if final_snapshot:
                for partition in list(self._owned):
                    self._snapshot(partition)
                self._wait_for_writes()
                self._commit(sync=True)
            else:
                self._wait_for_writes()  # snapshots already taken; a crash may or may not lose them
        finally:
            if self._dlq is not None:
                self._dlq.close(timeout=10)
            self._consumer.close(autocommit=False)
            self._consumer = self._dlq = None
            self._writer.shutdown(wait=not self._abort)
            self._owned.clear()

    def _run(self) -> None:
        idle = False
        wait_s = _IDLE_WAIT_S
        while not self._stop.is_set():
            try:
                while not self._commands.empty():
                    self._commands.get_nowait()()
                # An idle consumer polls without blocking and sleeps between polls: some brokers
                # (noida) answer fetches at once instead of holding them for fetch_max_wait_ms, and
                # a blocking poll then spins (0.7 of a core here, against 0.02 on Tansu).
                idle = self.poll_once(timeout_ms=0 if idle else None) == 0
                if idle:
                    self._stop.wait(wait_s)
                    wait_s = min(2 * wait_s, _IDLE_MAX_WAIT_S)
                else:
                    wait_s = _IDLE_WAIT_S
            except Exception as exc:  # the stream never stops; the log says why
                self._loop_errors += 1
                self.error = exc
                log.exception("consumer %d: the poll loop failed; retrying in 1 s", self.rank)
                self._stop.wait(1.0)
        self._close(final_snapshot=not self._abort)

    # -- consuming ------------------------------------------------------------------------------

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """One poll (waiting up to ``timeout_ms``, default ``poll_timeout_ms``): decode,
        dead-letter, apply, and snapshot where due; returns messages handled."""
        consumer = self._require_open()
        wait = self.poll_timeout_ms if timeout_ms is None else timeout_ms
        batches = consumer.poll(timeout_ms=wait, max_records=self.poll_max_records)
        handled = 0
        now_ms = time.time() * 1000.0
        decode = self._decode
        decode.window()  # the future bound moves with the clock, once per poll
        for tp, records in batches.items():
            if tp.partition not in self._owned:
                continue  # revoked while the fetch was in flight
            messages: list[tuple[int, Event | None]] = []
            for record in records:
                try:
                    event: Event | None = decode(record.key, record.value)
                except Rejected as rejected:
                    event = None
                    self._dead_letter(rejected, record)
                messages.append((record.offset, event))
            last = records[-1]
            if last.timestamp_type == 0 and last.timestamp > 0:  # CreateTime, one sample per batch
                self._latencies.append(now_ms - last.timestamp)
            before = self.state.applied_offset(tp.partition)
            result = self.state.apply_batch(tp.partition, messages)
            if self.observer is not None:
                self.observer([e for offset, e in messages if e is not None and offset > before])
            self._applied += result.applied
            self._replayed += result.replayed
            self._duplicates += result.duplicates
            self._owned[tp.partition].since_snapshot += len(records)
            handled += len(records)
        self._after_poll(consumer)
        return handled

    def _dead_letter(self, rejected: Rejected, record: Any) -> None:
        assert self._dlq is not None
        letter = DeadLetter.of(
            rejected, record.key, record.value, record.topic, record.partition, record.offset
        )
        key, value = letter.encode()
        self._dlq.send(self.dead_letter_topic, key=key, value=value)
        self._dead += 1
        self._dead_by_reason[rejected.reason] += 1

    def _after_poll(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        self._last_beat = now
        self._rate_samples.append((now, self._applied))
        while self._rate_samples and now - self._rate_samples[0][0] > _RATE_WINDOW_S:
            self._rate_samples.popleft()
        lag: dict[int, int] = {}
        for partition, book in self._owned.items():
            tp = TopicPartition(self.topic, partition)
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag[partition] = max(0, highwater - self.state.applied_offset(partition) - 1)
            if book.since_snapshot >= self.snapshot_every_events or (
                now - book.last_snapshot_t >= self.snapshot_interval_s
            ):
                self._snapshot(partition)
        self._lag = lag
        self._pending = [f for f in self._pending if not f.done()]
        self._commit()

    def drain(self, timeout_s: float = 60.0) -> int:
        """Poll until every owned partition is applied up to its end offset as of the call;
        returns messages handled. ``TimeoutError`` if that takes longer than ``timeout_s``."""
        consumer = self._require_open()
        deadline = time.monotonic() + timeout_s
        while not self._owned and self.group_id is not None:  # wait for the group's assignment
            self.poll_once()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partitions of {self.topic} were assigned within {timeout_s} s")
        tps = [TopicPartition(self.topic, p) for p in self._owned]
        ends = {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
        handled = self.poll_once()  # at least one fetch, so the high watermarks are known

        def behind() -> dict[int, int]:
            # The end offsets as of the call, or the fetches' high watermarks where those are later
            # (some brokers answer ListOffsets with a slightly stale end).
            return {
                p: gap
                for p in self._owned
                if (
                    gap := max(ends.get(p, 0) - 1, self.state.applied_offset(p) + self._lag.get(p, 0))
                    - self.state.applied_offset(p)
                )
                > 0
            }

        while gaps := behind():
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer {self.rank} still behind after {timeout_s} s: {gaps}")
            handled += self.poll_once()
        return handled

    # -- ownership ------------------------------------------------------------------------------

    def set_ownership(self, rank: int, world_size: int) -> None:
        """Own ``partition % world_size == rank`` from now on: partitions given up are
        snapshotted and dropped, partitions gained are restored from their newest snapshot.
        Runs in the consumer thread when one is running (this call then returns at once)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if self.group_id is not None:
            raise ConsumerError("a subscribed consumer's partitions are assigned by its group")

        def change() -> None:
            self.rank, self.world_size = rank, world_size
            self._assign(owned_partitions(self._partition_count(), rank, world_size))

        if self._thread is not None:
            self._commands.put(change)
        else:
            change()

    def _partition_count(self) -> int:
        consumer = self._require_open()
        deadline = time.monotonic() + 30.0
        while True:
            partitions = consumer.partitions_for_topic(self.topic)
            if partitions:
                return len(partitions)
            if time.monotonic() > deadline:
                raise ConsumerError(
                    f"topic {self.topic!r} does not exist on {self.bootstrap_servers}: create it with "
                    "its partition count first (raymm.stream.broker.ensure_topics)"
                )
            time.sleep(0.2)

    def _assign(self, partitions: Sequence[int]) -> None:
        consumer = self._require_open()
        wanted = set(partitions)
        self._give_up([p for p in self._owned if p not in wanted])
        gained = [p for p in sorted(wanted) if p not in self._owned]
        consumer.assign([TopicPartition(self.topic, p) for p in sorted(wanted)])
        self._take(gained)

    def _give_up(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            self._snapshot(partition)
        self._wait_for_writes()
        self._commit(sync=True)
        for partition in partitions:
            self._owned.pop(partition, None)
            self._lag.pop(partition, None)
            self.state.drop_partition(partition)

    def _take(self, partitions: Sequence[int]) -> None:
        consumer = self._require_open()
        for partition in partitions:
            applied, users = -1, None
            if self.snapshots is not None:
                restored = self.snapshots.restore(self.topic, partition)
                if restored.snapshot is not None:
                    applied, users = restored.snapshot.applied_offset, restored.snapshot.users
                    if restored.snapshot.spec != self.state.spec:
                        log.warning(
                            "%s partition %d: snapshot %s was kept by spec %s, this consumer keeps %s; "
                            "its histories are used as they are",
                            self.topic,
                            partition,
                            restored.uri,
                            restored.snapshot.spec,
                            self.state.spec,
                        )
            self.state.add_partition(partition, applied, users)
            self._owned[partition] = _Partition(snapshot_offset=applied)
            consumer.seek(TopicPartition(self.topic, partition), applied + 1)
            log.info(
                "consumer %d took %s partition %d at offset %d", self.rank, self.topic, partition, applied + 1
            )

    # -- snapshots ------------------------------------------------------------------------------

    def _snapshot(self, partition: int) -> None:
        """Snapshot ``partition`` if it changed since its last snapshot; the write is queued."""
        book = self._owned.get(partition)
        if book is None or self.snapshots is None:
            return
        applied = self.state.applied_offset(partition)
        book.since_snapshot = 0
        book.last_snapshot_t = time.monotonic()
        if applied == book.snapshot_offset:
            return
        if self._dlq is not None:
            self._dlq.flush()  # every dead letter up to `applied` is on its topic before we say so
        data = encode_snapshot(
            self.topic, partition, applied, self.state.spec, self.state.partition_users(partition)
        )
        book.snapshot_offset = applied
        store = self.snapshots

        def write() -> None:
            try:
                store.save(data, self.topic, partition, applied)
            except Exception:  # the next snapshot tries again; Kafka keeps the log
                self._snapshot_failures += 1
                log.exception(
                    "consumer %d: writing the snapshot of partition %d failed", self.rank, partition
                )
                return
            self._snapshots += 1
            book.durable_offset = max(book.durable_offset, applied)

        self._pending.append(self._writer.submit(write))

    def _commit(self, sync: bool = False) -> None:
        """Group mode: commit the offsets of the snapshots written since the last commit."""
        if self.group_id is None or self._consumer is None:
            return
        offsets = {
            TopicPartition(self.topic, partition): OffsetAndMetadata(
                book.durable_offset + 1, "raymm snapshot", -1
            )
            for partition, book in self._owned.items()
            if book.durable_offset > book.committed_offset
        }
        if not offsets:
            return
        if sync:
            self._consumer.commit(offsets)
        else:
            self._consumer.commit_async(offsets)
        for tp, offset in offsets.items():
            self._owned[tp.partition].committed_offset = offset.offset - 1

    def _wait_for_writes(self) -> None:
        for future in self._pending:
            future.result()
        self._pending = []

    # -- health and metrics --------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether the consumer's loop came round within ``liveness_timeout_s`` (no lock taken)."""
        running = self._thread is not None and self._thread.is_alive()
        return running and time.monotonic() - self._last_beat < self.liveness_timeout_s

    def metrics(self) -> ConsumerMetrics:
        """The counters and gauges now; safe to call from any thread."""
        samples = list(self._rate_samples)
        rate = 0.0
        if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
            rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
        latencies = np.array(list(self._latencies)) if self._latencies else None
        counts = self.state.counts()
        return ConsumerMetrics(
            partitions=tuple(self.state.partitions()),
            applied=self._applied,
            replayed=self._replayed,
            duplicates=self._duplicates,
            dead_letters=self._dead,
            dead_letters_by_reason=dict(self._dead_by_reason),
            events_per_s=rate,
            lag=dict(self._lag),
            latency_ms_p50=None if latencies is None else float(np.percentile(latencies, 50)),
            latency_ms_p99=None if latencies is None else float(np.percentile(latencies, 99)),
            snapshots=self._snapshots,
            snapshot_failures=self._snapshot_failures,
            loop_errors=self._loop_errors,
            users_in_memory=counts["in_memory"],
            users_spilled=counts["spilled"],
        )

    def _require_open(self) -> KafkaConsumer:
        if self._consumer is None:
            raise ConsumerError("the consumer is not open: call open() or start() first")
        return self._consumer

    def __enter__(self) -> EventConsumer:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"EventConsumer(rank={self.rank}/{self.world_size}, topic={self.topic!r}, "
            f"partitions={sorted(self._owned)})"
        )


class _Rebalance(ConsumerRebalanceListener):
    """Group mode: snapshot and drop revoked partitions, restore assigned ones (in the poll)."""

    def __init__(self, owner: EventConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.owner._give_up([tp.partition for tp in revoked if tp.partition in self.owner._owned])

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.owner._take([tp.partition for tp in assigned if tp.partition not in self.owner._owned])
