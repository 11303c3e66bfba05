"""Retrieval: top-100 over 1M (or 10M) x 64-d items, faiss IVF against exact search, on one core.

design.md's target: top-100 over 1M x 64-d items in under 10 ms p99 per query on one core, with
recall@100 >= 0.95 against exact search. Both indexes are ``raymm.recommend.index`` objects
(``exact``: ``ExactIndex``, the seen-masked chunked ``top_k``; ``faiss``: ``FaissIndex``,
IVF-Flat on inner product), one torch thread and one faiss thread.

Data (seeded, generated in memory):

* **items**: ``--items`` unit vectors with the structure of learned item embeddings: ``--clusters``
  centres on the sphere drawn with a decaying spectrum (variance of dimension j ~ 1/j, so a few
  directions dominate, as in trained embeddings), cluster sizes skewed by popularity (Zipf, the
  i-th largest holding ~ 1/i^0.9 of the items), each item its centre plus Gaussian noise,
  normalised.
* **queries**: user-like vectors: a user takes 1-3 clusters (popularity-weighted), a history of 8
  items from them, and their query is the normalised mean of the history plus noise. The history
  is the user's exclude set in every search (serving never returns seen items), built before the
  clock starts.
* **random** (worst case, reported, not judged): iid Gaussian unit items and queries, no structure
  for the IVF's k-means to find; recall over ``--random-nprobes`` with the chosen nlist.

Measured, for exact and for each faiss ``nlist`` (``--nlists``) x ``nprobe`` (``--nprobes``):

* ``build_s``: constructing the index from the vectors (faiss: k-means training on ``train_size``
  of them, ``--train-per-list`` per list, plus adding all but the ``--added`` last ones);
  ``index_bytes``: the index's own estimate of its vectors, codes and ids, and ``bytes_per_item``
  that over the items; ``rss_growth_bytes``: resident memory after the build minus before (the
  allocator may keep or return some); ``peak_rss_bytes``: the process's peak resident memory
  while this index was built and measured (the peak is reset before each index, so it holds the
  item vectors, the index and the build's temporaries, not the indexes before it).
* ``live_adds`` (faiss): the last ``--added`` items are left out of the build and added one at a
  time afterwards, as serving adds cold items (no rebuild, the lists stay as trained):
  ``add_ms_per_item`` (wall and thread CPU), then for ``--aimed-queries`` queries aimed at
  added items (an added item plus noise, nothing excluded) at the chosen nprobe:
  ``recall_at_100`` against exact top-100 over the whole catalog and ``aimed_item_found``, the
  share of queries whose added item is in the top 100. Every other measurement runs after the
  adds, on the whole catalog.
* ``single``: p50/p99/mean latency of ``search(1 query, k=100, exclude)`` over ``--latency-queries``
  queries after a few untimed ones (exact: ``--exact-latency-queries``, default 30 above 1M items,
  where one exact query takes a few hundred ms), in wall-clock time and in the thread's CPU time (``cpu_*``;
  both libraries run their one thread in the caller's). On a shared machine, wall time includes
  waiting for the core; CPU time is what the search costs a core of its own.
* ``batched_qps`` / ``batched_cpu_qps``: queries per wall / CPU second of ``search`` on batches of
  ``--batch`` queries (the ``--queries`` recall queries; exact: the ground-truth pass itself).
* ``recall_at_100``: mean over ``--queries`` queries of |ANN top-100 & exact top-100| / 100.

Chosen configuration: for each nlist the smallest nprobe with recall >= 0.95; of those, the one
with the lowest mean single-query CPU time. Ratios against exact measured in the same run:
``p99_speedup`` (``cpu_p99_speedup``) = exact p99 / faiss p99 in wall (CPU) time,
``batched_qps_ratio`` (``batched_cpu_qps_ratio``) = faiss / exact batched queries/s. ``met.p99``
judges the wall-clock p99, ``met.cpu_p99`` the CPU-time p99; ``loadavg_1m_after`` in each latency
run says how shared the machine was (2 cores: above 2, other work was waiting for them).

Items at another size than 1M write ``retrieval.<size>.json`` (``retrieval.10m.json``,
``retrieval.50k.json``); ``rows_by_items`` in each file gathers the chosen rows of every committed
retrieval result, one per catalog size. The command line is recorded in ``command``.

    .venv/bin/python bench/retrieval.py               # 1M items, ~2 min on 2 quiet cores, ~5 min shared
    .venv/bin/python bench/retrieval.py --quick       # smoke run, 50k items, retrieval.quick.json
    .venv/bin/python bench/retrieval.py --items 10000000 --nlists 4096,8192 --nprobes 8,16,32,64 \
        --encodings flat,sq8 --no-random                # 10M: ~5.3 GB peak, see bench/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from _shared import RESULTS, finish, log, result_path

from raymm.recommend.index import ExactIndex, FaissIndex, ItemIndex
from raymm.recommend.itemsets import ItemSets

BENCH = "retrieval"
#: The target of design.md section 4 this benchmark measures: `make bench` runs it.
DESIGN_TARGET = "Retrieval"
K = 100
TARGET_P99_MS = 10.0
TARGET_RECALL = 0.95
HISTORY = 8
WARMUP = 10
#: Rows generated at a time: the catalog's temporaries stay ~4 x 256 MB at any size.
GENERATE_CHUNK = 1_000_000
#: Above this many items exact search takes a few hundred ms per query: fewer latency queries.
EXACT_FULL_LATENCY_ITEMS = 1_000_000
EXACT_CAPPED_LATENCY_QUERIES = 30


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def clustered_catalog(
    rng: np.random.Generator, n_items: int, dim: int, n_clusters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items (N, dim) unit float32, cluster of each item (N,), cluster popularity (C,) summing to 1)."""
    spectrum = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    centres = _unit(rng.standard_normal((n_clusters, dim), dtype=np.float32) * spectrum)
    popularity = 1.0 / np.arange(1, n_clusters + 1) ** 0.9
    popularity /= popularity.sum()
    clusters = rng.choice(n_clusters, size=n_items, p=popularity)
    # Noise with the centres' spectrum, about 0.6 of a centre's length: clusters overlap their neighbours.
    # Drawn in row chunks (the same numbers as one draw) so 10M items hold one catalog, not five.
    items = np.empty((n_items, dim), dtype=np.float32)
    scale = spectrum * np.float32(0.6 / float(np.sqrt((spectrum**2).sum())))
    for start in range(0, n_items, GENERATE_CHUNK):
        stop = min(start + GENERATE_CHUNK, n_items)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * scale
        items[start:stop] = _unit(centres[clusters[start:stop]] + noise)
    return items, clusters, popularity


def user_queries(
    rng: np.random.Generator, items: np.ndarray, clusters: np.ndarray, popularity: np.ndarray, n_users: int
) -> tuple[np.ndarray, ItemSets]:
    """(queries (U, dim) unit float32, each user's HISTORY items as an exclude set)."""
    by_cluster = np.argsort(clusters, kind="stable")
    starts = np.searchsorted(clusters[by_cluster], np.arange(popularity.size))
    sizes = np.bincount(clusters, minlength=popularity.size)
    if (sizes == 0).any():  # small catalogs leave some of the least popular clusters empty
        popularity = np.where(sizes > 0, popularity, 0.0) / popularity[sizes > 0].sum()
    tastes = rng.choice(popularity.size, size=(n_users, 3), p=popularity)
    n_tastes = rng.integers(1, 4, size=n_users)
    picked = tastes[np.arange(n_users)[:, None], rng.integers(0, n_tastes[:, None], size=(n_users, HISTORY))]
    offsets = (rng.random((n_users, HISTORY)) * sizes[picked]).astype(np.int64)
    history = by_cluster[starts[picked] + offsets]
    mean = items[history].mean(axis=1)
    noise = rng.standard_normal(mean.shape, dtype=np.float32)
    noise *= 0.3 * np.linalg.norm(mean, axis=1, keepdims=True) / np.sqrt(mean.shape[1])
    return _unit(mean + noise), ItemSets.from_lists(list(history))


def random_unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return _unit(rng.standard_normal((n, dim), dtype=np.float32))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the process's peak resident memory to its current one (Linux ``clear_refs`` 5); False
    where that is not allowed (the peak then counts from the process's start)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """The process's peak resident memory (since the last :func:`reset_peak_rss`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(make: Callable[[], ItemIndex]) -> tuple[ItemIndex, dict[str, float]]:
    before = rss_bytes()
    started = time.perf_counter()
    index = make()
    seconds = time.perf_counter() - started
    return index, {
        "build_s": seconds,
        "index_bytes": index.nbytes,
        "bytes_per_item": index.nbytes / max(index.n_items, 1),
        "rss_growth_bytes": rss_bytes() - before,
    }


def aimed_queries(rng: np.random.Generator, items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(T, dim) unit queries each aimed at one of the ``targets`` rows: its vector plus noise of
    about a third of its length, as a user query strays from the item it should find."""
    aimed = items[targets]
    noise = rng.standard_normal(aimed.shape, dtype=np.float32) * np.float32(0.3 / np.sqrt(aimed.shape[1]))
    return _unit(aimed + noise)


def add_one_at_a_time(index: FaissIndex, added: np.ndarray) -> dict[str, Any]:
    """Add ``added`` (M, dim) to the built ``index`` one item per call, as serving adds cold
    items, and time each call."""
    first = index.n_items
    wall, cpu = np.zeros(added.shape[0]), np.zeros(added.shape[0])
    for row in range(added.shape[0]):
        wall_start, cpu_start = time.perf_counter(), time.thread_time()
        index.add(added[row : row + 1])
        wall[row], cpu[row] = time.perf_counter() - wall_start, time.thread_time() - cpu_start
    return {
        "items_before": first,
        "added": int(added.shape[0]),
        "add_ms_per_item": float(wall.mean() * 1e3),
        "add_cpu_ms_per_item": float(cpu.mean() * 1e3),
        "add_p99_ms": float(np.percentile(wall, 99) * 1e3) if added.shape[0] else None,
    }


def aimed_recall(
    index: FaissIndex, aimed: np.ndarray, targets: np.ndarray, truth: np.ndarray
) -> dict[str, Any]:
    """Recall@100 of queries ``aimed`` at the catalog rows ``targets`` against ``truth``, and the
    share of them whose target is in their top 100, at the index's nprobe, nothing excluded."""
    found = index.search(aimed, K).rows.numpy()
    return {
        "nprobe": index.nprobe,
        "aimed_queries": int(aimed.shape[0]),
        "recall_at_100": recall(found, truth),
        "aimed_item_found": float((found == targets[:, None]).any(axis=1).mean()),
    }


def single_latency(index: ItemIndex, queries: np.ndarray, exclude: ItemSets, n: int) -> dict[str, float]:
    """Wall and CPU-time ms percentiles of one-query searches over the first ``n`` queries.

    CPU time is the calling thread's (one torch and one faiss thread run there): what the search
    costs a dedicated core. Wall time adds whatever else the machine's scheduler ran meanwhile.
    """
    one = [exclude.take(np.array([q])) for q in range(n)]  # built before the clock, as serving would
    for q in range(WARMUP):
        index.search(queries[q : q + 1], K, one[q])
    wall, cpu = np.zeros(n), np.zeros(n)
    for q in range(n):
        wall_start, cpu_start = time.perf_counter(), time.thread_time()
        index.search(queries[q : q + 1], K, one[q])
        wall[q], cpu[q] = time.perf_counter() - wall_start, time.thread_time() - cpu_start
    wall, cpu = wall * 1e3, cpu * 1e3
    return {
        "p50_ms": float(np.percentile(wall, 50)),
        "p99_ms": float(np.percentile(wall, 99)),
        "mean_ms": float(wall.mean()),
        "cpu_p50_ms": float(np.percentile(cpu, 50)),
        "cpu_p99_ms": float(np.percentile(cpu, 99)),
        "cpu_mean_ms": float(cpu.mean()),
        "queries": n,
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


def batched(
    index: ItemIndex, queries: np.ndarray, exclude: ItemSets, batch: int
) -> tuple[np.ndarray, float, float]:
    """(top-K rows (Q, K) of all queries, queries per wall second, queries per CPU second) searching
    ``batch`` queries per call."""
    rows, wall, cpu = [], 0.0, 0.0
    for start in range(0, queries.shape[0], batch):
        chunk = np.arange(start, min(start + batch, queries.shape[0]))
        exclude_chunk = exclude.take(chunk)
        wall_start, cpu_start = time.perf_counter(), time.thread_time()
        result = index.search(queries[chunk], K, exclude_chunk)
        wall, cpu = wall + time.perf_counter() - wall_start, cpu + time.thread_time() - cpu_start
        rows.append(result.rows.numpy())
    return np.concatenate(rows), queries.shape[0] / wall, queries.shape[0] / cpu


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found & truth| / |truth| (truth's -1 padding not counted)."""
    keys = np.arange(truth.shape[0])[:, None] * (max(found.max(), truth.max()) + 2)
    hits = np.isin(keys + found + 1, (keys + truth + 1)[truth >= 0]).sum(axis=1)
    return float(np.mean(hits / np.maximum((truth >= 0).sum(axis=1), 1)))


def sweep(
    index: FaissIndex,
    nprobes: list[int],
    queries: np.ndarray,
    exclude: ItemSets,
    truth: np.ndarray,
    args: argparse.Namespace,
    label: str,
) -> list[dict[str, Any]]:
    """Recall, batched queries/s and single-query latency of ``index`` at each nprobe."""
    runs = []
    for nprobe in nprobes:
        index.nprobe = nprobe
        found, qps, cpu_qps = batched(index, queries, exclude, args.batch)
        run = {
            "nprobe": index.nprobe,
            "recall_at_100": recall(found, truth),
            "batched_qps": qps,
            "batched_cpu_qps": cpu_qps,
            "single": single_latency(index, queries, exclude, args.latency_queries),
        }
        runs.append(run)
        log(
            BENCH,
            f"{label} nprobe {nprobe}: recall@100 {run['recall_at_100']:.4f}, "
            f"p99 {run['single']['p99_ms']:.2f} ms (cpu {run['single']['cpu_p99_ms']:.2f}), {qps:.0f} q/s batched",
        )
    return runs


def size_label(n_items: int) -> str:
    """``10m``, ``50k``, ``1234``: a catalog size in a result file's name."""
    for unit, label in ((1_000_000, "m"), (1_000, "k")):
        if n_items % unit == 0:
            return f"{n_items // unit}{label}"
    return str(n_items)


def chosen_row(report: dict[str, Any], source: str) -> dict[str, Any]:
    """One catalog size's summary: exact's p99 and the chosen faiss configuration's."""
    chosen, exact = report.get("chosen") or {}, report["exact"]
    single = chosen.get("single", {})
    return {
        "n_items": report["n_items"],
        "file": source,
        "date": report.get("date"),
        "exact_p99_ms": exact["single"]["p99_ms"],
        "exact_cpu_p99_ms": exact["single"]["cpu_p99_ms"],
        "encoding": chosen.get("encoding", "flat" if chosen else None),
        "nlist": chosen.get("nlist"),
        "nprobe": chosen.get("nprobe"),
        "p99_ms": single.get("p99_ms"),
        "cpu_p99_ms": single.get("cpu_p99_ms"),
        "recall_at_100": chosen.get("recall_at_100"),
        "build_s": chosen.get("build_s"),
        "bytes_per_item": chosen.get("bytes_per_item"),
        "peak_rss_bytes": chosen.get("peak_rss_bytes"),
    }


def rows_by_items(report: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """The chosen row of this run and of every other retrieval result in bench/results (smoke
    runs left out), by catalog size: where exact stops being the faster index, and what faiss
    costs as the catalog grows."""
    rows = [chosen_row(report, out.name)]
    for path in sorted(RESULTS.glob(f"{BENCH}*.json")):
        if path.name != out.name and ".quick." not in path.name:
            rows.append(chosen_row(json.loads(path.read_text()), path.name))
    return sorted(rows, key=lambda row: row["n_items"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=None, help="catalog size (default 1_000_000)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall and batched q/s")
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument(
        "--exact-latency-queries",
        type=int,
        default=None,
        help=f"exact's single-query latency queries (default: --latency-queries up to "
        f"{EXACT_FULL_LATENCY_ITEMS} items, {EXACT_CAPPED_LATENCY_QUERIES} above)",
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--nlists", default="1024,2048,4096")
    parser.add_argument("--nprobes", default="4,8,16,32,64,128,256")
    parser.add_argument("--encodings", default="flat", help="FaissIndex encodings: flat, sq8 or both")
    parser.add_argument("--train-per-list", type=int, default=64, help="k-means training points per list")
    parser.add_argument(
        "--added", type=int, default=None, help="items added after the build (default 1%%, at most 10k)"
    )
    parser.add_argument("--aimed-queries", type=int, default=300, help="queries aimed at added items")
    parser.add_argument("--random-nprobes", default="16,64,256,1024")
    parser.add_argument("--no-random", action="store_true", help="skip the unstructured worst case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run, 50k items, separate result file")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    command = shlex.join(["bench/retrieval.py", *(sys.argv[1:] if argv is None else argv)])
    n_items = args.items or (50_000 if args.quick else 1_000_000)
    if args.quick:
        args.queries, args.latency_queries, args.clusters = 300, 100, min(args.clusters, 256)
    exact_latency_queries = args.exact_latency_queries or (
        args.latency_queries if n_items <= EXACT_FULL_LATENCY_ITEMS else EXACT_CAPPED_LATENCY_QUERIES
    )
    n_added = min(10_000, n_items // 100) if args.added is None else args.added
    n_built = n_items - n_added
    nlists = [int(value) for value in args.nlists.split(",")]
    nprobes = [int(value) for value in args.nprobes.split(",")]
    encodings = args.encodings.split(",")
    random_nprobes = [int(value) for value in args.random_nprobes.split(",")]
    out = args.out or result_path(BENCH, args.quick, None if n_items == 1_000_000 else size_label(n_items))
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(args.seed)

    started = time.perf_counter()
    items, clusters, popularity = clustered_catalog(rng, n_items, args.dim, args.clusters)
    queries, exclude = user_queries(rng, items, clusters, popularity, args.queries)
    # A generator of its own, so the catalog, queries and random case match runs made before it.
    aim_rng = np.random.default_rng([args.seed, 1])
    targets = n_built + aim_rng.choice(n_added, size=min(args.aimed_queries, n_added), replace=False)
    aimed = aimed_queries(aim_rng, items, targets)
    log(
        BENCH, f"{n_items} x {args.dim} items, {args.queries} queries in {time.perf_counter() - started:.1f}s"
    )

    peak_resets = reset_peak_rss()
    exact, exact_build = build(lambda: ExactIndex(items))
    truth, exact_qps, exact_cpu_qps = batched(exact, queries, exclude, args.batch)
    aimed_truth = exact.search(aimed, K).rows.numpy()
    exact_run = {**exact_build, "batched_qps": exact_qps, "batched_cpu_qps": exact_cpu_qps}
    exact_run["single"] = single_latency(exact, queries, exclude, exact_latency_queries)
    exact_run["peak_rss_bytes"] = peak_rss_bytes()
    log(
        BENCH,
        f"exact: p99 {exact_run['single']['p99_ms']:.1f} ms (cpu {exact_run['single']['cpu_p99_ms']:.1f}), "
        f"{exact_qps:.0f} q/s batched",
    )
    del exact

    faiss_runs = []
    for encoding in encodings:
        for nlist in nlists:
            reset_peak_rss()
            index, built = build(
                lambda nlist=nlist, encoding=encoding: FaissIndex(
                    items[:n_built],
                    nlist=nlist,
                    train_size=args.train_per_list * nlist,
                    threads=1,
                    seed=args.seed,
                    encoding=encoding,
                )
            )
            label = f"{encoding} nlist {nlist}"
            log(BENCH, f"{label}: built in {built['build_s']:.1f}s ({index.fallback_reason})")
            adds = add_one_at_a_time(index, items[n_built:])
            built["index_bytes"], built["bytes_per_item"] = index.nbytes, index.nbytes / index.n_items
            run = {
                "encoding": encoding,
                "nlist": nlist,
                "train_size": min(n_built, args.train_per_list * nlist) if index.nlist else 0,
                "fallback_reason": index.fallback_reason,
                **built,
                "sweep": sweep(index, nprobes, queries, exclude, truth, args, label),
            }
            point = next((p for p in run["sweep"] if p["recall_at_100"] >= TARGET_RECALL), run["sweep"][-1])
            if index.nlist:  # the exact fallback (too few items for nlist) has no lists to probe
                index.nprobe = point["nprobe"]
            run["live_adds"] = {**adds, **aimed_recall(index, aimed, targets, aimed_truth)}
            run["peak_rss_bytes"] = peak_rss_bytes()
            log(
                BENCH,
                f"{label}: {adds['add_ms_per_item']:.3f} ms per added item; aimed at added items, "
                f"recall@100 {run['live_adds']['recall_at_100']:.4f}, "
                f"found {run['live_adds']['aimed_item_found']:.3f} (nprobe {index.nprobe})",
            )
            faiss_runs.append(run)
            del index

    summary_keys = (
        "encoding",
        "nlist",
        "train_size",
        "build_s",
        "index_bytes",
        "bytes_per_item",
        "peak_rss_bytes",
    )
    candidates = [
        {**{key: run[key] for key in summary_keys}, **point}
        for run in faiss_runs
        for point in [next((p for p in run["sweep"] if p["recall_at_100"] >= TARGET_RECALL), None)]
        if point is not None
    ]
    # CPU time, not wall: on a shared machine wall-clock p99 ranks the scheduler, not the configurations.
    chosen = min(candidates, key=lambda c: c["single"]["cpu_mean_ms"]) if candidates else None

    random_report: dict[str, Any] | None = None
    if not args.no_random:
        random_items = random_unit(rng, n_items, args.dim)
        random_queries = random_unit(rng, args.queries, args.dim)
        no_exclude = ItemSets.empty(args.queries)
        random_truth, _, _ = batched(ExactIndex(random_items), random_queries, no_exclude, args.batch)
        nlist = chosen["nlist"] if chosen else nlists[-1]
        encoding = chosen["encoding"] if chosen else encodings[0]
        index = FaissIndex(random_items, nlist=nlist, threads=1, seed=args.seed, encoding=encoding)
        random_report = {
            "encoding": encoding,
            "nlist": nlist,
            "sweep": [
                {
                    "nprobe": run["nprobe"],
                    "recall_at_100": run["recall_at_100"],
                    "p99_ms": run["single"]["p99_ms"],
                    "cpu_p99_ms": run["single"]["cpu_p99_ms"],
                }
                for run in sweep(
                    index, random_nprobes, random_queries, no_exclude, random_truth, args, "random"
                )
            ],
        }

    ratios = (
        {
            "p99_speedup": exact_run["single"]["p99_ms"] / chosen["single"]["p99_ms"],
            "cpu_p99_speedup": exact_run["single"]["cpu_p99_ms"] / chosen["single"]["cpu_p99_ms"],
            "batched_qps_ratio": chosen["batched_qps"] / exact_qps,
            "batched_cpu_qps_ratio": chosen["batched_cpu_qps"] / exact_cpu_qps,
            "recall_at_100": chosen["recall_at_100"],
        }
        if chosen
        else None
    )
    report = {
        "question": f"top-100 over {n_items} x {args.dim}-d items on one core: faiss IVF p99 and "
        "recall@100 against exact",
        "command": command,
        "quick": args.quick,
        "n_items": n_items,
        "dim": args.dim,
        "clusters": args.clusters,
        "k": K,
        "queries": args.queries,
        "latency_queries": args.latency_queries,
        "exact_latency_queries": exact_latency_queries,
        "notes": [
            f"exact's single-query p50/p99 come from {exact_latency_queries} queries "
            f"({EXACT_CAPPED_LATENCY_QUERIES} above {EXACT_FULL_LATENCY_ITEMS} items, where each takes a few "
            "hundred ms); its recall truth and batched q/s use all queries",
            "peak_rss_bytes: the process's peak resident memory while that index was built and measured, "
            + (
                "reset before each index (it includes the item vectors the benchmark holds)"
                if peak_resets
                else "counted from the process's start (this kernel refused the reset)"
            ),
            f"faiss indexes are built on the first {n_built} items; the last {n_added} are added one at a "
            "time afterwards (live_adds), before any search",
        ],
        "batch": args.batch,
        "threads": 1,
        "faiss": faiss.__version__,
        "target": {"p99_ms": TARGET_P99_MS, "recall_at_100": TARGET_RECALL},
        "chosen": chosen,
        "met": {
            "p99": bool(chosen and chosen["single"]["p99_ms"] < TARGET_P99_MS),
            "cpu_p99": bool(chosen and chosen["single"]["cpu_p99_ms"] < TARGET_P99_MS),
            "recall": chosen is not None,
        },
        "ratios": ratios,
        "exact": exact_run,
        "faiss_runs": faiss_runs,
        "random_worst_case": random_report,
        "seconds": time.perf_counter() - started,
    }
    report["rows_by_items"] = rows_by_items(report, out)
    return finish(BENCH, report, out)


if __name__ == "__main__":
    main()
