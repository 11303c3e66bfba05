"""``raymm train``: align -> fuse -> two towers, distributed with Ray Train.

The driver builds next-item examples from the training split (:mod:`raymm.training.examples`) and
hands them to Ray Train as a Ray Dataset (:mod:`raymm.training.ray_runner`); each worker loads the
catalog from storage, builds the model, wraps :class:`~raymm.training.objective.NextItemObjective`
in DDP and runs the one training loop, :func:`raymm.training.loop.fit`: every epoch rank 0
validates with the evaluator of :mod:`raymm.eval.evaluate` (full ranking on the validation split,
at most ``train.validation_users`` of its users),
rank 0 checkpoints model + optimizer + loop state, all ranks report. ``FailureConfig`` restarts
failed workers from the latest checkpoint. At the end the driver fits the item-item part
(:mod:`raymm.recommend.collab`) on the training split, chooses on validation how serving blends
it with the two-tower and popularity (:func:`~raymm.recommend.blend.choose_blend_settings`) and writes the model artifact from the best
epoch's weights. What a reader of the metrics must know about the run (an alignment method that
needs two modalities given one: :func:`training_notes`) is logged at the start and kept in the
manifest's ``notes``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raymm.config import RaymmConfig
from raymm.data import io
from raymm.data.dataset import CATALOG_ITEM_COLUMNS, load_dataset
from raymm.data.dataset import MANIFEST as DATASET_MANIFEST
from raymm.eval.evaluate import evaluate_scorer
from raymm.features.store import FEATURES_MANIFEST, TFIDF_STATE, load_features, read_encoders
from raymm.models.align import inactive_alignment
from raymm.models.artifact import Manifest, write_artifact
from raymm.models.blend_parts import CollabVectors
from raymm.models.config import ModelConfig
from raymm.models.towers import TwoTower
from raymm.recommend.blend import BlendSettings, choose_blend_settings, fit_content
from raymm.recommend.catalog import Catalog, build_catalog
from raymm.recommend.collab import CollaborativeScorer
from raymm.recommend.history import EvalUsers, eval_users, item_counts
from raymm.recommend.scorers import ContentScorer, FitContext, Scorer, TwoTowerScorer
from raymm.recommend.vectors import encode_catalog
from raymm.training.examples import Examples, build_examples, target_log_q
from raymm.training.loop import LoopState, RunHooks, StepOutput, best_row, fit
from raymm.training.objective import NextItemObjective
from raymm.training.ray_runner import TrainingError, WorkerRun, deterministic, run_on_ray, shuffled_examples
from raymm.training.settings import TrainRunConfig

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """What both the driver and each worker derive from storage."""

    catalog: Catalog
    validation: EvalUsers
    model_config: ModelConfig
    fingerprint: str
    n_item_ids: int
    audio_bands: int | None
    train_events: pa.Table  # the training split, read once here (examples, fallback, popularity)


def prepare(config: RaymmConfig, data_dir: str, features_dir: str) -> Prepared:
    """Load catalog and validation users, and size the model config to this catalog."""
    dataset = load_dataset(data_dir, tables=(), item_columns=CATALOG_ITEM_COLUMNS)
    train = dataset.interactions("train")
    features = load_features(features_dir)
    catalog = build_catalog(features, dataset.items, train, config.model.modalities)
    spec = config.model.user_state
    validation = eval_users(train, dataset.interactions("validation"), catalog, spec.events, spec.max_history)
    validation = validation.sample(config.train.validation_users, config.seed)
    n_item_ids = int(catalog.id_index.max()) if config.model.item_id_embeddings else 0
    fingerprint = _fingerprint(data_dir, features_dir, catalog)
    bands = read_encoders(features_dir).get("audio", {}).get("mel_bands")
    return Prepared(
        catalog, validation, config.model.model_copy(deep=True), fingerprint, n_item_ids, bands, train
    )


def _fingerprint(data_dir: str, features_dir: str, catalog: Catalog) -> str:
    digest = hashlib.sha256()
    for uri in (io.join(data_dir, DATASET_MANIFEST), io.join(features_dir, FEATURES_MANIFEST)):
        if io.exists(uri):
            document = io.read_json(uri)
            document.pop("created_at", None)
            digest.update(json.dumps(document, sort_keys=True).encode())
    digest.update(json.dumps(catalog.dims, sort_keys=True).encode())
    return digest.hexdigest()


def training_notes(prepared: Prepared) -> list[str]:
    """What a reader of this run's metrics must know (e.g. an alignment with one modality, which
    aligns nothing), each logged once as a warning; :func:`train` records them in the manifest."""
    note = inactive_alignment(prepared.model_config.align, list(prepared.catalog.dims))
    notes = [] if note is None else [note]
    for line in notes:
        log.warning("raymm train: %s", line)
    return notes


def training_examples(config: RaymmConfig, prepared: Prepared) -> Examples:
    """The two-tower's examples: each positive event of the train split with the user's
    :meth:`~raymm.config.RaymmConfig.train_window` most recent positive items before it.

    Evaluation and serving pool ``model.user_state.max_history`` items; a shorter training window
    (``train.history_window``) trains on the same latest items, fewer of them per example.
    """
    events = config.model.user_state.events
    return build_examples(prepared.train_events, prepared.catalog, events, config.train_window())


def worker_config(data_dir: str, features_dir: str, examples: Examples, n_items: int) -> dict[str, Any]:
    """What :func:`train_loop_per_worker` reads beside the config: where the data is, the targets'
    log-probabilities, and the history columns the driver's examples hold (the worker never
    re-derives the window's width)."""
    return {
        "data_dir": data_dir,
        "features_dir": features_dir,
        "log_q": target_log_q(examples, n_items),
        "history_columns": [f"h{k}" for k in range(examples.history.shape[1])],
    }


def build_model(prepared: Prepared, seed: int) -> TwoTower:
    """A fresh model for this catalog, with its closed-form alignment fitted (same on every rank).

    Standardisation, PCA, CCA and ridge maps are fitted on the warm items only (those in the
    training split's interactions): cold items are held out of training, features included.
    """
    torch.manual_seed(seed)
    catalog = prepared.catalog
    model = TwoTower(prepared.model_config, catalog.dims, prepared.n_item_ids, prepared.audio_bands)
    if model.requires_fit:
        model.fit_alignment(catalog.features, catalog.present, rows=catalog.warm)
    return model


def validation_metrics(
    scorer: Scorer, users: EvalUsers, config: RaymmConfig, n_items: int
) -> dict[str, float]:
    """The evaluator's metrics of ``scorer`` on validation ``users`` at ``evaluate.ks``."""
    return evaluate_scorer(scorer, users, config.evaluate.ks, n_items)


def two_tower_step(objective: torch.nn.Module, history_columns: list[str], device: torch.device) -> Any:
    """The step :func:`fit` runs on a batch of the examples table: the objective's loss and its parts."""

    def step(batch: dict[str, torch.Tensor]) -> StepOutput:
        history = torch.stack([batch[c] for c in history_columns], dim=1).to(device)
        target = batch["target"].to(device)
        losses = objective(history, target)
        return StepOutput(
            losses.total,
            len(target),
            {"rec_loss": float(losses.rec.detach()), "align_loss": float(losses.align.detach())},
        )

    return step


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs; see the module docstring."""
    run = WorkerRun(loop_config)
    config = run.config
    prepared = prepare(config, loop_config["data_dir"], loop_config["features_dir"])
    model = build_model(prepared, config.seed)
    use_tags = prepared.model_config.align.method == "kg"
    objective = NextItemObjective(model, prepared.catalog, loop_config["log_q"], use_tags).to_device(
        run.device
    )
    optimizer = torch.optim.AdamW(
        objective.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    state = run.restore(model, optimizer)
    columns = loop_config["history_columns"]
    n_items = prepared.catalog.n_items
    fit(
        model,
        optimizer,
        two_tower_step(run.prepare(objective), columns, run.device),
        run.batches(config.train.batch_size),
        run.on_rank0(
            lambda: validation_metrics(
                TwoTowerScorer(model, prepared.catalog), prepared.validation, config, n_items
            )
        ),
        epochs=config.train.epochs,
        patience=config.train.patience,
        metric=config.train.val_metric,
        state=state,
        on_epoch=run.reporter(model, optimizer),
        before_step=run.before_step,
        max_steps_per_epoch=run.hooks.max_steps_per_epoch,
        world_size=run.world,
        heap_trim_every=run.settings.heap_trim_every,
    )


def run_key(config: RaymmConfig, data_fingerprint: str, run: TrainRunConfig) -> str:
    """12 hex digits naming what a run learns: seed, model and training settings, and the data.

    Ray Train resumes a run whose storage directory already exists. The run directory is
    ``<name>-<run_key>``, so re-running the same command resumes an interrupted run, while a
    changed config or dataset starts a new run instead of loading an incompatible checkpoint.
    How the run executes (``run``: workers, resources, storage, restarts, heap trimming) is left
    out, so a run resumes across a change to it, except ``run.torch_threads``: the thread count
    changes the order of float reductions, so the weights a run learns.
    """
    # The document keeps the layout it had before the run settings moved to ``train.run`` and
    # the modalities and item-id switch to ``model``: an unchanged configuration keeps its run
    # key, so an interrupted run resumes across that upgrade.
    moved_to_model = {"modalities", "item_id_embeddings"}
    # train.history_window joined later: unset, it stays out, so the keys from before it hold.
    unset = {"history_window"} if config.train.history_window is None else set()
    train = {
        **config.train.model_dump(mode="json", exclude={"run", *unset}),
        "torch_threads": run.torch_threads,
        **config.model.model_dump(mode="json", include=moved_to_model),
    }
    document = {
        "seed": config.seed,
        # model.content is fitted after the run, from the features: it changes nothing the run learns.
        "model": config.model.model_dump(mode="json", exclude={*moved_to_model, "content"}),
        "train": train,
        "ks": config.evaluate.ks,
        "data": data_fingerprint,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class TrainResult:
    """Where the artifact went, the per-epoch metrics and the best validation score."""

    out: str
    manifest: Manifest
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0


def choose_served(
    model: TwoTower, prepared: Prepared, train_split: pa.Table, config: RaymmConfig
) -> tuple[BlendSettings, dict[str, float], CollaborativeScorer | None, ContentScorer | None]:
    """The served blend with the best validation NDCG (see
    :func:`~raymm.recommend.blend.choose_blend_settings`): the item-item part (unless
    ``model.collab.enabled`` is off), the content part (unless ``model.content.enabled`` is off)
    and popularity fitted on the training split, the item-item rows of items without training
    events predicted from their two-tower vectors. Returns the settings, every trial's score and
    the fitted item-item and content parts."""
    k = 20 if 20 in config.evaluate.ks else max(config.evaluate.ks)
    n_items = prepared.catalog.n_items
    context = FitContext(prepared.catalog, train_split, config.model.user_state.events, config.seed)
    two_tower = TwoTowerScorer(model, prepared.catalog)
    collab = None
    if config.model.collab.enabled:
        collab = CollaborativeScorer(rank=config.model.collab.rank, seed=config.seed).fit(context)
        collab.fill_from_content(two_tower.item_vectors())
    content = None
    if config.model.content.enabled:
        content = fit_content(config.model_dump(mode="json", by_alias=True), context)
    settings, trials = choose_blend_settings(
        lambda scorer: evaluate_scorer(scorer, prepared.validation, (k,), n_items)[f"ndcg@{k}"],
        two_tower,
        collab,
        context,
        prepared.validation.history,
        content=content,
    )
    return settings, trials, collab, content


def train(
    config: RaymmConfig,
    data_dir: str,
    features_dir: str,
    out: str,
    name: str = "train",
    hooks: RunHooks | None = None,
) -> TrainResult:
    """Train with Ray Train and write the model artifact to ``out``; see the module docstring.

    The Ray Train run follows ``train.run``; checkpoints go to
    ``<train.run.storage_path>/<name>-<run_key>`` (see :func:`run_key`). ``hooks`` are for tests
    (fault injection, short epochs). Raises :class:`TrainingError` if the run fails beyond
    ``train.run.max_failures`` restarts.
    """
    from raymm.runtime import init_ray

    started = time.perf_counter()
    data_dir, features_dir = io.absolute(data_dir), io.absolute(features_dir)
    init_ray(config.ray)
    prepared = prepare(config, data_dir, features_dir)
    notes = training_notes(prepared)
    train_split = prepared.train_events
    spec = config.model.user_state
    examples = training_examples(config, prepared)
    if len(examples) == 0:
        raise TrainingError(f"no training examples in {data_dir}: no user has two positive events")
    loop_config = worker_config(data_dir, features_dir, examples, prepared.catalog.n_items)
    run = f"{name}-{run_key(config, prepared.fingerprint, config.train.run)}"
    dataset = shuffled_examples(examples.to_table(), config.seed)
    saved = run_on_ray(
        train_loop_per_worker, loop_config, config, config.train.run, run, dataset, "training run", hooks
    )
    model = TwoTower(prepared.model_config, prepared.catalog.dims, prepared.n_item_ids, prepared.audio_bands)
    model.load_state_dict(saved.state.best_weights or saved.model)
    settings, trials, collab, content = choose_served(model, prepared, train_split, config)
    log.info(
        "raymm train: served blend %s (validation NDCG %.4f)", settings.label(), trials[settings.label()]
    )
    # Serving's fallback ranks by these counts: recent ones when a half-life won on validation.
    train_counts = item_counts(train_split, prepared.catalog, spec.events, settings.half_life_days)
    # One pass gives the retrieval vectors and the aligned vectors cross-media search ranks by.
    encoding = encode_catalog(model, prepared.catalog)
    history = saved.state.history
    tfidf_state = io.join(features_dir, TFIDF_STATE)
    manifest = write_artifact(
        out,
        model,
        prepared.catalog.item_ids,
        encoding.vectors.numpy(),
        config=config.model_dump(mode="json", by_alias=True),
        metrics={
            "best_epoch": saved.state.best_epoch,
            "validation": best_row(saved.state),
            "history": history,
            **settings.to_metrics(),
            "validation_ndcg_by_blend": trials,
        },
        data_fingerprint=prepared.fingerprint,
        encoders=read_encoders(features_dir),
        popularity=train_counts,
        aligned=encoding.projected,
        aligned_present=encoding.present,
        # Serving encodes new text with the IDF the catalog's features were made with.
        encoder_state={"text": tfidf_state} if io.exists(tfidf_state) else None,
        notes=notes,
        collab=None
        if collab is None or settings.collab_weight == 0 or collab.map is None
        else CollabVectors(collab.query_vectors(), collab.item_vectors(), collab.map),
        content=None if content is None or settings.content_weight == 0 else content.vectors(),
    )
    return TrainResult(out, manifest, history, time.perf_counter() - started)


def shuffled_batches(
    examples: Examples, batch_size: int, seed: int
) -> Callable[[int], Iterator[dict[str, torch.Tensor]]]:
    """Epoch -> batches of ``examples`` in a fresh order drawn from ``(seed, epoch)``, as dicts of
    the example table's columns (what :func:`two_tower_step` reads): the in-process twin of the
    Ray Dataset's per-epoch shuffle."""
    table = {
        f"h{k}": torch.from_numpy(np.ascontiguousarray(examples.history[:, k]))
        for k in range(examples.history.shape[1])
    }
    table["target"] = torch.from_numpy(examples.target)

    def epoch_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(examples)))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            yield {name: column[rows] for name, column in table.items()}

    return epoch_batches


def train_in_process(
    config: RaymmConfig, data_dir: str, features_dir: str, threads: int = 1
) -> tuple[TwoTower, LoopState]:
    """The two-tower run without Ray: the same examples, objective, step, validation and loop
    (:func:`fit`) in this process, on ``threads`` torch threads. For benchmarks and debugging;
    ``raymm train`` is :func:`train`."""
    torch.set_num_threads(threads)
    deterministic()
    prepared = prepare(config, data_dir, features_dir)
    training_notes(prepared)
    examples = training_examples(config, prepared)
    model = build_model(prepared, config.seed)
    use_tags = prepared.model_config.align.method == "kg"
    log_q = target_log_q(examples, prepared.catalog.n_items)
    objective = NextItemObjective(model, prepared.catalog, log_q, use_tags)
    optimizer = torch.optim.AdamW(
        objective.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    columns = [f"h{k}" for k in range(config.train_window())]
    n_items = prepared.catalog.n_items
    state = fit(
        model,
        optimizer,
        two_tower_step(objective, columns, torch.device("cpu")),
        shuffled_batches(examples, config.train.batch_size, config.seed),
        lambda: validation_metrics(
            TwoTowerScorer(model, prepared.catalog), prepared.validation, config, n_items
        ),
        epochs=config.train.epochs,
        patience=config.train.patience,
        metric=config.train.val_metric,
        heap_trim_every=config.train.run.heap_trim_every,
    )
    return model, state
