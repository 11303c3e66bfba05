"""Training memory: does the Ray Train worker's memory creep over an epoch, and does handing
freed memory back to the OS (``train.run.heap_trim_every``) stop it?

The `large` scale run (bench/scale.py) saw the process tree's PSS rise from ~8.7 GiB two minutes
into the two-tower epoch to 12.5 GiB at its end, the training worker being the largest process.
This runs the same two-tower steps on Ray Train, on the data and features of a scale run's work
directory, twice in one Ray instance: ``heap_trim_every`` None (the allocators keep what the
steps free), then 50 (the default: Arrow's pool's ``release_unused`` and glibc's ``malloc_trim``).
It samples the worker's ``/proc/<pid>/status`` every ``SAMPLE_S``: ``RssAnon`` (private memory:
the heap, torch's tensors), ``RssShmem`` (shared memory it maps: Ray's object store) and
``RssFile`` (libraries). The baseline is the untrimmed run;
``trimmed_vs_untrimmed`` is the ratio of their peak ``RssAnon`` (reached in ``prepare()``,
while the worker loads the catalog, before any step), of its mean from that peak to the end (the
steps and the validation), of its last sample, and of their examples/s.

    .venv/bin/python bench/train_memory.py --work out/scale                 # large, 100 steps each, ~10 min
    .venv/bin/python bench/train_memory.py --work out/scale --size small    # ~3 min

Needs ``<work>/<size>/data`` and ``<work>/<size>/features`` (``bench/scale.py --work DIR``).
Only the steps and the end-of-epoch validation run: not the fallback's choice, nor the artifact.
Writes ``bench/results/train_memory.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _shared import BASE_CONFIG, RESULTS, finish, log
from _shared import SCALE_SETTINGS as SETTINGS

from raymm.config import load_config

BENCH = "train_memory"
SAMPLE_S = 0.5
MIB = 1024
FIELDS = ("RssAnon", "RssShmem", "RssFile")
WORKER = "ray::RayTrainWorker"


def _workers() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(WORKER.encode()):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _status(pid: int) -> dict[str, float] | None:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in FIELDS:
            values[name] = round(int(rest.split()[0]) / MIB, 1)  # kB -> MiB
    return values if len(values) == len(FIELDS) else None


class Sampler(threading.Thread):
    """The training worker's memory every ``SAMPLE_S`` while the run lasts: (seconds, status)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while not self.stopped.wait(SAMPLE_S):
            for pid in _workers():
                status = _status(pid)
                if status is not None:
                    self.samples.append((round(time.perf_counter() - started, 1), status))


def one_run(config: Any, data: Path, features: Path, steps: int, name: str) -> dict[str, Any]:
    """The two-tower steps of ``raymm train`` (:func:`raymm.training.trainer.train` up to its Ray Train
    run), cut to ``steps`` steps, with the worker's memory sampled."""
    from raymm.training.loop import RunHooks
    from raymm.training.ray_runner import run_on_ray, shuffled_examples
    from raymm.training.trainer import prepare, train_loop_per_worker, training_examples, worker_config

    prepared = prepare(config, str(data), str(features))
    examples = training_examples(config, prepared)
    loop_config = worker_config(str(data), str(features), examples, prepared.catalog.n_items)
    dataset = shuffled_examples(examples.to_table(), config.seed)
    sampler = Sampler()
    sampler.start()
    started = time.perf_counter()
    saved = run_on_ray(
        train_loop_per_worker,
        loop_config,
        config,
        config.train.run,
        name,
        dataset,
        "training run",
        RunHooks(max_steps_per_epoch=steps),
    )
    wall = time.perf_counter() - started
    sampler.stopped.set()
    sampler.join()
    samples = sampler.samples
    if not samples:
        raise RuntimeError(f"no {WORKER} process was seen during run {name}")
    anon = [status["RssAnon"] for _, status in samples]
    after_peak = anon[anon.index(max(anon)) :]  # the peak is prepare()'s catalog load, before the steps
    every = max(1, len(samples) // 60)
    return {
        "heap_trim_every": config.train.run.heap_trim_every,
        "steps": steps,
        "examples_per_s": round(saved.state.history[-1]["samples_per_s"]),
        "wall_s": round(wall, 1),
        "peak_rss_anon_mib": max(anon),
        "last_rss_anon_mib": anon[-1],
        "mean_rss_anon_after_peak_mib": round(sum(after_peak) / len(after_peak), 1),
        "peak_rss_shmem_mib": max(status["RssShmem"] for _, status in samples),
        "peak_rss_file_mib": max(status["RssFile"] for _, status in samples),
        "samples": len(samples),
        "timeline_s_anon_shmem_mib": [
            [t, status["RssAnon"], status["RssShmem"]] for t, status in samples[::every]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a bench/scale.py work directory")
    parser.add_argument("--size", default="large", help="the size under --work (default: large)")
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (default: 100)")
    parser.add_argument("--out", type=Path, help="result JSON (default: bench/results/train_memory.json)")
    args = parser.parse_args()
    root = args.work.resolve() / args.size  # workers resolve paths from their own directory
    data, features = root / "data", root / "features"
    if not (data / "dataset.json").is_file() or not (features / "features.json").is_file():
        parser.error(f"{root} holds no data and features: run bench/scale.py --work {args.work} first")

    from raymm.runtime import init_ray

    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="raymm-train-memory-") as storage:
        for label, trim in (("untrimmed", None), ("trimmed", 50)):
            config = load_config(
                BASE_CONFIG,
                [
                    *SETTINGS,
                    f"out={root}",
                    f"train.run.storage_path={storage}",
                    f"train.run.heap_trim_every={'null' if trim is None else trim}",
                ],
            )
            init_ray(config.ray)
            log(BENCH, f"{label}: {args.steps} steps at {args.size} ...")
            runs[label] = one_run(config, data, features, args.steps, f"{BENCH}-{label}")
            run = runs[label]
            log(
                BENCH,
                f"{label}: worker RssAnon peak {run['peak_rss_anon_mib']:.0f} MiB, last "
                f"{run['last_rss_anon_mib']:.0f} MiB, {run['examples_per_s']} examples/s",
            )
    base, trimmed = runs["untrimmed"], runs["trimmed"]
    report = {
        "question": "does the Ray Train worker's memory creep over the two-tower steps, and does "
        "train.run.heap_trim_every (glibc malloc_trim) stop it?",
        "size": args.size,
        "settings": list(SETTINGS),
        "sample_s": SAMPLE_S,
        "order": "untrimmed first, then trimmed, in one Ray instance",
        "runs": runs,
        "trimmed_vs_untrimmed": {
            "peak_rss_anon": round(trimmed["peak_rss_anon_mib"] / base["peak_rss_anon_mib"], 3),
            "last_rss_anon": round(trimmed["last_rss_anon_mib"] / base["last_rss_anon_mib"], 3),
            "mean_rss_anon_after_peak": round(
                trimmed["mean_rss_anon_after_peak_mib"] / base["mean_rss_anon_after_peak_mib"], 3
            ),
            "examples_per_s": round(trimmed["examples_per_s"] / base["examples_per_s"], 3),
        },
    }
    finish(BENCH, report, args.out or RESULTS / f"{BENCH}.json")


if __name__ == "__main__":
    main()
