"""A state shard: one event consumer (rank ``r`` of ``world_size``) and the user state it keeps.

Serving runs one shard per rank as a Serve *deployment-scoped actor* of the recommender
deployment (Ray 2.60, ``DeploymentActorConfig``): Serve creates them with the deployment, health
checks them, recreates one that dies and removes them with the application. A recreated shard
restores its partitions from their snapshots and replays the rest from Kafka (the stream layer's
exactly-once recovery), so a shard killed mid-stream ends in the state of one clean pass.

A request for a user goes to the shard that owns the user's partition: the recommender routes by
the rule the shard's consumer assigns itself partitions by, both from
:mod:`raymm.stream.ownership` (see :mod:`raymm.serve.shard_client`).

The shard also keeps the **online hit rate**: the recommender tells it what it served a user
(:meth:`StateShard.record_served`), and each applied event whose item was served to that user
within ``hit_window_s`` counts as a hit. What was served is kept in a :class:`ServedLog`, bounded
by the window and by a number of users, so a shard's memory does not grow with the users it
ever answered for.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from raymm.serve.metric_tags import tag_keys, tagged
from raymm.stream.consumer import EventConsumer
from raymm.stream.events import Event
from raymm.stream.ownership import Partitioner
from raymm.stream.settings import KafkaSettings, StreamSettings
from raymm.stream.snapshot import SnapshotStore
from raymm.stream.state import StateSpec, UserStateStore

__all__ = ["StateShard", "shard_name"]

log = logging.getLogger(__name__)


def shard_name(rank: int) -> str:
    """The deployment-scoped actor name of rank ``rank``'s shard."""
    return f"state-{rank}"


class StateShard:
    """Rank ``rank`` of ``world_size``: an :class:`EventConsumer` in its own thread, and reads.

    ``partitioner`` and ``partitions`` are the owner rule the recommender routes by (the hash, and
    the topic's partition count it read from Kafka): the consumer keeps the same users, and refuses
    a topic whose count has changed since. ``kafka`` is :meth:`KafkaSettings.shared
    <raymm.stream.settings.KafkaSettings.shared>`: the password comes from this process's
    environment, never as an argument (Ray shows these arguments in its dashboard)."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        bootstrap_servers: str,
        spec: dict[str, Any],
        snapshot_uri: str,
        stream: dict[str, Any] | None = None,
        kafka: dict[str, Any] | None = None,
        topic: str | None = None,
        hit_window_s: float = 600.0,
        partitioner: Partitioner = "murmur2",
        partitions: int | None = None,
    ) -> None:
        settings = StreamSettings.model_validate(stream or {})
        self.rank, self.world_size = rank, world_size
        self.state = UserStateStore(
            StateSpec.from_json(spec),
            max_users_in_memory=settings.max_users_in_memory,
            spill_dir=settings.spill_dir,
            **({"topic": topic} if topic else {}),
        )
        self.consumer = EventConsumer.from_settings(
            bootstrap_servers,
            self.state,
            SnapshotStore(snapshot_uri, settings.keep_snapshots),
            settings,
            rank=rank,
            world_size=world_size,
            kafka=KafkaSettings.received(kafka or {}),
            observer=self._observe,
            partitioner=partitioner,
            partitions=partitions,
        )
        self.hit_window_s = hit_window_s
        self.ready_max_lag = settings.ready_max_lag
        self._ready = False
        self._served = ServedLog(hit_window_s)
        self._served_lock = threading.Lock()
        self._hits = self._checked = 0
        self._served_answers = 0  # answers record_served has received, for readers that wait on them
        self.consumer.start()
        self._metrics = _ShardMetrics(self)

    # -- reads ----------------------------------------------------------------------------------

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        """The user's live state (history oldest first, seen items), or None if unknown here."""
        state = self.state.get(user_id)
        if state is None:
            return None
        return {
            "history": list(state.history),
            "seen": list(state.seen),
            "n_events": state.n_events,
            "last_ts_ms": state.last_ts_ms,
        }

    def get_users(self, user_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """:meth:`get_user` for many users in one call (the recommender's batches)."""
        return [self.get_user(user_id) for user_id in user_ids]

    def partitions(self) -> list[int]:
        return self.state.partitions()

    def offsets(self) -> dict[int, int]:
        return self.state.offsets()

    def export(self) -> dict[int, tuple[int, dict[str, Any]]]:
        """The whole state (tests compare it with one clean pass)."""
        return self.state.export()

    def health(self) -> dict[str, Any]:
        metrics = self.consumer.metrics()
        # None until every owned partition's end is known (right after a start or a move)
        lag = metrics.total_lag if set(metrics.lag) == set(metrics.partitions) else None
        # Ready, once and for good, when the replay after a start has caught up: serving takes
        # traffic only then (raymm.serve.deployment), so an upgrade never switches to a cluster
        # that is still behind.
        self._ready = self._ready or (lag is not None and lag <= self.ready_max_lag)
        return {
            "rank": self.rank,
            "alive": self.consumer.alive(),
            "ready": self._ready,
            "partitions": list(metrics.partitions),
            "lag": lag,
            "applied": metrics.applied,
            "dead_letters": metrics.dead_letters,
            # events this shard sent on to their owner partition, and forwards it skipped as repeats
            "forwarded": metrics.forwarded,
            "forwarded_again": metrics.forwarded_again,
        }

    def metrics(self) -> dict[str, Any]:
        m = self.consumer.metrics()
        return {
            "rank": self.rank,
            "partitions": list(m.partitions),
            "applied": m.applied,
            "events_per_s": m.events_per_s,
            "lag": m.lag,
            "dead_letters": m.dead_letters,
            "dead_letters_by_reason": m.dead_letters_by_reason,
            "forwarded": m.forwarded,
            "forwarded_again": m.forwarded_again,
            "latency_ms_p50": m.latency_ms_p50,
            "latency_ms_p99": m.latency_ms_p99,
            "snapshots": m.snapshots,
            # the LRU bound at work (stream.max_users_in_memory): users held, users in the spill file
            "users_in_memory": m.users_in_memory,
            "users_spilled": m.users_spilled,
            "hit_rate": self.hit_rate(),
            "hits": self._hits,
            "hit_checked": self._checked,
            # answers the recommender has reported so far (sent every ~0.1 s, so an event that
            # follows its answer sooner is judged against the answers before it)
            "served_answers": self._served_answers,
        }

    # -- online hit rate ------------------------------------------------------------------------

    def record_served(self, served: Sequence[tuple[str, Sequence[str], float]]) -> None:
        """Remember answers: (user id, the item ids served, seconds ago), as the recommender
        sends them in batches (one call per shard every ~0.1 s, not one per request)."""
        now = time.monotonic()
        with self._served_lock:
            for user_id, item_ids, ago_s in served:
                self._served.record(user_id, item_ids, now - ago_s)
            self._served.prune(now)
            self._served_answers += len(served)

    def hit_rate(self) -> float | None:
        """Of the events by users served in the window before them, how many hit a served item."""
        return self._hits / self._checked if self._checked else None

    def _observe(self, events: Sequence[Event]) -> None:
        now = time.monotonic()
        with self._served_lock:
            for event in events:
                hit = self._served.hit(event.user_id, event.item_id, now)
                if hit is not None:
                    self._checked += 1
                    self._hits += hit

    def stop(self) -> None:
        """Stop consuming with a final snapshot (Serve kills the actor otherwise)."""
        self._metrics.stop()
        self.consumer.stop()
        self.state.close()


class ServedLog:
    """What was served to whom, for the online hit rate: per user the last ``per_user`` answers
    of the last ``window_s`` seconds, for at most ``max_users`` users (the least recently served
    go first). Memory is bounded by ``max_users * per_user`` answers whatever the traffic; a user
    not served within the window is forgotten at the next :meth:`prune`. Not thread-safe: the
    shard holds a lock around it."""

    def __init__(self, window_s: float, max_users: int = 100_000, per_user: int = 8) -> None:
        self.window_s, self.max_users, self.per_user = window_s, max_users, per_user
        self._users: collections.OrderedDict[str, collections.deque[tuple[float, frozenset[str]]]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._users)

    def record(self, user_id: str, item_ids: Sequence[str], at: float) -> None:
        """``item_ids`` were served to ``user_id`` at ``at`` (``time.monotonic()``)."""
        log = self._users.get(user_id)
        if log is None:
            log = self._users[user_id] = collections.deque(maxlen=self.per_user)
        else:
            self._users.move_to_end(user_id)
        log.append((at, frozenset(item_ids)))
        if len(self._users) > self.max_users:
            self._users.popitem(last=False)

    def prune(self, now: float) -> None:
        """Forget the users last served before the window (the oldest first, so it stops early)."""
        users = self._users
        while users:
            user_id, log = next(iter(users.items()))
            if now - log[-1][0] <= self.window_s:
                break
            del users[user_id]

    def hit(self, user_id: str, item_id: str, now: float) -> bool | None:
        """Whether ``item_id`` was among the answers served to ``user_id`` within the window;
        None when the user was not served within it (the event is not counted)."""
        log = self._users.get(user_id)
        while log and now - log[0][0] > self.window_s:
            log.popleft()
        if not log:
            if log is not None:
                del self._users[user_id]
            return None
        return any(item_id in items for _, items in log)


class _ShardMetrics:
    """Exports a shard's stream metrics to Prometheus (``ray.util.metrics``) every 2 s."""

    def __init__(self, shard: StateShard) -> None:
        from ray.util import metrics

        def gauge(name: str, description: str, *keys: str) -> metrics.Gauge:
            # every series names its shard, and the cluster and code that exported it
            return tagged(metrics.Gauge(name, description, tag_keys("rank", *keys)))

        self.shard = shard
        self.events = gauge("raymm_stream_events_per_s", "events applied per second")
        self.lag = gauge("raymm_stream_lag", "messages behind the end of the log", "partition")
        self.dead = gauge("raymm_stream_dead_letters", "messages sent to the dead-letter topic")
        self.dead_by_reason = gauge(
            "raymm_stream_dead_letters_by_reason", "messages sent to the dead-letter topic", "reason"
        )
        self.latency = gauge("raymm_stream_event_to_state_ms", "Kafka timestamp to applied, ms", "quantile")
        self.hit_rate = gauge("raymm_online_hit_rate", "next events that hit a served item")
        self.forwarded = gauge("raymm_stream_forwarded", "events forwarded to their user's owner partition")
        self.forwarded_again = gauge(
            "raymm_stream_forwarded_again", "forwarded events skipped: their source offset was applied"
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raymm-shard-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            try:
                m = self.shard.consumer.metrics()
                rank = {"rank": str(self.shard.rank)}
                self.events.set(m.events_per_s, rank)
                self.dead.set(m.dead_letters, rank)
                for reason, count in m.dead_letters_by_reason.items():
                    self.dead_by_reason.set(count, {**rank, "reason": reason})
                self.forwarded.set(m.forwarded, rank)
                self.forwarded_again.set(m.forwarded_again, rank)
                for partition, lag in m.lag.items():
                    self.lag.set(lag, {**rank, "partition": str(partition)})
                for quantile, value in (("0.5", m.latency_ms_p50), ("0.99", m.latency_ms_p99)):
                    if value is not None:
                        self.latency.set(value, {**rank, "quantile": quantile})
                rate = self.shard.hit_rate()
                if rate is not None:
                    self.hit_rate.set(rate, rank)
            except Exception:  # metrics never take the shard down
                log.exception("exporting shard %d metrics failed", self.shard.rank)

    def stop(self) -> None:
        self._stop.set()
