"""``raymm train --stage rank``: the pointwise ranker on top of a trained two-tower artifact, on Ray Train.

The driver loads the artifact (the frozen retriever) and builds labelled examples
(:mod:`raymm.recommend.rank_examples`) for the training split (histories from it) and the
validation split (histories from train + validation). The training examples go to Ray Train as a
Ray Dataset of per-example columns that point into their distinct histories (``states``); the
states and the validation examples go through the object store once. Each worker rebuilds the per-item
ranker inputs from storage, wraps :class:`~raymm.training.rank_objective.RankObjective` in DDP and
runs the one training loop (:func:`raymm.training.loop.fit`): every epoch rank 0 scores the
validation examples as serving scores them (:class:`~raymm.recommend.rerank.Reranker`), early
stopping on validation AUC; ``FailureConfig`` restarts failed workers from the latest checkpoint.

At the end the driver takes the best epoch's weights, chooses on the validation split the weight
of the retriever's logit in the ranker's score (:data:`RETRIEVAL_WEIGHTS`, by retrieve-then-rank
NDCG@20, or at the largest K when 20 is not in ``evaluate.ks``), then a Platt scaling of the
final logit and the decision threshold (max F1), both on the validation examples, writes
``ranker/`` into the artifact and records the ``rank`` stage in its manifest.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raymm.config import RaymmConfig
from raymm.data import io
from raymm.data.dataset import CATALOG_ITEM_COLUMNS, load_dataset
from raymm.eval.evaluate import evaluate_scorer
from raymm.eval.pointwise import best_threshold, classification_metrics, roc_auc
from raymm.models.artifact import Manifest, ranker_dir, read_manifest, record_stage
from raymm.models.blend_parts import read_content_vectors
from raymm.models.ranker import Ranker, write_item_inputs
from raymm.recommend.blend import BlendSettings, fit_served_retriever
from raymm.recommend.history import eval_users, held_out_recency
from raymm.recommend.rank_examples import LOGGED, RankExamples, RankSetup, predict, rank_setup, split_examples
from raymm.recommend.rerank import Reranker
from raymm.recommend.scorers import (
    ContentScorer,
    DotProductScorer,
    FitContext,
    RetrieveThenRank,
    TwoTowerScorer,
)
from raymm.recommend.vectors import user_vectors
from raymm.training.loop import RunHooks, StepOutput, fit
from raymm.training.rank_objective import RankObjective, context_matrix, platt_scaling
from raymm.training.ray_runner import TrainingError, WorkerRun, run_on_ray, shuffled_examples
from raymm.training.settings import TrainRunConfig
from raymm.training.trainer import run_key

#: Candidate weights of the retriever's logit in the ranker's score, tried on validation. Large
#: weights tend to retrieval alone, so validation can keep the retriever's order where the ranker
#: does not help (bench/rank_quality.py reports where validation peaks).
RETRIEVAL_WEIGHTS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0)
#: Fewer candidates than ``rank.retriever_top_n`` that serving may hand the ranker: the smallest
#: whose validation retrieve-then-rank NDCG is no lower than with all of them is served (the
#: ranker's cost per request is linear in its candidates; at 100 requests/s on 2 cores it was the
#: part of a request that saturated Serve, bench/results/serve_latency.json). Not below
#: ``serve.max_k``'s default (100), so the usual request takes the fast path; a request for more
#: items than the chosen top-N gets all ``rank.retriever_top_n`` re-ranked (RetrieveThenRank).
SERVED_TOP_N_GRID: tuple[int, ...] = (100,)


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
    config: RaymmConfig,
    setup: RankSetup,
    ranker: Ranker,
    data_dir: str,
    manifest: Manifest,
    model_dir: str,
) -> tuple[dict[str, float], int, dict[str, float]]:
    """Set ``ranker.retrieval_weight`` to the weight of :data:`RETRIEVAL_WEIGHTS` with the best
    validation retrieve-then-rank NDCG (the smallest on ties), then choose how many candidates
    serving hands the ranker (:data:`SERVED_TOP_N_GRID`); returns the NDCG of each weight, the
    served top-N and the NDCG of each top-N tried at the chosen weight.

    The candidates and the retrieval scores the ranker adds are the served retriever's, as
    serving and evaluation run it (the blend training chose, in ``manifest``; its item-item part
    and popularity fitted on the training split, its content part the artifact's in ``model_dir``,
    since the setup's catalog holds no raw features): chosen on the two-tower's alone, the weight
    suited scores serving never gives the ranker, and once the item-item part carried weight the
    ranker fell below the retrieval it re-orders."""
    dataset = load_dataset(data_dir, tables=(), item_columns=CATALOG_ITEM_COLUMNS)
    train, held_out = dataset.interactions("train"), dataset.interactions("validation")
    spec = setup.two_tower.config.user_state
    users = eval_users(train, held_out, setup.catalog, spec.events, spec.max_history)
    users = users.sample(config.train.validation_users, config.seed)
    recency = held_out_recency(train, held_out, users.user_ids)
    k = 20 if 20 in config.evaluate.ks else max(config.evaluate.ks)
    two_tower = TwoTowerScorer(setup.two_tower, item_vectors=setup.inputs.vectors)
    settings = BlendSettings.from_metrics(manifest.metrics)
    retriever: DotProductScorer = two_tower
    if settings is not None:
        context = FitContext(setup.catalog, train, spec.events, config.seed)
        saved = read_content_vectors(model_dir, setup.catalog.n_items)
        content = None if saved is None else ContentScorer.from_vectors(saved)
        retriever = fit_served_retriever(two_tower, settings, context, manifest.config, content)

    def ndcg(top_n: int) -> float:
        reranker = Reranker.from_inputs(ranker, setup.catalog.item_ids, setup.inputs)
        scorer = RetrieveThenRank(retriever, two_tower, reranker, top_n)
        return evaluate_scorer(scorer, users, (k,), setup.catalog.n_items, recency=recency)[f"ndcg@{k}"]

    full = config.rank.retriever_top_n
    scores = {}
    for weight in RETRIEVAL_WEIGHTS:
        ranker.retrieval_weight = weight
        scores[str(weight)] = ndcg(full)
    ranker.retrieval_weight = float(max(scores, key=lambda w: (scores[w], -float(w))))
    by_top_n = {str(full): scores[str(ranker.retrieval_weight)]}
    # Never below the largest K evaluation reports: retrieve-then-rank needs K candidates.
    for top_n in sorted(n for n in SERVED_TOP_N_GRID if max(config.evaluate.ks) <= n < full):
        by_top_n[str(top_n)] = ndcg(top_n)
    return scores, smallest_without_loss(by_top_n, full), by_top_n


def served_top_n_label(metrics: dict[str, Any]) -> str:
    """What the console says of the served top-N: how many candidates, and each tried top-N's
    validation NDCG ("" for a rank stage from before the choice)."""
    served, scores = metrics.get("served_top_n"), metrics.get("validation_ndcg_by_top_n") or {}
    if served is None:
        return ""
    tried = ", ".join(f"{n}: {score:.4f}" for n, score in sorted(scores.items(), key=lambda kv: int(kv[0])))
    return f"{served} (validation ndcg@20 by top-N: {tried})"


def smallest_without_loss(ndcg_by_top_n: dict[str, float], full: int) -> int:
    """The smallest top-N whose NDCG is no lower than ``full``'s (``full`` itself when none is)."""
    return min(
        (int(n) for n, score in ndcg_by_top_n.items() if score >= ndcg_by_top_n[str(full)]), default=full
    )


def auc_of(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Validation AUC (0.5 when one class is absent, so early stopping still has a number)."""
    if labels.min(initial=1.0) == labels.max(initial=0.0):
        return 0.5
    return roc_auc(labels, probabilities)


def validation_auc(ranker: Ranker, setup: RankSetup, validation: RankExamples) -> dict[str, float]:
    """AUC on the validation examples, and on their logged events alone, scored as serving scores."""
    probabilities = predict(
        Reranker.from_inputs(ranker, setup.catalog.item_ids, setup.inputs), setup.two_tower, validation
    )
    logged = validation.kind == LOGGED
    return {
        "auc": auc_of(validation.label, probabilities),
        "auc_logged": auc_of(validation.label[logged], probabilities[logged]),
    }


def rank_step(
    objective: torch.nn.Module,
    ranker: Ranker,
    setup: RankSetup,
    states: np.ndarray,
    device: torch.device,
) -> Any:
    """The step :func:`fit` runs on a batch of ranking examples: weighted BCE (or focal) loss.

    ``objective`` is the (DDP-wrapped) :class:`RankObjective` of ``ranker``; ``states`` the
    training examples' :attr:`RankExamples.states`, which a batch's ``state`` column points into.
    """
    two_tower = setup.two_tower.to(device)

    def step(batch: dict[str, torch.Tensor]) -> StepOutput:
        history = states[batch["state"].numpy()]
        users = user_vectors(two_tower, setup.inputs.vectors.to(device), history)
        logits = objective(
            batch["item"].to(device), users, batch["recency"].to(device), batch["popularity"].to(device)
        )
        loss = ranker.loss(logits, batch["label"].to(device), batch["weight"].to(device))
        return StepOutput(loss, len(logits))

    return step


def rank_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs; see the module docstring."""
    import ray

    run = WorkerRun(loop_config)
    config = run.config
    # The raw features (~1 GiB at large) only feed setup.inputs; the worker keeps none of them.
    setup = rank_setup(
        loop_config["data_dir"], loop_config["features_dir"], loop_config["model_dir"]
    ).without_features()
    ranker = build_ranker(config, setup, loop_config["context_stats"])
    objective = RankObjective(ranker, setup.inputs).to_device(run.device)
    optimizer = torch.optim.AdamW(
        ranker.parameters(), lr=config.rank.lr, weight_decay=config.rank.weight_decay
    )
    # Object-store reads: the workers of a node map one copy of these, read-only.
    states, validation = ray.get([loop_config["states"], loop_config["validation"]])
    state = run.restore(ranker, optimizer)
    fit(
        ranker,
        optimizer,
        rank_step(run.prepare(objective), ranker, setup, states, run.device),
        run.batches(config.rank.batch_size),
        run.on_rank0(lambda: validation_auc(ranker, setup, validation)),
        epochs=config.rank.epochs,
        patience=config.rank.patience,
        metric="auc",
        state=state,
        on_epoch=run.reporter(ranker, optimizer),
        before_step=run.before_step,
        max_steps_per_epoch=run.hooks.max_steps_per_epoch,
        world_size=run.world,
        heap_trim_every=run.settings.heap_trim_every,
    )


@dataclass
class RankTrainResult:
    """Where the ranker went, its validation metrics, the per-epoch history and the wall time."""

    model_dir: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    elapsed_s: float


def train_ranker(
    config: RaymmConfig,
    data_dir: str,
    features_dir: str,
    model_dir: str,
    *,
    run: TrainRunConfig,
    name: str = "rank",
    hooks: RunHooks | None = None,
) -> RankTrainResult:
    """Train the ranker on Ray Train and add it to the two-tower artifact at ``model_dir``.

    ``model_dir`` holds a two-tower artifact (``raymm train``). ``run`` is how the Ray Train run
    executes (workers, resources, checkpoint storage, restarts; ``raymm train --stage rank``
    passes ``train.run``); the ranker's own settings are ``config.rank``. ``hooks`` are for
    tests. Raises :class:`TrainingError` if the run fails beyond ``run.max_failures`` restarts,
    :class:`~raymm.models.errors.ModelLoadError` for a missing or mismatched artifact.
    """
    import ray

    from raymm.runtime import init_ray

    started = time.perf_counter()
    data_dir, features_dir = io.absolute(data_dir), io.absolute(features_dir)
    model_dir = io.absolute(model_dir)
    init_ray(config.ray)
    # The raw features (~1 GiB at large) only feed setup.inputs: the examples, the retriever
    # (inputs.vectors) and the ranker read ids and those inputs, so the driver keeps none of them.
    setup = rank_setup(data_dir, features_dir, model_dir).without_features()
    train_examples = split_examples(setup, config.rank, data_dir, "train", config.seed)
    validation = split_examples(setup, config.rank, data_dir, "validation", config.seed + 1)
    if len(train_examples) == 0 or train_examples.label.max(initial=0.0) == 0.0:
        raise TrainingError(f"no positive ranking examples in the training split of {data_dir}")
    stats_ranker = build_ranker(config, setup).fit_context(context_matrix(train_examples))
    context_stats = {"mean": stats_ranker.context_mean.tolist(), "scale": stats_ranker.context_scale.tolist()}
    n_examples = {"train": len(train_examples), "validation": len(validation)}
    # Each example's history is held once, as a row of ``states`` that its ``state`` points at: the
    # Ray Dataset carries the per-example columns, and the states and the validation examples go
    # to the object store once, which the workers read without copying; the driver keeps no
    # copy of its own (at large, one history row per example was most of the stage's memory).
    dataset = shuffled_examples(pa.table(train_examples.to_columns()), config.seed)
    states = ray.put(train_examples.states)
    validation_ref = ray.put(validation)
    del train_examples
    validation = ray.get(validation_ref)
    manifest = read_manifest(model_dir)
    rank_key = json.dumps({"rank": config.rank.model_dump(mode="json"), "model": manifest.model_version})
    run_name = f"{name}-{run_key(config, hashlib.sha256(rank_key.encode()).hexdigest(), run)}"
    loop_config = {
        "data_dir": data_dir,
        "features_dir": features_dir,
        "model_dir": model_dir,
        "context_stats": context_stats,
        "states": states,
        "validation": validation_ref,
    }
    saved = run_on_ray(
        rank_loop_per_worker, loop_config, config, run, run_name, dataset, "ranker training run", hooks
    )
    ranker = build_ranker(config, setup, context_stats)
    ranker.load_state_dict(saved.state.best_weights or saved.model)
    ranker.retrieval_temperature = float(setup.two_tower.temperature)
    weight_scores, served_top_n, top_n_scores = choose_retrieval_weight(
        config, setup, ranker, data_dir, manifest, model_dir
    )

    def validation_probabilities() -> np.ndarray:
        return predict(
            Reranker.from_inputs(ranker, setup.catalog.item_ids, setup.inputs), setup.two_tower, validation
        )

    ranker.calibration = platt_scaling(validation.label, validation_probabilities(), validation.weight)
    probabilities = validation_probabilities()
    ranker.threshold = best_threshold(validation.label, probabilities)
    metrics = {
        "best_epoch": saved.state.best_epoch,
        "retrieval_weight": ranker.retrieval_weight,
        "calibration": list(ranker.calibration),
        "validation_ndcg_by_retrieval_weight": weight_scores,
        "served_top_n": served_top_n,
        "validation_ndcg_by_top_n": top_n_scores,
        "validation": classification_metrics(validation.label, probabilities, ranker.threshold),
        "n_examples": n_examples,
    }
    ranker.save_pretrained(ranker_dir(model_dir))
    write_item_inputs(ranker_dir(model_dir), setup.inputs)
    history = saved.state.history
    record_stage(model_dir, "rank", {"metrics": metrics, "history": history})
    return RankTrainResult(model_dir, metrics, history, time.perf_counter() - started)
