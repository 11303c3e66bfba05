"""What the training and quality benchmarks share: the quickstart data, the machine, the result file."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from raymm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
RESULTS = ROOT / "bench" / "results"
QUICKSTART = ROOT / "out" / "quickstart"


def log(bench: str, message: str) -> None:
    print(f"[{bench}] {message}", file=sys.stderr, flush=True)


def ensure_quickstart(root: Path, bench: str) -> tuple[Path, Path]:
    """(data, features) of the ``small`` benchmark: ``root`` if it holds both, else synthesized and extracted there."""
    data, features = root / "data", root / "features"
    if (data / "dataset.json").is_file() and (features / "features.json").is_file():
        return data, features
    from raymm.data.synth import synthesize
    from raymm.features.pipeline import extract
    from raymm.runtime import init_ray

    config = load_config(BASE_CONFIG, [f"out={root}"])
    started = time.perf_counter()
    synthesize(config.synth, str(data), seed=config.seed, progress=False)
    init_ray(config.ray)
    extract(config, str(data), str(features), progress=False)
    log(
        bench,
        f"synthesized and extracted the small benchmark into {root} in {time.perf_counter() - started:.0f}s",
    )
    return data, features


def machine() -> dict[str, Any]:
    import ray

    return {
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "platform": platform.platform(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def finish(bench: str, report: dict[str, Any], out: Path | None = None) -> dict[str, Any]:
    """Stamp the report, write it indented to ``bench/results/<bench>.json`` and print one JSON line."""
    report = {"bench": bench, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **report}
    report["machine"] = machine()
    path = out or RESULTS / f"{bench}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(json.dumps(report, default=float), flush=True)
    return report
