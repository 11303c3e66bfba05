"""One Kafka poll loop for every topic raymm reads: batching, idle back-off, dead letters, metrics,
liveness.

:class:`PollLoop` owns a kafka-python consumer and one producer (dead letters, and the events a
consumer forwards to their owner partition). Subclasses say which partitions they read
(:meth:`PollLoop._on_open`), what a batch of one partition's records does (:meth:`PollLoop._handle`),
and what happens after each poll and on close. The loop runs in a daemon thread of its own
(:meth:`PollLoop.start`), so it never blocks an asyncio loop; tests and benchmarks drive it step
by step (:meth:`PollLoop.open`, :meth:`PollLoop.poll_once`, :meth:`PollLoop.close`).

* **Idle back-off.** An idle loop polls without blocking and sleeps between polls, from 10 ms
  doubling to 80 ms; an event resets it. Some brokers (noida) answer fetches at once instead of
  holding them for ``fetch_max_wait_ms``, and a blocking poll then spins (0.7 of a core here,
  against 0.02 on Tansu); a state shard's idle poll costs ~3 ms of CPU, so the back-off took two
  idle shards from ~0.28 of a core to ~0.1 (bench/serve_latency.py ``idle_cores``).
* **Dead letters.** A message the subclass refuses goes to the dead-letter topic with its reason,
  is counted by reason, and the loop goes on (design.md invariant 2).
* **Errors.** An exception out of a poll is logged and counted, and the loop tries again after 1 s:
  the stream never stops. ``alive()`` turns false when the loop has not come round for
  ``liveness_timeout_s``.
* **Commands.** :meth:`PollLoop.call_soon` runs a function in the loop's thread before its next
  poll (ownership changes, a seek to the beginning), so only that thread touches the consumer.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from raymm.errors import RaymmError
from raymm.stream.clients import kafka_client
from raymm.stream.events import DEAD_LETTER_TOPIC, DeadLetter, Rejected
from raymm.stream.settings import KafkaSettings

log = logging.getLogger(__name__)

_LATENCY_SAMPLES = 8192
_RATE_WINDOW_S = 5.0
#: How long an idle loop sleeps between non-blocking polls, at first and at most (see above).
_IDLE_WAIT_S = 0.01
_IDLE_MAX_WAIT_S = 0.08


class ConsumerError(RaymmError):
    """The consumer could not start: the topic is missing, or the ownership is impossible."""


@dataclass(frozen=True)
class LoopMetrics:
    """What every poll loop counts, as of its last poll.

    ``handled`` counts messages; ``rate`` is per second over the last 5 s, of handled messages or
    of what the loop counts instead (an event consumer: events applied);
    ``lag`` is per partition (the high watermark minus the next offset to read); latency is from
    the record's Kafka timestamp to its handling, sampled on the last record of each batch.
    """

    handled: int
    rate: float
    dead_letters: int
    dead_letters_by_reason: dict[str, int]
    lag: dict[int, int]
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    loop_errors: int


class PollLoop:
    """A poll loop over ``topic``; see the module docstring. ``kafka`` gives the consumer and the
    producer their client id and security settings (default: plaintext, client id ``raymm``)."""

    #: The thread's name prefix and how the log names this loop.
    kind = "poll-loop"

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        dead_letter_topic: str = DEAD_LETTER_TOPIC,
        poll_max_records: int = 2000,
        poll_timeout_ms: int = 200,
        liveness_timeout_s: float = 30.0,
        kafka: KafkaSettings | None = None,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.poll_max_records = poll_max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.liveness_timeout_s = liveness_timeout_s
        self.kafka = kafka or KafkaSettings()
        self._consumer_options = dict(consumer_options or {})
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._abort = False
        self._last_beat = time.monotonic()
        self.error: BaseException | None = None
        # counters: written by the loop's thread, read by anyone
        self._handled = self._dead = self._loop_errors = 0
        self._dead_by_reason: collections.Counter[str] = collections.Counter()
        self._latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self._rate_samples: collections.deque[tuple[float, int]] = collections.deque()
        self._lag: dict[int, int] = {}
        #: Per partition, the log end last found below the next offset to handle (said once).
        self._ends_behind: dict[int, int] = {}
        self._positions: dict[int, int] = {}
        #: Called with the reason of every dead letter, in the loop's thread (a metrics counter).
        self.on_dead_letter: Callable[[str], None] | None = None

    # -- what a subclass says -------------------------------------------------------------------

    def _on_open(self, consumer: KafkaConsumer) -> None:
        """Take the partitions to read (assign or subscribe); called once the clients exist."""
        raise NotImplementedError

    def _handle(self, partition: int, records: Sequence[Any]) -> None:
        """Handle one partition's records of a poll, in offset order."""
        raise NotImplementedError

    def _after_poll(self, consumer: KafkaConsumer) -> None:
        """Called after every poll (snapshots, commits); the default does nothing."""

    def _on_close(self, final: bool) -> None:
        """Called before the clients close; ``final`` is False for :meth:`abort`."""

    def _next_offset(self, partition: int) -> int | None:
        """The next offset to handle in ``partition`` (for the lag); None: not known yet."""
        return self._positions.get(partition)

    def _rate_count(self) -> int:
        """The running count whose rate ``loop_metrics().rate`` reports (default: messages handled)."""
        return self._handled

    def _producer_options(self) -> dict[str, Any]:
        """Extra producer settings (a subclass that needs ordered sends asks for them here)."""
        return {}

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> PollLoop:
        """Connect and take the partitions to read."""
        if self._consumer is not None:
            raise ConsumerError(f"the {self.kind} is open already")
        self._consumer = kafka_client(
            KafkaConsumer,
            self.bootstrap_servers,
            self.kafka,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.poll_max_records,
            fetch_max_wait_ms=min(self.poll_timeout_ms, 500),
            **self._consumer_options,
        )
        self._producer = kafka_client(
            KafkaProducer,
            self.bootstrap_servers,
            self.kafka,
            acks="all",
            linger_ms=20,
            **self._producer_options(),
        )
        try:
            self._on_open(self._consumer)
        except BaseException:
            self._disconnect()
            raise
        self._last_beat = time.monotonic()
        return self

    def start(self) -> threading.Thread:
        """Open if needed and poll in a daemon thread until :meth:`stop` or :meth:`abort`."""
        if self._thread is not None:
            raise ConsumerError(f"the {self.kind} runs already")
        if self._consumer is None:
            self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"raymm-{self.kind}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop polling, run the subclass's final work (snapshots) and close. ConsumerError when
        the loop has not finished within ``timeout_s`` (its final work is then not done yet)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise ConsumerError(
                    f"the {self.kind} on {self.topic} did not finish its final work within {timeout_s:g} s"
                )
            self._thread = None
        else:
            self.close()

    def abort(self) -> None:
        """Stop without the final work, as if the process had died (for tests and drills)."""
        self._abort = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:
            self._close(final=False)

    def close(self) -> None:
        """Run the subclass's final work and disconnect."""
        self._close(final=True)

    def _close(self, final: bool) -> None:
        if self._consumer is None:
            return
        try:
            self._on_close(final)
        finally:
            self._disconnect()

    def _disconnect(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
        self._consumer = self._producer = None

    def call_soon(self, command: Callable[[], None]) -> None:
        """Run ``command`` in the loop's thread before its next poll (at once when none runs)."""
        if self._thread is not None:
            self._commands.put(command)
        else:
            command()

    def _run(self) -> None:
        idle = False
        wait_s = _IDLE_WAIT_S
        while not self._stop.is_set():
            try:
                while not self._commands.empty():
                    self._commands.get_nowait()()
                idle = self.poll_once(timeout_ms=0 if idle else None) == 0
                if idle:
                    self._stop.wait(wait_s)
                    wait_s = min(2 * wait_s, _IDLE_MAX_WAIT_S)
                else:
                    wait_s = _IDLE_WAIT_S
            except Exception as exc:  # the stream never stops; the log says why
                self._loop_errors += 1
                self.error = exc
                log.exception("%s on %s: the poll loop failed; retrying in 1 s", self.kind, self.topic)
                self._stop.wait(1.0)
        self._close(final=not self._abort)

    # -- polling --------------------------------------------------------------------------------

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """One poll (waiting up to ``timeout_ms``, default ``poll_timeout_ms``); every partition's
        records go to :meth:`_handle`; returns the messages handled."""
        consumer = self._require_open()
        wait = self.poll_timeout_ms if timeout_ms is None else timeout_ms
        batches = consumer.poll(timeout_ms=wait, max_records=self.poll_max_records)
        handled = 0
        now_ms = time.time() * 1000.0
        for tp, records in batches.items():
            if not records:
                continue
            self._handle(tp.partition, records)
            last = records[-1]
            self._positions[tp.partition] = last.offset + 1
            if last.timestamp_type == 0 and last.timestamp > 0:  # CreateTime, one sample per batch
                self._latencies.append(now_ms - last.timestamp)
            handled += len(records)
        self._handled += handled
        self._beat(consumer)
        self._after_poll(consumer)
        return handled

    def _beat(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        self._last_beat = now
        self._rate_samples.append((now, self._rate_count()))
        while self._rate_samples and now - self._rate_samples[0][0] > _RATE_WINDOW_S:
            self._rate_samples.popleft()
        lag: dict[int, int] = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = self._next_offset(tp.partition)
            if position is not None:
                lag[tp.partition] = max(0, highwater - position)
                if highwater < position:
                    self._behind_applied(tp.partition, highwater, position)
        self._lag = lag

    def _behind_applied(self, partition: int, end: int, position: int) -> None:
        """The broker's log of ``partition`` ends before what was already handled: it lost
        messages it had acknowledged (a broker killed before its write, unclean leader election),
        and the messages it now writes at those offsets are taken as handled. Said once per end."""
        if self._ends_behind.get(partition) == end:
            return
        self._ends_behind[partition] = end
        log.error(
            "%s on %s partition %d: the log ends at offset %d, below offset %d already handled: the "
            "broker lost messages it had acknowledged, and the messages it writes at offsets %d to %d "
            "will be skipped as handled",
            self.kind,
            self.topic,
            partition,
            end,
            position,
            end,
            position - 1,
        )

    def dead_letter(self, rejected: Rejected, record: Any) -> None:
        """Send ``record`` to the dead-letter topic with why it was refused, and count it."""
        producer = self._require_producer()
        letter = DeadLetter.of(
            rejected, record.key, record.value, record.topic, record.partition, record.offset
        )
        key, value = letter.encode()
        producer.send(self.dead_letter_topic, key=key, value=value)
        self._dead += 1
        self._dead_by_reason[rejected.reason] += 1
        if self.on_dead_letter is not None:
            self.on_dead_letter(rejected.reason)

    def _partition_count(self, timeout_s: float = 30.0) -> int:
        """The topic's partition count as the broker reports it; ConsumerError if it does not exist."""
        consumer = self._require_open()
        deadline = time.monotonic() + timeout_s
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

    # -- health and metrics --------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether the loop came round within ``liveness_timeout_s`` (no lock taken)."""
        running = self._thread is not None and self._thread.is_alive()
        return running and time.monotonic() - self._last_beat < self.liveness_timeout_s

    def loop_metrics(self) -> LoopMetrics:
        """The loop's own counters and gauges now; safe to call from any thread."""
        samples = list(self._rate_samples)
        rate = 0.0
        if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
            rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
        latencies = np.array(list(self._latencies)) if self._latencies else None
        return LoopMetrics(
            handled=self._handled,
            rate=rate,
            dead_letters=self._dead,
            dead_letters_by_reason=dict(self._dead_by_reason),
            lag=dict(self._lag),
            latency_ms_p50=None if latencies is None else float(np.percentile(latencies, 50)),
            latency_ms_p99=None if latencies is None else float(np.percentile(latencies, 99)),
            loop_errors=self._loop_errors,
        )

    def _require_open(self) -> KafkaConsumer:
        if self._consumer is None:
            raise ConsumerError(f"the {self.kind} is not open: call open() or start() first")
        return self._consumer

    def _require_producer(self) -> KafkaProducer:
        if self._producer is None:
            raise ConsumerError(f"the {self.kind} is not open: call open() or start() first")
        return self._producer

    def __enter__(self) -> PollLoop:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def assign_all(consumer: KafkaConsumer, topic: str, count: int) -> list[TopicPartition]:
    """Assign every one of ``count`` partitions of ``topic``; returns them."""
    partitions = [TopicPartition(topic, p) for p in range(count)]
    consumer.assign(partitions)
    return partitions
