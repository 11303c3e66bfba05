"""The stream as ``raymm broker``, ``produce`` and ``consume`` run it: an embedded broker until Ctrl-C,
a replay of ``stream.parquet`` onto ``raymm.events``, and a consumer keeping user state.

Paths are keywords; ``None`` takes the configuration's default. ``broker`` and a consumer without
``drain`` run until Ctrl-C (``KeyboardInterrupt`` goes on to the caller after the final snapshot).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raymm.config import RaymmConfig
from raymm.console import Plan, StageResult
from raymm.errors import RaymmError

if TYPE_CHECKING:
    from raymm.stream.consumer import ConsumerMetrics
    from raymm.stream.producer import ReplayResult
    from raymm.stream.settings import BrokerKind


def bootstrap_servers(config: RaymmConfig, bootstrap: str | None, command: str) -> str:
    """The Kafka to use: ``bootstrap`` (``--bootstrap``), else ``kafka.bootstrap_servers``; an error naming both."""
    chosen = bootstrap or config.kafka.bootstrap_servers
    if chosen is None:
        raise RaymmError(
            f"raymm {command} needs a Kafka: pass --bootstrap HOST:PORT or set kafka.bootstrap_servers "
            "(`raymm broker` starts an embedded one on this machine and prints its address)"
        )
    return str(chosen)


def _broker_kind(config: RaymmConfig, kind: BrokerKind | None) -> BrokerKind:
    return kind or config.kafka.embedded_broker


def plan_broker(config: RaymmConfig, *, kind: BrokerKind | None = None, port: int | None = None) -> Plan:
    plan = Plan("broker")
    plan.add(f"start the embedded {_broker_kind(config, kind)} broker on loopback", f"port {port or 'free'}")
    plan.add("create the topics", ", ".join(f"{t} ({n})" for t, n in config.kafka.topics().items()))
    return plan


@dataclass
class BrokerRunning(StageResult):
    """An embedded broker that is up, with raymm's topics: what to connect to."""

    kind: BrokerKind
    bootstrap_servers: str
    topics: dict[str, int]
    title = "broker"

    def summary_rows(self) -> list[tuple[str, Any]]:
        return [
            ("broker", f"{self.kind} (embedded, {'in memory' if self.kind == 'tansu' else 'on disk'})"),
            ("bootstrap servers", self.bootstrap_servers),
            ("topics", ", ".join(f"{t} x{n}" for t, n in self.topics.items())),
            ("use it with", f"--set kafka.bootstrap_servers={self.bootstrap_servers}"),
            ("stop", "Ctrl-C"),
        ]


@dataclass
class BrokerStopped(StageResult):
    """The broker process ended on its own (not by Ctrl-C); ``log_tail`` is its last output."""

    log_tail: str
    title = "broker"

    def summary_rows(self) -> list[tuple[str, Any]]:
        return []

    @property
    def ok(self) -> bool:
        return False


def run_broker(
    config: RaymmConfig,
    *,
    kind: BrokerKind | None = None,
    port: int | None = None,
    data_dir: str | None = None,
    on_ready: Callable[[BrokerRunning], None] | None = None,
) -> BrokerStopped:
    """Start an embedded Kafka-protocol broker, create raymm's topics, call ``on_ready``, and serve
    until Ctrl-C (``KeyboardInterrupt``) or until the broker stops on its own (the result)."""
    from raymm.stream.broker import EmbeddedBroker, ensure_topics

    chosen = _broker_kind(config, kind)
    with EmbeddedBroker(chosen, port=port, data_dir=data_dir) as broker:
        ensure_topics(broker.bootstrap_servers, config.kafka.topics(), configs=config.kafka.topic_configs())
        if on_ready is not None:
            on_ready(BrokerRunning(chosen, broker.bootstrap_servers, config.kafka.topics()))
        while broker.running:
            time.sleep(0.5)
        return BrokerStopped(broker.log_tail())


def _events_file(config: RaymmConfig, events: str | None) -> str:
    return events or f"{config.stage_dir('data')}/stream.parquet"


def plan_produce(
    config: RaymmConfig, *, events: str | None = None, rate: float | None = None, limit: int | None = None
) -> Plan:
    from raymm.stream.events import EVENTS_TOPIC

    shown = "as fast as it goes" if rate is None else f"{rate:g} events/s"
    plan = Plan("produce")
    plan.add(f"replay {_events_file(config, events)} ({shown}, {limit or 'all'} events)", EVENTS_TOPIC)
    return plan


@dataclass
class ProduceResult(StageResult):
    """A replay of ``events`` onto ``raymm.events`` at ``bootstrap_servers``."""

    events: str
    bootstrap_servers: str
    replay: ReplayResult
    title = "produce"

    @property
    def elapsed_s(self) -> float | None:
        return self.replay.elapsed_s

    def summary_rows(self) -> list[tuple[str, Any]]:
        from raymm.stream.events import EVENTS_TOPIC

        result = self.replay
        return [
            ("events", self.events),
            ("sent", f"{result.sent:,} to {EVENTS_TOPIC} on {self.bootstrap_servers}"),
            ("rate", f"{result.rate:,.0f} events/s"),
            ("per partition", ", ".join(f"{p}: {n:,}" for p, n in result.partitions.items())),
        ]


def produce(
    config: RaymmConfig,
    *,
    events: str | None = None,
    bootstrap: str | None = None,
    rate: float | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> ProduceResult:
    """Replay ``events`` (default ``<out>/data/stream.parquet``) onto ``raymm.events`` at ``rate``
    events/s (None: as fast as it goes), the first ``limit`` only when given.

    Raises :class:`~raymm.errors.RaymmError` without a Kafka or without the events file.
    """
    from raymm.data import io
    from raymm.stream.broker import ensure_topics
    from raymm.stream.producer import replay

    events = _events_file(config, events)
    servers = bootstrap_servers(config, bootstrap, "produce")
    if not io.exists(events):
        raise RaymmError(f"no events to replay: {events} does not exist (--events FILE)")
    kafka = config.kafka
    ensure_topics(servers, kafka.topics(), configs=kafka.topic_configs(), kafka=kafka)
    result = replay(
        events, servers, rate=rate, limit=limit, progress=progress, partitioner=kafka.partitioner, kafka=kafka
    )
    return ProduceResult(events, servers, result)


def plan_consume(
    config: RaymmConfig, *, model: str | None = None, rank: int = 0, world_size: int = 1
) -> Plan:
    plan = Plan("consume")
    plan.add(
        f"user state by the spec of {model or config.stage_dir('model')}", f"rank {rank} of {world_size}"
    )
    plan.add("snapshots", config.snapshot_uri())
    return plan


@dataclass
class ConsumeResult(StageResult):
    """A consumer's metrics when it stopped, and where its snapshots went."""

    metrics: ConsumerMetrics
    snapshots: str
    elapsed_s: float | None = None
    title = "consume"

    def summary_rows(self) -> list[tuple[str, Any]]:
        m = self.metrics
        return [
            ("partitions", ", ".join(map(str, m.partitions)) or "none"),
            ("events applied", f"{m.applied:,} ({m.duplicates:,} duplicates skipped)"),
            ("dead letters", f"{m.dead_letters:,} {dict(m.dead_letters_by_reason) or ''}"),
            ("users", f"{m.users_in_memory:,} in memory, {m.users_spilled:,} spilled"),
            ("snapshots", f"{m.snapshots} written to {self.snapshots} ({m.snapshot_failures} failed)"),
        ]

    @property
    def ok(self) -> bool:
        return self.metrics.snapshot_failures == 0


@dataclass
class ConsumeOptions:
    """How a consumer runs: its ``rank`` of ``world_size`` (it owns partition % world == rank), and
    with ``drain`` it stops once caught up (within ``timeout_s``), else it runs until Ctrl-C,
    reporting every ``report_every_s`` seconds."""

    rank: int = 0
    world_size: int = 1
    drain: bool = False
    timeout_s: float = 600.0
    report_every_s: float = 10.0


def consume(
    config: RaymmConfig,
    *,
    model: str | None = None,
    bootstrap: str | None = None,
    options: ConsumeOptions | None = None,
    say: Callable[[str], None] | None = None,
) -> ConsumeResult:
    """Keep user state from ``raymm.events`` by the user-state spec of ``model`` (default
    ``<out>/model``), with snapshots; ``say`` hears the periodic progress line of an undrained run.

    Raises :class:`~raymm.errors.RaymmError` for a rank outside the world or without a Kafka.
    """
    from raymm.stream.consumer import EventConsumer
    from raymm.stream.snapshot import SnapshotStore
    from raymm.stream.state import StateSpec, UserStateStore

    run = options or ConsumeOptions()
    model = model or config.stage_dir("model")
    settings = config.stream
    snapshots = config.snapshot_uri()
    if not 0 <= run.rank < run.world_size:
        raise RaymmError(f"--rank must be in [0, --world-size), got {run.rank} of {run.world_size}")
    servers = bootstrap_servers(config, bootstrap, "consume")
    state = UserStateStore(
        StateSpec.from_artifact(model, settings.dedupe_window, settings.max_seen),
        max_users_in_memory=settings.max_users_in_memory,
        spill_dir=settings.spill_dir,
    )
    consumer = EventConsumer.from_settings(
        servers,
        state,
        SnapshotStore(snapshots, settings.keep_snapshots),
        settings,
        rank=run.rank,
        world_size=run.world_size,
        kafka=config.kafka,
    )
    start = time.monotonic()
    consumer.open()
    try:
        if run.drain:
            consumer.drain(timeout_s=run.timeout_s)
        else:
            consumer.start()
            while True:  # until Ctrl-C; the snapshot on the way out is in `finally`
                time.sleep(run.report_every_s)
                m = consumer.metrics()
                health = "" if consumer.alive() else " (NOT ALIVE: see the log)"
                if say is not None:
                    say(
                        f"[consume] {m.applied:,} applied, {m.events_per_s:,.0f} events/s, lag {m.total_lag:,}, "
                        f"dead letters {m.dead_letters:,}{health}"
                    )
    finally:
        consumer.stop()
        state.close()
    return ConsumeResult(consumer.metrics(), snapshots, time.monotonic() - start)
