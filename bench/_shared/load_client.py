"""The open-loop load generator: requests on a fixed clock, latency from the scheduled send time.

:func:`schedule` sends call ``i`` at ``t0 + i / rate`` whether or not earlier calls returned, and
counts each call's latency from that scheduled time, so a client or server that falls behind is
counted (no coordinated omission). The serving benchmarks run it for HTTP in a process of its own
(:class:`LoadClient` starts ``python bench/_shared/load_client.py URL``), so the
client's CPU is measured apart from the driver's and the server's (``/proc``: the ``load_client``
component of ``_shared.serving.cpu_by_component``); serve_latency.py also runs it in the driver
through a ``DeploymentHandle``, which only a Ray driver can hold.

Why not a compiled generator: Debian packages ``hey`` and ``wrk``, not ``wrk2``. ``hey -q`` limits
each of its ``-c`` workers to a rate, and a worker sends its next request only after the last
answer (closed loop per worker), and ``wrk`` is closed loop: both count latency from the actual
send, so a stalled server sends fewer requests and its queueing goes uncounted. This client is
asyncio + aiohttp (keep-alive connections, no connection limit); its CPU share is reported with
every run, and this file imports numpy and aiohttp only (``bench/_shared/__init__`` imports
torch), to start light.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import numpy as np

#: The recommendations a request asks for.
K = 10
#: A request not answered in this long is an error (and its latency this long).
REQUEST_TIMEOUT_S = 20.0


class HttpLoad:
    """GET /v1/recommendations/{user}?k=10 over keep-alive connections (aiohttp)."""

    def __init__(self, url: str, users: list[str]) -> None:
        self.url, self.users = url.rstrip("/"), users
        self.session: Any = None

    async def __aenter__(self) -> HttpLoad:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, force_close=False, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def call(self, i: int) -> str | None:
        user = self.users[i % len(self.users)]
        async with self.session.get(f"{self.url}/v1/recommendations/{user}", params={"k": K}) as response:
            if response.status != 200:  # before decoding: HAProxy's 503/504 pages are not JSON
                return f"HTTP {response.status}: {(await response.text())[:100]}"
            body = await response.json(content_type=None)
        if body.get("user_id") != user or body.get("fallback") is not None or len(body["items"]) != K:
            return f"unexpected answer: fallback {body.get('fallback')}, {len(body.get('items', []))} items"
        return None


async def schedule(
    call: Callable[[int], Awaitable[str | None]], rate: float, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Call ``call(i)`` at t0 + i / rate for warmup + duration seconds; ``call`` returns an error
    string or None. Per call (loop clock, seconds): when it was sent, its latency from the
    scheduled time, when it was answered without error (NaN otherwise); ``n_warm``: the warm-up's
    calls, first; ``errors``: the counted calls' errors."""
    n_warm = round(warmup_s * rate)
    n = n_warm + round(duration_s * rate)
    latency, sent_at, answered_at = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    send_lag = np.full(n, np.nan)
    errors: list[str] = []
    loop = asyncio.get_running_loop()

    async def one(i: int, scheduled: float) -> None:
        sent_at[i] = loop.time()
        send_lag[i] = sent_at[i] - scheduled
        try:
            error = await asyncio.wait_for(call(i), timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # counted, never raised: one failure must not stop the clock
            error = f"{type(exc).__name__}: {exc}"[:200]
        latency[i] = loop.time() - scheduled
        if error is None:
            answered_at[i] = loop.time()
        elif i >= n_warm:
            errors.append(error)

    tasks = []
    t0 = loop.time() + 0.05
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    return {
        "n_warm": n_warm,
        "sent_at": sent_at.tolist(),
        "latency_s": latency.tolist(),
        "answered_at": answered_at.tolist(),
        "send_lag_s": send_lag.tolist(),
        "errors": errors,
    }


async def settle(
    call: Callable[[int], Awaitable[str | None]], fast_ms: float = 200.0, timeout_s: float = 120.0
) -> float:
    """Seconds until the app answers one request at a time in under ``fast_ms`` three times in a
    row: a saturating rate leaves requests queued in the server after the client gave up on them."""
    started = time.perf_counter()
    fast = 0
    while fast < 3 and time.perf_counter() - started < timeout_s:
        sent = time.perf_counter()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(call(0), timeout=REQUEST_TIMEOUT_S)
        fast = fast + 1 if (time.perf_counter() - sent) * 1000 < fast_ms else 0
        await asyncio.sleep(0.2)
    return round(time.perf_counter() - started, 1)


async def _serve(url: str) -> None:
    """The client process: the users to request on stdin's first line (a JSON list), then one
    JSON command a line (``{"op": "run", "rate", "warmup_s", "duration_s"}`` or ``{"op":
    "settle"}``), one JSON answer a line on stdout (and one when it is ready); ends at EOF."""
    users = json.loads(sys.stdin.readline())
    async with HttpLoad(url, users) as load:
        sys.stdout.write(json.dumps({"ready": True}) + "\n")  # imports done: its CPU is not a run's
        sys.stdout.flush()
        while line := await asyncio.to_thread(sys.stdin.readline):
            command = json.loads(line)
            if command["op"] == "run":
                cpu = time.process_time()
                answer = await schedule(
                    load.call, command["rate"], command["warmup_s"], command["duration_s"]
                )
                answer["client_process_cpu_s"] = time.process_time() - cpu
            else:
                answer = {"settle_s": await settle(load.call)}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()


class LoadClient:
    """The driver's side of the client process: started on ``url`` with ``users`` (requested in
    that order, round robin), one command at a time; a context manager that ends it."""

    def __init__(self, url: str, users: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._ask(users)  # the client's first line; it answers once it is ready

    def __enter__(self) -> LoadClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()  # this process only: the client we started
            self.process.wait()

    def _ask(self, command: dict[str, Any] | list[str]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the load client exited ({self.process.poll()}) before answering {command}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, rate: float, warmup_s: float, duration_s: float) -> dict[str, Any]:
        """:func:`schedule` of HTTP requests at ``rate``, in the client process."""
        return self._ask({"op": "run", "rate": rate, "warmup_s": warmup_s, "duration_s": duration_s})

    def settle(self) -> float:
        """:func:`settle`, in the client process."""
        return float(self._ask({"op": "settle"})["settle_s"])


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1]))
