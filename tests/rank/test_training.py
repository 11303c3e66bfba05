"""``raymm train --stage rank`` on a real Ray instance, its artifact, evaluation and serving hook.

One two-tower artifact (2 epochs on the facet dataset of :mod:`tests.fixtures`) is trained per
module; the ranker is trained on top of it through the CLI, and once more with an injected
worker failure.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from raymm.cli import main
from raymm.config import RaymmConfig
from raymm.eval.rank import rank_markdown
from raymm.models.artifact import MANIFEST, RANKER_DIR, load_artifact, read_manifest, write_artifact
from raymm.models.errors import ModelLoadError
from raymm.models.ranker import CONFIG_FILE
from raymm.models.rerank import Reranker
from raymm.train.rank_data import HARD, LOGGED, UNIFORM
from raymm.train.rank_trainer import rank_setup, split_examples, train_ranker
from raymm.train.trainer import INJECTED_FAILURE_MARKER, train
from tests.fixtures import facet_dataset, small_model_config

RANK = ("rank.epochs=3", "rank.batch_size=256", "rank.hidden_dims=[64]", "rank.retriever_top_n=60")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return facet_dataset(tmp_path_factory.mktemp("rank"))


def _config(out: Path, *overrides: str) -> RaymmConfig:
    return small_model_config(out, "train.epochs=2", "train.patience=5", *RANK, *overrides)


@pytest.fixture(scope="module")
def retriever(
    dataset: tuple[Path, Path], ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A two-tower artifact without a ranker."""
    out = tmp_path_factory.mktemp("retriever")
    data, features = dataset
    train(_config(out), str(data), str(features), str(out / "model"))
    return out / "model"


@pytest.fixture(scope="module")
def ranked(dataset: tuple[Path, Path], retriever: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the two-tower artifact with a ranker added by ``raymm train --stage rank``."""
    out = tmp_path_factory.mktemp("ranked")
    shutil.copytree(retriever, out / "model")
    data, features = dataset
    overrides = [f"--set={o}" for o in (f"out={out}", "ray.num_cpus=2", *RANK)]
    argv = ["train", "--stage", "rank", "--data", str(data), "--features", str(features), "--quiet"]
    assert main([*argv, "--out", str(out / "model"), *overrides]) == 0
    return out / "model"


def test_examples_are_labelled_from_events_and_negatives_are_unseen(
    dataset: tuple[Path, Path], retriever: Path
) -> None:
    import pyarrow.parquet as pq

    data, features = dataset
    config = _config(data.parent, "rank.hard_negative_share=0.5", "rank.negatives_per_positive=4")
    setup = rank_setup(config, str(data), str(features), str(retriever))
    examples = split_examples(config, setup, str(data), "train", seed=0)
    train_events = pq.read_table(data / "train.parquet")
    events = np.asarray(train_events.column("event").to_pylist())
    logged = examples.kind == LOGGED
    assert logged.sum() == np.isin(events, ["click", "like", "purchase", "play", "view", "skip"]).sum()
    assert examples.label[logged].sum() == (events != "skip").sum()
    assert set(np.unique(examples.weight[logged])) == {0.5, 1.0}  # view weighs 0.5
    assert (examples.label[~logged] == 0).all() and {UNIFORM, HARD} <= set(examples.kind.tolist())
    # no sampled negative is an item its user interacted with: its state's history never holds it
    sampled = ~logged
    assert not (examples.history[sampled] == examples.item[sampled, None]).any()
    assert (examples.history < setup.catalog.n_items).all()


def test_rank_stage_is_written_into_the_artifact_and_evaluated(
    dataset: tuple[Path, Path], ranked: Path, tmp_path: Path
) -> None:
    manifest = read_manifest(ranked)
    assert set(manifest["stages"]) == {"retrieval", "rank"}
    rank_stage = manifest["stages"]["rank"]
    assert rank_stage["metrics"]["validation"]["auc"] > 0.6
    assert [row["epoch"] for row in rank_stage["history"]] == [0, 1, 2]
    assert (ranked / RANKER_DIR / "weights.safetensors").is_file()
    data, features = dataset
    argv = ["evaluate", "--data", str(data), "--features", str(features), "--model", str(ranked)]
    overrides = [f"--set={o}" for o in (f"out={tmp_path}", "ray.num_cpus=2", *RANK)]
    assert main([*argv, "--out", str(tmp_path), "--quiet", *overrides]) == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())["rank"]
    assert result["pointwise"]["auc"] > 0.6
    assert 0.0 < result["pointwise"]["log_loss"] < 1.0
    listwise = result["listwise"]
    assert set(listwise) == {"retrieval", "retrieve_then_rank"} and "ndcg@20" in listwise["retrieval"]
    assert (tmp_path / "rank_calibration.png").is_file()
    assert "| retrieve-then-rank |" in rank_markdown(result)


def test_reranker_orders_candidates_by_probability_and_rejects_bad_input(ranked: Path) -> None:
    reranker = Reranker.from_artifact(ranked)
    candidates = [str(i) for i in reranker.item_ids[:30]]
    user = np.random.default_rng(0).normal(size=reranker.vectors.shape[1]).astype(np.float32)
    user /= np.linalg.norm(user)  # user vectors are L2-normalised
    ordered, probabilities = reranker.rank(user, candidates, recency=12.0)
    assert sorted(ordered.tolist()) == sorted(candidates)
    assert np.all(np.diff(probabilities) <= 0) and ((probabilities > 0) & (probabilities < 1)).all()
    rows, by_row = reranker.rank(user, np.arange(30))
    assert sorted(rows.tolist()) == list(range(30)) and np.all(np.diff(by_row) <= 0)
    with pytest.raises(ValueError, match=r"unknown item ids \['no-such-item'\]"):
        reranker.rank(user, [*candidates[:3], "no-such-item"])
    with pytest.raises(ValueError, match="user_vector must have shape"):
        reranker.rank(user[:5], candidates)


def test_a_missing_or_mismatched_ranker_is_refused(retriever: Path, ranked: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no ranking stage"):
        Reranker.from_artifact(retriever)
    copy = tmp_path / "model"
    shutil.copytree(ranked, copy)
    config_path = copy / RANKER_DIR / CONFIG_FILE
    document = json.loads(config_path.read_text())
    document["embed_dim"] = 16
    config_path.write_text(json.dumps(document))
    with pytest.raises(ModelLoadError, match="embed_dim: ranker has 16, expected 32"):
        Reranker.from_artifact(copy)


def test_a_killed_ranker_worker_resumes_from_the_last_checkpoint(
    dataset: tuple[Path, Path], retriever: Path, tmp_path: Path
) -> None:
    shutil.copytree(retriever, tmp_path / "model")
    data, features = dataset
    # 3 steps per epoch: global step 4 falls in the second epoch, after the first checkpoint
    config = _config(tmp_path, "train.max_failures=1", "train.max_steps_per_epoch=3", "train.fail_at_step=4")
    result = train_ranker(config, str(data), str(features), str(tmp_path / "model"), name="faulty")
    assert len(list((tmp_path / "train").glob(f"faulty-*/{INJECTED_FAILURE_MARKER}"))) == 1
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert result.history[0]["resumed_from_epoch"] == -1
    assert result.history[-1]["resumed_from_epoch"] == 0
    assert "rank" in json.loads((tmp_path / "model" / MANIFEST).read_text())["stages"]


def test_writing_a_new_two_tower_model_removes_the_old_ranker(ranked: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(ranked, copy)
    artifact = load_artifact(copy)
    assert (copy / RANKER_DIR).is_dir()
    vectors = np.stack(artifact.item_vectors.column("vector").to_numpy(zero_copy_only=False))
    manifest = write_artifact(
        copy,
        artifact.model,
        np.asarray(artifact.item_vectors.column("item_id").to_pylist()),
        vectors,
        config=artifact.manifest["config"],
        metrics={},
        data_fingerprint=artifact.manifest["data_fingerprint"],
    )
    assert not (copy / RANKER_DIR).exists()  # fitted on the old vectors: it would not fit these
    assert set(manifest["stages"]) == {"retrieval"}
