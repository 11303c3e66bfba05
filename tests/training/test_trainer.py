"""``raymm train`` on a real Ray instance: the artifact, resume by run key, a killed worker, two
gloo workers, reproducibility, and the objective's mixed negatives.

Features are made from the synthetic catalog's true facets (:mod:`tests.fixtures`); the session
shares one trained model (``trained`` in tests/conftest.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raymm.data.dataset import load_dataset
from raymm.eval.evaluate import evaluate_scorer
from raymm.models.artifact import MANIFEST, load_artifact
from raymm.models.config import ModelConfig
from raymm.models.errors import ModelLoadError
from raymm.models.towers import TwoTower
from raymm.recommend.catalog import Catalog
from raymm.recommend.scorers import SHRINKAGE_GRID, TwoTowerScorer
from raymm.training.examples import build_examples, target_log_q
from raymm.training.loop import RunHooks
from raymm.training.objective import NextItemObjective
from raymm.training.ray_runner import INJECTED_FAILURE_MARKER
from raymm.training.trainer import (
    Prepared,
    build_model,
    prepare,
    run_key,
    train,
    training_examples,
    training_notes,
)
from tests.conftest import Trained, shared_config


def test_the_artifact_holds_every_item_and_a_model_better_than_untrained(trained: Trained) -> None:
    artifact = load_artifact(trained.model, expected_dims={"text": 22, "image": 12, "audio": 13})
    items = pq.read_table(trained.data / "items.parquet")
    cold = set(pq.read_table(trained.data / "cold_items.parquet").column("item_id").to_pylist())
    vector_ids = set(artifact.item_vectors.column("item_id").to_pylist())
    assert vector_ids == set(items.column("item_id").to_pylist()) and cold <= vector_ids
    history = artifact.manifest.metrics["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2]
    prepared = prepare(trained.config, str(trained.data), str(trained.features))
    untrained = evaluate_scorer(
        TwoTowerScorer(build_model(prepared, seed=1), prepared.catalog),
        prepared.validation,
        [20],
        prepared.catalog.n_items,
    )
    best = artifact.manifest.metrics["validation"]
    assert best["val_recall@20"] > 1.5 * untrained["recall@20"], (best, untrained)
    assert artifact.manifest.metrics["fallback_shrinkage"] in SHRINKAGE_GRID
    # what serving needs beside the vectors: each item's popularity, counted here from the
    # training split's positive events (recency-weighted when a half-life won on validation)
    train_events = pq.read_table(trained.data / "train.parquet", columns=["item_id", "event", "ts"])
    positive_kinds = set(trained.config.model.user_state.events)
    half_life = artifact.manifest.metrics["fallback_half_life_days"]
    positives = [
        (item, ts.timestamp() / 86_400)
        for item, kind, ts in zip(
            *(train_events.column(c).to_pylist() for c in ("item_id", "event", "ts")), strict=True
        )
        if kind in positive_kinds
    ]
    latest = max(day for _, day in positives)
    expected: dict[str, float] = dict.fromkeys(artifact.item_vectors.column("item_id").to_pylist(), 0.0)
    for item, day in positives:
        expected[item] += 1.0 if half_life is None else 0.5 ** ((latest - day) / half_life)
    popularity = dict(
        zip(
            artifact.item_vectors.column("item_id").to_pylist(),
            artifact.item_vectors.column("popularity").to_pylist(),
            strict=True,
        )
    )
    assert popularity == pytest.approx(expected, rel=1e-9), f"popularity with half-life {half_life}"
    # one id embedding per warm item: the catalog items with any event in the training split
    warm = set(train_events.column("item_id").to_pylist()) & set(items.column("item_id").to_pylist())
    assert trained.config.model.item_id_embeddings
    assert artifact.model.n_item_ids == len(warm), (
        f"{artifact.model.n_item_ids} id embeddings, {len(warm)} warm items"
    )
    with pytest.raises(ModelLoadError, match="text vectors of dimension 22 but the features have 384"):
        load_artifact(trained.model, expected_dims={"text": 384})


def test_a_newer_artifact_version_is_refused(trained: Trained, tmp_path: Path) -> None:
    shutil.copytree(trained.model, tmp_path / "model")
    manifest_path = tmp_path / "model" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="format version 99 is not supported"):
        load_artifact(tmp_path / "model")


def test_the_run_key_follows_what_a_run_learns(trained: Trained) -> None:
    config = trained.config
    run = config.train.run
    key = run_key(config, "data", run)
    operational = run.model_copy(
        update={"num_workers": 4, "max_failures": 7, "storage_path": "elsewhere", "heap_trim_every": None}
    )
    assert run_key(config, "data", operational) == key  # how a run executes does not change what it learns
    # ... except its torch threads: they change the order of float reductions, so the weights
    threads = run.model_copy(update={"torch_threads": (run.torch_threads or 1) + 1})
    assert run_key(config, "data", threads) != key
    changed = config.model_copy(deep=True)
    changed.model.fusion.method = "concat"
    assert run_key(changed, "data", run) != key and run_key(config, "other data", run) != key


def test_a_shorter_training_window_trains_on_the_latest_items_and_serves_the_full_one(
    trained: Trained, tmp_path: Path
) -> None:
    """``train.history_window`` cuts a training example's user state to its latest items; the
    artifact keeps ``model.user_state.max_history``, the window evaluation and serving pool."""
    full = shared_config(tmp_path, "model.user_state.max_history=6", "train.history_window=null")
    prepared = prepare(full, str(trained.data), str(trained.features))
    assert full.train_window() == 6
    reference = training_examples(full, prepared)
    assert reference.history.shape[1] == 6 and (reference.history[:, :3] >= 0).any()
    short = shared_config(
        tmp_path, "model.user_state.max_history=6", "train.history_window=2", "train.epochs=1"
    )
    examples = training_examples(short, prepared)
    # the same events and targets, each with the two most recent items of the full window
    assert np.array_equal(examples.target, reference.target)
    assert np.array_equal(examples.history, reference.history[:, -2:])
    longer = shared_config(tmp_path, "model.user_state.max_history=6", "train.history_window=50")
    assert longer.train_window() == 6  # capped at the served window
    assert run_key(short, "data", short.train.run) != run_key(full, "data", full.train.run)
    # through Ray Train: the driver's dataset and the worker's columns agree on the window
    result = train(short, str(trained.data), str(trained.features), str(tmp_path / "model"))
    assert [row["epoch"] for row in result.history] == [0]
    artifact = load_artifact(tmp_path / "model")
    assert artifact.manifest.config["model"]["user_state"]["max_history"] == 6
    assert artifact.manifest.config["train"]["history_window"] == 2


def test_rerunning_a_finished_run_resumes_it_instead_of_training_again(
    trained: Trained, tmp_path: Path
) -> None:
    """Same config, same storage: Ray Train resumes the run directory named by the run key."""
    again = train(trained.config, str(trained.data), str(trained.features), str(tmp_path / "model"))
    first = load_artifact(trained.model).manifest.metrics["history"]
    assert again.history == first  # no epoch ran again: the history is the checkpoint's
    runs = list((trained.root / "train").glob("train-*"))
    assert len(runs) == 1


def test_a_killed_worker_resumes_from_the_last_checkpoint(trained: Trained, tmp_path: Path) -> None:
    config = shared_config(tmp_path, "train.run.max_failures=1")
    prepared = prepare(config, str(trained.data), str(trained.features))
    train_table = load_dataset(str(trained.data), tables=()).interactions("train")
    spec = config.model.user_state
    examples = build_examples(train_table, prepared.catalog, spec.events, spec.max_history)
    steps_per_epoch = int(np.ceil(len(examples) / config.train.batch_size))
    hooks = RunHooks(fail_at_step=steps_per_epoch + 2)  # in the second epoch, after one checkpoint
    result = train(config, str(trained.data), str(trained.features), str(tmp_path / "model"), "faulty", hooks)
    assert len(list((tmp_path / "train").glob(f"faulty-*/{INJECTED_FAILURE_MARKER}"))) == 1
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    # epoch 0 ran before the failure; the restarted worker began from its checkpoint, not from scratch
    assert result.history[0]["resumed_from_epoch"] == -1
    assert result.history[-1]["resumed_from_epoch"] == 0


def test_same_config_and_seed_give_the_same_metrics(trained: Trained, tmp_path: Path) -> None:
    config = shared_config(
        trained.root, f"train.run.storage_path={tmp_path / 'train'}"
    )  # same key, fresh run
    run = train(config, str(trained.data), str(trained.features), str(tmp_path / "m"))
    first = load_artifact(trained.model).manifest.metrics["validation"]
    second = run.manifest.metrics["validation"]
    for key in ("val_recall@20", "val_ndcg@20", "train_loss"):
        assert first[key] == pytest.approx(second[key], abs=1e-6), key


def test_two_workers_train_with_gloo_on_cpu(trained: Trained, tmp_path: Path) -> None:
    config = shared_config(
        tmp_path, "train.epochs=1", "train.run.num_workers=2", "train.run.cpus_per_worker=0.5"
    )
    result = train(config, str(trained.data), str(trained.features), str(tmp_path / "model"))
    assert [row["epoch"] for row in result.history] == [0]
    assert load_artifact(tmp_path / "model").item_vectors.num_rows == 240


def test_mixed_negatives_are_drawn_into_the_loss(
    facet_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With loss.mixed_negatives = K the objective draws K uniform catalog items and scores them as
    extra negatives of every row, except where one is that row's own positive: the loss is the
    sampled softmax written out here over the batch's positives and the drawn items."""
    data, features = facet_data
    k, batch_size = 64, 32
    config = shared_config(tmp_path, f"model.loss.mixed_negatives={k}")
    prepared = prepare(config, str(data), str(features))
    catalog = prepared.catalog
    spec = config.model.user_state
    examples = build_examples(prepared.train_events, catalog, spec.events, spec.max_history)
    log_q = target_log_q(examples, catalog.n_items)
    model = build_model(prepared, config.seed).eval()  # no dropout: the loss is a function of the batch
    objective = NextItemObjective(model, catalog, log_q, False)
    torch.manual_seed(0)
    drawn = torch.randint(0, catalog.n_items, (k,))  # the objective's first draw after seeding 0
    # half the rows have a positive among the drawn items, where that drawn copy must not count
    collides = np.isin(examples.target, drawn.numpy())
    half = batch_size // 2
    rows = np.concatenate([np.flatnonzero(collides)[:half], np.flatnonzero(~collides)[:half]])
    assert len(rows) == batch_size
    history, target = torch.from_numpy(examples.history[rows]), torch.from_numpy(examples.target[rows])
    given: dict[str, object] = {}
    loss = model.loss

    def spy(*args: object, **kwargs: object) -> object:
        given.update(kwargs)
        return loss(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "loss", spy)
    torch.manual_seed(0)
    with torch.no_grad():
        rec = float(objective(history, target).rec)
        vectors = model.encode_items(*catalog.rows(slice(None))).vectors  # every item, once
        valid = history >= 0
        users = model.user_vector(vectors[history.clamp(min=0)] * valid.unsqueeze(-1), valid)
        temperature = model.temperature
    torch.testing.assert_close(given["negative_ids"], drawn, msg=lambda m: f"not the K items drawn: {m}")

    candidates = torch.cat([target, drawn])  # B in-batch positives, then the K drawn items
    p = torch.from_numpy(log_q).double().exp()
    mixed_log_q = torch.log((batch_size * p + k / catalog.n_items) / (batch_size + k)).float()
    logits = users @ vectors[candidates].T / temperature
    logits = logits - config.model.loss.logq_correction * mixed_log_q[candidates]
    same_item = candidates.unsqueeze(0) == target.unsqueeze(1)
    same_item[torch.arange(batch_size), torch.arange(batch_size)] = False  # the positive itself
    assert int(same_item[:, batch_size:].any(dim=1).sum()) == half

    def softmax_loss(not_negative: torch.Tensor) -> float:
        masked = logits.masked_fill(not_negative, float("-inf"))
        return float((torch.logsumexp(masked, dim=1) - logits.diagonal()).mean())

    assert rec == pytest.approx(softmax_loss(same_item), rel=1e-5)
    counted = same_item.clone()
    counted[:, batch_size:] = False  # drawn copies of a row's positive counted as its negatives
    assert softmax_loss(counted) > rec + 1e-3


def test_standardisation_pca_and_cca_are_fitted_on_warm_items_only() -> None:
    # Cold items (id_index 0) sit far from the warm ones: fitted on them, every statistic would move.
    n, n_warm, dims = 60, 40, {"text": 12, "image": 10}
    generator = torch.Generator().manual_seed(0)
    warm = torch.arange(n) < n_warm
    features = {m: torch.randn(n, d, generator=generator) for m, d in dims.items()}
    for m, d in dims.items():
        features[m][~warm] = 50.0 + 10.0 * torch.randn(n - n_warm, d, generator=generator)
    present = {m: torch.ones(n, dtype=torch.bool) for m in dims}
    present["image"][:5] = False  # a warm item without an image stays out of the image fit
    id_index = torch.where(warm, torch.arange(n) + 1, 0)
    catalog = Catalog(
        np.array([f"i{k}" for k in range(n)], dtype=object), features, present, id_index, [], []
    )
    config = ModelConfig.model_validate({"align": {"method": "cca", "shared_dim": 4, "pca_dim": 6}})
    prepared = Prepared(catalog, None, config, "", n_warm, None, None)  # type: ignore[arg-type]

    model = build_model(prepared, seed=0)

    def fitted_on(rows: torch.Tensor) -> TwoTower:
        torch.manual_seed(0)
        subset = {m: x[rows] for m, x in features.items()}, {m: p[rows] for m, p in present.items()}
        return TwoTower(config, dims, n_warm).fit_alignment(*subset)

    warm_only, everything = fitted_on(warm), fitted_on(torch.ones(n, dtype=torch.bool))
    state = model.state_dict()
    fitted = [k for k in state if "input_mean" in k or "input_scale" in k or "reducers" in k or "heads" in k]
    assert any("reducers.text.components" in k for k in fitted)
    for key in fitted:
        torch.testing.assert_close(state[key], warm_only.state_dict()[key], msg=key)
    assert not torch.allclose(
        state["item_tower.input_mean_text"], everything.state_dict()["item_tower.input_mean_text"]
    )


def test_a_single_modality_run_says_once_that_its_alignment_is_inactive(
    facet_data: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, features = facet_data
    single = prepare(shared_config(tmp_path, "model.modalities=[text]"), str(data), str(features))
    with caplog.at_level("WARNING", logger="raymm.training.trainer"):
        notes = training_notes(single)
    assert len(notes) == 1 and "align.method='contrastive'" in notes[0] and "only text" in notes[0]
    assert [r.getMessage() for r in caplog.records] == [f"raymm train: {notes[0]}"]
    assert training_notes(prepare(shared_config(tmp_path), str(data), str(features))) == []


def test_validation_is_capped_at_train_validation_users_by_a_seeded_sample(
    facet_data: tuple[Path, Path], tmp_path: Path
) -> None:
    data, features = facet_data
    every = prepare(shared_config(tmp_path, "train.validation_users=null"), str(data), str(features))
    n = len(every.validation.user_ids)
    assert n > 10
    capped = prepare(shared_config(tmp_path, "train.validation_users=10"), str(data), str(features))
    again = prepare(shared_config(tmp_path, "train.validation_users=10"), str(data), str(features))
    kept = capped.validation.user_ids.tolist()
    assert len(kept) == 10 and set(kept) <= set(every.validation.user_ids.tolist())
    assert kept == again.validation.user_ids.tolist()  # the same users in every run with this seed
    exact = prepare(shared_config(tmp_path, f"train.validation_users={n}"), str(data), str(features))
    assert len(exact.validation.user_ids) == n
