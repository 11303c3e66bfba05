"""``raymm train --stage rank`` on a real Ray instance, its artifact, evaluation and serving hook, and
the parity of training, offline evaluation and ``Reranker`` scoring.

The session's model (``trained`` in tests/conftest.py) carries a ranker trained by
``train_ranker``; the CLI trains one more here, and once more with an injected worker failure.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raymm.cli import main
from raymm.eval.rank import rank_markdown
from raymm.models.artifact import MANIFEST, RANKER_DIR, load_artifact, read_manifest, write_artifact
from raymm.models.errors import ModelLoadError
from raymm.models.ranker import CONFIG_FILE, Ranker
from raymm.recommend.rank_examples import HARD, LOGGED, UNIFORM, predict, rank_setup, split_examples
from raymm.recommend.recommender import load_model
from raymm.recommend.rerank import Reranker
from raymm.recommend.scorers import RetrieveThenRank, TwoTowerScorer
from raymm.recommend.vectors import user_vectors
from raymm.training.loop import RunHooks
from raymm.training.rank_objective import RankObjective
from raymm.training.rank_trainer import train_ranker
from raymm.training.ray_runner import INJECTED_FAILURE_MARKER
from tests.conftest import RANK_OVERRIDES, Trained, shared_config


def test_examples_are_labelled_from_events_and_negatives_are_unseen(trained: Trained) -> None:
    config = shared_config(trained.root, "rank.hard_negative_share=0.5", "rank.negatives_per_positive=4")
    setup = rank_setup(str(trained.data), str(trained.features), str(trained.model))
    examples = split_examples(setup, config.rank, str(trained.data), "train", seed=0)
    events = np.asarray(pq.read_table(trained.data / "train.parquet").column("event").to_pylist())
    logged = examples.kind == LOGGED
    assert logged.sum() == np.isin(events, ["click", "like", "purchase", "play", "view", "skip"]).sum()
    assert examples.label[logged].sum() == (events != "skip").sum()
    assert set(np.unique(examples.weight[logged])) == {0.5, 1.0}  # view weighs 0.5
    assert (examples.label[~logged] == 0).all() and {UNIFORM, HARD} <= set(examples.kind.tolist())
    # no sampled negative is an item its user interacted with: its state's history never holds it
    sampled = ~logged
    assert not (examples.history[sampled] == examples.item[sampled, None]).any()
    assert (examples.history < setup.catalog.n_items).all()


def test_training_popularity_leaves_the_example_itself_out(trained: Trained) -> None:
    """A training positive sees its item's count minus its own event; validation events see the count."""
    setup = rank_setup(str(trained.data), str(trained.features), str(trained.model))
    counts = np.expm1(setup.inputs.popularity.numpy().astype(np.float64))
    train = split_examples(setup, trained.config.rank, str(trained.data), "train", seed=0)
    positive = (train.kind == LOGGED) & (train.label == 1.0)
    assert np.allclose(np.expm1(train.popularity[positive]), counts[train.item[positive]] - 1, atol=1e-3)
    skips = (train.kind == LOGGED) & (train.label == 0.0)
    assert np.allclose(np.expm1(train.popularity[skips]), counts[train.item[skips]], atol=1e-3)
    validation = split_examples(setup, trained.config.rank, str(trained.data), "validation", seed=1)
    assert np.allclose(np.expm1(validation.popularity), counts[validation.item], atol=1e-3)


def test_training_evaluation_and_serving_score_a_candidate_the_same_way(trained: Trained) -> None:
    setup = rank_setup(str(trained.data), str(trained.features), str(trained.ranked))
    two_tower = setup.two_tower
    ranker = Ranker.from_pretrained(
        trained.ranked / RANKER_DIR,
        modalities=two_tower.modalities,
        shared_dim=two_tower.config.align.shared_dim,
        embed_dim=two_tower.config.towers.embed_dim,
    ).eval()
    examples = split_examples(setup, trained.config.rank, str(trained.data), "validation", seed=1)
    part = examples.take(np.arange(50))
    users = user_vectors(two_tower, setup.inputs.vectors, part.history)
    with torch.no_grad():  # training: the objective DDP wraps
        training = RankObjective(ranker, setup.inputs)(
            torch.from_numpy(part.item),
            users,
            torch.from_numpy(part.recency),
            torch.from_numpy(part.popularity),
        )
    reranker = Reranker.from_artifact(trained.ranked)  # serving: from the artifact on disk
    served = reranker.score_rows(
        users, torch.from_numpy(part.item).unsqueeze(1), torch.from_numpy(part.recency)
    )[:, 0]
    assert torch.allclose(training, served, atol=1e-5)
    evaluation = predict(Reranker.from_inputs(ranker, setup.catalog.item_ids, setup.inputs), two_tower, part)
    assert np.allclose(evaluation, torch.sigmoid(served).numpy(), atol=1e-6)
    # retrieve-then-rank in evaluation re-orders exactly as Reranker.rank does for one user
    history = part.history[:1]
    retriever = TwoTowerScorer(two_tower, setup.catalog)
    ranked = RetrieveThenRank(retriever, retriever, reranker, 60).recommend(
        history, 20, recency=part.recency[:1]
    )
    candidates = retriever.recommend(history, 60).rows[0].numpy()
    one_user, _ = reranker.rank(
        users[0].numpy(),
        candidates,
        recency=float(np.expm1(part.recency[0])) if np.isfinite(part.recency[0]) else None,
    )
    assert ranked.rows[0].tolist() == one_user[:20].tolist()


def test_the_recommender_answers_known_and_unknown_users(trained: Trained) -> None:
    recommender = load_model(trained.ranked)
    items = [str(i) for i in recommender.item_ids[:5]]
    answer = recommender.recommend(items, k=10, seen=[str(recommender.item_ids[7])])
    assert len(answer) == 10 and not {r.item_id for r in answer} & {*items, str(recommender.item_ids[7])}
    assert [r.score for r in answer] == sorted((r.score for r in answer), reverse=True)
    stranger = recommender.recommend([], k=10)  # no history: popularity through the ranker
    assert len(stranger) == 10
    with pytest.raises(KeyError, match="unknown item ids"):
        recommender.recommend(["no-such-item"])


def test_rank_stage_is_written_into_the_artifact_and_evaluated(trained: Trained, tmp_path: Path) -> None:
    shutil.copytree(trained.model, tmp_path / "model")
    overrides = [f"--set={o}" for o in (f"out={tmp_path}", "ray.num_cpus=2", *RANK_OVERRIDES)]
    argv = [
        "train",
        "--stage",
        "rank",
        "--data",
        str(trained.data),
        "--features",
        str(trained.features),
        "--quiet",
    ]
    assert main([*argv, "--out", str(tmp_path / "model"), *overrides]) == 0
    ranked = tmp_path / "model"
    manifest = read_manifest(ranked)
    assert set(manifest.stages) == {"retrieval", "rank"}
    rank_stage = manifest.stages["rank"]
    assert rank_stage["metrics"]["validation"]["auc"] > 0.6
    assert [row["epoch"] for row in rank_stage["history"]] == [0, 1, 2]
    argv = trained.evaluate_argv(ranked)
    assert main([*argv, "--out", str(tmp_path / "eval"), "--quiet", *overrides]) == 0
    document = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    result = document["rank"]
    assert result["pointwise"]["auc"] > 0.6
    assert 0.0 < result["pointwise"]["log_loss"] < 1.0
    listwise = result["listwise"]
    assert (
        set(listwise) == {"retrieval", "retrieve_then_rank", "two_tower"}
        and "ndcg@20" in listwise["retrieval"]
    )
    # The ranker re-orders what serving retrieves: the served blend, as `raymm evaluate` scores it.
    assert listwise["retrieval"]["ndcg@20"] == pytest.approx(
        document["model"]["metrics"]["test"]["ndcg@20"], abs=1e-9
    )
    assert (tmp_path / "eval" / "rank_calibration.png").is_file()
    assert "| retrieve-then-rank |" in rank_markdown(result)


def test_reranker_orders_candidates_by_probability_and_rejects_bad_input(trained: Trained) -> None:
    reranker = Reranker.from_artifact(trained.ranked)
    candidates = [str(i) for i in reranker.item_ids[:30]]
    user = np.random.default_rng(0).normal(size=reranker.inputs.vectors.shape[1]).astype(np.float32)
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


def test_a_missing_or_mismatched_ranker_is_refused(trained: Trained, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no ranking stage"):
        Reranker.from_artifact(trained.model)
    copy = tmp_path / "model"
    shutil.copytree(trained.ranked, copy)
    config_path = copy / RANKER_DIR / CONFIG_FILE
    document = json.loads(config_path.read_text())
    document["embed_dim"] = 16
    config_path.write_text(json.dumps(document))
    with pytest.raises(ModelLoadError, match="embed_dim: ranker has 16, expected 32"):
        Reranker.from_artifact(copy)


def test_a_killed_ranker_worker_resumes_from_the_last_checkpoint(trained: Trained, tmp_path: Path) -> None:
    shutil.copytree(trained.model, tmp_path / "model")
    config = shared_config(tmp_path, "train.max_failures=1")
    # 3 steps per epoch: global step 4 falls in the second epoch, after the first checkpoint
    hooks = RunHooks(fail_at_step=4, max_steps_per_epoch=3)
    result = train_ranker(
        config, str(trained.data), str(trained.features), str(tmp_path / "model"), "faulty", hooks
    )
    assert len(list((tmp_path / "train").glob(f"faulty-*/{INJECTED_FAILURE_MARKER}"))) == 1
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert result.history[0]["resumed_from_epoch"] == -1
    assert result.history[-1]["resumed_from_epoch"] == 0
    assert "rank" in json.loads((tmp_path / "model" / MANIFEST).read_text())["stages"]


def test_writing_a_new_two_tower_model_removes_the_old_ranker(trained: Trained, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(trained.ranked, copy)
    artifact = load_artifact(copy)
    assert (copy / RANKER_DIR).is_dir()
    vectors = np.stack(artifact.item_vectors.column("vector").to_numpy(zero_copy_only=False))
    manifest = write_artifact(
        copy,
        artifact.model,
        np.asarray(artifact.item_vectors.column("item_id").to_pylist()),
        vectors,
        config=artifact.manifest.config,
        metrics={},
        data_fingerprint=artifact.manifest.data_fingerprint,
    )
    assert not (copy / RANKER_DIR).exists()  # fitted on the old vectors: it would not fit these
    assert set(manifest.stages) == {"retrieval"}
