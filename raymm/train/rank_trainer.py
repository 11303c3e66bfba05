"""``raymm train --stage rank``: the pointwise ranker on top of a trained two-tower artifact, on Ray Train.

The driver loads the artifact (the frozen retriever) and builds labelled examples
(:mod:`raymm.train.rank_data`) for the training split (histories from it) and the validation
split (histories from train + validation). The training examples go to a ``TorchTrainer`` as a
Ray Dataset, the validation examples in the loop config. Each worker rebuilds the per-item
ranker inputs from storage (features + artifact), wraps :class:`~raymm.train.rank_loop.RankObjective`
with ``prepare_model`` (DDP) and runs the loop below: every epoch rank 0 scores the validation
examples, all ranks report, rank 0 checkpoints ranker + optimizer + early-stopping state;
training stops after ``rank.patience`` epochs without a better validation AUC. ``FailureConfig``
restarts failed workers from the latest checkpoint (``train.max_failures``; the
``train.fail_at_step`` hook of the two-tower run injects a failure here too).

At the end the driver takes the best epoch's weights, chooses on the validation split the weight
of the retriever's logit in the ranker's score (:data:`RETRIEVAL_WEIGHTS`, by retrieve-then-rank
NDCG@20, or at the largest K when 20 is not in ``evaluate.ks``), then a Platt scaling of the
final logit and the decision threshold (max F1), both on the validation examples, writes ``ranker/`` into the artifact and records the
``rank`` stage in its manifest.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raymm.config import RaymmConfig
from raymm.data import io
from raymm.data.dataset import load_dataset
from raymm.errors import DataError
from raymm.eval.pointwise import best_threshold, classification_metrics, roc_auc
from raymm.features.pipeline import load_features
from raymm.models.artifact import RANKER_DIR, load_artifact, record_stage
from raymm.models.errors import ModelLoadError
from raymm.models.ranker import Ranker, RankerInputs, write_item_inputs
from raymm.models.towers import TwoTower
from raymm.train.data import Catalog, build_catalog, eval_users
from raymm.train.loop import user_vectors
from raymm.train.rank_data import LOGGED, RankExamples, build_rank_examples, ranker_inputs
from raymm.train.rank_loop import (
    RankObjective,
    context_matrix,
    held_out_recency,
    platt_scaling,
    predict,
    retrieve_then_rank,
)
from raymm.train.trainer import (
    CHECKPOINT_FILE,
    TrainingError,
    fit_run,
    maybe_inject_failure,
    report_epoch,
    run_key,
    shuffled_examples,
)

#: Candidate weights of the retriever's logit in the ranker's score, tried on validation. Large
#: weights tend to retrieval alone; on the quickstart data validation NDCG@20 peaked at 3.
RETRIEVAL_WEIGHTS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


@dataclass
class RankSetup:
    """The frozen retriever and what the ranker reads, as every worker and the driver derive it."""

    two_tower: TwoTower
    catalog: Catalog
    inputs: RankerInputs


def rank_setup(config: RaymmConfig, data_dir: str, features_dir: str, model_dir: str) -> RankSetup:
    """Load the two-tower artifact and the catalog it reads, and compute the per-item ranker inputs.

    Raises :class:`~raymm.models.errors.ModelLoadError` if the artifact is missing, does not fit
    the features, or was trained on another catalog.
    """
    dataset = load_dataset(data_dir, tables=())
    train = dataset.interactions("train")
    artifact = load_artifact(model_dir)
    modalities = artifact.model.modalities
    catalog = build_catalog(load_features(features_dir), dataset.items, train, modalities)
    artifact = load_artifact(model_dir, expected_dims=catalog.dims)
    saved_ids = np.asarray(artifact.item_vectors.column("item_id").to_pylist(), dtype=object)
    if saved_ids.shape != catalog.item_ids.shape or not np.array_equal(saved_ids, catalog.item_ids):
        raise ModelLoadError(
            f"{model_dir}: the artifact's {saved_ids.size} item vectors are not the {catalog.n_items} "
            f"catalog items of {data_dir}; train the two-tower stage on this dataset first"
        )
    two_tower = artifact.model.requires_grad_(False)
    inputs = ranker_inputs(two_tower, catalog, train, config.train.positive_events)
    return RankSetup(two_tower, catalog, inputs)


def split_examples(
    config: RaymmConfig, setup: RankSetup, data_dir: str, split: str, seed: int
) -> RankExamples:
    """Labelled examples of ``split`` (train, validation or test), histories from the splits before it."""
    dataset = load_dataset(data_dir, tables=())
    order = ("train", "validation", "test")
    if split not in order:
        raise DataError(f"rank examples come from train, validation or test, not {split!r}")
    earlier = [dataset.interactions(s) for s in order[: order.index(split)]]
    context = pa.concat_tables(earlier) if earlier else None
    return build_rank_examples(
        context,
        dataset.interactions(split),
        setup.catalog,
        config,
        setup.two_tower,
        setup.inputs,
        seed,
        counted=split == "train",
    )


def build_ranker(
    config: RaymmConfig, setup: RankSetup, context_stats: dict[str, list[float]] | None = None
) -> Ranker:
    """A fresh ranker for this retriever, with the context standardisation (fitted on the training
    examples by the driver) set from ``context_stats`` (``{"mean": [...], "scale": [...]}``)."""
    torch.manual_seed(config.seed)
    two_tower = setup.two_tower
    ranker = Ranker(
        config.rank,
        two_tower.modalities,
        two_tower.config.align.shared_dim,
        two_tower.config.towers.embed_dim,
    )
    if context_stats is not None:
        ranker.context_mean.copy_(torch.tensor(context_stats["mean"]))
        ranker.context_scale.copy_(torch.tensor(context_stats["scale"]))
    return ranker


def choose_retrieval_weight(
    config: RaymmConfig, setup: RankSetup, ranker: Ranker, data_dir: str
) -> dict[str, float]:
    """Set ``ranker.retrieval_weight`` to the weight of :data:`RETRIEVAL_WEIGHTS` with the best
    validation retrieve-then-rank NDCG (the smallest on ties); returns the NDCG of each weight."""
    dataset = load_dataset(data_dir, tables=())
    train, held_out = dataset.interactions("train"), dataset.interactions("validation")
    users = eval_users(train, held_out, setup.catalog, config.train.positive_events, config.train.max_history)
    recency = held_out_recency(train, held_out, users.user_ids)
    k = 20 if 20 in config.evaluate.ks else max(config.evaluate.ks)
    top_n = config.rank.retriever_top_n
    scores = {}
    for weight in RETRIEVAL_WEIGHTS:
        ranker.retrieval_weight = weight
        metrics = retrieve_then_rank(setup.two_tower, ranker, setup.inputs, users, recency, (k,), top_n)
        scores[str(weight)] = metrics["retrieve_then_rank"][f"ndcg@{k}"]
    ranker.retrieval_weight = float(max(scores, key=lambda w: (scores[w], -float(w))))
    return scores


def auc_of(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Validation AUC (0.5 when one class is absent, so early stopping still has a number)."""
    if labels.min(initial=1.0) == labels.max(initial=0.0):
        return 0.5
    return roc_auc(labels, probabilities)


def rank_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The loop each Ray Train worker runs; see the module docstring."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    config = RaymmConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(config.train.torch_threads or max(1, int(config.train.cpus_per_worker)))
    setup = rank_setup(config, loop_config["data_dir"], loop_config["features_dir"], loop_config["model_dir"])
    ranker = build_ranker(config, setup, loop_config["context_stats"])
    objective = RankObjective(ranker, setup.inputs).to_device(device)
    two_tower = setup.two_tower.to(device)
    # A fusion's "empty item" vector gets no gradient in a batch where every item has a modality.
    wrapped = ray.train.torch.prepare_model(
        objective, parallel_strategy_kwargs={"find_unused_parameters": True}
    )
    optimizer = torch.optim.AdamW(
        ranker.parameters(), lr=config.rank.lr, weight_decay=config.rank.weight_decay
    )
    validation = RankExamples(**loop_config["validation"])

    state: dict[str, Any] = {"epoch": -1, "best": -1.0, "best_epoch": -1, "bad_epochs": 0, "step": 0}
    state.update(best_model=None, history=[])
    resumed_from = -1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = torch.load(Path(directory) / CHECKPOINT_FILE, map_location=device, weights_only=False)
        ranker.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        resumed_from = state["epoch"]

    shard = ray.train.get_dataset_shard("train")
    history_columns = [f"h{k}" for k in range(config.train.max_history)]
    for epoch in range(state["epoch"] + 1, config.rank.epochs):
        started, seen, total_loss, n_steps = time.perf_counter(), 0, 0.0, 0
        objective.train()
        batches = shard.iter_torch_batches(
            batch_size=config.rank.batch_size,
            drop_last=world > 1,
        )
        for step, batch in enumerate(batches):
            if config.train.max_steps_per_epoch is not None and step >= config.train.max_steps_per_epoch:
                break
            maybe_inject_failure(config, loop_config["storage"], state["step"], rank)
            history = torch.stack([batch[c] for c in history_columns], dim=1).numpy()
            users = user_vectors(two_tower, objective.inputs.vectors, history)
            logits = wrapped(
                batch["item"].to(device), users, batch["recency"].to(device), batch["popularity"].to(device)
            )
            loss = ranker.loss(logits, batch["label"].to(device), batch["weight"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["step"] += 1
            seen += len(logits)
            total_loss += loss.item()
            n_steps = step + 1
        elapsed = time.perf_counter() - started

        scores: dict[str, float] = {}
        if rank == 0:
            probabilities = predict(objective, two_tower, validation)
            logged = validation.kind == LOGGED
            scores = {
                "val_auc": auc_of(validation.label, probabilities),
                "val_auc_logged": auc_of(validation.label[logged], probabilities[logged]),
            }
        if world > 1:
            shared = [scores]
            dist.broadcast_object_list(shared, src=0)
            scores = shared[0]
        if scores["val_auc"] > state["best"]:
            state.update(best=scores["val_auc"], bad_epochs=0, best_epoch=epoch)
            state["best_model"] = {k: v.detach().cpu().clone() for k, v in ranker.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        metrics = {
            "epoch": epoch,
            "train_loss": total_loss / max(n_steps, 1),
            "samples_per_s": seen * world / max(elapsed, 1e-9),
            "resumed_from_epoch": resumed_from,
            **scores,
        }
        state["history"].append({k: float(v) for k, v in metrics.items()})
        report_epoch(metrics, ranker, optimizer, state, rank)
        if state["bad_epochs"] >= config.rank.patience:
            break


@dataclass
class RankTrainResult:
    """Where the ranker went, its validation metrics, the per-epoch history and the wall time."""

    model_dir: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    elapsed_s: float


def train_ranker(
    config: RaymmConfig, data_dir: str, features_dir: str, model_dir: str, name: str = "rank"
) -> RankTrainResult:
    """Train the ranker on Ray Train and add it to the two-tower artifact at ``model_dir``.

    ``model_dir`` must be a local directory holding a two-tower artifact (``raymm train``).
    Raises :class:`TrainingError` if the run fails beyond ``train.max_failures`` restarts,
    :class:`~raymm.models.errors.ModelLoadError` for a missing or mismatched artifact.
    """

    from raymm.runtime import init_ray

    started = time.perf_counter()
    data_dir, features_dir = io.absolute(data_dir), io.absolute(features_dir)
    model_dir = str(Path(model_dir).absolute())
    init_ray(config.ray)
    setup = rank_setup(config, data_dir, features_dir, model_dir)
    train_examples = split_examples(config, setup, data_dir, "train", config.seed)
    validation = split_examples(config, setup, data_dir, "validation", config.seed + 1)
    if len(train_examples) == 0 or train_examples.label.max(initial=0.0) == 0.0:
        raise TrainingError(f"no positive ranking examples in the training split of {data_dir}")
    stats_ranker = build_ranker(config, setup).fit_context(context_matrix(train_examples))
    context_stats = {"mean": stats_ranker.context_mean.tolist(), "scale": stats_ranker.context_scale.tolist()}
    dataset = shuffled_examples(pa.table(train_examples.to_columns()), config.seed)
    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    rank_key = json.dumps({"rank": config.rank.model_dump(mode="json"), "model": manifest["model_version"]})
    run = f"{name}-{run_key(config, hashlib.sha256(rank_key.encode()).hexdigest())}"
    loop_config = {
        "data_dir": data_dir,
        "features_dir": features_dir,
        "model_dir": model_dir,
        "context_stats": context_stats,
        "validation": vars(validation),
    }
    saved = fit_run(rank_loop_per_worker, loop_config, config, run, dataset, "ranker training run")
    ranker = build_ranker(config, setup, context_stats)
    ranker.load_state_dict(saved["state"]["best_model"] or saved["model"])
    ranker.retrieval_temperature = float(setup.two_tower.temperature)
    weight_scores = choose_retrieval_weight(config, setup, ranker, data_dir)
    objective = RankObjective(ranker, setup.inputs)
    ranker.calibration = platt_scaling(
        validation.label, predict(objective, setup.two_tower, validation), validation.weight
    )
    probabilities = predict(objective, setup.two_tower, validation)
    ranker.threshold = best_threshold(validation.label, probabilities)
    metrics = {
        "best_epoch": saved["state"]["best_epoch"],
        "retrieval_weight": ranker.retrieval_weight,
        "calibration": list(ranker.calibration),
        "validation_ndcg_by_retrieval_weight": weight_scores,
        "validation": classification_metrics(validation.label, probabilities, ranker.threshold),
        "n_examples": {"train": len(train_examples), "validation": len(validation)},
    }
    ranker.save_pretrained(Path(model_dir) / RANKER_DIR)
    write_item_inputs(Path(model_dir) / RANKER_DIR, setup.inputs)
    history = saved["state"]["history"]
    record_stage(model_dir, "rank", {"metrics": metrics, "history": history})
    return RankTrainResult(model_dir, metrics, history, time.perf_counter() - started)
