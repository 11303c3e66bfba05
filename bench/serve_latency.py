"""Serving latency: p99 of ``GET /v1/recommendations/{user}`` at fixed request rates, 100k items.

design.md's target: p99 under 50 ms at 100 requests/s with 100,000 items, here (2 CPU cores,
no GPU). What runs, in a temporary work directory (deleted after unless ``--keep``):

1. **model** (``--work`` with a kept directory reuses it): the two-tower model is trained (``raymm.training.trainer.train``, Ray Train, ``--epochs``
   2) on the ``tiny`` synthetic benchmark with facet features made as ``tests/fixtures.py::
   facet_dataset`` makes them (noisy one-hots of the true facets: text 22-d, image 12-d, audio
   13-d, 30% of images missing), at the model's default widths (``ModelConfig()``: 64-d item and
   user vectors, 128-d shared space). Then 100,000 items are given features the same way (the
   tiny catalog's 240 items, with their trained id embeddings, plus 99,760 items whose facet
   codes are drawn uniformly and whose modalities are missing at the tiny catalog's rates) and
   run through the trained item tower (``encode_catalog``): the served item vectors are the
   model's, not random. ``write_artifact`` writes them with popularity counts (the positive
   events of the synthetic log below) and the trained manifest's shrinkage and spec. With
   ``--ranker`` the ranker (``train_ranker``, 3 epochs, default widths, top 200 candidates) is
   trained on the tiny artifact and added to a copy of the 100k artifact with its item inputs
   recomputed for the 100k items (``ranker_inputs``).
2. **deploy**: ``raymm.serve.runner.running_app`` (Ray started with 2 CPUs, a local instance of
   this process's own, Serve on a free port, ``kafka.partitions`` 4, ``serve.state_shards`` 2,
   two Recommender replicas (one per core; the Recommender is the ingress too); the defaults
   otherwise, so the faiss index (``serve.index`` auto, nprobe 128); ``--set`` overrides any of
   it), once per embedded broker in ``--brokers``: noida (the default broker; the headline), then
   Tansu. noida answers an empty fetch at once instead of holding it, so before the consumer
   slept between idle polls (``EventConsumer._run``) every idle state shard spun at ~0.7 of a
   core; ``idle_cores`` in the JSON shows what each component costs now.
   **Proxy modes** (``--proxy-modes``, default ``throughput,default``; ``--quick``: throughput):
   ``throughput`` is Serve's throughput-optimized mode with HAProxy and direct ingress
   (``raymm.runtime.serve_env``, ``ray.serve_throughput_mode``: the headline), ``default`` Serve's
   Python proxy actor, as ``raymm serve`` runs by default. Ray's processes and Serve's constants
   (the driver's too) read the mode from the environment when they start, so each mode runs in a
   process of its own: this script runs itself once per mode on one work directory (the first
   builds the artifact, the next reuse it) and merges the reports; the runs of the modes after
   the first are named ``<run>_<mode>_proxy`` and deploy on the first broker alone.
3. **live state**: a seeded log of ``--users`` (2,000) users, 10-30 events each (view/click/like/
   purchase/play/skip at 50/20/10/5/10/5%; items Zipf 0.8 over the 100k), is replayed onto
   ``raymm.events`` (``raymm.stream.producer.replay``); the run waits until the shards have
   applied every event (``/healthz``: applied counts, lag 0). The users whose state holds a
   history (all of them, in practice) are the ones requested.
4. **idle**: ``--idle-s`` (10 s) with no request: the CPU each component uses anyway.
5. **open-loop load**: for each rate in ``--rates`` (10, 25, 50, 100, 200 /s), requests are
   scheduled on a clock (request i at t0 + i / rate, fixed spacing, whether or not earlier ones
   returned) by one asyncio client (aiohttp, keep-alive connections, no connection limit) in a
   **process of its own** (``bench/_shared/load_client.py``: its CPU is the ``load_client``
   component, apart from the server's), ``--warmup-s`` (5 s) not counted, then ``--duration-s``
   (25 s) counted; users in a seeded random order, ``k=10``. Latency runs from the *scheduled*
   send time to the body read, so a client or server that falls behind is counted (no
   coordinated omission); a request not answered in 20 s is an error. Not Debian's ``hey`` or
   ``wrk`` (``wrk2`` is not packaged): ``hey -q`` is a rate per worker, each worker waiting for
   its last answer (closed loop), and ``wrk`` is closed loop, so both time from the actual send
   and a stalled server gets fewer requests. Per rate: the send rate, throughput (answers / time
   from the first counted send to the last answer), p50/p90/p99/max, errors (non-200, another
   user, ``fallback`` not null, fewer than k items: must be 0), how late the client sent, **CPU
   ms per request by component** (``/proc`` CPU time of this process and every process it
   started: HAProxy or Serve's proxy, the Recommender replicas, the state shards, the broker,
   Ray's own processes, the driver, the client; less each one's idle use, over every request of
   the run; ``server``: all but the client's and the driver's), and the **client's CPU share**
   (``client_cpu_share``: its CPU seconds over the run's wall seconds, warm-up included, and
   ``client_cpu_ms_per_request``). After each rate the run waits until single requests answer
   in under 200 ms again (``settle_s``). Once a rate saturates the app (p50 > 1 s), higher rates
   than 100 /s are skipped (reported as such).
6. **where the time goes**, at ``--breakdown-rate`` (25 /s, below saturation) the same way, the
   client in the driver (a handle needs it): (a) the Recommender deployment's ``recommend_user``
   called through a ``DeploymentHandle`` (no HTTP, no HAProxy: the shard call, batching and
   scoring), (b) its ``shard_call(rank, "get_user")`` (the recommender hop plus the shard hop,
   no scoring).
7. **the no-Ray anchor** (issue 27; the first proxy mode's process, the first broker, not with
   ``--no-anchor``): once the app is deleted (Ray idle, its idle use subtracted like every
   component's), the same artifact behind plain FastAPI on uvicorn, one worker per Recommender
   replica (one per core), no Ray (``bench/_shared/anchor.py``): ``raymm.load_model`` with the
   served index, one torch and one faiss thread a worker, the users' live state as the shards
   held it (read in step 3), the same route and answer, concurrent requests batched as Serve's
   ``@serve.batch`` (``serve.max_batch_size`` 32, ``serve.batch_wait_ms``), scored in a thread.
   Idle, then the same rates from the same client (``--quick``: the lowest rate only); its CPU
   per request is its process tree's (``anchor``). It has no state shards, served-items record,
   Serve metrics or request log: what Serve and the app's stream part cost on top of the scoring.
8. **in-process**: the same artifact through ``raymm.load_model`` with the served index, in the
   driver on one torch and one faiss thread (the recommender replica gets one: 0.5 CPU), for the same users' live histories and
   seen items (read from the shards): ``recommend_many`` of one user per call (what the replica
   runs for a batch of one: ``recommend`` is that call) and in batches of 32 (Serve's
   ``max_batch_size``), p50/p99 per call; with faiss, exact search beside it (its latency, and
   the served index's recall@10 against it for every user).

With ``--ranker`` the ranker artifact is deployed on the first broker too (in each proxy mode),
and the anchor serves it too, at ``--ranker-rates`` (default: ``--rates``).

Ratios: ``serve_vs_in_process_p99`` = Serve's p99 at 100 /s / in-process p99 per call.
``side_by_side`` puts, per artifact and rate, Serve in each proxy mode beside the anchor (p50,
p99, throughput, errors, server CPU ms per request, by component, the client's CPU share), with
``serve_vs_anchor_cpu_per_request`` = Serve's server CPU per request / the anchor's, per mode;
issue 27's target is at most 1.5 (``meets_cpu_target``). At low rates the idle use subtracted
dominates (Serve's ~0.4 idle cores are ~40 ms a request at 10/s), so the ratio there is noise; read
it from 50/s up (``summary``: at 100/s). The machine's 1-minute load average is
recorded before and after each phase: about 2-4 is this benchmark alone (Ray, the broker, the
client and Serve share the 2 cores, and a saturated app keeps many threads runnable), much more
means other work shared them and the run should be repeated.

    .venv/bin/python bench/serve_latency.py --ranker        # both proxy modes, the anchor; ~30-35 min (the committed run)
    .venv/bin/python bench/serve_latency.py --brokers tansu --rates 10,25,100 --work /tmp/sb --keep
    .venv/bin/python bench/serve_latency.py --proxy-modes default --rates 10,100 --no-anchor
    .venv/bin/python bench/serve_latency.py --quick         # smoke run, 10k items, noida alone: serve_latency.quick.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _shared import finish, log, result_path
from _shared.anchor import running_anchor
from _shared.load_client import K, LoadClient, schedule
from _shared.measure import loadavg, machine_busy_s, other_work_cores, percentiles
from _shared.serving import (
    BROKERS,
    PARTITIONS,
    SHARDS,
    Built,
    build_artifact,
    cpu_by_component,
    deployed,
    folded_states,
    replay_state,
    serve_config,
    serve_settings,
    serving_work,
    shard_totals,
)

from raymm.config import RaymmConfig, load_config
from raymm.recommend.index import IndexChoice
from raymm.serve.runner import recommender_handle

BENCH = "serve_latency"
#: The target of design.md section 4 this benchmark measures: `make bench` runs it.
DESIGN_TARGET = "Serving"
TARGET_P99_MS = 50.0
TARGET_RATE = 100.0
BATCH = 32  # the recommender's @serve.batch max_batch_size
#: Rounds of the in-process rows (--in-process-only): each row's p99 is its median round.
ROUNDS = 3
#: A rate whose p50 is above this saturated the app: the rates above it (but the target's) are skipped.
SATURATED_P50_MS = 1000.0
#: Issue 27's target: Serve's server CPU per request at most this many times the no-Ray anchor's.
TARGET_CPU_VS_ANCHOR = 1.5
#: Serve's proxy modes (--proxy-modes), the headline first.
PROXY_MODES = "throughput,default"
#: The components that are the load's client, not the server: the client process, and the driver
#: (the handle runs' client).
CLIENTS = ("load_client", "driver")


# -- CPU time by component ------------------------------------------------------------------------


def idle_cores(seconds: float) -> dict[str, float]:
    """Cores each component uses with no request (the stream consumers' polls, Serve's own
    loops), and ``other_work`` (not a component: other jobs on the machine meanwhile)."""
    before, busy, started = cpu_by_component(), machine_busy_s(), time.perf_counter()
    time.sleep(seconds)
    after, wall = cpu_by_component(), time.perf_counter() - started
    cores = {name: round((after[name] - before.get(name, 0.0)) / wall, 4) for name in sorted(after)}
    ours = sum(after[name] - before.get(name, 0.0) for name in after)
    return {**cores, "other_work": other_work_cores(busy, machine_busy_s(), ours, wall)}


def cpu_ms_per_request(
    before: dict[str, float], after: dict[str, float], requests: int, wall: float, idle: dict[str, float]
) -> dict[str, float]:
    """CPU ms per request by component over a run of ``wall`` seconds, less what the component
    spends idle in that time (``idle`` cores); ``total``: every component, ``server``: all but the
    client's (``load_client``, and ``driver``, which holds the handle runs' client)."""
    spent = {name: after[name] - before.get(name, 0.0) - idle.get(name, 0.0) * wall for name in after}
    per = {name: round(1000 * seconds / requests, 3) for name, seconds in sorted(spent.items())}
    server = sum(v for name, v in spent.items() if name not in CLIENTS)
    return {
        **per,
        "total": round(1000 * sum(spent.values()) / requests, 3),
        "server": round(1000 * server / requests, 3),
    }


# -- the model's served blend ---------------------------------------------------------------------


def with_blend(model_dir: Path, out: Path, collab: bool, content: bool = False) -> Path:
    """A copy of the artifact at ``model_dir`` whose served blend has the item-item part and the
    content part each on (at the weight training chose, or the grids' 1 when it chose 0) or off:
    what each part costs a request, measured against the same model without it. The item-item part
    reads the history weighed by recency (training's decay, or 0.95 when it chose none), so its
    row holds the decayed fold's cost."""
    from raymm.models.blend_parts import COLLAB, CONTENT
    from raymm.recommend.blend import BlendSettings

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    settings = BlendSettings.from_metrics(manifest["metrics"]) or BlendSettings()
    for part, on, file in (("collab", collab, COLLAB), ("content", content, CONTENT)):
        weight = (getattr(settings, f"{part}_weight") or 1.0) if on else 0.0
        settings = BlendSettings(
            **{**settings.__dict__, f"{part}_weight": weight, f"{part}_relative": weight}
        )
        if not on:
            (out / file).unlink(missing_ok=True)
    if collab and settings.collab_decay == 1.0:
        settings = BlendSettings(**{**settings.__dict__, "collab_decay": 0.95})
    manifest["metrics"].update(settings.to_metrics())
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# -- open-loop load -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Where a measured run started: every component's CPU seconds, the machine's, the clock."""

    components: dict[str, float]
    busy: float
    wall: float

    @classmethod
    def now(cls) -> Start:
        return cls(cpu_by_component(), machine_busy_s(), time.perf_counter())


def summarize(
    raw: dict[str, Any], rate: float, start: Start, idle: dict[str, float], client: str
) -> dict[str, Any]:
    """One rate's row from :func:`_shared.load_client.schedule`'s answer ``raw``, run since
    ``start``, its client the component ``client``: latency (the counted calls), throughput, errors,
    CPU ms per request by component (less idle), and the client's CPU."""
    components, busy, wall = cpu_by_component(), machine_busy_s(), time.perf_counter() - start.wall
    n_warm = int(raw["n_warm"])
    sent_at, latency, answered_at, send_lag = (
        np.asarray(raw[key], dtype=np.float64)
        for key in ("sent_at", "latency_s", "answered_at", "send_lag_s")
    )
    n = sent_at.size
    done = sent_at - send_lag + latency  # each call's scheduled time + its latency
    ours = sum(components[k] - start.components.get(k, 0.0) for k in components)
    client_cpu = components.get(client, 0.0) - start.components.get(client, 0.0)
    # the counted requests answered without error, over the time from the first one's send to
    # the last such answer
    answered = answered_at[n_warm:][np.isfinite(answered_at[n_warm:])]
    throughput = round(answered.size / (answered.max() - sent_at[n_warm]), 2) if answered.size else 0.0
    errors: list[str] = raw["errors"]
    return {
        "rate": rate,
        "requests": n - n_warm,
        "sent_rate": round(
            (n - n_warm - 1) / max(float(np.nanmax(sent_at[n_warm:]) - sent_at[n_warm]), 1e-9), 2
        ),
        "throughput": throughput,
        "completed_within_s": round(float(np.nanmax(done) - sent_at[n_warm]), 2),
        **percentiles(latency[n_warm:] * 1000),
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:5],
        "client_send_lag_p99_ms": round(float(np.percentile(send_lag[n_warm:] * 1000, 99)), 3),
        # the client's CPU (/proc, its process tree), warm-up included: cores over the run, and
        # per request
        "client": client,
        "client_cpu_s": round(client_cpu, 2),
        "client_cpu_share": round(client_cpu / wall, 4),
        "client_cpu_ms_per_request": round(1000 * client_cpu / n, 3),
        # warm-up included: every request of the run, over the run's wall time, less idle
        "cpu_ms_per_request": cpu_ms_per_request(start.components, components, n, wall, idle),
        "cpu_ms_per_request_gross": cpu_ms_per_request(start.components, components, n, wall, {}),
        "cores_used": round(ours / wall, 2),
        # the machine's busy CPU less ours: other jobs sharing the cores (should be ~0)
        "other_work_cores": other_work_cores(start.busy, busy, ours, wall),
    }


def http_rates(
    url: str,
    users: list[str],
    rates: list[float],
    args: argparse.Namespace,
    idle: dict[str, float],
    label: str,
    server: str = "server",
) -> list[Any]:
    """Each rate in turn from the load client process at ``url``, then :meth:`LoadClient.settle`;
    a rate above the target's is skipped once a lower one saturated the server. ``server``: the
    CPU figure the progress line shows (``server``, or the anchor's ``anchor``)."""
    results: list[dict[str, Any]] = []
    with LoadClient(url, users) as client:
        for rate in rates:
            saturated = next((r["rate"] for r in results if r.get("p50_ms", 0) > SATURATED_P50_MS), None)
            if saturated is not None and rate > TARGET_RATE:
                results.append({"rate": rate, "skipped": f"{saturated:g}/s saturated the app already"})
                log(BENCH, f"[{label}] HTTP {rate:g}/s: skipped, {saturated:g}/s saturated the app already")
                continue
            before, start = loadavg(), Start.now()
            result = summarize(
                client.run(rate, args.warmup_s, args.duration_s), rate, start, idle, "load_client"
            )
            result.update(loadavg_1m_before=before, loadavg_1m_after=loadavg())
            result["settle_s"] = client.settle()
            results.append(result)
            cpu = result["cpu_ms_per_request"]
            log(
                BENCH,
                f"[{label}] HTTP {rate:g}/s: throughput {result['throughput']:g}/s, p50 {result['p50_ms']:.1f} ms, "
                f"p90 {result['p90_ms']:.1f}, p99 {result['p99_ms']:.1f}, max {result['max_ms']:.1f}, "
                f"errors {result['errors']}; {server} {cpu[server]:.1f} CPU ms per request (net of idle), "
                f"client {result['client_cpu_share']:.3f} cores; {result['cores_used']} cores; "
                f"other work {result['other_work_cores']} cores",
            )
    return results


async def handle_load(
    app_name: str, users: list[str], rate: float, args: argparse.Namespace, what: str, idle: dict[str, float]
) -> dict[str, Any]:
    """The Recommender deployment called through a DeploymentHandle at ``rate`` (no HTTP, no
    HAProxy), the client in the driver (a handle needs the Ray driver)."""

    from raymm.stream.ownership import owner_rank

    handle = recommender_handle(app_name)

    async def call(i: int) -> str | None:
        user = users[i % len(users)]
        if what == "recommend_user":
            answer = await handle.recommend_user.remote(user, K)
            if answer.get("fallback") is not None or len(answer.get("items", [])) != K:
                return f"unexpected answer: {str(answer)[:100]}"
        else:
            state = await handle.shard_call.remote(owner_rank(user, PARTITIONS, SHARDS), "get_user", user)
            if state is None:
                return "no state"
        return None

    await call(0)
    before, start = loadavg(), Start.now()
    result = summarize(
        await schedule(call, rate, args.warmup_s, args.duration_s), rate, start, idle, "driver"
    )
    result.update(loadavg_1m_before=before, loadavg_1m_after=loadavg())
    log(
        BENCH,
        f"handle {what} {rate:g}/s: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f}, "
        f"max {result['max_ms']:.1f}, errors {result['errors']}; other work {result['other_work_cores']} cores",
    )
    return result


def user_states(app_name: str, users: list[str]) -> dict[str, dict[str, Any]]:
    """Every user's live state, read from the shard that owns them."""

    from raymm.stream.ownership import owner_rank

    handle = recommender_handle(app_name)
    states: dict[str, dict[str, Any]] = {}
    for start in range(0, len(users), 16):  # a few at a time: each call waits 0.5 s at most
        chunk = users[start : start + 16]
        for attempt in range(5):
            try:
                responses = [
                    handle.shard_call.remote(owner_rank(u, PARTITIONS, SHARDS), "get_user", u) for u in chunk
                ]
                states.update(zip(chunk, (r.result(timeout_s=60) for r in responses), strict=True))
                break
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(1.0)
    return states


# -- in-process -----------------------------------------------------------------------------------


def in_process(
    model_dir: Path, states: dict[str, dict[str, Any]], users: list[str], index: IndexChoice
) -> dict[str, Any]:
    """``recommend`` one user per call and ``recommend_many`` in batches of 32, one torch thread
    and one faiss thread, with the index the app serves (``serve.index``); and, when that is
    faiss, exact search beside it: its latency, and the served index's recall@K against it."""
    import faiss

    import raymm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        model = raymm.load_model(model_dir, index=index)
        recent = [model.known(states[u]["history"]) for u in users]
        seen = [model.known(states[u]["seen"]) for u in users]
        for r, s in zip(recent[:20], seen[:20], strict=True):  # warm-up
            model.recommend_many([r], K, seen=[s])
        single, single_cpu = [], []
        for r, s in zip(recent, seen, strict=True):
            wall, cpu = time.perf_counter(), time.thread_time()
            answer = model.recommend_many([r], K, seen=[s])  # what the replica calls for a batch of one
            single.append((time.perf_counter() - wall) * 1000)
            single_cpu.append((time.thread_time() - cpu) * 1000)
            assert len(answer[0]) == K
        batched, per_user = [], []
        for start in range(0, len(users) - BATCH + 1, BATCH):
            wall = time.perf_counter()
            model.recommend_many(recent[start : start + BATCH], K, seen=seen[start : start + BATCH])
            batched.append((time.perf_counter() - wall) * 1000)
            per_user.append(batched[-1] / BATCH)
        exact_report: dict[str, Any] | None = None
        if model.retriever.index is not None:
            exact = raymm.load_model(model_dir)
            exact_ms, recall = [], []
            for r, s in zip(recent, seen, strict=True):
                wall = time.perf_counter()
                truth = exact.recommend_many([r], K, seen=[s])[0]
                exact_ms.append((time.perf_counter() - wall) * 1000)
                served = {x.item_id for x in model.recommend_many([r], K, seen=[s])[0]}
                recall.append(len(served & {x.item_id for x in truth}) / max(len(truth), 1))
            exact_report = {
                "recommend": percentiles(exact_ms),
                f"served_recall_at_{K}": round(float(np.mean(recall)), 4),
            }
        return {
            "torch_threads": 1,
            "index": {
                "kind": type(model.retriever.index).__name__ if model.retriever.index else "exact top_k",
                "nlist": getattr(model.retriever.index, "nlist", None),
                "nprobe": getattr(model.retriever.index, "nprobe", None),
            },
            "exact": exact_report,
            "recommend": {
                **percentiles(single),
                "cpu_p99_ms": round(float(np.percentile(single_cpu, 99)), 3),
            },
            f"recommend_many_batch_{BATCH}": percentiles(batched),
            f"recommend_many_batch_{BATCH}_per_user_mean_ms": round(float(np.mean(per_user)), 3),
            "history_length_mean": round(float(np.mean([len(r) for r in recent])), 2),
            "seen_mean": round(float(np.mean([len(s) for s in seen])), 2),
        }
    finally:
        torch.set_num_threads(threads)


# -- the run --------------------------------------------------------------------------------------


def measure_app(
    built: Built,
    model: Path,
    args: argparse.Namespace,
    rates: list[float],
    work: Path,
    label: str,
    broker: str = "noida",
    anchor_rates: list[float] | None = None,
) -> dict[str, Any]:
    """Deploy ``model``, give the users state, run the HTTP rates and the breakdown; with Serve
    gone, the anchor at ``anchor_rates`` (None: no anchor) and in-process."""
    config = serve_config(work / label, broker, args.set, throughput=args.proxy_modes[0] == "throughput")
    phases: dict[str, Any] = {}
    deploy_started = time.perf_counter()
    before = loadavg()
    with deployed(config, model) as app:
        phases["deploy"] = {
            "seconds": round(time.perf_counter() - deploy_started, 1),
            "loadavg_1m_before": before,
            "loadavg_1m_after": loadavg(),
        }
        log(BENCH, f"[{label}] deployed in {phases['deploy']['seconds']:.0f}s at {app.url}")
        before = loadavg()
        phases["state"] = replay_state(app, built.events, config)
        phases["state"].update(loadavg_1m_before=before, loadavg_1m_after=loadavg())
        users = sorted(set(built.events.column("user_id").to_pylist()))
        states = user_states(config.serve.app_name, users)
        with_history = [u for u in users if states[u] is not None and states[u]["history"]]
        phases["state"]["users"] = len(users)
        phases["state"]["users_with_history"] = len(with_history)
        log(
            BENCH,
            f"[{label}] {phases['state']['events']} events of {len(users)} users applied "
            f"{phases['state']['applied_after_s']:.1f}s after the replay; {len(with_history)} have a history",
        )
        order = [with_history[i] for i in np.random.default_rng(args.seed).permutation(len(with_history))]
        phases["idle_cores"], idle = measured_idle(args.idle_s, label)
        http = http_rates(app.url, order, rates, args, idle, label)
        breakdown = None
        if args.breakdown_rate:
            breakdown = {
                "rate": args.breakdown_rate,
                "handle_recommend_user": asyncio.run(
                    handle_load(
                        config.serve.app_name, order, args.breakdown_rate, args, "recommend_user", idle
                    )
                ),
                "handle_shard_get_user": asyncio.run(
                    handle_load(config.serve.app_name, order, args.breakdown_rate, args, "get_user", idle)
                ),
            }
        health = shard_totals(app.client())[2]
    served_index = IndexChoice(config.serve.index, config.serve.faiss_min_items, config.serve.nprobe)
    anchor = None
    if anchor_rates:
        anchor = measure_anchor(model, states, order, config, anchor_rates, args, label)
    before, ours, busy, started = loadavg(), cpu_by_component(), machine_busy_s(), time.perf_counter()
    local = in_process(model, states, order, served_index)
    spent = sum(cpu_by_component().values()) - sum(ours.values())
    local.update(
        loadavg_1m_before=before,
        loadavg_1m_after=loadavg(),
        other_work_cores=other_work_cores(busy, machine_busy_s(), spent, time.perf_counter() - started),
    )
    log(
        BENCH,
        f"[{label}] in-process recommend p50 {local['recommend']['p50_ms']:.2f} ms, p99 "
        f"{local['recommend']['p99_ms']:.2f}; recommend_many x{BATCH} p99 "
        f"{local[f'recommend_many_batch_{BATCH}']['p99_ms']:.2f} ms per batch",
    )
    return {
        "artifact": "ranker" if model == built.ranked else "two_tower",
        "broker": broker,
        "proxy_mode": args.proxy_modes[0],
        "serve": serve_settings(config),
        "phases": phases,
        "http": http,
        "breakdown": breakdown,
        "anchor": anchor,
        "in_process": local,
        "shards_at_end": health,
    }


def measured_idle(seconds: float, label: str) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`idle_cores`, logged: (the report, with ``total`` and ``other_work``; the cores to
    subtract, by component)."""
    idle = idle_cores(seconds)
    other = idle.pop("other_work")
    log(
        BENCH,
        f"[{label}] idle: {sum(idle.values()):.2f} cores with no request "
        f"(state shards {idle.get('state_shards', 0):.2f}, anchor {idle.get('anchor', 0):.2f}); "
        f"other work {other} cores",
    )
    return {**idle, "total": round(sum(idle.values()), 3), "other_work": other}, idle


def measure_anchor(
    model: Path,
    states: dict[str, dict[str, Any]],
    users: list[str],
    config: RaymmConfig,
    rates: list[float],
    args: argparse.Namespace,
    label: str,
) -> dict[str, Any]:
    """The no-Ray anchor (``_shared.anchor``) on ``model`` with the users' ``states`` as the shards
    held them, one uvicorn worker per Recommender replica, at ``rates`` from the same client."""
    s = config.serve
    index = {"kind": s.index, "faiss_min_items": s.faiss_min_items, "nprobe": s.nprobe}
    batch = {"max_batch_size": s.max_batch_size, "batch_wait_ms": s.batch_wait_ms}
    started = time.perf_counter()
    with running_anchor(model, states, index, batch, workers=s.recommender_replicas) as url:
        start_s = round(time.perf_counter() - started, 1)
        log(
            BENCH,
            f"[{label}] anchor: {s.recommender_replicas} uvicorn workers answer at {url} after {start_s:.0f}s",
        )
        idle_report, idle = measured_idle(args.idle_s, f"{label} anchor")
        http = http_rates(url, users, rates, args, idle, f"{label} anchor", server="anchor")
    return {
        "server": "FastAPI on uvicorn, no Ray (bench/_shared/anchor.py)",
        "workers": s.recommender_replicas,
        "index": index,
        "batch": batch,
        "start_s": start_s,
        "idle_cores": idle_report,
        "http": http,
    }


def side_by_side(runs: dict[str, Any], broker: str) -> dict[str, Any]:
    """Per artifact and rate: Serve in each proxy mode (the runs on ``broker``, first repeat) beside
    the anchor, and Serve's server CPU per request over the anchor's."""
    table: dict[str, dict[str, dict[str, Any]]] = {}

    def row(result: dict[str, Any], component: str) -> dict[str, Any]:
        if "skipped" in result:
            return {"skipped": result["skipped"]}
        return {
            **{key: result[key] for key in ("p50_ms", "p99_ms", "throughput", "errors")},
            "cpu_ms_per_request": result["cpu_ms_per_request"][component],
            "cpu_ms_per_request_by_component": result["cpu_ms_per_request"],
            **{key: result[key] for key in ("client_cpu_share", "client_cpu_ms_per_request")},
        }

    for name, run in runs.items():
        if run["broker"] != broker or "_repeat" in name:
            continue
        rows = table.setdefault(run["artifact"], {})
        for result in run["http"]:
            rows.setdefault(f"{result['rate']:g}", {})[f"serve_{run['proxy_mode']}_proxy"] = row(
                result, "server"
            )
        for result in (run["anchor"] or {}).get("http", []):
            rows.setdefault(f"{result['rate']:g}", {})["anchor"] = row(result, "anchor")
    for rows in table.values():
        for at_rate in rows.values():
            anchor_cpu = at_rate.get("anchor", {}).get("cpu_ms_per_request")
            ratios = {
                key.removeprefix("serve_"): round(value["cpu_ms_per_request"] / anchor_cpu, 2)
                for key, value in at_rate.items()
                if key.startswith("serve_") and anchor_cpu and "cpu_ms_per_request" in value
            }
            if ratios:
                at_rate["serve_vs_anchor_cpu_per_request"] = ratios
                at_rate["meets_cpu_target"] = {k: bool(v <= TARGET_CPU_VS_ANCHOR) for k, v in ratios.items()}
    return {
        "target_serve_vs_anchor_cpu_per_request": TARGET_CPU_VS_ANCHOR,
        "cpu_ms_per_request": "the server's CPU per request, /proc, every request of the run (warm-up "
        "included), less each component's idle use: Serve's every process but the client's "
        "(proxy, replicas, state shards, broker, Ray's); the anchor's process tree",
        "client": "its own process (bench/_shared/load_client.py); client_cpu_share: its cores over the run",
        "by_artifact": {
            artifact: dict(sorted(rows.items(), key=lambda kv: float(kv[0])))
            for artifact, rows in table.items()
        },
    }


def summarize_runs(runs: dict[str, Any], broker: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each run's figures at the target's rate, and :func:`side_by_side`."""
    table = side_by_side(runs, broker)
    summary = {}
    for name, run in runs.items():
        at_rate = next(r for r in run["http"] if r["rate"] == TARGET_RATE)
        local_p99 = run["in_process"]["recommend"]["p99_ms"]
        paired = table["by_artifact"][run["artifact"]][f"{TARGET_RATE:g}"]
        summary[name] = {
            "p99_ms_at_100_rps": at_rate["p99_ms"],
            "p50_ms_at_100_rps": at_rate["p50_ms"],
            "errors_at_100_rps": at_rate["errors"],
            "cpu_ms_per_request_at_100_rps": at_rate["cpu_ms_per_request"]["server"],
            "client_cpu_share_at_100_rps": at_rate["client_cpu_share"],
            "serve_vs_anchor_cpu_at_100_rps": paired.get("serve_vs_anchor_cpu_per_request", {}).get(
                f"{run['proxy_mode']}_proxy"
            ),
            "in_process_p99_ms": local_p99,
            "serve_vs_in_process_p99": round(at_rate["p99_ms"] / local_p99, 2),
            "idle_cores": run["phases"]["idle_cores"]["total"],
            "meets_target": bool(at_rate["p99_ms"] < TARGET_P99_MS and at_rate["errors"] == 0),
        }
    return summary, table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=None, help="catalog size (default 100_000)")
    parser.add_argument("--users", type=int, default=2000, help="users given live state")
    parser.add_argument("--rates", default="10,25,50,100,200", help="requests/s, comma separated")
    parser.add_argument(
        "--ranker-rates", default=None, help="the ranker artifact's rates (default: --rates; --ranker)"
    )
    parser.add_argument(
        "--proxy-modes",
        default=None,
        help="Serve's proxy modes, each deployed in a process of its own, the first the headline: "
        "throughput (HAProxy, direct ingress) and/or default (Serve's Python proxy, as `raymm serve` "
        "runs by default); default throughput,default (--quick: throughput)",
    )
    parser.add_argument(
        "--no-anchor", action="store_true", help="skip the no-Ray anchor (FastAPI on uvicorn)"
    )
    parser.add_argument("--duration-s", type=float, default=25.0)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--idle-s", type=float, default=10.0, help="CPU baseline with no request")
    parser.add_argument(
        "--breakdown-rate", type=float, default=25.0, help="rate of the handle runs (0: skip them)"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--brokers",
        default=BROKERS,
        help="embedded brokers; the first is the headline (--quick, and proxy modes after the first: it alone)",
    )
    parser.add_argument("--ranker", action="store_true", help="also the two-tower + ranker artifact")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10k items, 300 users, short rates, the first broker, the throughput mode, "
        "the anchor at the lowest rate, no handle breakdown",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--repeats", type=int, default=1, help="deploy and measure each broker this many times (the spread)"
    )
    parser.add_argument(
        "--in-process-only",
        action="store_true",
        help="only the in-process rows, with and without the item-item part (writes serve_latency.collab.json)",
    )
    parser.add_argument(
        "--set", action="append", default=[], help="a config override for the app, e.g. serve.nprobe=64"
    )
    args = parser.parse_args(argv)
    args.proxy_modes = [
        m.strip() for m in (args.proxy_modes or ("throughput" if args.quick else PROXY_MODES)).split(",")
    ]
    unknown = set(args.proxy_modes) - set(PROXY_MODES.split(","))
    if unknown or not args.proxy_modes:
        parser.error(f"--proxy-modes takes {PROXY_MODES}, got {','.join(args.proxy_modes)}")
    if args.quick:
        args.users, args.duration_s, args.warmup_s, args.epochs = min(args.users, 300), 4.0, 1.0, 1
        args.rates, args.idle_s, args.breakdown_rate = "25,100", 3.0, 0.0
    if TARGET_RATE not in [float(r) for r in args.rates.split(",")]:
        parser.error(f"--rates must include {TARGET_RATE:g} (the target's rate)")
    if args.ranker_rates and TARGET_RATE not in [float(r) for r in args.ranker_rates.split(",")]:
        parser.error(f"--ranker-rates must include {TARGET_RATE:g} (the target's rate)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    n_items = args.items or (10_000 if args.quick else 100_000)
    if args.in_process_only:
        return in_process_only(args, n_items)
    if len(args.proxy_modes) > 1:
        return each_proxy_mode(args, sys.argv[1:] if argv is None else argv)
    rates = [float(r) for r in args.rates.split(",")]
    ranker_rates = [float(r) for r in (args.ranker_rates or args.rates).split(",")]
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if args.quick and args.brokers == BROKERS:
        brokers = brokers[:1]  # the headline's
    started = time.perf_counter()
    throughput = args.proxy_modes[0] == "throughput"
    with serving_work(args.work, args.keep, "raymm-servebench-", throughput) as work:
        loads: dict[str, Any] = {"start": loadavg()}
        built = build_artifact(work, n_items, args.users, args.epochs, args.seed, ranker=args.ranker)
        loads["after_build"] = loadavg()
        runs = {}
        for broker in brokers:
            for repeat in range(args.repeats):
                name = f"two_tower_{broker}" + (f"_repeat{repeat}" if repeat else "")
                anchor = None if args.no_anchor or repeat or broker != brokers[0] else rates
                if anchor and args.quick:
                    anchor = anchor[:1]  # the lowest
                runs[name] = measure_app(built, built.model, args, rates, work, name, broker, anchor)
        if built.ranked is not None:
            name = f"ranker_{brokers[0]}"
            anchor = None if args.no_anchor else ranker_rates
            runs[name] = measure_app(built, built.ranked, args, ranker_rates, work, name, brokers[0], anchor)

    summary, table = summarize_runs(runs, brokers[0])
    headline_name = f"two_tower_{brokers[0]}"
    headline = runs[headline_name]
    report = {
        "question": "p99 of GET /v1/recommendations at 100 requests/s with 100k items, 2 CPUs, no GPU; "
        "Serve's CPU per request against the same scoring behind FastAPI without Ray",
        "quick": args.quick,
        "n_items": n_items,
        "embed_dim": built.info["embed_dim"],
        "k": K,
        "users_with_state": headline["phases"]["state"]["users_with_history"],
        "shards": SHARDS,
        "partitions": PARTITIONS,
        "replicas": {"recommender": headline["serve"]["recommender_replicas"]},
        "model": built.info,
        "proxy_modes": args.proxy_modes,
        "load": "open loop: request i sent at t0 + i/rate (fixed spacing), latency from the scheduled "
        "time; the client in a process of its own (asyncio + aiohttp)",
        "warmup_s": args.warmup_s,
        "duration_s": args.duration_s,
        "target_p99_ms": TARGET_P99_MS,
        "headline": headline_name,
        "p99_ms_at_100_rps": summary[headline_name]["p99_ms_at_100_rps"],
        "in_process_p99_ms": summary[headline_name]["in_process_p99_ms"],
        "serve_vs_in_process_p99": summary[headline_name]["serve_vs_in_process_p99"],
        "meets_target": summary[headline_name]["meets_target"],
        "summary": summary,
        "side_by_side": table,
        "p99_ms_at_100_rps_by_broker": {
            broker: [
                v["p99_ms_at_100_rps"] for k, v in summary.items() if k.startswith(f"two_tower_{broker}")
            ]
            for broker in brokers
        },
        "runs": runs,
        "loadavg_1m": {**loads, "end": loadavg()},
        "seconds": round(time.perf_counter() - started, 1),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return finish(BENCH, report, args.out or result_path(BENCH, args.quick))


def each_proxy_mode(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run this script once per proxy mode, each in a process of its own (Ray's processes and Serve's
    constants read the mode from the environment when they start), on one work directory (the
    first builds the artifact, the others reuse it), and merge their reports: the first mode's
    runs keep their names, the others' get ``_<mode>_proxy``; the anchor is measured in the first
    only, and the modes after it deploy on the first broker alone."""
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="raymm-servebench-"))
    first_broker = args.brokers.split(",")[0].strip()
    try:
        parts = []
        for i, mode in enumerate(args.proxy_modes):
            part = work / f"serve_latency.{mode}.json"
            extra = ["--proxy-modes", mode, "--work", str(work), "--keep", "--out", str(part)]
            if i:
                extra += ["--no-anchor", "--brokers", first_broker]
            log(BENCH, f"proxy mode {mode}: {Path(__file__).name} {' '.join(extra)}")
            subprocess.run([sys.executable, __file__, *argv, *extra], check=True, stdout=subprocess.DEVNULL)
            parts.append(json.loads(part.read_text()))
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = parts[0]
    runs = dict(report["runs"])
    for mode, part in zip(args.proxy_modes[1:], parts[1:], strict=True):
        runs.update({f"{name}_{mode}_proxy": run for name, run in part["runs"].items()})
    summary, table = summarize_runs(runs, first_broker)
    report.update(
        proxy_modes=args.proxy_modes,
        runs=runs,
        summary=summary,
        side_by_side=table,
        loadavg_1m={mode: part["loadavg_1m"] for mode, part in zip(args.proxy_modes, parts, strict=True)},
        seconds=round(time.perf_counter() - started, 1),
        finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    return finish(BENCH, report, args.out or result_path(BENCH, args.quick))


def in_process_only(args: argparse.Namespace, n_items: int) -> dict[str, Any]:
    """What the item-item and content parts cost a request in process: the served index over the
    same 100k items with both off (the baseline), the item-item part on, and both on (the served
    blend's parts), one user per call, one thread. The three rows run in turn, ``ROUNDS`` times
    (ABC ABC ABC): a p99 of 2,000 calls on 2 shared cores moves by ~0.3 ms between runs (the
    two-tower row gave 0.83 and 1.14 ms in two runs on 2026-12-07), so each row's p99 is the
    median of its rounds, and a drift of the machine falls on every row alike."""

    started = time.perf_counter()
    with serving_work(args.work, args.keep, "raymm-servebench-") as work:
        built = build_artifact(work, n_items, args.users, args.epochs, args.seed)
        config = load_config(None, args.set)
        index = IndexChoice(config.serve.index, config.serve.faiss_min_items, config.serve.nprobe)
        states = folded_states(built.events, list(config.model.user_state.events))
        order = [u for u in sorted(states) if states[u]["history"]][: args.users]
        variants = {
            name: with_blend(built.model, work / f"model-{name}", collab, content)
            for name, collab, content in (
                ("two_tower", False, False),
                ("two_tower_item_item", True, False),
                ("two_tower_item_item_content", True, True),
            )
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for _ in range(ROUNDS):
            for name, model_dir in variants.items():
                runs[name].append(in_process(model_dir, states, order, index))
    rows = {}
    for name, reports in runs.items():
        by_round = [report["recommend"]["p99_ms"] for report in reports]
        median = sorted(reports, key=lambda report: report["recommend"]["p99_ms"])[len(reports) // 2]
        rows[name] = {**median, "p99_ms_by_round": by_round}
    p99 = {name: row["recommend"]["p99_ms"] for name, row in rows.items()}
    base, every_part = p99["two_tower"], p99["two_tower_item_item_content"]
    report = {
        "question": "in-process p99 of recommend() with the item-item and content parts, against the "
        "same model without them",
        "rounds": ROUNDS,
        "p99": "each row's median round (rows' p99_ms_by_round), the rows run in turn each round",
        "n_items": n_items,
        "model": built.info,
        "content_width": built.info.get("content_width"),
        "in_process_p99_ms": p99,
        "item_item_vs_two_tower_p99": round(p99["two_tower_item_item"] / base, 2),
        "every_part_vs_two_tower_p99": round(every_part / base, 2),
        "target": "at most 2x the two-tower's in-process p99, measured in the same run (issue 24: "
        "2x the 2.0 ms served then)",
        "meets_target": bool(every_part <= 2 * base),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return finish(BENCH, report, args.out or result_path(BENCH, variant="collab"))


if __name__ == "__main__":
    main()
