"""Soak: 1,000 events/s and 100 recommendation requests/s for a long time, with users spilled.

Issue 25's load and soak run: the live app under steady event and request load for
``--duration-s`` (600 s here; hours on a real cluster), with the LRU bound on users in memory
(``stream.max_users_in_memory``) set well below the user population, so users really move to the
spill file and come back. It answers: does the app keep up (throughput, lag), how long do requests
take under that load (p50/p99), and does every process's memory stay bounded? What runs, in a
temporary work directory (deleted after unless ``--keep``):

1. **model**: the artifact of ``bench/serve_latency.py`` (``build_artifact``: the two-tower model
   trained on the tiny facet dataset, its item tower over ``--items`` items, 100,000 by default;
   ``--work`` with a kept directory reuses it).
2. **deploy**: ``serve_latency.serve_config`` and ``deployed`` (embedded noida broker, Ray with 2
   CPUs, ``kafka.partitions`` 4, ``serve.state_shards`` 2, ``--replicas`` Recommender replicas (2,
   serve_latency's one per core; the Recommender is the ingress), Serve's throughput mode with
   HAProxy), plus ``stream.max_users_in_memory`` = ``--in-memory-fraction`` (0.1) of ``--users``
   (20,000) divided by the shards: 1,000 users per shard, so 10% of the users fit in memory. The
   bound is per shard (one ``UserStateStore`` each). ``--set`` overrides anything.
3. **preload**: ``--request-users`` (2,000) users of the population get a history
   (``serve_latency.event_log`` with prefix ``soak``, replayed as fast as the producer goes,
   ``replay_state``: until every event is applied); requests go to the ones whose log holds a
   positive event (``folded_states``), so every answer must be personalised.
4. **load**, both open loop from the same start, for ``--duration-s``:
   - **events**: passes over the population of ``--users`` users, each pass a fresh seeded
     ``event_log`` (10-30 events a user, items Zipf 0.8, new event ids, the same user ids; the
     next pass is drawn in a thread while the current one is sent), replayed with
     ``raymm.stream.producer.replay`` in chunks of 5 s of events at ``--events-per-s`` (1,000). Each
     chunk's rate is set so that the events sent so far stay on the schedule t0 + n / rate (a
     chunk after a slow one goes faster, at most 4x): producing does not wait for the shards, so
     a backlog shows as lag. Every user comes back every ~20 s on average, from memory or the
     spill file.
   - **requests**: ``GET /v1/recommendations/{user}?k=10`` at ``--rps`` (100), request i sent at
     t0 + i / rps whatever the earlier ones' answers (asyncio and aiohttp keep-alive in a thread of
     the driver: ``_shared.load_client.HttpLoad``); latency from the *scheduled* time to the body read,
     so queueing shows (no coordinated omission); a request not answered in 20 s, a non-200, a
     fallback or fewer than k items is an error.
5. **samples**, every ``--sample-s`` (10 s) from the driver's main thread: the shards' applied
   counts, applied offsets, event-to-state p99, users in memory and in the spill file, and their
   own lag (``shard_lag``: the high watermark of their last fetch minus their position; it read 0
   in the smoke run while the broker's showed thousands behind); read with ``metrics`` and
   ``offsets`` on the shard actors directly (through the Recommender's ``shard_call``, as
   freshness.py reads them, a read waited behind every queued request once the app saturated).
   The broker's end offsets (``KafkaConsumer.end_offsets``), read before and after the shards:
   events produced, and the lag, end offset minus (applied offset + 1) summed over the
   partitions: ``lag`` with the ends read after (an upper bound), ``lag_min`` with those before (a
   lower bound): at 1,000 events/s they differ by about 1,000 x ``read_s``, the read's duration. The requests answered in the interval (count, errors, p50/p99, and how late the
   client sent: the driver's own lateness). The RSS (``/proc/<pid>/statm``) of every Recommender
   replica, state shard, Serve proxy actor and the controller (``ray.util.state.list_actors``),
   of each proxy's HAProxy child process, and of the embedded broker. A part that does not answer
   (3 tries) is None in its sample and the run goes on.
6. **drain**: after the load the run waits (up to 120 s) until the lag is 0, then compares the
   events the shards applied with the ones the broker holds (since the load started): each event id
   is new, so ``applied_minus_produced`` is 0 unless an event was lost or applied twice (dead
   letters aside, reported beside it).

The first ``--warmup-s`` (60 s) of the load is not counted in the overall numbers (throughput,
p50/p99, errors). Memory, per process: ``first_window_mb`` is the mean RSS over the ``--window-s``
(60 s) after the warm-up, ``last_window_mb`` over the last ``--window-s``; ``growth_mb`` and
``growth_pct`` their difference. **bounded**: the RSS grew by at most ``max(20 MB, 5%)`` over the
second half of the counted run (least-squares slope over that half's samples times its length,
so one noisy sample does not decide it). Why the second half: the first fills what is meant to
fill, once: the LRU up to its bound (within seconds here), allocator arenas, the spill file's
page cache, faiss' and Serve's buffers, the broker's log. After that state in memory is capped
(``max_users_in_memory`` users; each user's history window is capped by ``max_history``, and
``seen`` grows with that user's distinct items only), so a process still growing in the second
half grows with events or requests: a leak, which grows as fast in the second half as in the
first. 20 MB is the scale of glibc's per-thread arenas and Python's free lists moving between
samples. ``mb_per_hour`` extrapolates the same slope, for a longer run to confirm. The embedded
broker is reported but left out of the verdict: it is the test stand-in for Kafka and keeps the
log. ``kept_up``: events applied and requests answered at >= 95% of their targets over the
counted run, and the lag drained after it. The 1-minute load average is recorded before and
after: about 2 is this benchmark alone, much more means other work shared the cores.

    .venv/bin/python bench/soak.py                       # 10 min of load (+~3 min to build the 100k artifact)
    .venv/bin/python bench/soak.py --work /tmp/soak --keep   # keep (or reuse) the artifact
    .venv/bin/python bench/soak.py --quick               # smoke run: 60 s, 10k items, soak.quick.json

**Hours on a real cluster**: run the script on the head node (the client reaches Serve's proxy
there) with ``--address auto`` (joins the cluster before the model is built: training and serving
run on it), ``--bootstrap host:9092`` (a real Kafka; no embedded broker; its ``raymm.events``
topic should be new or empty, since the shards start without snapshots and replay what is there
first), ``--work`` on storage every node reads (the artifact and the snapshots live there; or
``--set stream.snapshot_uri=s3://...``), and ``--duration-s 14400 --warmup-s 300 --window-s 600``.
Kafka security settings go in ``--set kafka.security_protocol=...``. Serve's throughput mode is
whatever the cluster was started with. The RSS of processes on other nodes is read by a
zero-CPU Ray task pinned to their node (``NodeAffinitySchedulingStrategy``); HAProxy is found as a
child of each proxy actor, and the embedded broker only on the driver's node.

    .venv/bin/python bench/soak.py --address auto --bootstrap kafka:9092 --work /shared/soak --keep \\
        --duration-s 14400 --warmup-s 300 --window-s 600 --sample-s 30 --items 100000 --users 200000
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _shared import finish, log, result_path
from _shared.load_client import REQUEST_TIMEOUT_S, HttpLoad
from _shared.measure import loadavg, percentiles
from _shared.serving import (
    PARTITIONS,
    REPLAY_CHUNK,
    SHARDS,
    build_artifact,
    deployed,
    event_log,
    folded_states,
    replay_state,
    serve_config,
    serve_settings,
    serving_work,
)

from raymm.config import RaymmConfig
from raymm.stream.settings import KafkaSettings

BENCH = "soak"
PREFIX = "soak"
#: The fill passes' seeds (``--fill-passes``): apart from the preload's and the stream's.
FILL_SEED = 10_000
#: A process is bounded if its RSS grew by at most max(BOUND_MB, BOUND_FRACTION of its RSS) over
#: the second half of the counted run (the module docstring says why).
BOUND_MB = 20.0
BOUND_FRACTION = 0.05
#: The longest an event chunk lasts (the pace is set again after each; stop waits for one).
CHUNK_S = 5.0
#: A chunk behind the events' schedule is sent at most this many times the target rate.
CATCH_UP = 4.0
#: kept_up: the share of the target rates the counted run must reach.
KEPT_UP = 0.95
DRAIN_TIMEOUT_S = 120.0
#: A sample's fields read from the shards and the broker (None when they did not answer).
STREAM_FIELDS = (
    "produced",
    "applied",
    "lag",
    "lag_min",
    "read_s",
    "lag_by_partition",
    "shard_lag",
    "event_to_state_p99_ms",
    "dead_letters",
    "users_in_memory",
    "users_spilled",
)


def unavailable() -> tuple[type[BaseException], ...]:
    """What reading the app's state may raise on a loaded machine: a shard that did not answer
    within ``serve.state_timeout_s`` (TimeoutError) or is being recreated (RayError, ValueError),
    the broker or the state API slow to answer."""
    from kafka.errors import KafkaError
    from ray.exceptions import RayError
    from ray.util.state.exception import RayStateApiException

    return (TimeoutError, RayError, ValueError, KafkaError, RayStateApiException)


class EventStream:
    """``rate`` events/s to Kafka in a thread, passes over ``n_users`` users until :meth:`stop`;
    see the module docstring, step 4."""

    def __init__(
        self, ids: list[str], n_users: int, seed: int, bootstrap: str, rate: float, config: RaymmConfig
    ) -> None:
        self.ids, self.n_users, self.seed = ids, n_users, seed
        self.first = event_log(ids, n_users, seed + 1, PREFIX)
        self.bootstrap, self.rate, self.kafka = bootstrap, rate, config.kafka
        self.sent = self.passes = 0
        # REPLAY_CHUNK events (as freshness.py's) or 5 s of them: the pace is set again each chunk
        self.chunk = min(REPLAY_CHUNK, max(1, round(CHUNK_S * rate)))
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-events", daemon=True)

    def start(self, t0: float) -> EventStream:
        self.t0 = t0
        self._thread.start()
        return self

    def _passes(self) -> Iterator[pa.Table]:
        """Fresh logs over the same users, the next one drawn while one is sent: pass p has
        seed + 1 + p (the preload has seed); the first is drawn before the clock starts."""
        upcoming: concurrent.futures.Future[pa.Table] = concurrent.futures.Future()
        upcoming.set_result(self.first)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            while not self._stop.is_set():
                table = upcoming.result()
                self.passes += 1
                upcoming = pool.submit(event_log, self.ids, self.n_users, self.seed + 1 + self.passes, PREFIX)
                yield table

    def _run(self) -> None:
        from raymm.stream.producer import replay

        kafka: KafkaSettings = self.kafka
        try:
            for table in self._passes():
                for start in range(0, table.num_rows, self.chunk):
                    if self._stop.is_set():
                        return
                    chunk = table.slice(start, self.chunk)
                    due = self.t0 + (self.sent + chunk.num_rows) / self.rate
                    seconds = max(due - time.monotonic(), chunk.num_rows / (CATCH_UP * self.rate))
                    result = replay(
                        chunk,
                        self.bootstrap,
                        rate=chunk.num_rows / seconds,
                        kafka=kafka,
                        partitioner=kafka.partitioner,
                    )
                    self.sent += result.sent
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def halt(self) -> None:
        """Stop after the chunk being sent."""
        self._stop.set()

    def stop(self) -> dict[str, Any]:
        """:meth:`halt`, wait, and report what was sent; raises what the thread raised."""
        self.halt()
        self._thread.join(timeout=120)
        if self.error is not None:
            raise RuntimeError(f"the event stream failed: {self.error!r}") from self.error
        elapsed = time.monotonic() - self.t0
        return {
            "target_rate": self.rate,
            "sent": self.sent,
            "seconds": round(elapsed, 1),
            "achieved_rate": round(self.sent / elapsed, 1),
            "passes_started": self.passes,
        }


class RequestLoad:
    """Open-loop requests at ``rate``/s for ``duration_s`` in a thread with its own event loop;
    each answer is appended to :attr:`answers` as (scheduled s since t0, latency ms from the
    scheduled time, how late the client sent it in ms, error or None)."""

    def __init__(self, url: str, users: list[str], rate: float, duration_s: float) -> None:
        self.url, self.users, self.rate, self.duration_s = url, users, rate, duration_s
        self.answers: list[tuple[float, float, float, str | None]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="soak-requests", daemon=True)

    def start(self, t0: float) -> RequestLoad:
        self.t0 = t0
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._load())
        except BaseException as exc:  # reported by join()
            self.error = exc

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()  # its clock is time.monotonic, as t0's
        pending: set[asyncio.Task[None]] = set()
        async with HttpLoad(self.url, self.users) as http:
            for i in range(round(self.duration_s * self.rate)):
                scheduled = self.t0 + i / self.rate
                delay = scheduled - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._one(http, i, scheduled))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

    async def _one(self, http: HttpLoad, i: int, scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        late_ms = (loop.time() - scheduled) * 1000
        try:
            error = await asyncio.wait_for(http.call(i), timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # counted, never raised: one failure must not stop the clock
            error = f"{type(exc).__name__}: {exc}"[:200]
        self.answers.append((scheduled - self.t0, (loop.time() - scheduled) * 1000, late_ms, error))

    def join(self) -> None:
        self._thread.join(timeout=REQUEST_TIMEOUT_S + 60)
        if self.error is not None:
            raise RuntimeError(f"the request load failed: {self.error!r}") from self.error


# -- memory of the app's processes ----------------------------------------------------------------


def node_rss(pids: dict[int, str], children: list[tuple[int, tuple[str, ...], str]]) -> dict[str, float]:
    """RSS in MB of the processes ``pids`` (pid -> label) on this node, and of every child process
    of ``(parent pid, words, label)`` whose command line holds one of ``words``. A process that
    exited meanwhile is left out. Runs in the driver or, for another node, in a task there."""
    mb_per_page = os.sysconf("SC_PAGE_SIZE") / 2**20

    def rss(pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                return round(int(statm.read().split()[1]) * mb_per_page, 1)
        except (OSError, IndexError, ValueError):
            return None

    found = {label: mb for pid, label in pids.items() if (mb := rss(pid)) is not None}
    wanted = {parent: (words, label) for parent, words, label in children}
    for entry in os.listdir("/proc") if wanted else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            if parent not in wanted:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                title = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        words, label = wanted[parent]
        if any(word in title for word in words) and (mb := rss(int(entry))) is not None:
            found[label if label not in found else f"{label}-{entry}"] = mb
    return found


def app_processes(app_name: str) -> list[dict[str, Any]]:
    """The app's live Ray actors: label, role, pid and node of each Recommender replica, state
    shard, Serve proxy and the Serve controller."""
    import ray
    from ray.util.state import list_actors

    # this instance's, named: the state API refuses to guess when the machine runs several
    address = ray.get_runtime_context().gcs_address
    found = []
    for actor in list_actors(address, filters=[("state", "=", "ALIVE")], detail=True, limit=10_000):
        kind, name = actor.class_name or "", actor.name or ""
        if kind.startswith(f"ServeReplica:{app_name}:"):
            role = kind.rsplit(":", 1)[-1].lower()
            label = f"{role}-{name.rsplit('#', 1)[-1]}"
        elif kind == "StateShard":
            role, shard = "state_shard", re.search(r"state-\d+", name)
            label = shard.group(0) if shard else f"state-{actor.actor_id[:8]}"
        elif kind in ("ProxyActor", "HAProxyManager"):  # the second starts HAProxy (throughput mode)
            role, label = "serve_proxy", f"serve_proxy-{(actor.node_id or '')[:6]}"
        elif kind == "ServeController":
            role = label = "serve_controller"
        else:
            continue
        if actor.pid:
            found.append(
                {
                    "label": label,
                    "role": role,
                    "pid": int(actor.pid),
                    "node_id": actor.node_id,
                    "actor": (name, actor.ray_namespace),
                }
            )
    return found


def app_rss(processes: list[dict[str, Any]], embedded_broker: bool) -> dict[str, float]:
    """RSS in MB by label of ``processes``, each proxy's HAProxy, and the embedded broker: read
    here for this node, by a zero-CPU task pinned to the node for the others."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    by_node: dict[str, list[dict[str, Any]]] = {}
    for process in processes:
        by_node.setdefault(process["node_id"] or here, []).append(process)
    if embedded_broker:
        by_node.setdefault(here, [])
    found: dict[str, float] = {}
    remote = []
    for node, members in by_node.items():
        pids = {p["pid"]: p["label"] for p in members}
        children = [
            (p["pid"], ("haproxy",), f"haproxy-{p['label']}") for p in members if p["role"] == "serve_proxy"
        ]
        if node == here:
            if embedded_broker:
                children.append((os.getpid(), ("noida", "tansu"), "embedded_broker"))
            found.update(node_rss(pids, children))
        else:
            task = ray.remote(num_cpus=0)(node_rss).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            )
            remote.append(task.remote(pids, children))
    for answer in ray.get(remote, timeout=60):
        found.update(answer)
    return found


# -- samples --------------------------------------------------------------------------------------


class Sampler:
    """One row every ``--sample-s``: the stream, the requests and memory; see the module
    docstring, step 5."""

    def __init__(self, app: Any, config: RaymmConfig, load: RequestLoad) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from raymm.stream.events import EVENTS_TOPIC

        self.app_name, self.load = config.serve.app_name, load
        self.embedded_broker = config.kafka.bootstrap_servers is None
        self.shards = config.serve.state_shards
        self.consumer = KafkaConsumer(
            bootstrap_servers=app.bootstrap_servers, **config.kafka.client_options()
        )
        self.partitions = [TopicPartition(EVENTS_TOPIC, p) for p in range(config.kafka.partitions)]
        self.answered = 0
        self.rss: dict[str, list[list[float]]] = {}
        self.roles: dict[str, str] = {}
        self.baseline = self.totals()

    def shard_handles(self) -> list[Any]:
        """The live state shards' actor handles, in rank order. Read directly, not through a
        Recommender replica's ``shard_call``: when the app saturates, a replica's queue holds
        every waiting request, and a read through it waited as long (60 s here)."""
        import ray

        actors = {p["label"]: p["actor"] for p in app_processes(self.app_name) if p["role"] == "state_shard"}
        missing = [rank for rank in range(self.shards) if f"state-{rank}" not in actors]
        if missing:
            raise ValueError(f"state shards {missing} are not alive (being recreated?)")
        return [
            ray.get_actor(name, namespace=ns)
            for name, ns in (actors[f"state-{r}"] for r in range(self.shards))
        ]

    def totals(self, attempts: int = 3) -> dict[str, Any]:
        """:meth:`read_totals`, tried ``attempts`` times a second apart; raises what the last
        try raised (one of :func:`unavailable`)."""
        for attempt in range(attempts):
            try:
                return self.read_totals()
            except unavailable():
                if attempt == attempts - 1:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def read_totals(self) -> dict[str, Any]:
        """The broker's end offsets, the shards' metrics and applied offsets, the end offsets
        again: the lag at the shards' read lies between the two (events keep coming meanwhile)."""
        import ray

        handles = self.shard_handles()
        started = time.monotonic()
        ends_before = self.consumer.end_offsets(self.partitions)
        calls = [[getattr(h, method).remote() for h in handles] for method in ("metrics", "offsets")]
        metrics, offsets = (ray.get(refs, timeout=60) for refs in calls)
        ends = self.consumer.end_offsets(self.partitions)
        read_s = time.monotonic() - started
        applied_offset = {int(p): int(o) for shard in offsets for p, o in shard.items()}
        lag, lag_min = {}, {}
        for tp, end in ends.items():
            if tp.partition in applied_offset:
                lag[tp.partition] = end - applied_offset[tp.partition] - 1
                lag_min[tp.partition] = max(0, ends_before[tp] - applied_offset[tp.partition] - 1)
        whole = len(lag) == len(ends)
        return {
            "produced": sum(ends.values()),
            "applied": sum(int(m["applied"]) for m in metrics),
            "dead_letters": sum(int(m["dead_letters"]) for m in metrics),
            "lag": sum(lag.values()) if whole else None,
            "lag_min": sum(lag_min.values()) if whole else None,
            "read_s": round(read_s, 3),
            "lag_by_partition": dict(sorted(lag.items())),
            "shard_lag": sum(sum(m["lag"].values()) for m in metrics),
            "event_to_state_p99_ms": max((m["latency_ms_p99"] or 0.0 for m in metrics), default=None),
            "users_in_memory": [m.get("users_in_memory") for m in metrics],
            "users_spilled": [m.get("users_spilled") for m in metrics],
        }

    def sample(self, t0: float) -> dict[str, Any]:
        """The row now; ``t_s`` is when the shards and broker were read, in s since the load
        began at ``t0``. A part that could not be read is None, and ``unavailable`` says why
        (a long soak goes on)."""
        missing = []
        try:
            totals: dict[str, Any] | None = self.totals()
        except unavailable() as exc:
            totals, missing = None, [f"stream: {type(exc).__name__}: {exc}"[:200]]
        t = time.monotonic() - t0
        answers = self.load.answers[self.answered : len(self.load.answers)]
        self.answered += len(answers)
        latencies = [a[1] for a in answers]
        errors = sum(a[3] is not None for a in answers)
        rss: dict[str, float] = {}
        try:
            processes = app_processes(self.app_name)
            self.roles.update({p["label"]: p["role"] for p in processes})
            rss = app_rss(processes, self.embedded_broker)
        except unavailable() as exc:
            missing.append(f"memory: {type(exc).__name__}: {exc}"[:200])
        for label, mb in rss.items():
            self.rss.setdefault(label, []).append([round(t, 1), mb])
        row: dict[str, Any] = {"t_s": round(t, 1)}
        if totals is None:
            row.update(dict.fromkeys(STREAM_FIELDS))
        else:
            base = self.baseline
            row.update(
                {name: totals[name] for name in STREAM_FIELDS},
                **{name: totals[name] - base[name] for name in ("produced", "applied", "dead_letters")},
            )
        row |= {
            "requests": len(answers),
            "errors": errors,
            "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
            "client_late_p99_ms": round(float(np.percentile([a[2] for a in answers], 99)), 2)
            if answers
            else None,
            "rss_mb_total": round(sum(mb for label, mb in rss.items() if label != "embedded_broker"), 1),
            "loadavg_1m": loadavg(),
        }
        if missing:
            row["unavailable"] = missing
        return row


def memory_verdicts(
    series: dict[str, list[list[float]]],
    roles: dict[str, str],
    warmup_s: float,
    end_s: float,
    window_s: float,
) -> dict[str, dict[str, Any]]:
    """Per process: the first and last windows' mean RSS, their growth, the second half's growth
    and ``bounded``; see the module docstring."""
    middle = (warmup_s + end_s) / 2
    verdicts = {}
    for label, points in sorted(series.items()):
        t, mb = (np.asarray(column, dtype=np.float64) for column in zip(*points, strict=True))
        first = mb[(t >= warmup_s) & (t <= warmup_s + window_s)]
        last = mb[(t >= end_s - window_s) & (t >= warmup_s)]
        half = t >= middle
        verdict: dict[str, Any] = {"role": roles.get(label, label), "samples": int(t.size)}
        if first.size and last.size:
            growth = float(last.mean() - first.mean())
            verdict.update(
                first_window_mb=round(float(first.mean()), 1),
                last_window_mb=round(float(last.mean()), 1),
                growth_mb=round(growth, 1),
                growth_pct=round(100 * growth / float(first.mean()), 2),
            )
        if half.sum() >= 2 and np.ptp(t[half]) > 0:
            slope = float(np.polyfit(t[half], mb[half], 1)[0])  # MB/s
            limit = max(BOUND_MB, BOUND_FRACTION * float(mb[half].mean()))
            verdict.update(
                second_half_growth_mb=round(slope * (end_s - middle), 1),
                mb_per_hour=round(slope * 3600, 1),
                limit_mb=round(limit, 1),
                bounded=bool(slope * (end_s - middle) <= limit),
            )
        else:  # a process that appeared late (a restart) has too few samples to judge
            verdict["bounded"] = None
        verdicts[label] = verdict
    return verdicts


def drain(sampler: Sampler, timeout_s: float) -> tuple[float | None, dict[str, Any]]:
    """Seconds until the lag is 0 after the load (None: not in ``timeout_s``), and the totals then."""
    started = time.monotonic()
    while True:
        try:
            totals = sampler.totals()
        except unavailable():
            if time.monotonic() - started > timeout_s:
                raise
            continue
        if totals["lag"] == 0:
            return round(time.monotonic() - started, 1), totals
        if time.monotonic() - started > timeout_s:
            return None, totals
        time.sleep(1.0)


# -- the run --------------------------------------------------------------------------------------


def measure(built: Any, config: RaymmConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Deploy, preload, run the load and sample it, drain; see the module docstring, steps 2-6."""
    loads: dict[str, float] = {"before_deploy": loadavg()}
    preload = event_log(built.ids, args.request_users, args.seed, prefix=PREFIX)
    states = folded_states(preload, list(config.model.user_state.events))
    users = sorted(u for u, s in states.items() if s["history"])
    order = [users[i] for i in np.random.default_rng(args.seed).permutation(len(users))]
    started = time.monotonic()
    with deployed(config, built.model) as app:
        log(BENCH, f"deployed in {time.monotonic() - started:.0f}s at {app.url}")
        filled = None
        if args.fill_passes:
            # Every user of the population at its per-user bounds before the clock starts: any
            # growth after that is not the users' state filling up.
            fill = pa.concat_tables(
                [
                    event_log(built.ids, args.users, FILL_SEED + p, prefix=PREFIX)
                    for p in range(args.fill_passes)
                ]
            )
            filled = replay_state(app, fill, config)
            log(
                BENCH,
                f"filled: {filled['events']} events of {args.users} users in {filled['applied_after_s']} s",
            )
        state = replay_state(app, preload, config)
        log(
            BENCH, f"preloaded {state['events']} events of {args.request_users} users; {len(order)} requested"
        )
        loads["before_load"] = loadavg()
        load = RequestLoad(app.url, order, args.rps, args.duration_s)
        sampler = Sampler(app, config, load)
        stream = EventStream(
            built.ids, args.users, args.seed, app.bootstrap_servers, args.events_per_s, config
        )
        t0 = time.monotonic() + 0.5
        stream.start(t0)
        load.start(t0)
        samples: list[dict[str, Any]] = []
        slot = 1
        try:
            while slot * args.sample_s <= args.duration_s:
                time.sleep(max(0.0, t0 + slot * args.sample_s - time.monotonic()))
                row = sampler.sample(t0)
                samples.append(row)
                if len(samples) == 1:
                    log(BENCH, f"memory of: {', '.join(sorted(sampler.rss))}")
                # the next slot not yet begun: a slow sample (a shard slow to answer) skips slots
                slot = max(slot + 1, math.floor((time.monotonic() - t0) / args.sample_s) + 1)
                log(
                    BENCH,
                    f"t={row['t_s']:.0f}s produced {row['produced']} applied {row['applied']} lag {row['lag_min']}-{row['lag']} | "
                    f"{row['requests']} requests p99 {row['p99_ms']} ms, {row['errors']} errors | in memory "
                    f"{row['users_in_memory']} spilled {row['users_spilled']} | RSS {row['rss_mb_total']} MB | "
                    f"load {row['loadavg_1m']}",
                )
        except BaseException:
            stream.halt()  # no events after a failed sample
            raise
        stream_report = stream.stop()
        load.join()
        loads["after_load"] = loadavg()
        drained_s, final = drain(sampler, DRAIN_TIMEOUT_S)
        sampler.consumer.close()
    counted = [a for a in load.answers if a[0] >= args.warmup_s]
    answered = sum(a[3] is None for a in counted)
    errors = [a[3] for a in counted if a[3] is not None]
    read = [s for s in samples if s["applied"] is not None]  # the shards and broker answered
    if not read:
        raise RuntimeError("no sample could read the shards and the broker: see the unavailable fields")
    at_warmup = next((s for s in read if s["t_s"] >= args.warmup_s), read[0])
    end = read[-1]
    span = max(end["t_s"] - at_warmup["t_s"], 1e-9)
    counted_s = args.duration_s - args.warmup_s
    memory = memory_verdicts(sampler.rss, sampler.roles, args.warmup_s, samples[-1]["t_s"], args.window_s)
    judged = [v["bounded"] for k, v in memory.items() if k != "embedded_broker" and v["bounded"] is not None]
    bound = config.stream.max_users_in_memory
    in_memory = [max(n or 0 for n in s["users_in_memory"]) for s in read]
    spilled = sum(n or 0 for n in final["users_spilled"])
    lags = [s["lag"] for s in samples if s["lag"] is not None]
    throughput = {
        "events_produced_per_s": round((end["produced"] - at_warmup["produced"]) / span, 1),
        "events_applied_per_s": round((end["applied"] - at_warmup["applied"]) / span, 1),
        "requests_per_s": round(answered / counted_s, 1),
        "requests_counted": len(counted),
        "requests_answered": answered,
    }
    kept_up = bool(
        throughput["events_applied_per_s"] >= KEPT_UP * args.events_per_s
        and throughput["requests_per_s"] >= KEPT_UP * args.rps
        and drained_s is not None
    )
    latency = percentiles([a[1] for a in counted])
    base = sampler.baseline
    produced, applied = final["produced"] - base["produced"], final["applied"] - base["applied"]
    return {
        "serve": serve_settings(config),
        "preload": state,
        "filled": filled,
        "requested_users": len(order),
        "stream": stream_report,
        "throughput": throughput,
        "latency": latency,
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:5],
        "kept_up": kept_up,
        "lag": {
            "max": max(lags, default=None),
            "final": lags[-1] if lags else None,
            "min_max": max((s["lag_min"] for s in read if s["lag_min"] is not None), default=None),
            "drained_after_s": drained_s,
            # [t, lag_min, lag]: the lag at the read lies between (events arrive while reading)
            "over_time": [[s["t_s"], s["lag_min"], s["lag"]] for s in samples],
        },
        "delivery": {
            "produced": produced,
            "applied": applied,
            "dead_letters": final["dead_letters"] - base["dead_letters"],
            "applied_minus_produced": applied - produced,
        },
        "users": {
            "population": args.users,
            "max_users_in_memory_per_shard": bound,
            "in_memory_max_per_shard": max(in_memory, default=None),
            "spilled_at_end": spilled,
            "bound_exercised": bool(spilled > 0 and bound is not None and max(in_memory, default=0) <= bound),
        },
        "memory": memory,
        "bounded": bool(judged) and all(judged),
        "rss_mb_over_time": sampler.rss,
        "samples_unavailable": sum("unavailable" in s for s in samples),
        "samples": samples,
        "loadavg_1m": loads,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events-per-s", type=float, default=1000.0)
    parser.add_argument("--rps", type=float, default=100.0, help="recommendation requests/s (open loop)")
    parser.add_argument("--duration-s", type=float, default=600.0, help="load time, the warm-up included")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="not counted in the overall numbers")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--window-s", type=float, default=60.0, help="the first and last RSS windows")
    parser.add_argument("--users", type=int, default=20_000, help="the user population of the events")
    parser.add_argument(
        "--request-users", type=int, default=2000, help="preloaded users the requests ask for"
    )
    parser.add_argument(
        "--in-memory-fraction",
        type=float,
        default=0.1,
        help="stream.max_users_in_memory = this share of --users, divided by the shards",
    )
    parser.add_argument("--replicas", type=int, default=2, help="Recommender replicas")
    parser.add_argument("--items", type=int, default=None, help="catalog size (default 100_000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--artifact-users", type=int, default=2000, help="users of the artifact's popularity log"
    )
    parser.add_argument("--broker", default="noida", help="the embedded broker (without --bootstrap)")
    parser.add_argument("--bootstrap", default=None, help="a real Kafka (host:port,...): no embedded broker")
    parser.add_argument(
        "--address", default=None, help="join this Ray cluster (e.g. auto) instead of a local one"
    )
    parser.add_argument("--set", action="append", default=[], help="a config override, e.g. serve.nprobe=64")
    parser.add_argument(
        "--fill-passes",
        type=int,
        default=0,
        help="first replay this many passes of the event log over every user (~20 events a user each), so "
        "each user's state starts at its bounds (with a small stream.max_seen): growth then is not the state",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 s, 10k items, 3,000 users")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    n_items = args.items or (10_000 if args.quick else 100_000)
    if args.quick:
        args.duration_s, args.warmup_s, args.sample_s, args.window_s = 60.0, 10.0, 5.0, 15.0
        args.users, args.request_users = min(args.users, 3000), min(args.request_users, 300)
        args.epochs, args.artifact_users = 1, min(args.artifact_users, 300)
    if not 0 < args.in_memory_fraction <= 1:
        parser.error(f"--in-memory-fraction must be in (0, 1], got {args.in_memory_fraction}")
    if args.request_users > args.users:
        parser.error(f"--request-users ({args.request_users}) must be at most --users ({args.users})")
    if not 0 <= args.warmup_s < args.duration_s or args.sample_s <= 0 or args.window_s <= 0:
        parser.error("need 0 <= --warmup-s < --duration-s, and positive --sample-s and --window-s")
    bound = max(1, math.ceil(args.in_memory_fraction * args.users / SHARDS))
    started = time.perf_counter()
    overrides = [
        f"serve.recommender_replicas={args.replicas}",
        f"stream.max_users_in_memory={bound}",
        *([f"ray.address={args.address}"] if args.address else []),
        *([f"kafka.bootstrap_servers={args.bootstrap}"] if args.bootstrap else []),
        *args.set,
    ]
    with serving_work(args.work, args.keep, "raymm-soak-") as work:
        config = serve_config(work / "soak", args.broker, overrides)
        loads: dict[str, Any] = {"start": loadavg()}
        if args.address:  # before the build, which would start a local instance
            from raymm.runtime import init_ray

            init_ray(config.ray)
        built = build_artifact(work, n_items, args.artifact_users, args.epochs, args.seed)
        loads["after_build"] = loadavg()
        run = measure(built, config, args)

    report = {
        "question": "throughput, p50/p99, lag and each process's memory under 1k events/s and 100 requests/s, "
        "with 10% of the users in memory",
        "quick": args.quick,
        "config": {
            "events_per_s": args.events_per_s,
            "rps": args.rps,
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "sample_s": args.sample_s,
            "window_s": args.window_s,
            "users": args.users,
            "request_users": args.request_users,
            "in_memory_fraction": args.in_memory_fraction,
            "max_users_in_memory_per_shard": bound,
            "n_items": n_items,
            "shards": SHARDS,
            "partitions": PARTITIONS,
            "replicas": args.replicas,
            "fill_passes": args.fill_passes,
            "kafka": args.bootstrap or f"embedded {args.broker}",
            "ray": args.address or "local, 2 CPUs",
            "overrides": overrides,
            "bound": f"RSS growth over the second half <= max({BOUND_MB:g} MB, {BOUND_FRACTION:.0%})",
        },
        "model": built.info,
        "throughput": run["throughput"],
        "p50_ms": run["latency"]["p50_ms"],
        "p99_ms": run["latency"]["p99_ms"],
        "errors": run["errors"],
        "lag_max": run["lag"]["max"],
        "lag_final": run["lag"]["final"],
        "kept_up": run["kept_up"],
        "bounded": run["bounded"],
        "users_spilled_at_end": run["users"]["spilled_at_end"],
        "memory_growth_mb": {k: v.get("growth_mb") for k, v in run["memory"].items()},
        **{
            k: v
            for k, v in run.items()
            if k not in ("loadavg_1m", "throughput", "errors", "bounded", "kept_up")
        },
        "loadavg_1m": {**loads, **run["loadavg_1m"], "end": loadavg()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    return finish(BENCH, report, args.out or result_path(BENCH, args.quick))


if __name__ == "__main__":
    main()
