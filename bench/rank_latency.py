"""Re-ranking latency: ``Reranker.rank()`` on 200 candidates, against scoring them one at a time.

The serving stage re-ranks the retriever's top 200 per request. For a real ranker artifact
(``--model``, default ``out/rank_quality/model``, written by ``bench/rank_quality.py``):

* **batched**: ``Reranker.rank(user_vector, 200 item ids, recency)``: one vectorised forward
  pass, id lookup and sorting included (what serving calls);
* **one_at_a_time** (the baseline): the same 200 candidates, one ``rank()`` call each, and the
  200 probabilities sorted afterwards;
* **dot_product** (context, not a baseline to beat): the retriever's own score of the 200
  candidates, a (200, E) @ (E,) product in NumPy plus an argsort.

Users are ``--users`` random training users' retrieval vectors: each user's history pooled by the
two-tower user tower, their candidates the retriever's top 200 of unseen items. Each timed call is
one request; after ``--warmup`` untimed requests, p50/p99 latency over ``--requests`` requests
(one-at-a-time: fewer, it is 200x the calls). One torch thread (one serving replica per core).
Ratios: ``batched_vs_one_at_a_time`` = candidates/s of batched / of one-at-a-time;
``batched_cost_vs_dot`` = batched p50 / dot-product p50.

    .venv/bin/python bench/rank_latency.py [--model out/rank_quality/model] [--requests 500]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _shared import ROOT, finish, log

from raymm.models.artifact import load_artifact
from raymm.recommend.rerank import Reranker

BENCH = "rank_latency"
N_CANDIDATES = 200


def _percentiles(seconds: list[float], per_request: int) -> dict[str, float]:
    values = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "candidates_per_s": per_request / float(np.mean(seconds)),
        "requests": len(seconds),
    }


def requests(model: Path, n_users: int, seed: int) -> tuple[Reranker, list[tuple[np.ndarray, list[str]]]]:
    """The reranker and (user vector, top-200 item ids) per sampled user."""
    reranker = Reranker.from_artifact(model)
    artifact = load_artifact(model)
    vectors = reranker.inputs.vectors
    rng = np.random.default_rng(seed)
    histories = rng.integers(0, vectors.shape[0], size=(n_users, 20))
    with torch.inference_mode():
        history = vectors[torch.from_numpy(histories)]
        users = artifact.model.user_vector(history, torch.ones(histories.shape, dtype=torch.bool)).numpy()
    scores = users @ vectors.numpy().T
    np.put_along_axis(scores, histories, -np.inf, axis=1)  # the history counts as seen
    top = np.argsort(-scores, axis=1)[:, :N_CANDIDATES]
    return reranker, [(users[u], [str(i) for i in reranker.item_ids[top[u]]]) for u in range(n_users)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "out" / "rank_quality" / "model")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--one-at-a-time-requests", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not (args.model / "ranker").is_dir():
        parser.error(f"{args.model} holds no ranker; run bench/rank_quality.py first (or pass --model)")
    reranker, work = requests(args.model, args.users, seed=0)
    retrieval = reranker.inputs.vectors.numpy()
    rows = [reranker.rows(ids) for _, ids in work]

    def batched(k: int) -> None:
        user, ids = work[k % len(work)]
        reranker.rank(user, ids, recency=24.0)

    def one_at_a_time(k: int) -> None:
        user, ids = work[k % len(work)]
        probabilities = np.array([reranker.rank(user, [c], recency=24.0)[1][0] for c in ids])
        np.argsort(-probabilities, kind="stable")

    def dot_product(k: int) -> None:
        user, _ = work[k % len(work)]
        np.argsort(-(retrieval[rows[k % len(work)]] @ user), kind="stable")

    runs = {}
    for name, call, n in (
        ("batched", batched, args.requests),
        ("one_at_a_time", one_at_a_time, args.one_at_a_time_requests),
        ("dot_product", dot_product, args.requests),
    ):
        for k in range(min(args.warmup, n)):
            call(k)
        seconds = []
        for k in range(n):
            started = time.perf_counter()
            call(k)
            seconds.append(time.perf_counter() - started)
        runs[name] = _percentiles(seconds, N_CANDIDATES)
        log(BENCH, f"{name}: p50 {runs[name]['p50_ms']:.3f} ms, p99 {runs[name]['p99_ms']:.3f} ms")
    report = {
        "question": "candidates/s and p99 of Reranker.rank() on 200 candidates vs one-at-a-time scoring",
        "model": args.model.name,
        "n_candidates": N_CANDIDATES,
        "torch_threads": 1,
        "ratios": {
            "batched_vs_one_at_a_time": runs["batched"]["candidates_per_s"]
            / runs["one_at_a_time"]["candidates_per_s"],
            "batched_cost_vs_dot": runs["batched"]["p50_ms"] / runs["dot_product"]["p50_ms"],
        },
        "runs": runs,
    }
    return finish(BENCH, report, args.out)


if __name__ == "__main__":
    main()
