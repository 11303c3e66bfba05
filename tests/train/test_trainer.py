"""``raymm train`` on a real Ray instance: checkpoints, a killed worker, two gloo workers, the artifact.

Features here are made from the synthetic catalog's true facets (:mod:`tests.fixtures`), so the
tests exercise the training machinery in seconds without loading encoders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raymm.config import RaymmConfig
from raymm.data.dataset import load_dataset
from raymm.models.artifact import MANIFEST, load_artifact
from raymm.models.errors import ModelLoadError
from raymm.train.data import build_examples, target_log_q
from raymm.train.loop import NextItemObjective
from raymm.train.trainer import INJECTED_FAILURE_MARKER, build_model, prepare, train
from tests.fixtures import facet_dataset, small_model_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return facet_dataset(tmp_path_factory.mktemp("train"))


def _config(tmp_path: Path, *overrides: str) -> RaymmConfig:
    return small_model_config(tmp_path, "train.epochs=3", "train.patience=5", *overrides)


def test_training_writes_a_loadable_artifact_with_every_item(
    dataset: tuple[Path, Path], ray_session: None, tmp_path: Path
) -> None:
    data, features = dataset
    result = train(_config(tmp_path), str(data), str(features), str(tmp_path / "model"))
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    artifact = load_artifact(tmp_path / "model", expected_dims={"text": 22, "image": 12, "audio": 13})
    items = pq.read_table(data / "items.parquet")
    cold = set(pq.read_table(data / "cold_items.parquet").column("item_id").to_pylist())
    vector_ids = set(artifact.item_vectors.column("item_id").to_pylist())
    assert vector_ids == set(items.column("item_id").to_pylist()) and cold <= vector_ids
    assert artifact.manifest["metrics"]["validation"]["val_recall@20"] >= 0
    with pytest.raises(ModelLoadError, match="text vectors of dimension 22 but the features have 384"):
        load_artifact(tmp_path / "model", expected_dims={"text": 384})


def test_a_newer_artifact_version_is_refused(
    dataset: tuple[Path, Path], ray_session: None, tmp_path: Path
) -> None:
    data, features = dataset
    train(_config(tmp_path, "train.epochs=1"), str(data), str(features), str(tmp_path / "model"))
    manifest_path = tmp_path / "model" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="format_version 99 is not supported"):
        load_artifact(tmp_path / "model")


def test_a_killed_worker_resumes_from_the_last_checkpoint(
    dataset: tuple[Path, Path], ray_session: None, tmp_path: Path
) -> None:
    data, features = dataset
    config = _config(tmp_path / "b", "train.max_failures=1")
    prepared = prepare(config, str(data), str(features))
    train_table = load_dataset(str(data), tables=()).interactions("train")
    examples = build_examples(
        train_table, prepared.catalog, config.train.positive_events, config.train.max_history
    )
    steps_per_epoch = int(np.ceil(len(examples) / config.train.batch_size))
    config.train.fail_at_step = steps_per_epoch + 2  # in the second epoch, after one checkpoint
    result = train(config, str(data), str(features), str(tmp_path / "model"), name="faulty")
    assert len(list((tmp_path / "b" / "train").glob(f"faulty-*/{INJECTED_FAILURE_MARKER}"))) == 1
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    # epoch 0 ran before the failure; the restarted worker began from its checkpoint, not from scratch
    assert result.history[0]["resumed_from_epoch"] == -1
    assert result.history[-1]["resumed_from_epoch"] == 0


def test_same_config_and_seed_give_the_same_metrics(
    dataset: tuple[Path, Path], ray_session: None, tmp_path: Path
) -> None:
    data, features = dataset
    runs = [
        train(
            _config(tmp_path / name, "train.epochs=2"), str(data), str(features), str(tmp_path / name / "m")
        )
        for name in ("a", "b")
    ]
    first, second = (run.manifest["metrics"]["validation"] for run in runs)
    for key in ("val_recall@20", "val_ndcg@20", "train_loss"):
        assert first[key] == pytest.approx(second[key], abs=1e-6), key


def test_two_workers_train_with_gloo_on_cpu(
    dataset: tuple[Path, Path], ray_session: None, tmp_path: Path
) -> None:
    data, features = dataset
    config = _config(tmp_path, "train.epochs=2", "train.num_workers=2", "train.cpus_per_worker=0.5")
    result = train(config, str(data), str(features), str(tmp_path / "model"))
    assert [row["epoch"] for row in result.history] == [0, 1]
    assert load_artifact(tmp_path / "model").item_vectors.num_rows == 240


def test_mixed_negatives_are_drawn_into_the_loss(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    """With loss.mixed_negatives = K the objective scores K uniform catalog items as extra negatives."""
    data, features = dataset
    losses = {}
    for k in (0, 64):
        config = _config(tmp_path, f"model.loss.mixed_negatives={k}")
        prepared = prepare(config, str(data), str(features))
        train_table = load_dataset(str(data), tables=()).interactions("train")
        examples = build_examples(
            train_table, prepared.catalog, config.train.positive_events, config.train.max_history
        )
        log_q = target_log_q(examples, prepared.catalog.n_items)
        objective = NextItemObjective(build_model(prepared, config.seed), prepared.catalog, log_q, False)
        torch.manual_seed(0)
        batch = slice(0, 32)
        losses[k] = objective(
            torch.from_numpy(examples.history[batch]), torch.from_numpy(examples.target[batch])
        )
    assert torch.isfinite(losses[64].rec)
    # 32 in-batch candidates vs 32 + 64: the softmax has more negatives to push down
    assert float(losses[64].rec) > float(losses[0].rec)
