"""The no-Ray anchor: the served artifact behind plain FastAPI on uvicorn, to say what Serve costs.

``python bench/_shared/anchor.py`` (through :func:`running_anchor`) serves
``GET /v1/recommendations/{user_id}?k=10`` with uvicorn, ``--workers`` processes (one per core),
no Ray. Each worker loads the artifact with ``raymm.load_model`` and the index the app serves
(``serve.index``), one torch and one faiss thread as a Recommender replica gets, and holds the
users' live state (history and seen items, as the state shards held them after the replay, read
from a JSON file); it answers with the app's body (``user_id``, ``items``, ``model_version``,
``fallback``). Concurrent requests are batched as the replica's ``@serve.batch`` does
(:class:`Batcher`: a batch runs when it holds ``max_batch_size`` requests or its first has waited
``batch_wait_ms``, one batch at a time, scored in a thread with ``recommend_many``).

What it leaves out against the app: the state shards (the state is in the worker's memory, not
one actor call per shard and batch), the served-items record sent back to the shards, Serve's
metrics and request log, the response model's validation, and the API key check (the benchmark's
app has none). So the anchor is the same scoring behind the cheapest Python HTTP stack, not the
same application.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

#: The environment variable that carries the settings to the uvicorn workers (spawned processes).
SETTINGS_ENV = "RAYMM_BENCH_ANCHOR"

Job = TypeVar("Job")
Result = TypeVar("Result")


class Batcher(Generic[Job, Result]):
    """``handler`` (a list of jobs in, one result per job out) as a function of one job: a batch
    runs when it holds ``max_batch_size`` jobs or its first job has waited ``wait_ms``, one batch
    at a time (``@serve.batch``'s ``max_concurrent_batches`` 1)."""

    def __init__(
        self, handler: Callable[[list[Job]], Awaitable[list[Result]]], max_batch_size: int, wait_ms: float
    ) -> None:
        self.handler, self.max_batch_size, self.wait_s = handler, max_batch_size, wait_ms / 1000
        self.queue: asyncio.Queue[tuple[Job, asyncio.Future[Result]]] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None

    async def __call__(self, job: Job) -> Result:
        if self.worker is None:
            self.worker = asyncio.create_task(self._run())
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((job, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            try:
                results = await self.handler([job for job, _ in batch])
            except Exception as exc:  # the batch's requests fail with it; the batcher goes on
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)


def create_app() -> Any:
    """The worker's app (uvicorn's ``--factory``): the settings from :data:`SETTINGS_ENV`."""
    import faiss
    import torch
    from fastapi import FastAPI, HTTPException, Query

    import raymm
    from raymm.recommend.index import IndexChoice

    settings = json.loads(os.environ[SETTINGS_ENV])
    torch.set_num_threads(1)  # a Recommender replica's share: 0.5 CPU, so one thread
    faiss.omp_set_num_threads(1)
    model = raymm.load_model(settings["model"], index=IndexChoice(**settings["index"]))
    states: dict[str, dict[str, list[str]]] = json.loads(Path(settings["states"]).read_text())

    async def score(jobs: list[tuple[str, int]]) -> list[tuple[list[Any], str | None]]:
        # as the replica's _score_users: the batch's states, known items only, one scoring pass
        found = [states.get(user) for user, _ in jobs]
        recent = [model.known(state["history"]) if state else [] for state in found]
        seen = [model.known(state["seen"]) if state else [] for state in found]
        k = max(k for _, k in jobs)
        answers = await asyncio.to_thread(model.recommend_many, recent, k, seen=seen)
        return [
            (answer[:k_job], None if state and r else "no_history" if state else "unknown_user")
            for answer, (_, k_job), state, r in zip(answers, jobs, found, recent, strict=True)
        ]

    batcher = Batcher(score, settings["max_batch_size"], settings["batch_wait_ms"])
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/v1/recommendations/{user_id}")
    async def recommendations(user_id: str, k: int = Query(10)) -> dict[str, Any]:
        if not 1 <= k <= model.max_k:
            raise HTTPException(422, f"k must be in [1, {model.max_k}], got {k}")
        items, fallback = await batcher((user_id, k))
        return {
            "user_id": user_id,
            "items": [{"item_id": r.item_id, "score": r.score} for r in items],
            "model_version": model.version,
            "fallback": fallback,
        }

    return app


@contextlib.contextmanager
def running_anchor(
    model: Path,
    states: dict[str, dict[str, Any] | None],
    index: dict[str, Any],
    batch: dict[str, Any],
    workers: int = 2,
    timeout_s: float = 180.0,
) -> Iterator[str]:
    """The anchor serving ``model`` with ``states`` (user -> history and seen, None: no state) on a
    free local port, in a process tree of its own (``cpu_by_component``'s ``anchor``); yields its
    URL once every worker answers, and stops it (SIGTERM, then SIGKILL) on the way out."""
    with tempfile.TemporaryDirectory(prefix="raymm-anchor-") as tmp:
        states_file = Path(tmp) / "states.json"
        states_file.write_text(json.dumps({u: s for u, s in states.items() if s is not None}))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        settings = {"model": str(model), "states": str(states_file), "index": index, **batch}
        process = subprocess.Popen(
            [sys.executable, __file__, "--port", str(port), "--workers", str(workers)],
            env={**os.environ, SETTINGS_ENV: json.dumps(settings), "OMP_NUM_THREADS": "1"},
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for_workers(url, process, workers, timeout_s)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)  # uvicorn's parent stops its workers
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_workers(url: str, process: subprocess.Popen[bytes], workers: int, timeout_s: float) -> None:
    """Until ``workers`` distinct worker pids answer ``/healthz`` (each request a new connection,
    which the kernel hands to any worker accepting)."""
    deadline = time.monotonic() + timeout_s
    pids: set[int] = set()
    while len(pids) < workers:
        if process.poll() is not None:
            raise RuntimeError(f"the anchor exited with {process.returncode} before answering")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pids)} of {workers} anchor workers answered in {timeout_s:.0f} s")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
            pids.add(int(json.loads(answer.read())["pid"]))
        time.sleep(0.1)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    # the workers import this file as "anchor" (bench/_shared is the script's directory, on sys.path)
    uvicorn.run(
        "anchor:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
