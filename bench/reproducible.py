"""Reproducibility (design.md invariant 6): same data, config and seed, quiet machine vs loaded one.

The question: does ``raymm extract`` -> ``train`` -> ``evaluate`` give the same feature vectors and
the same test metrics when the machine is busy? Under load Ray Data splits and schedules blocks
differently, so an encoder actor sees other batch compositions (issue 24: two quickstart runs with
one seed gave contrastive+gated test Recall@20 0.0491 and 0.0518).

One synthetic catalog (the quickstart's ``small`` preset, reduced by default to ``--items`` items
and ``--users`` users so two full runs fit in minutes; the real encoders and the real Ray jobs of
``configs/quickstart.yaml``) is generated once with the config's seed. Then the pipeline runs twice
on the same Ray instance:

* ``quiet``: nothing else started by this benchmark;
* ``loaded``: ``--hogs`` processes spinning on the CPUs (default: one per core) for the whole run.

Each run is its own process with its own Ray instance (as two ``raymm`` invocations would be; a
run after another on one Ray instance once waited for CPUs the first run's training had not
given back) and writes its own features, model and evaluation. Reported: each run's test and cold-start
metrics (the served recommender's and the two-tower model's alone), its wall time per stage and
the 1-minute load average at its end; across runs, per modality the largest absolute difference
of any feature vector element (items aligned by id; nulls must agree), the same for the trained
item vectors, and the largest absolute difference of any reported metric. ``identical`` is true
when all of them are 0.

Prints one JSON line and writes ``bench/results/reproducible.json``.

    .venv/bin/python bench/reproducible.py [--items 600] [--users 300] [--hogs 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _shared import BASE_CONFIG, finish, log
from _shared.measure import start_hogs, stop_hogs

from raymm.config import RaymmConfig, load_config
from raymm.settings_base import MODALITIES

BENCH = "reproducible"


def run_pipeline(config: RaymmConfig, data: Path, root: Path) -> dict[str, Any]:
    """extract -> train -> evaluate into ``root``; metrics and timings (no paths)."""
    from raymm.eval.evaluate import evaluate
    from raymm.features.pipeline import extract
    from raymm.training.trainer import train

    features, model = root / "features", root / "model"
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    extract(config, str(data), str(features), progress=False)
    seconds["extract"] = time.perf_counter() - started
    started = time.perf_counter()
    train(config, str(data), str(features), str(model), name=f"{BENCH}-{root.name}")
    seconds["train"] = time.perf_counter() - started
    started = time.perf_counter()
    report = evaluate(config, str(data), str(features), str(model))
    seconds["evaluate"] = time.perf_counter() - started
    result = report["model"]
    return {
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "metrics": result["metrics"],
        "two_tower_metrics": result["two_tower_metrics"],
        "best_epoch": result["best_epoch"],
        "validation_history": result["history"],
    }


def _by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("item_id")


def max_vector_difference(a: pa.Table, b: pa.Table, column: str) -> float | None:
    """Largest |a - b| over the vectors of ``column`` (items aligned by id); None if the ids or
    the null masks differ (then the runs are not comparable row for row)."""
    a, b = _by_id(a), _by_id(b)
    if not a.column("item_id").equals(b.column("item_id")):
        return None
    if not a.column(column).is_null().equals(b.column(column).is_null()):
        return None
    left = a.column(column).drop_null().to_numpy(zero_copy_only=False)
    right = b.column(column).drop_null().to_numpy(zero_copy_only=False)
    if len(left) == 0:
        return 0.0
    return float(np.abs(np.stack(left) - np.stack(right)).max())


def max_metric_difference(a: Any, b: Any) -> float:
    """Largest |a - b| over every number in two nested metric dicts of the same shape."""
    if isinstance(a, dict):
        return max((max_metric_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b))
    return 0.0 if a == b else float("inf")


def compare(root: Path, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from raymm.features.pipeline import load_features

    quiet, loaded = (load_features(str(root / name / "features")) for name in ("quiet", "loaded"))
    features = {m: max_vector_difference(quiet, loaded, m) for m in MODALITIES if m in quiet.column_names}
    vectors = [pq.read_table(root / name / "model" / "item_vectors.parquet") for name in ("quiet", "loaded")]
    item_vectors = max_vector_difference(*vectors, "vector")
    metrics = max_metric_difference(runs["quiet"]["metrics"], runs["loaded"]["metrics"])
    two_tower = max_metric_difference(runs["quiet"]["two_tower_metrics"], runs["loaded"]["two_tower_metrics"])
    values = [*features.values(), item_vectors, metrics, two_tower]
    return {
        "feature_max_abs_diff": features,
        "item_vector_max_abs_diff": item_vectors,
        "metric_max_abs_diff": metrics,
        "two_tower_metric_max_abs_diff": two_tower,
        "identical": all(v == 0.0 for v in values),
    }


def config_for(root: Path, items: int, users: int) -> RaymmConfig:
    return load_config(
        BASE_CONFIG,
        [
            f"out={root}",
            f"train.run.storage_path={root / 'checkpoints'}",
            f"synth.n_items={items}",
            f"synth.n_users={users}",
        ],
    )


def one_run(root: Path, name: str, items: int, users: int) -> None:
    """The child process of one run: the pipeline on ``root/data`` into ``root/name``."""
    config = config_for(root, items, users)
    result = run_pipeline(config, root / "data", root / name)
    (root / name / "run.json").write_text(json.dumps(result, default=float))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=600, help="catalog size (small preset: 3000)")
    parser.add_argument("--users", type=int, default=300, help="users (small preset: 1500)")
    parser.add_argument(
        "--hogs", type=int, default=os.cpu_count() or 2, help="CPU-spinning processes in the loaded run"
    )
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # internal: one run's process
    args = parser.parse_args(argv)
    if args.run is not None:
        one_run(args.work, args.run, args.items, args.users)
        return None

    from raymm.data.synth import synthesize

    root = args.work or Path(tempfile.mkdtemp(prefix="raymm-reproducible-"))
    config = config_for(root, args.items, args.users)
    synthesize(config.synth, str(root / "data"), seed=config.seed, progress=False)
    runs: dict[str, dict[str, Any]] = {}
    try:
        for name, hogs in (("quiet", 0), ("loaded", args.hogs)):
            log(BENCH, f"{name} run ({hogs} CPU hogs)")
            command = [sys.executable, __file__, "--run", name, "--work", str(root)]
            command += ["--items", str(args.items), "--users", str(args.users)]
            spinning = start_hogs(hogs)
            try:
                subprocess.run(command, check=True)
            finally:
                stop_hogs(spinning)
            runs[name] = {"cpu_hogs": hogs, **json.loads((root / name / "run.json").read_text())}
            log(BENCH, f"{name}: {runs[name]['seconds']}, load {runs[name]['loadavg_1m_at_end']}")
        comparison = compare(root, runs)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    return finish(
        BENCH,
        {
            "question": "same data + config + seed on a quiet and a loaded machine: same vectors and metrics?",
            "config": {
                "base": "configs/quickstart.yaml",
                "synth": {"size": config.synth.size, "n_items": args.items, "n_users": args.users},
                "seed": config.seed,
            },
            **comparison,
            "runs": runs,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
