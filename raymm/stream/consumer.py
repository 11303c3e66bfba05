"""The event consumer: ``raymm.events`` -> decode and validate -> dead letters, forwards, or user state.

:class:`EventConsumer` is a :class:`~raymm.stream.loop.PollLoop` (the one Kafka loop raymm has:
batching, idle back-off, dead letters, metrics, liveness). Tests and benchmarks drive it step by
step (:meth:`~PollLoop.open`, :meth:`~PollLoop.poll_once`, :meth:`~EventConsumer.drain`,
:meth:`~PollLoop.close`); serving runs it in a thread of its own (:meth:`~PollLoop.start`) and reads
the state from any thread (:meth:`UserStateStore.get`).

**Ownership.** By default the consumer *assigns* itself the partitions with
``partition % world_size == rank`` (:mod:`raymm.stream.ownership`). A user's state lives in their
*owner partition*, ``partition_for(user_id)``, and serving routes the user's requests to its owner
by the same rule. With ``group_id`` the consumer *subscribes* instead and lets the group
coordinator assign (``group_instance_id`` gives static membership).

**Forwarding.** Producers do not agree on partitions: librdkafka clients (kcat, confluent-kafka)
hash keys with CRC32 by default, and many producers send no key. An event read on a partition
other than its user's owner partition is forwarded there, keyed by ``user_id`` with its original
value and a ``raymm-forwarded-from: <partition>:<offset>`` header, and is applied by the owner when
it reads it (a repartition step, as in Kafka Streams). A forwarded event is never forwarded
again: one found off its owner partition (two forwarders with different owner rules) is a dead
letter ``misrouted``. Forwards are sent in order (one request in flight), and the owner keeps, per
source partition, the highest source offset it applied (:meth:`UserStateStore.forwarded_offsets`,
snapshotted with the state), so a forward sent again is applied once: after a crash between the
forward and the source's next snapshot the source replays and forwards again, and during an
upgrade two clusters forward the same event.

**Exactly-once effect.** Offsets are kept by the state, not by Kafka: on gaining a partition the
consumer restores its newest valid snapshot and seeks to the offset after the one it had applied
(the start of the log without one). Re-delivered messages are skipped by offset. A snapshot of a
partition is taken every ``snapshot_every_events`` events, every ``snapshot_interval_s`` seconds,
on giving the partition up and on shutdown; the producer is flushed first, so every dead letter
and forward of a message is on its topic before any snapshot records the message as done. A
forward the broker refused rewinds its source partition to its last snapshot, which sends it
again. A consumer killed between snapshots loses nothing: its successor replays from the last
snapshot. (Dead letters are at-least-once: a replay can send one again.) In group mode the
consumer also commits each snapshot's offsets to the group, so Kafka tools show its progress; it
never reads them back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from raymm.stream.events import DEAD_LETTER_TOPIC, Event, EventDecoder, EventLimits, Rejected
from raymm.stream.loop import ConsumerError, PollLoop
from raymm.stream.ownership import Ownership, Partitioner, owned_partitions
from raymm.stream.settings import KafkaSettings, StreamSettings
from raymm.stream.snapshot import SnapshotStore, encode_snapshot
from raymm.stream.state import UserStateStore

__all__ = [
    "FORWARD_HEADER",
    "ConsumerError",
    "ConsumerMetrics",
    "EventConsumer",
    "forwarded_source",
]

log = logging.getLogger(__name__)

#: The header a forwarded event carries: ``<source partition>:<source offset>`` in ASCII.
FORWARD_HEADER = "raymm-forwarded-from"


def forwarded_source(headers: Sequence[tuple[str, bytes | None]] | None) -> tuple[int, int] | None:
    """(source partition, source offset) of a forwarded event's headers; None if not forwarded.

    ``ValueError`` for a forward header that is not ``<partition>:<offset>``.
    """
    for name, value in headers or ():
        if name == FORWARD_HEADER:
            partition, _, offset = (value or b"").decode("ascii", "replace").partition(":")
            if not (partition.isdigit() and offset.isdigit()):
                raise ValueError(f"{FORWARD_HEADER} header {value!r} is not <partition>:<offset>")
            return int(partition), int(offset)
    return None


@dataclass(frozen=True)
class ConsumerMetrics:
    """A consumer's counters and gauges, as of its last loop.

    ``lag`` is per partition: the high watermark minus the next offset to read. Event-to-state
    latency is from the record's Kafka timestamp (set by the producer) to its apply, sampled on
    the last record of each partition's batch, over the last 8,192 samples. ``forwarded`` counts
    events this consumer sent on to their owner partition; ``forwarded_again`` forwarded events
    it skipped because their source offset was applied already.
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
    forwarded: int = 0
    forwarded_again: int = 0

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


class EventConsumer(PollLoop):
    """Consume ``state.topic`` into ``state``; see the module docstring.

    ``observer`` (optional) sees every batch's newly applied events, in the consumer thread
    (serving counts online hits with it); it must be quick and must not raise. ``snapshots=None``
    keeps no snapshots (a restart then replays every owned partition from the start of the log).
    ``partitioner`` is the owner rule's hash (:mod:`raymm.stream.ownership`); ``partitions``, when
    given, is the partition count the deployment expects: a topic with another count refuses to
    open (:class:`ConsumerError` naming both).
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
        kafka: KafkaSettings | None = None,
        observer: Callable[[Sequence[Event]], None] | None = None,
        partitioner: Partitioner = "murmur2",
        partitions: int | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if group_instance_id is not None and group_id is None:
            raise ValueError("group_instance_id (static membership) needs a group_id")
        super().__init__(
            bootstrap_servers,
            state.topic,
            dead_letter_topic=dead_letter_topic,
            poll_max_records=poll_max_records,
            poll_timeout_ms=poll_timeout_ms,
            liveness_timeout_s=liveness_timeout_s,
            kafka=kafka,
            consumer_options={"group_id": group_id, "group_instance_id": group_instance_id},
        )
        self.kind = f"consumer-{rank}"
        self.state = state
        self.snapshots = snapshots
        self.rank = rank
        self.world_size = world_size
        self.group_id = group_id
        self.group_instance_id = group_instance_id
        self.limits = limits or EventLimits()
        self._decode = EventDecoder(self.limits)
        self.snapshot_every_events = snapshot_every_events
        self.snapshot_interval_s = snapshot_interval_s
        self.observer = observer
        self.partitioner: Partitioner = partitioner
        self.expected_partitions = partitions
        self.ownership: Ownership | None = None
        self._owner_partition: Callable[[str], int] | None = None

        self._owned: dict[int, _Partition] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raymm-snapshot")
        self._pending: list[Future[None]] = []
        # counters: written by the consumer thread, read by anyone
        self._applied = self._replayed = self._duplicates = 0
        self._forwarded = self._forwarded_again = 0
        self._snapshots = self._snapshot_failures = 0
        #: Source partitions with a forward the broker refused (written by the producer's thread).
        self._failed_forwards: set[int] = set()
        self._failed_lock = threading.Lock()

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
        them (rank, world_size, group_id, kafka, observer, partitioner, partitions, ...)."""
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

    # -- the loop's parts -----------------------------------------------------------------------

    def _producer_options(self) -> dict[str, Any]:
        # Forwards from one source partition must reach their owner partition in source order (the
        # owner keeps the highest source offset it applied): one request in flight, so a retry
        # cannot overtake.
        return {"max_in_flight_requests_per_connection": 1}

    def _on_open(self, consumer: KafkaConsumer) -> None:
        count = self._partition_count()
        if self.expected_partitions is not None and count != self.expected_partitions:
            raise ConsumerError(
                f"topic {self.topic!r} on {self.bootstrap_servers} has {count} partitions, but this "
                f"deployment is configured for {self.expected_partitions} (kafka.partitions): users "
                "would be routed to shards that do not hold them. Set kafka.partitions to "
                f"{count}, or use a topic with {self.expected_partitions} partitions"
            )
        world = self.world_size if self.group_id is None else 1
        self.ownership = Ownership(count, world, self.partitioner)
        self._owner_partition = self.ownership.partition_cache()
        if self.group_id is None:
            self._assign(owned_partitions(count, self.rank, self.world_size))
        else:
            consumer.subscribe([self.topic], listener=_Rebalance(self))

    def _on_close(self, final: bool) -> None:
        try:
            if final:
                for partition in list(self._owned):
                    self._snapshot(partition)
                self._wait_for_writes()
                self._commit(sync=True)
            else:
                self._wait_for_writes()  # snapshots already taken; a crash may or may not lose them
        finally:
            self._writer.shutdown(wait=not self._abort)
            self._owned.clear()

    def _rate_count(self) -> int:
        return self._applied  # events_per_s: applied, not forwarded or refused

    def _next_offset(self, partition: int) -> int | None:
        return self.state.applied_offset(partition) + 1 if partition in self._owned else None

    # -- consuming ------------------------------------------------------------------------------

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """One poll (waiting up to ``timeout_ms``, default ``poll_timeout_ms``): decode,
        dead-letter, forward, apply, and snapshot where due; returns messages handled."""
        self._decode.window()  # the future bound moves with the clock, once per poll
        return super().poll_once(timeout_ms)

    def _handle(self, partition: int, records: Sequence[Any]) -> None:
        if partition not in self._owned:
            return  # revoked while the fetch was in flight
        assert self._owner_partition is not None
        owner_of = self._owner_partition
        decode = self._decode
        before = self.state.applied_offset(partition)
        messages: list[tuple[int, Event | None]] = []
        sources: dict[int, tuple[int, int]] = {}
        for record in records:
            offset = record.offset
            if offset <= before:  # delivered again: the state skips it, nothing is sent twice
                messages.append((offset, None))
                continue
            try:
                event: Event | None = decode(record.key, record.value)
                source = forwarded_source(record.headers) if record.headers else None
            except Rejected as rejected:
                event = None
                self.dead_letter(rejected, record)
            except ValueError as exc:
                event = None
                self.dead_letter(Rejected("wrong_type", str(exc)), record)
            else:
                assert event is not None
                owner = owner_of(event.user_id)
                if owner != partition:
                    if source is None:
                        self._forward(event, record, owner)
                    else:
                        self.dead_letter(
                            Rejected(
                                "misrouted",
                                f"forwarded from {source[0]}:{source[1]} to partition {partition}, "
                                f"but user {event.user_id!r}'s owner partition is {owner} "
                                f"({self.partitioner} of {self.ownership.n_partitions if self.ownership else '?'}): "
                                "two forwarders disagree on the owner rule",
                            ),
                            record,
                        )
                    event = None
                elif source is not None:
                    sources[offset] = source
            messages.append((offset, event))
        result = self.state.apply_batch(partition, messages, sources)
        if self.observer is not None:
            self.observer([e for offset, e in messages if e is not None and offset > before])
        self._applied += result.applied
        self._replayed += result.replayed
        self._duplicates += result.duplicates
        self._forwarded_again += result.forwarded_again
        self._owned[partition].since_snapshot += len(records)

    def _forward(self, event: Event, record: Any, owner: int) -> None:
        """Send ``record`` on to ``owner``, the owner partition of its user (see the module docstring)."""
        producer = self._require_producer()
        source = record.partition
        future = producer.send(
            self.topic,
            key=event.user_id.encode("utf-8"),
            value=record.value,
            partition=owner,
            headers=[(FORWARD_HEADER, f"{source}:{record.offset}".encode("ascii"))],
        )
        future.add_errback(self._forward_failed, source)
        self._forwarded += 1

    def _forward_failed(self, source: int, exc: BaseException) -> None:
        log.warning("consumer %d: a forward from partition %d failed: %r", self.rank, source, exc)
        with self._failed_lock:
            self._failed_forwards.add(source)

    def _after_poll(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        self._rewind_failed_forwards()
        for partition, book in self._owned.items():
            if book.since_snapshot >= self.snapshot_every_events or (
                now - book.last_snapshot_t >= self.snapshot_interval_s
            ):
                self._snapshot(partition)
        self._pending = [f for f in self._pending if not f.done()]
        self._commit()

    def _rewind_failed_forwards(self) -> None:
        """Restore each partition with a refused forward from its last snapshot: the replay sends
        the forward again, and the owner applies it once."""
        with self._failed_lock:
            failed, self._failed_forwards = self._failed_forwards, set()
        failed &= set(self._owned)
        if not failed:
            return
        self._wait_for_writes()
        for partition in sorted(failed):
            log.warning("consumer %d: rewinding partition %d to its last snapshot", self.rank, partition)
            self._owned.pop(partition, None)
            self.state.drop_partition(partition)
        self._take(sorted(failed))

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

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every forward and dead letter sent so far is acknowledged."""
        self._require_producer().flush(timeout=timeout_s)

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

        self.call_soon(change)

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
            applied, users, forwarded = -1, None, None
            if self.snapshots is not None:
                restored = self.snapshots.restore(self.topic, partition)
                if restored.snapshot is not None:
                    snapshot = restored.snapshot
                    applied, users, forwarded = snapshot.applied_offset, snapshot.users, snapshot.forwarded
                    if snapshot.spec != self.state.spec:
                        log.warning(
                            "%s partition %d: snapshot %s was kept by spec %s, this consumer keeps %s; "
                            "its histories are used as they are",
                            self.topic,
                            partition,
                            restored.uri,
                            snapshot.spec,
                            self.state.spec,
                        )
            self.state.add_partition(partition, applied, users, forwarded)
            self._owned[partition] = _Partition(snapshot_offset=applied)
            consumer.seek(TopicPartition(self.topic, partition), applied + 1)
            log.info(
                "consumer %d took %s partition %d at offset %d", self.rank, self.topic, partition, applied + 1
            )

    # -- snapshots ------------------------------------------------------------------------------

    def _snapshot(self, partition: int) -> None:
        """Snapshot ``partition`` if it changed since its last snapshot; the write is queued.

        Every dead letter and forward of a message up to the snapshot's offset is acknowledged
        first; a partition with a refused forward is rewound instead of snapshotted."""
        book = self._owned.get(partition)
        if book is None or self.snapshots is None:
            return
        applied = self.state.applied_offset(partition)
        book.since_snapshot = 0
        book.last_snapshot_t = time.monotonic()
        if applied == book.snapshot_offset:
            return
        if self._producer is not None:
            self._producer.flush()
        with self._failed_lock:
            if partition in self._failed_forwards:
                return  # _rewind_failed_forwards restores it from the last good snapshot
        data = encode_snapshot(
            self.topic,
            partition,
            applied,
            self.state.spec,
            self.state.partition_users(partition),
            forwarded=self.state.forwarded_offsets(partition),
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

    def metrics(self) -> ConsumerMetrics:
        """The counters and gauges now; safe to call from any thread."""
        loop = self.loop_metrics()
        counts = self.state.counts()
        return ConsumerMetrics(
            partitions=tuple(self.state.partitions()),
            applied=self._applied,
            replayed=self._replayed,
            duplicates=self._duplicates,
            dead_letters=loop.dead_letters,
            dead_letters_by_reason=loop.dead_letters_by_reason,
            events_per_s=loop.rate,
            lag=loop.lag,
            latency_ms_p50=loop.latency_ms_p50,
            latency_ms_p99=loop.latency_ms_p99,
            snapshots=self._snapshots,
            snapshot_failures=self._snapshot_failures,
            loop_errors=loop.loop_errors,
            users_in_memory=counts["in_memory"],
            users_spilled=counts["spilled"],
            forwarded=self._forwarded,
            forwarded_again=self._forwarded_again,
        )

    def __enter__(self) -> EventConsumer:
        self.open()
        return self

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
