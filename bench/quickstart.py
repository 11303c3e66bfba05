"""The quickstart end to end, timed: what ``make quickstart`` runs after installation, and its numbers.

The question: how long does ``raymm quickstart --config configs/quickstart.yaml`` take on this
machine (the brief's budget is 10 minutes), and what does it report: the ablation's test and
cold-start Recall/NDCG@20 per variant, retrieval vs retrieve-then-rank, and design.md's
orderings (one seed: what it saw, not whether an ordering holds; see bench/quality_synth.py).
It runs the console script in a subprocess on a fresh output folder, as a user would, and
measures its wall time and peak memory (RSS of the process tree's largest child).

Prints one JSON line and writes ``bench/results/quickstart.json``.

    .venv/bin/python bench/quickstart.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _shared import BASE_CONFIG, ROOT, finish, log

BENCH = "quickstart"


#: "[4/7] training the two towers into ... (Ray Train): done in 130.5 s"
STAGE_LINE = re.compile(r"^\[(\d+)/(\d+)\] (.*?)(?: into .*?)?(?: \(.*\))?: done in ([0-9.]+) s$")
#: "  freshness (event posted -> reflected in a recommendation), 20 users: p50 34 ms, p99 99 ms ..."
FRESHNESS_LINE = re.compile(r"freshness .*?(\d+) users: p50 ([0-9.]+) ms, p99 ([0-9.]+) ms")


def console_figures(stdout: str) -> dict[str, Any]:
    """Each stage's seconds and the live part's freshness, as the quickstart printed them."""
    stages = {}
    for line in stdout.splitlines():
        match = STAGE_LINE.match(line.strip())
        if match:
            label = re.split(r" (?:into |/|\(|\d)", match[3])[0].split(":")[0]  # no machine paths
            stages[f"{match[1]} {label}"] = float(match[4])
    fresh = FRESHNESS_LINE.search(stdout)
    freshness = (
        {"users": int(fresh[1]), "p50_ms": float(fresh[2]), "p99_ms": float(fresh[3])} if fresh else None
    )
    return {"stage_seconds": stages, "live_freshness": freshness}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    parser.add_argument(
        "--console-log", type=Path, default=None, help="also save what the console showed here"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="raymm-quickstart-") as tmp:
        out = Path(tmp) / "quickstart"
        command = [
            sys.executable,
            "-m",
            "raymm.cli",
            "quickstart",
            "--config",
            str(BASE_CONFIG),
            "--out",
            str(out),
        ]
        log(BENCH, "running " + " ".join(command[2:4]) + " on a fresh output folder")
        started = time.perf_counter()
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        wall_s = time.perf_counter() - started
        if run.returncode != 0:
            sys.stderr.write(run.stdout[-4000:] + run.stderr[-4000:])
            raise SystemExit(f"quickstart failed with exit code {run.returncode}")
        console_lines = run.stdout.count("\n") + run.stderr.count("\n")
        if args.console_log is not None:
            args.console_log.write_text(run.stdout + "\n--- stderr ---\n" + run.stderr)
        document = json.loads((out / "report" / "report.json").read_text())
    k = document["k"]
    rows = {
        row["label"]: {
            f"{protocol}_{name}@{k}": round(metrics[f"{name}@{k}"], 4)
            for protocol, metrics in row["metrics"].items()
            for name in ("recall", "ndcg")
        }
        for row in document["rows"]
    }
    rank = document.get("rank", {}).get("listwise", {})
    report = {
        "question": "make quickstart's run: wall time against the 10-minute budget, and its numbers",
        "wall_s": round(wall_s, 1),
        "budget_s": 600,
        "ratios": {"wall_vs_budget": round(wall_s / 600, 3)},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "console_lines": console_lines,
        "rows": rows,
        "retrieval_vs_retrieve_then_rank": {
            name: {f"recall@{k}": round(m[f"recall@{k}"], 4), f"ndcg@{k}": round(m[f"ndcg@{k}"], 4)}
            for name, m in rank.items()
        },
        "orderings_one_seed": {o["name"]: o["holds"] for o in document["orderings"]},
        "users": {p: about["users"] for p, about in document["protocols"].items()},
        **console_figures(run.stdout),
    }
    return finish(BENCH, report, args.out)


if __name__ == "__main__":
    main()
