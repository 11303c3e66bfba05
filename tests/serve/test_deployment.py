"""The replica's batching, without a deployment: a batch runs when it holds the configured number
of jobs or when its first job has waited the configured time (``serve.max_batch_size`` and
``serve.batch_wait_ms``, not constants of the decorator)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from ray import serve

from raymm.serve.deployment import batched


class _Doubler:
    """A bound batch handler, as the replica wraps its own."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def handle(self, jobs: list[int]) -> list[int]:
        self.sizes.append(len(jobs))
        return [2 * job for job in jobs]


@pytest.fixture(autouse=True)
def _replica_context(monkeypatch: pytest.MonkeyPatch) -> None:
    # A batch queue reads the replica's max_ongoing_requests when it starts (to warn); outside a
    # replica there is none.
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=256))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)


def test_batches_hold_at_most_the_configured_size_and_wait_the_configured_time() -> None:
    doubler = _Doubler()

    async def run() -> tuple[list[int], float, float]:
        one = batched(doubler.handle, max_batch_size=3, wait_ms=80)
        answers = await asyncio.gather(*(one(job) for job in range(7)))
        start = time.perf_counter()
        assert await one(5) == 10
        alone = time.perf_counter() - start
        full = batched(doubler.handle, max_batch_size=2, wait_ms=5_000)
        start = time.perf_counter()
        await asyncio.gather(full(1), full(2))
        return answers, alone, time.perf_counter() - start

    answers, alone, full = asyncio.run(run())
    assert answers == [2 * job for job in range(7)]
    assert doubler.sizes == [3, 3, 1, 1, 2]
    assert 0.07 <= alone < 2.0  # a lone job waits for company, then runs by itself
    assert full < 1.0  # a full batch does not wait
