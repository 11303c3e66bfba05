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
2. **deploy**: ``raymm.serve.runner.running_app`` (Ray started with 2 CPUs, Serve on a free port,
   ``kafka.partitions`` 4, ``serve.state_shards`` 2, two Recommender replicas (one per core; the
   Recommender is the ingress too); the defaults otherwise, so Serve's throughput-optimized mode
   with HAProxy (``raymm.runtime.serve_env``) and the faiss index (``serve.index`` auto, nprobe
   128); ``--set`` overrides any of it), once per embedded broker in ``--brokers``: noida (the default broker; the
   headline), then Tansu. noida answers an empty fetch at once instead of holding it, so before
   the consumer slept between idle polls (``EventConsumer._run``) every idle state shard spun at
   ~0.7 of a core; ``idle_cores`` in the JSON shows what each component costs now.
3. **live state**: a seeded log of ``--users`` (2,000) users, 10-30 events each (view/click/like/
   purchase/play/skip at 50/20/10/5/10/5%; items Zipf 0.8 over the 100k), is replayed onto
   ``raymm.events`` (``raymm.stream.producer.replay``); the run waits until the shards have
   applied every event (``/healthz``: applied counts, lag 0). The users whose state holds a
   history (all of them, in practice) are the ones requested.
4. **idle**: ``--idle-s`` (10 s) with no request: the CPU each component uses anyway.
5. **open-loop load**: for each rate in ``--rates`` (10, 25, 50, 100, 200 /s), requests are
   scheduled on a clock (request i at t0 + i / rate, fixed spacing, whether or not earlier ones
   returned) by one asyncio client (aiohttp, keep-alive connections, no connection limit) in the
   driver, ``--warmup-s`` (5 s) not counted, then ``--duration-s`` (25 s) counted; users in a
   seeded random order, ``k=10``. Latency runs from the *scheduled* send time to the body read,
   so a client or server that falls behind is counted (no coordinated omission); a request not
   answered in 20 s is an error. Per rate: the send rate, throughput (answers / time from the
   first counted send to the last answer), p50/p90/p99/max, errors (non-200, another user,
   ``fallback`` not null, fewer than k items: must be 0), how late the client sent, and **CPU ms
   per request by component** (``/proc`` CPU time of this process and every process it started:
   HAProxy, the Recommender replicas, the state shards, the broker, Ray's own
   processes, the driver with the client; less each one's idle use, over every request of the
   run). After each rate the run waits until single requests answer in under 200 ms again
   (``settle_s``). Once a rate saturates the app (p50 > 1 s), higher rates than 100 /s are
   skipped (reported as such).
6. **where the time goes**, at ``--breakdown-rate`` (25 /s, below saturation) the same way: (a)
   the Recommender deployment's ``recommend_user`` called through a ``DeploymentHandle`` from the
   driver (no HTTP, no HAProxy: the shard call, batching and scoring), (b) its
   ``shard_call(rank, "get_user")`` (the recommender hop plus the shard hop, no scoring).
7. **in-process**: the same artifact through ``raymm.load_model`` with the served index, in the
   driver on one torch and one faiss thread (the recommender replica gets one: 0.5 CPU), for the same users' live histories and
   seen items (read from the shards): ``recommend_many`` of one user per call (what the replica
   runs for a batch of one: ``recommend`` is that call) and in batches of 32 (Serve's
   ``max_batch_size``), p50/p99 per call; with faiss, exact search beside it (its latency, and
   the served index's recall@10 against it for every user).

With ``--ranker`` the ranker artifact is deployed on the first broker too, at 100 /s only.

Ratio: ``serve_vs_in_process_p99`` = Serve's p99 at 100 /s / in-process p99 per call. The
machine's 1-minute load average is recorded before and after each phase: about 2-4 is this
benchmark alone (Ray, the broker, the client and Serve share the 2 cores, and a saturated app
keeps many threads runnable), much more means other work shared them and the run should be
repeated.

    .venv/bin/python bench/serve_latency.py --ranker        # ~15 min on 2 cores (the committed run)
    .venv/bin/python bench/serve_latency.py --brokers tansu --rates 10,25,100 --work /tmp/sb --keep
    .venv/bin/python bench/serve_latency.py --quick         # smoke run, 10k items, noida alone: serve_latency.quick.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _shared import finish, log, result_path
from _shared.measure import loadavg, machine_busy_s, other_work_cores, percentiles
from _shared.serving import (
    BROKERS,
    PARTITIONS,
    REQUEST_TIMEOUT_S,
    SHARDS,
    Built,
    HttpLoad,
    K,
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

from raymm.config import load_config
from raymm.recommend.index import IndexChoice
from raymm.serve.runner import recommender_handle

BENCH = "serve_latency"
#: The target of design.md section 4 this benchmark measures: `make bench` runs it.
DESIGN_TARGET = "Serving"
TARGET_P99_MS = 50.0
TARGET_RATE = 100.0
BATCH = 32  # the recommender's @serve.batch max_batch_size
#: A rate whose p50 is above this saturated the app: the rates above it (but the target's) are skipped.
SATURATED_P50_MS = 1000.0


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
    spends idle in that time (``idle`` cores)."""
    spent = {name: after[name] - before.get(name, 0.0) - idle.get(name, 0.0) * wall for name in after}
    per = {name: round(1000 * seconds / requests, 3) for name, seconds in sorted(spent.items())}
    return {**per, "total": round(1000 * sum(spent.values()) / requests, 3)}


# -- the model's served blend ---------------------------------------------------------------------


def with_blend(model_dir: Path, out: Path, collab: bool) -> Path:
    """A copy of the artifact at ``model_dir`` whose served blend has the item-item part on (at the
    weight training chose, or the grid's 1 when it chose 0) or off: what the item-item part costs
    a request, measured against the same model without it."""
    from raymm.models.artifact import COLLAB
    from raymm.recommend.blend import BlendSettings

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    settings = BlendSettings.from_metrics(manifest["metrics"]) or BlendSettings()
    if collab:
        weight = settings.collab_weight or 1.0
        settings = BlendSettings(**{**settings.__dict__, "collab_weight": weight, "collab_relative": weight})
    else:
        settings = BlendSettings(**{**settings.__dict__, "collab_weight": 0.0, "collab_relative": 0.0})
        (out / COLLAB).unlink(missing_ok=True)
    manifest["metrics"].update(settings.to_metrics())
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# -- open-loop load -------------------------------------------------------------------------------


async def open_loop(
    call: Callable[[int], Awaitable[str | None]],
    rate: float,
    warmup_s: float,
    duration_s: float,
    idle: dict[str, float],
) -> dict[str, Any]:
    """Call ``call(i)`` at t0 + i / rate for warmup + duration seconds; ``call`` returns an error
    string or None. Latency from the scheduled time; the warm-up's calls are not counted."""
    n_warm = round(warmup_s * rate)
    n = n_warm + round(duration_s * rate)
    latencies = np.full(n, np.nan)
    send_lag = np.full(n, np.nan)
    errors: list[str] = []
    loop = asyncio.get_running_loop()

    sent_at, answered_at = np.full(n, np.nan), np.full(n, np.nan)

    async def one(i: int, scheduled: float) -> None:
        sent_at[i] = loop.time()
        send_lag[i] = sent_at[i] - scheduled
        try:
            error = await asyncio.wait_for(call(i), timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # counted, never raised: one failure must not stop the clock
            error = f"{type(exc).__name__}: {exc}"[:200]
        latencies[i] = loop.time() - scheduled
        if error is None:
            answered_at[i] = loop.time()
        elif i >= n_warm:
            errors.append(error)

    tasks = []
    cpu0, components0, busy0, wall0 = (
        time.process_time(),
        cpu_by_component(),
        machine_busy_s(),
        time.perf_counter(),
    )
    t0 = loop.time() + 0.05
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - sent_at[n_warm]
    cpu = time.process_time() - cpu0
    components, busy1, wall = cpu_by_component(), machine_busy_s(), time.perf_counter() - wall0
    ours = sum(components[k] - components0.get(k, 0.0) for k in components)
    counted = latencies[n_warm:] * 1000
    # the counted requests answered without error, over the time from the first one's send to
    # the last such answer
    answered = answered_at[n_warm:][np.isfinite(answered_at[n_warm:])]
    throughput = round(answered.size / (answered.max() - sent_at[n_warm]), 2) if answered.size else 0.0
    return {
        "rate": rate,
        "requests": n - n_warm,
        "sent_rate": round(
            (n - n_warm - 1) / max(float(np.nanmax(sent_at[n_warm:]) - sent_at[n_warm]), 1e-9), 2
        ),
        "throughput": throughput,
        "completed_within_s": round(elapsed, 2),
        **percentiles(counted),
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:5],
        "client_send_lag_p99_ms": round(float(np.percentile(send_lag[n_warm:] * 1000, 99)), 3),
        "client_cpu_s": round(cpu, 2),
        # warm-up included: every request of the run, over the run's wall time, less idle
        "cpu_ms_per_request": cpu_ms_per_request(components0, components, n, wall, idle),
        "cpu_ms_per_request_gross": cpu_ms_per_request(components0, components, n, wall, {}),
        "cores_used": round(ours / wall, 2),
        # the machine's busy CPU less ours: other jobs sharing the cores (should be ~0)
        "other_work_cores": other_work_cores(busy0, busy1, ours, wall),
    }


async def http_rates(
    url: str, users: list[str], rates: list[float], args: argparse.Namespace, idle: dict[str, float]
) -> list[Any]:
    results: list[dict[str, Any]] = []
    async with HttpLoad(url, users) as load:
        for rate in rates:
            saturated = next((r["rate"] for r in results if r.get("p50_ms", 0) > SATURATED_P50_MS), None)
            if saturated is not None and rate > TARGET_RATE:
                results.append({"rate": rate, "skipped": f"{saturated:g}/s saturated the app already"})
                log(BENCH, f"HTTP {rate:g}/s: skipped, {saturated:g}/s saturated the app already")
                continue
            before = loadavg()
            result = await open_loop(load.call, rate, args.warmup_s, args.duration_s, idle)
            result.update(loadavg_1m_before=before, loadavg_1m_after=loadavg())
            result["settle_s"] = await settle(load)
            results.append(result)
            log(
                BENCH,
                f"HTTP {rate:g}/s: throughput {result['throughput']:g}/s, p50 {result['p50_ms']:.1f} ms, "
                f"p90 {result['p90_ms']:.1f}, p99 {result['p99_ms']:.1f}, max {result['max_ms']:.1f}, "
                f"errors {result['errors']}; {result['cpu_ms_per_request_gross']['total']:.1f} CPU ms per "
                f"request, {result['cores_used']} cores; other work {result['other_work_cores']} cores",
            )
    return results


async def settle(load: HttpLoad, fast_ms: float = 200.0, timeout_s: float = 120.0) -> float:
    """Seconds until the app answers one request at a time in under ``fast_ms`` three times in a
    row: a saturating rate leaves requests queued in Serve after the client gave up on them."""
    started = time.perf_counter()
    fast = 0
    while fast < 3 and time.perf_counter() - started < timeout_s:
        sent = time.perf_counter()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(load.call(0), timeout=REQUEST_TIMEOUT_S)
        fast = fast + 1 if (time.perf_counter() - sent) * 1000 < fast_ms else 0
        await asyncio.sleep(0.2)
    return round(time.perf_counter() - started, 1)


async def handle_load(
    app_name: str, users: list[str], rate: float, args: argparse.Namespace, what: str, idle: dict[str, float]
) -> dict[str, Any]:
    """The Recommender deployment called through a DeploymentHandle at ``rate`` (no HTTP, no HAProxy)."""

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
    before = loadavg()
    result = await open_loop(call, rate, args.warmup_s, args.duration_s, idle)
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
) -> dict[str, Any]:
    """Deploy ``model``, give the users state, run the HTTP rates, the breakdown and in-process."""
    config = serve_config(work / label, broker, args.set)
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
        idle = idle_cores(args.idle_s)
        other = idle.pop("other_work")
        phases["idle_cores"] = {**idle, "total": round(sum(idle.values()), 3), "other_work": other}
        log(
            BENCH,
            f"[{label}] idle: {phases['idle_cores']['total']:.2f} cores with no request "
            f"(state shards {idle.get('state_shards', 0):.2f}); other work {other} cores",
        )
        http = asyncio.run(http_rates(app.url, order, rates, args, idle))
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
    before, ours, busy, started = loadavg(), cpu_by_component(), machine_busy_s(), time.perf_counter()
    served_index = IndexChoice(config.serve.index, config.serve.faiss_min_items, config.serve.nprobe)
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
        "serve": serve_settings(config),
        "phases": phases,
        "http": http,
        "breakdown": breakdown,
        "in_process": local,
        "shards_at_end": health,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=None, help="catalog size (default 100_000)")
    parser.add_argument("--users", type=int, default=2000, help="users given live state")
    parser.add_argument("--rates", default="10,25,50,100,200", help="requests/s, comma separated")
    parser.add_argument("--duration-s", type=float, default=25.0)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--idle-s", type=float, default=10.0, help="CPU baseline with no request")
    parser.add_argument(
        "--breakdown-rate", type=float, default=25.0, help="rate of the handle runs (0: skip them)"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--brokers", default=BROKERS, help="embedded brokers; the first is the headline (--quick: it alone)"
    )
    parser.add_argument("--ranker", action="store_true", help="also the two-tower + ranker artifact at 100/s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10k items, 300 users, short rates, the first broker, no handle breakdown",
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
    n_items = args.items or (10_000 if args.quick else 100_000)
    if args.in_process_only:
        return in_process_only(args, n_items)
    if args.quick:
        args.users, args.duration_s, args.warmup_s, args.epochs = min(args.users, 300), 4.0, 1.0, 1
        args.rates, args.idle_s, args.breakdown_rate = "25,100", 3.0, 0.0
    rates = [float(r) for r in args.rates.split(",")]
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if args.quick and args.brokers == BROKERS:
        brokers = brokers[:1]  # the headline's
    if TARGET_RATE not in rates:
        parser.error(f"--rates must include {TARGET_RATE:g} (the target's rate)")
    started = time.perf_counter()
    with serving_work(args.work, args.keep, "raymm-servebench-") as work:
        loads: dict[str, Any] = {"start": loadavg()}
        built = build_artifact(work, n_items, args.users, args.epochs, args.seed, ranker=args.ranker)
        loads["after_build"] = loadavg()
        runs = {}
        for broker in brokers:
            for repeat in range(args.repeats):
                name = f"two_tower_{broker}" + (f"_repeat{repeat}" if repeat else "")
                runs[name] = measure_app(built, built.model, args, rates, work, name, broker)
        if built.ranked is not None:
            runs[f"ranker_{brokers[0]}"] = measure_app(
                built, built.ranked, args, [TARGET_RATE], work, f"ranker_{brokers[0]}", brokers[0]
            )

    summary = {}
    for name, run in runs.items():
        at_rate = next(r for r in run["http"] if r["rate"] == TARGET_RATE)
        local_p99 = run["in_process"]["recommend"]["p99_ms"]
        summary[name] = {
            "p99_ms_at_100_rps": at_rate["p99_ms"],
            "p50_ms_at_100_rps": at_rate["p50_ms"],
            "errors_at_100_rps": at_rate["errors"],
            "in_process_p99_ms": local_p99,
            "serve_vs_in_process_p99": round(at_rate["p99_ms"] / local_p99, 2),
            "idle_cores": run["phases"]["idle_cores"]["total"],
            "meets_target": bool(at_rate["p99_ms"] < TARGET_P99_MS and at_rate["errors"] == 0),
        }
    headline_name = f"two_tower_{brokers[0]}"
    headline = runs[headline_name]
    report = {
        "question": "p99 of GET /v1/recommendations at 100 requests/s with 100k items, 2 CPUs, no GPU",
        "quick": args.quick,
        "n_items": n_items,
        "embed_dim": built.info["embed_dim"],
        "k": K,
        "users_with_state": headline["phases"]["state"]["users_with_history"],
        "shards": SHARDS,
        "partitions": PARTITIONS,
        "replicas": {"recommender": headline["serve"]["recommender_replicas"]},
        "model": built.info,
        "load": "open loop: request i sent at t0 + i/rate (fixed spacing), latency from the scheduled time",
        "warmup_s": args.warmup_s,
        "duration_s": args.duration_s,
        "target_p99_ms": TARGET_P99_MS,
        "headline": headline_name,
        "p99_ms_at_100_rps": summary[headline_name]["p99_ms_at_100_rps"],
        "in_process_p99_ms": summary[headline_name]["in_process_p99_ms"],
        "serve_vs_in_process_p99": summary[headline_name]["serve_vs_in_process_p99"],
        "meets_target": summary[headline_name]["meets_target"],
        "summary": summary,
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


def in_process_only(args: argparse.Namespace, n_items: int) -> dict[str, Any]:
    """What the item-item part costs a request in process: the served index over the same 100k
    items with the item-item part off (the baseline) and on, one user per call, one thread."""

    started = time.perf_counter()
    with serving_work(args.work, args.keep, "raymm-servebench-") as work:
        built = build_artifact(work, n_items, args.users, args.epochs, args.seed)
        config = load_config(None, args.set)
        index = IndexChoice(config.serve.index, config.serve.faiss_min_items, config.serve.nprobe)
        states = folded_states(built.events, list(config.model.user_state.events))
        order = [u for u in sorted(states) if states[u]["history"]][: args.users]
        rows = {}
        for name, collab in (("two_tower", False), ("two_tower_item_item", True)):
            model_dir = with_blend(built.model, work / f"model-{name}", collab)
            rows[name] = in_process(model_dir, states, order, index)
    base, with_collab = (rows[n]["recommend"]["p99_ms"] for n in ("two_tower", "two_tower_item_item"))
    report = {
        "question": "in-process p99 of recommend() with the item-item part, against the same model without it",
        "n_items": n_items,
        "model": built.info,
        "in_process_p99_ms": {"two_tower": base, "two_tower_item_item": with_collab},
        "item_item_vs_two_tower_p99": round(with_collab / base, 2),
        "target": "at most 2x the two-tower's in-process p99 (issue 24)",
        "meets_target": bool(with_collab <= 2 * base),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return finish(BENCH, report, args.out or result_path(BENCH, variant="collab"))


if __name__ == "__main__":
    main()
