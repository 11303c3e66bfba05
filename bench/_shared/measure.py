"""Measuring on a shared machine: the load, latency percentiles, the CPU other work took, CPU hogs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def loadavg() -> float:
    """The 1-minute load average, rounded: about the core count means the benchmark ran alone."""
    return round(os.getloadavg()[0], 2)


def percentiles(values_ms: np.ndarray | list[float]) -> dict[str, float | int | None]:
    """n, p50, p90, p99, max and mean of ``values_ms`` (ms, 3 decimals); None for each when empty."""
    values = np.asarray(values_ms, dtype=np.float64)
    if values.size == 0:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    return {
        "n": int(values.size),
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p90_ms": round(float(np.percentile(values, 90)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "max_ms": round(float(values.max()), 3),
        "mean_ms": round(float(values.mean()), 3),
    }


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_work_cores(busy_before: float, busy_after: float, ours: float, wall: float) -> float:
    """Cores the machine spent on work outside this benchmark's processes over ``wall`` seconds
    (``ours`` = CPU seconds of this process and its descendants meanwhile)."""
    return round(max(0.0, busy_after - busy_before - ours) / wall, 2)


#: A process that spins one CPU at 100% until killed (a loaded machine).
HOG = "while True:\n    pass\n"


def start_hogs(n: int, niceness: int = 0) -> list[subprocess.Popen[bytes]]:
    """``n`` Python processes each spinning one CPU at 100% until stopped, at ``niceness``."""
    return [
        subprocess.Popen([sys.executable, "-c", HOG], preexec_fn=lambda: os.nice(niceness)) for _ in range(n)
    ]


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    """Kill the hogs :func:`start_hogs` started and wait for them."""
    for hog in hogs:  # only the processes this benchmark started, each by its own handle
        hog.kill()
    for hog in hogs:
        hog.wait()
