"""Does raymm's own CUDA code run, and what does the GPU buy over the CPU, in one short run without Ray?

Written for a borrowed GPU machine that has torch/transformers but no Ray (its wheel is too big to
carry), so this script exercises the code that Ray only wraps: the extraction encoders that Ray
Data's actor pools run (``HFTextEncoder``, ``EfficientNetLite0Encoder``, ``MelStatsEncoder``,
built by ``build_encoder``) and the training step that runs inside Ray Train workers
(``NextItemObjective`` + AdamW), plus the full-ranking scoring of ``evaluate_ranking``
(``catalog_vectors``, ``user_vectors``, ``TwoTower.score``). Each is timed on ``--device`` and on
the CPU in the same run, so the ratio means something on any machine; the encoders' CUDA vectors
are checked against the CPU's on the same inputs (cosine > 0.99).

The text model is a BERT of all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads, FFN 1536,
vocab 30522) with random weights and a WordPiece tokenizer trained here on the synthetic texts:
the packaged MiniLM cannot be installed on the GPU machine, and random weights cost exactly what
trained ones do. ``raymm.features.pipeline`` (and so ``raymm.training.trainer``) imports Ray at the
top, so the model is built here as ``trainer.build_model`` does, without importing it.

Prints one JSON line on stdout and writes it indented to ``<out>/gpu_check.json``
(``gpu_check.quick.json`` with ``--quick``); progress goes to stderr. Exit 0: every check passed;
1: a stage failed or vectors disagreed (the JSON says which, with the traceback); 2: no CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Run from a checkout where raymm is not installed (the GPU machine): the repo root is the package root.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from raymm.config import (  # noqa: E402
    AudioEncoderConfig,
    EncoderResources,
    ImageEncoderConfig,
    RaymmConfig,
    TextEncoderConfig,
    TrainConfig,
)
from raymm.data.synth_media import CARDINALITIES, render_audio, render_image, render_text  # noqa: E402
from raymm.features.base import Encoder  # noqa: E402
from raymm.features.registry import build_encoder  # noqa: E402
from raymm.models.config import ModelConfig, UserStateConfig  # noqa: E402
from raymm.models.towers import TwoTower  # noqa: E402
from raymm.recommend.catalog import Catalog  # noqa: E402
from raymm.recommend.vectors import encode_catalog, user_vectors  # noqa: E402
from raymm.settings_base import MODALITIES  # noqa: E402
from raymm.training.examples import Examples, target_log_q  # noqa: E402
from raymm.training.loop import StepOutput, fit  # noqa: E402
from raymm.training.objective import NextItemObjective  # noqa: E402
from raymm.training.trainer import two_tower_step  # noqa: E402

BENCH = "gpu_check"
#: Feature widths of the default encoders: MiniLM text, EfficientNet-Lite0 image, 64 mels x 16 frames audio.
FEATURE_DIMS: dict[str, int] = {"text": 384, "image": 1280, "audio": 1024}
#: all-MiniLM-L6-v2's architecture (its config.json), so the random model costs what the real one does.
MINILM_SHAPE: dict[str, Any] = {
    "num_hidden_layers": 6,
    "hidden_size": 384,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
}
#: Batch sizes per modality: large ones for the GPU, configs/quickstart.yaml's for the CPU.
DEVICE_BATCH = {"text": 256, "image": 128, "audio": 128}
CPU_BATCH = {"text": 64, "image": 32, "audio": 64}
#: Smallest acceptable cosine between a CUDA vector and the CPU vector of the same input (both fp32).
MIN_COSINE = 0.99
#: Seconds of timed training steps per device at most; bounds the CPU run on a slow or busy host.
TRAIN_BUDGET_S = 30.0
SYNTH_IMAGE_SIZE = 64  # what `raymm synth` renders (SynthConfig.image_size)
SAMPLE_RATE = 16_000  # what `raymm synth` renders and MelStatsEncoder reads, so no resampling


class GpuCheckError(RuntimeError):
    """A stage of the check failed or its result is wrong; the message names the stage."""


@dataclass(frozen=True)
class Sizes:
    """How much work each stage does; ``--quick`` shrinks all of it for a CPU smoke run."""

    items: int  # extraction inputs per modality on --device
    cpu_items: int  # the first cpu_items of them are also encoded on the CPU
    distinct: int  # rendered media per modality, repeated to `items`
    catalog_items: int
    batch: int
    warmup_steps: int
    device_steps: int
    cpu_steps: int
    scoring_users: int
    scoring_reps: int

    @classmethod
    def for_run(cls, items: int, quick: bool) -> Sizes:
        if quick:
            return cls(min(items, 64), 32, 32, 2_000, 256, 1, 3, 2, 200, 1)
        return cls(items, min(items, 256), min(items, 384), 20_000, 1024, 5, 30, 10, 2_000, 3)


def log(message: str) -> None:
    print(f"[{BENCH}] {message}", file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock time covers the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Failures:
    """Stages that raised and checks that missed; a failure is recorded and the next stage still runs.

    A few minutes on a borrowed GPU are too scarce to lose every later number to one bad stage.
    """

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # recorded with its traceback; the JSON and the exit status say so
            trace = traceback.format_exc()
            log(f"FAILED in {name}: {type(exc).__name__}: {exc}\n{trace}")
            self.items.append({"stage": name, "error": f"{type(exc).__name__}: {exc}", "traceback": trace})

    def check(self, name: str, ok: bool, message: str) -> None:
        if not ok:
            log(f"CHECK FAILED in {name}: {message}")
            self.items.append({"stage": name, "error": message})


# -- extraction ------------------------------------------------------------------------------


def synthetic_media(distinct: int, repeat_to: int, seed: int) -> dict[str, list[Any]]:
    """Text strings, PNG bytes and WAV bytes from raymm's synthetic renderers, ``repeat_to`` per modality.

    Only ``distinct`` items are rendered (rendering is slower than encoding them); the list cycles.
    """
    rng = np.random.default_rng(seed)
    facets = rng.integers(0, CARDINALITIES, size=(distinct, len(CARDINALITIES)))
    rendered: dict[str, list[Any]] = {
        "text": [render_text(row, rng, 0.15) for row in facets],
        "image": [render_image(row, rng, 0.15, SYNTH_IMAGE_SIZE) for row in facets],
        "audio": [render_audio(row, rng, 0.15, SAMPLE_RATE) for row in facets],
    }
    return {m: [values[k % distinct] for k in range(repeat_to)] for m, values in rendered.items()}


def build_text_model(texts: Sequence[str], directory: Path) -> Path:
    """A MiniLM-L6-shaped BERT with random weights and a WordPiece tokenizer trained on ``texts``.

    Saved with ``save_pretrained`` so ``HFTextEncoder`` loads it the way it loads a real model
    (``AutoTokenizer`` + ``AutoModel`` from a local directory). Returns the directory.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    wordpiece.train_from_iterator(
        list(texts), trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials, show_progress=False)
    )
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MINILM_SHAPE["max_position_embeddings"],
    )
    if tokenizer.vocab_size > MINILM_SHAPE["vocab_size"]:
        raise GpuCheckError(f"trained tokenizer has {tokenizer.vocab_size} tokens, more than MiniLM's vocab")
    torch.manual_seed(0)
    model = BertModel(BertConfig(**MINILM_SHAPE))  # with the pooler, as MiniLM ships (unused by mean pooling)
    tokenizer.save_pretrained(directory)
    # transformers 5 writes its own class name (TokenizersBackend); the GPU machine may run another
    # 5.x, and PreTrainedTokenizerFast is the name every version since 4 loads a tokenizer.json with.
    tokenizer_config = directory / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config.write_text(json.dumps(settings, indent=2))
    model.save_pretrained(directory)
    return directory


def encoder_configs(text_model: Path, batch: dict[str, int]) -> dict[str, Any]:
    """Each modality's encoder config: the defaults raymm ships, with this run's batch sizes.

    fp32 everywhere, so CUDA and CPU vectors are comparable (reduced precision is a separate question).
    """
    return {
        "text": TextEncoderConfig(
            kind="hf", model=str(text_model), resources=EncoderResources(batch_size=batch["text"])
        ),
        "image": ImageEncoderConfig(
            kind="efficientnet_lite0", resources=EncoderResources(batch_size=batch["image"])
        ),
        "audio": AudioEncoderConfig(kind="mel_stats", resources=EncoderResources(batch_size=batch["audio"])),
    }


def timed_encode(encoder: Encoder, values: Sequence[Any], warmup: int) -> tuple[np.ndarray, float]:
    """(vectors, items/s) of ``encoder.encode(values)``, after an untimed warm-up on ``warmup`` items.

    The warm-up takes CUDA context creation, cuDNN algorithm choice and lazy imports out of the
    timing. ``encode`` returns host arrays, so the timing includes the device round trip.
    Raises :class:`GpuCheckError` if any row failed (synthetic inputs are all valid).
    """
    encoder.encode(values[:warmup])
    started = time.perf_counter()
    batch = encoder.encode(values)
    elapsed = time.perf_counter() - started
    if batch.n_failed or not batch.present.all():
        first = next((e for e in batch.errors if e is not None), "absent row")
        raise GpuCheckError(
            f"{encoder.modality}: {batch.n_failed} of {len(values)} rows failed, e.g. {first}"
        )
    return batch.vectors, len(values) / elapsed


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b``; (n,) float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(axis=1) / np.maximum(norms, 1e-12)


def check_extraction(
    device: torch.device, sizes: Sizes, workdir: Path, failures: Failures
) -> tuple[dict[str, Any], str]:
    """Per modality: items/s on ``device`` and on the CPU, their ratio and the vectors' agreement."""
    started = time.perf_counter()
    media = synthetic_media(sizes.distinct, sizes.items, seed=0)
    log(f"rendered {sizes.distinct} distinct items per modality in {time.perf_counter() - started:.1f}s")
    text_model = build_text_model(media["text"][: sizes.distinct], workdir / "minilm-l6-shape")
    device_configs = encoder_configs(text_model, DEVICE_BATCH)
    cpu_configs = encoder_configs(text_model, CPU_BATCH)
    report: dict[str, Any] = {}
    for modality in MODALITIES:
        with failures.stage(f"extraction.{modality}"):
            values = media[modality]
            reset_peak(device)
            on_device = build_encoder(modality, device_configs[modality], str(device))
            device_vectors, device_rate = timed_encode(on_device, values, DEVICE_BATCH[modality])
            peak = peak_mb(device)
            del on_device
            on_cpu = build_encoder(modality, cpu_configs[modality], "cpu")
            cpu_vectors, cpu_rate = timed_encode(on_cpu, values[: sizes.cpu_items], CPU_BATCH[modality])
            del on_cpu
            cosines = row_cosines(device_vectors[: sizes.cpu_items], cpu_vectors)
            report[modality] = {
                "device_items_per_s": round(device_rate, 1),
                "cpu_items_per_s": round(cpu_rate, 1),
                "ratio": round(device_rate / cpu_rate, 2),
                "max_abs_cos_gap": float(np.abs(1.0 - cosines).max()),
                "min_cosine": float(cosines.min()),
                "n_device_items": len(values),
                "n_cpu_items": sizes.cpu_items,
                "batch_size": {"device": DEVICE_BATCH[modality], "cpu": CPU_BATCH[modality]},
                "dim": int(device_vectors.shape[1]),
                "peak_gpu_mem_mb": peak,
            }
            log(f"extraction {modality}: {json.dumps(report[modality])}")
            failures.check(
                f"extraction.{modality}",
                bool(cosines.min() > MIN_COSINE),
                f"{device} and cpu vectors disagree: min cosine {cosines.min():.5f} <= {MIN_COSINE}",
            )
    return report, "MiniLM-L6 shape, random weights"


# -- training and scoring --------------------------------------------------------------------


def random_catalog(n_items: int, seed: int, missing: float = 0.2, warm: float = 0.8) -> Catalog:
    """A catalog of the real feature widths with random features, ``missing`` absent per modality.

    A ``warm`` fraction of the items gets an item-id index (1..n_warm), the rest are cold (0), as
    ``build_catalog`` does for items never seen in training.
    """
    rng = np.random.default_rng(seed)
    features, present = {}, {}
    for modality, dim in FEATURE_DIMS.items():
        mask = rng.random(n_items) >= missing
        matrix = rng.standard_normal((n_items, dim), dtype=np.float32)
        matrix[~mask] = 0.0
        features[modality] = torch.from_numpy(matrix)
        present[modality] = torch.from_numpy(mask)
    id_index = np.zeros(n_items, dtype=np.int64)
    warm_rows = rng.permutation(n_items)[: int(warm * n_items)]
    id_index[warm_rows] = np.arange(1, len(warm_rows) + 1)
    item_ids = np.asarray([f"item{k:06d}" for k in range(n_items)], dtype=object)
    return Catalog(item_ids, features, present, torch.from_numpy(id_index), [[] for _ in range(n_items)], [])


def random_walk_examples(n_items: int, n_examples: int, max_history: int, seed: int) -> Examples:
    """Next-item examples whose histories stay mostly inside one cluster of 100 items.

    Real histories repeat items and neighbourhoods; uniform histories would make every step's
    unique-item set (what the item tower runs on) unrealistically large. Histories have 1..L
    items, -1 padded at the front (oldest first), as ``build_examples`` makes them.
    """
    rng = np.random.default_rng(seed)
    cluster_size = 100
    n_clusters = max(1, n_items // cluster_size)
    cluster = rng.integers(0, n_clusters, size=(n_examples, 1))
    rows = cluster * cluster_size + rng.integers(0, cluster_size, size=(n_examples, max_history + 1))
    jumps = rng.random(rows.shape) < 0.1
    rows = np.where(jumps, rng.integers(0, n_items, size=rows.shape), np.minimum(rows, n_items - 1))
    lengths = rng.integers(1, max_history + 1, size=n_examples)
    history = np.where(np.arange(max_history)[None, :] >= max_history - lengths[:, None], rows[:, :-1], -1)
    return Examples(user=np.arange(n_examples), history=history, target=rows[:, -1])


def build_two_tower(catalog: Catalog, seed: int) -> TwoTower:
    """``raymm.training.trainer.build_model`` without importing it (it imports Ray at the top).

    ModelConfig defaults, item-id embeddings for the warm items (``model.item_id_embeddings``
    default), and the closed-form standardisation fitted on the warm items.
    """
    config = ModelConfig()
    torch.manual_seed(seed)
    model = TwoTower(config, catalog.dims, int(catalog.id_index.max()))
    if model.requires_fit:
        model.fit_alignment(catalog.features, catalog.present, rows=catalog.warm)
    return model


def time_training(
    device: torch.device, sizes: Sizes, examples: Examples, steps: int, warmup: int, budget_s: float
) -> dict[str, Any]:
    """Samples/s of the Ray Train worker's step (forward, backward, AdamW, ``loss.item()``) on ``device``.

    Runs ``warmup`` untimed steps, then ``steps`` timed ones, or fewer (at least 2) once the timed
    steps have taken ``budget_s`` seconds; ``steps`` in the result says how many ran.
    """
    train = TrainConfig()
    catalog = random_catalog(sizes.catalog_items, seed=1)
    model = build_two_tower(catalog, seed=0)
    log_q = target_log_q(examples, catalog.n_items)
    objective = NextItemObjective(model, catalog, log_q, use_tags=False).to_device(device)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    columns = [f"h{k}" for k in range(examples.history.shape[1])]
    table = {f"h{k}": torch.from_numpy(examples.history[:, k]) for k in range(examples.history.shape[1])}
    table["target"] = torch.from_numpy(examples.target)
    step = two_tower_step(objective, columns, device)  # the step the Ray Train worker runs
    losses: list[float] = []

    def logged_step(batch: dict[str, torch.Tensor]) -> StepOutput:
        output = step(batch)
        losses.append(output.loss.item())  # the worker logs it every step, which syncs the device
        return output

    def batches(first: int, count: int, deadline: float | None) -> Any:
        # The worker gets host batches from Ray Data and copies them over, as the step does here.
        def epoch_batches(_epoch: int) -> Any:
            for k in range(first, first + count):
                # A slow host must not eat the GPU machine's few minutes: stop early, report what ran.
                if deadline is not None and k - first >= 2 and time.perf_counter() > deadline:
                    return
                rows = slice(k * sizes.batch, (k + 1) * sizes.batch)
                yield {name: column[rows] for name, column in table.items()}

        return epoch_batches

    def run(first: int, count: int, deadline: float | None) -> int:
        state = fit(  # the one training loop, one epoch of ``count`` steps, no validation to speak of
            model,
            optimizer,
            logged_step,
            batches(first, count, deadline),
            lambda: {"none": 0.0},
            epochs=1,
            patience=1,
            metric="none",
        )
        return state.step

    run(0, warmup, None)
    synchronize(device)
    started = time.perf_counter()
    done = run(warmup, steps, started + budget_s)
    synchronize(device)
    elapsed = time.perf_counter() - started
    if not all(math.isfinite(v) for v in losses):
        raise GpuCheckError(f"training on {device}: non-finite loss in {losses}")
    return {
        "samples_per_s": done * sizes.batch / elapsed,
        "steps": done,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "model": model,
        "catalog": catalog,
    }


def time_scoring(model: TwoTower, catalog: Catalog, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Wall time of ``evaluate_ranking``'s scoring: item and user vectors, (users x items) scores, top 20.

    ``catalog`` must already be on ``device`` (``NextItemObjective.to_device`` moved it).
    """
    rng = np.random.default_rng(2)
    users = random_walk_examples(catalog.n_items, sizes.scoring_users, UserStateConfig().max_history, seed=3)
    history = users.history[rng.permutation(len(users))]

    def score_all() -> tuple[Any, ...]:
        items = encode_catalog(model, catalog).vectors
        people = user_vectors(model, items, history)
        scores = model.score(people, items)
        top = torch.topk(scores, 20, dim=1)
        synchronize(device)
        return items, people, top

    score_all()
    started = time.perf_counter()
    for _ in range(sizes.scoring_reps):
        items, people, _top = score_all()
    elapsed = (time.perf_counter() - started) / sizes.scoring_reps
    expected = (catalog.n_items, model.config.towers.embed_dim)
    if tuple(items.shape) != expected or not torch.isfinite(people).all():
        raise GpuCheckError(f"scoring on {device}: item vectors {tuple(items.shape)} (expected {expected})")
    return {"seconds": elapsed, "users_per_s": sizes.scoring_users / elapsed}


def check_training(
    device: torch.device, sizes: Sizes, failures: Failures
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Training step samples/s and full-ranking scoring time on ``device`` and on the CPU."""
    n_examples = (sizes.warmup_steps + max(sizes.device_steps, sizes.cpu_steps)) * sizes.batch
    # the default training window (train.history_window within model.user_state.max_history)
    examples = random_walk_examples(sizes.catalog_items, n_examples, RaymmConfig().train_window(), seed=4)
    results: dict[str, dict[str, Any]] = {}
    scoring: dict[str, dict[str, Any]] = {}
    runs = {"device": (device, sizes.device_steps), "cpu": (torch.device("cpu"), sizes.cpu_steps)}
    for role, (where, steps) in runs.items():
        with failures.stage(f"training.{role}"):
            reset_peak(where)
            results[role] = time_training(where, sizes, examples, steps, sizes.warmup_steps, TRAIN_BUDGET_S)
            results[role]["peak_gpu_mem_mb"] = peak_mb(where)
            ran = results[role]["steps"]
            log(f"training on {where}: {results[role]['samples_per_s']:.0f} samples/s over {ran} steps")
        if role in results:
            with failures.stage(f"scoring.{role}"):
                scoring[role] = time_scoring(results[role]["model"], results[role]["catalog"], sizes, where)
                scoring[role]["peak_gpu_mem_mb"] = peak_mb(where)
                milliseconds = scoring[role]["seconds"] * 1000
                log(f"scoring on {where}: {milliseconds:.1f} ms for {sizes.scoring_users} users")
            del results[role]["model"], results[role]["catalog"]
    training: dict[str, Any] = {
        "batch_size": sizes.batch,
        "catalog_items": sizes.catalog_items,
        "feature_dims": FEATURE_DIMS,
        "model": "ModelConfig defaults",
    }
    for role, result in results.items():
        training[f"{role}_samples_per_s"] = round(result["samples_per_s"], 1)
        training[f"{role}_steps"] = result["steps"]
        training[f"{role}_loss_first_last"] = [round(result["first_loss"], 4), round(result["last_loss"], 4)]
    if len(results) == 2:
        training["ratio"] = round(results["device"]["samples_per_s"] / results["cpu"]["samples_per_s"], 2)
    if "device" in results:
        training["peak_gpu_mem_mb"] = results["device"]["peak_gpu_mem_mb"]
    score_report: dict[str, Any] = {"users": sizes.scoring_users, "items": sizes.catalog_items}
    for role, result in scoring.items():
        score_report[f"{role}_ms"] = round(result["seconds"] * 1000, 2)
        score_report[f"{role}_users_per_s"] = round(result["users_per_s"], 1)
        if role == "device":
            score_report["peak_gpu_mem_mb"] = result["peak_gpu_mem_mb"]
    if len(scoring) == 2:
        score_report["ratio"] = round(scoring["cpu"]["seconds"] / scoring["device"]["seconds"], 2)
    return training, score_report


# -- the run ---------------------------------------------------------------------------------


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


#: Every peak :func:`peak_mb` has read; the run's overall peak is their maximum (peaks reset per stage).
_PEAKS_MB: list[float] = []


def peak_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated by tensors since the last :func:`reset_peak`; None on the CPU."""
    if device.type != "cuda":
        return None
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    _PEAKS_MB.append(peak)
    return peak


def machine(device: torch.device, threads: int) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": threads,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        # cuDNN convolutions default to TF32 on Ampere and later; it explains a tiny image cosine gap.
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if cuda else None,
        "matmul_precision": torch.get_float32_matmul_precision(),
    }


def quiet_transformers() -> None:
    """No progress bars or load reports from ``transformers``: stderr is this script's progress log."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def resolve(device_name: str) -> torch.device:
    """The device to measure; exits with status 2 and says why when CUDA is asked for but absent."""
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        log(
            f"--device {device_name}: torch {torch.__version__} sees no CUDA device "
            f"(torch.version.cuda={torch.version.cuda}); rerun with --device cpu for a CPU-only smoke run"
        )
        raise SystemExit(2)
    if device_name != "cpu" and not device_name.startswith("cuda"):
        log(f"--device must be 'cuda', 'cuda:N' or 'cpu', got {device_name!r}")
        raise SystemExit(2)
    return torch.device(device_name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--device", default="cuda", help="device to measure against the CPU (cuda, cuda:N, cpu)"
    )
    parser.add_argument("--items", type=int, default=2048, help="extraction inputs per modality on --device")
    parser.add_argument("--quick", action="store_true", help="smoke run: few items, small catalog, few steps")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: CPUs, at most 16)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="directory for the JSON")
    parser.add_argument(
        "--stages", default="extraction,training", help="comma-separated subset of extraction,training"
    )
    args = parser.parse_args(argv)
    if args.items < 1:
        parser.error(f"--items must be positive, got {args.items}")
    unknown = set(args.stages.split(",")) - {"extraction", "training"}
    if unknown:
        parser.error(f"--stages: unknown {sorted(unknown)}; expected extraction and/or training")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    started = time.perf_counter()
    device = resolve(args.device)
    threads = args.threads or min(os.cpu_count() or 1, 16)
    torch.set_num_threads(threads)
    quiet_transformers()
    sizes = Sizes.for_run(args.items, args.quick)
    failures = Failures()
    stages = args.stages.split(",")
    log(f"device {device}, {threads} torch threads, sizes {sizes}")
    report: dict[str, Any] = {
        "bench": BENCH,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "device": str(device),
        "machine": machine(device, threads),
    }
    stage_runs: list[tuple[str, Callable[[], None]]] = []
    with tempfile.TemporaryDirectory(prefix="raymm-gpu-check-") as workdir:

        def extraction() -> None:
            report["extraction"], report["text_model"] = check_extraction(
                device, sizes, Path(workdir), failures
            )

        def training() -> None:
            report["training"], report["scoring"] = check_training(device, sizes, failures)

        stage_runs = [
            (name, fn) for name, fn in (("extraction", extraction), ("training", training)) if name in stages
        ]
        for name, run in stage_runs:
            with failures.stage(name):
                run()
    report["peak_gpu_mem_mb"] = max(_PEAKS_MB, default=None)
    # The whole point of this check is that it runs without Ray; make that a hard fact.
    ray_loaded = "ray" in sys.modules
    failures.check("no_ray", not ray_loaded, "ray was imported during the run")
    report["ray_imported"] = ray_loaded
    report["failures"] = failures.items
    report["ok"] = not failures.items
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (f"{BENCH}.quick.json" if args.quick else f"{BENCH}.json")
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(json.dumps(report, default=float), flush=True)
    log(f"wrote {path}; {'all checks passed' if report['ok'] else f'{len(failures.items)} failure(s)'}")
    assert "ray" not in sys.modules, "ray was imported: this check must exercise raymm without Ray"
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
