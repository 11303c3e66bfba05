"""What every benchmark shares: the paths, progress lines, the quickstart data, the machine, the result file.

The one home of bench/'s shared parts; its modules hold the rest: :mod:`_shared.facets` (facet
features without an encoder), :mod:`_shared.measure` (load, percentiles, CPU hogs),
:mod:`_shared.serving` (the serving benchmarks' artifact, deployment and load).
Scripts run as ``python bench/<name>.py``, so ``bench/`` is on ``sys.path`` and this package
imports as ``_shared``.
"""

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

ROOT = Path(__file__).resolve().parents[2]  # bench/_shared/__init__.py -> the repository
BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
RESULTS = ROOT / "bench" / "results"
QUICKSTART = ROOT / "out" / "quickstart"
#: scale.py's overrides on configs/quickstart.yaml at every size (see its docstring); train_memory.py
#: trains with them on a scale.py work directory.
SCALE_SETTINGS = (
    "extract.image.image_size=64",
    # The per-modality pools the committed scale runs used (quickstart.yaml now shares one pool).
    "extract.pool=per_modality",
    # Two text actors: MiniLM is the slowest encoder (~16 ms per item on one thread here), and one
    # single-threaded actor would leave the second core to the light image and audio pools. The
    # four actors share the 1 CPU the pools may reserve (the other is Ray Data's file listing).
    "extract.text.resources.min_actors=2",
    "extract.text.resources.max_actors=2",
    "extract.text.resources.num_cpus=0.25",
    "extract.image.resources.num_cpus=0.25",
    "extract.audio.resources.num_cpus=0.25",
    "train.epochs=1",
    "train.batch_size=1024",
    "rank.epochs=1",
    "rank.batch_size=1024",
)


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
        "gpus": torch.cuda.device_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "platform": platform.platform(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def result_path(bench: str, quick: bool = False, variant: str | None = None) -> Path:
    """``bench/results/<bench>[.<variant>].json``; a ``--quick`` run writes ``<bench>.quick.json``
    (git-ignored), so a smoke run never replaces a committed result."""
    suffix = ".quick" if quick else (f".{variant}" if variant else "")
    return RESULTS / f"{bench}{suffix}.json"


def repository_relative(value: Any) -> Any:
    """``value`` with every string that names a path in this checkout made relative to it, in
    nested dicts and lists too: a result file names no machine's paths."""
    if isinstance(value, str):
        return value.replace(f"{ROOT}/", "") if str(ROOT) in value else value
    if isinstance(value, dict):
        return {key: repository_relative(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [repository_relative(item) for item in value]
    return value


def finish(bench: str, report: dict[str, Any], out: Path | None = None) -> dict[str, Any]:
    """Stamp the report (bench, date, machine), write it indented to ``out`` (default
    ``bench/results/<bench>.json``) and print it as one JSON line on stdout. Paths in this
    checkout are written relative to it (:func:`repository_relative`)."""
    report = {"bench": bench, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **report}
    report["machine"] = {**machine(), **report.get("machine", {})}  # the caller's entries win
    report = repository_relative(report)
    path = out or result_path(bench)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(json.dumps(report, default=float), flush=True)
    return report
