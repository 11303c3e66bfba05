"""Training throughput: samples/s of one plain PyTorch process vs Ray Train with 1 and 2 workers.

The question: what does Ray Train cost against the same loop without Ray, and what does a second
(gloo, CPU) worker buy on this machine? There is no design.md target for it; the ratios are
reported, not judged.

On the ``small`` benchmark (``out/quickstart`` if it holds data and features, else synthesized
and extracted into ``--data-root``), with ``configs/quickstart.yaml``'s model and train settings
and ``train.epochs=2`` (``--epochs``):

(a) single: one process, no Ray: ``prepare`` + ``build_model``, :class:`NextItemObjective` and
    AdamW over the next-item examples in shuffled batches, after each epoch the same full-ranking
    validation the Ray loop runs; with ``torch.set_num_threads(2)`` and again with 1
    (``--threads 2,1``). The faster of the two is the baseline (both are in ``single_by_threads``):
    on 2 cores shared with other work, 2 intra-op threads can be several times slower than 1,
    and comparing Ray's single-threaded workers with that would flatter Ray.
(b) ray_1w: ``train()`` with 1 worker reserving 1 CPU (1 torch thread); the other CPU is left to
    Ray Data (the examples dataset and its split coordinator) and the driver.
(c) ray_2w: ``train()`` with 2 workers x 0.5 CPU (gloo DDP, 1 torch thread each: 2 threads in
    total, as many as the cores). Each worker sees half the examples per epoch.

``samples_per_s`` is measured inside the step loop only (the Ray loop's own per-epoch
``samples_per_s``, summed over workers), mean over epochs; ``wall_s`` is the whole call:
for Ray, dataset creation, worker start-up, validation, checkpoints and the artifact; Ray itself
is started before, not timed. Ratios: ``ray_1w_vs_single``, ``ray_2w_vs_1w``,
``ray_2w_vs_single`` (samples/s), and ``wall_ray_1w_vs_single``, ``wall_ray_2w_vs_1w`` (speed on
wall time: the second's wall / the first's; > 1 means the first is faster).

Prints one JSON line and writes ``bench/results/train_scaling.json``.

    .venv/bin/python bench/train_scaling.py [--epochs 2] [--threads 2] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _shared import BASE_CONFIG, QUICKSTART, ensure_quickstart, finish, log

from raymm.config import RaymmConfig, load_config
from raymm.runtime import init_ray
from raymm.training.trainer import train, train_in_process

BENCH = "train_scaling"


def single_process(config: RaymmConfig, data: Path, features: Path, threads: int) -> dict[str, Any]:
    """(a): the same training loop (:func:`raymm.training.trainer.train_in_process`: examples,
    objective, step, per-epoch validation, :func:`raymm.training.loop.fit`) in this process, no Ray."""
    started = time.perf_counter()
    _, state = train_in_process(config, str(data), str(features), threads=threads)
    epochs = [
        {k: row.get(k) for k in ("epoch", "samples_per_s", "train_loss", "val_ndcg@20")}
        for row in state.history
    ]
    for row in epochs:
        log(
            BENCH,
            f"single, {threads} thread(s), epoch {row['epoch']:.0f}: {row['samples_per_s']:.0f} samples/s",
        )
    return _summary(epochs, time.perf_counter() - started, None, threads=threads)


def ray_run(config: RaymmConfig, data: Path, features: Path, work: Path, name: str) -> dict[str, Any]:
    """(b)/(c): one ``train()`` call; samples/s from the loop's own per-epoch report."""
    config = config.model_copy(deep=True)
    config.train.run.storage_path = str(work / "train")
    result = train(config, str(data), str(features), str(work / f"model-{name}"), name=name)
    epochs = [
        {k: row.get(k) for k in ("epoch", "samples_per_s", "train_loss", "val_ndcg@20")}
        for row in result.history
    ]
    return _summary(
        epochs,
        result.elapsed_s,
        None,
        workers=config.train.run.num_workers,
        cpus_per_worker=config.train.run.cpus_per_worker,
    )


def _summary(
    epochs: list[dict[str, Any]], wall_s: float, n_examples: int | None, **setup: Any
) -> dict[str, Any]:
    return {
        **setup,
        "samples_per_s": float(np.mean([e["samples_per_s"] for e in epochs])),
        "wall_s": round(wall_s, 2),
        "n_examples": n_examples,
        "epochs": epochs,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--threads", default="2,1", help="torch thread counts of the single-process loop (comma-separated)"
    )
    parser.add_argument("--data-root", type=Path, default=QUICKSTART, help="holds data/ and features/")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    # Ray workers' output is forwarded to the driver's stdout; keep stdout for the JSON line.
    with (
        contextlib.redirect_stdout(sys.stderr),
        tempfile.TemporaryDirectory(prefix="raymm-bench-train-") as tmp,
    ):
        work = Path(tmp)
        data, features = ensure_quickstart(args.data_root, BENCH)
        base = load_config(BASE_CONFIG, [f"out={work}", f"train.epochs={args.epochs}", "train.patience=100"])
        runs: dict[str, Any] = {}
        by_threads = {}
        for threads in (int(t) for t in args.threads.split(",")):
            log(BENCH, f"single process, {threads} thread(s)")
            by_threads[threads] = single_process(base, data, features, threads)
        runs["single"] = max(by_threads.values(), key=lambda run: run["samples_per_s"])
        init_ray(base.ray)
        for name, workers, cpus in (("ray_1w", 1, 1.0), ("ray_2w", 2, 0.5)):
            log(BENCH, f"Ray Train, {workers} worker(s) x {cpus} CPU")
            config = base.model_copy(deep=True)
            config.train.run.num_workers, config.train.run.cpus_per_worker = workers, cpus
            config.train.run.torch_threads = 1  # one thread per worker, as the docstring says
            runs[name] = ray_run(config, data, features, work, name)
        import ray

        ray.shutdown()

    def ratio(a: str, b: str, key: str) -> float:
        return round(runs[a][key] / runs[b][key], 3)

    report = {
        "question": "Ray Train samples/s vs a plain single-process loop, and 2 workers vs 1 (not judged)",
        "data": data.name,
        "epochs": args.epochs,
        "batch_size": base.train.batch_size,
        "ratios": {
            "ray_1w_vs_single": ratio("ray_1w", "single", "samples_per_s"),
            "ray_2w_vs_1w": ratio("ray_2w", "ray_1w", "samples_per_s"),
            "ray_2w_vs_single": ratio("ray_2w", "single", "samples_per_s"),
            # on wall time, as speed: > 1 means the first is faster
            "wall_ray_1w_vs_single": ratio("single", "ray_1w", "wall_s"),
            "wall_ray_2w_vs_1w": ratio("ray_1w", "ray_2w", "wall_s"),
        },
        "runs": runs,
        "single_by_threads": by_threads,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    return finish(BENCH, report, args.out)


if __name__ == "__main__":
    main()
