"""Retrieve-then-rank's reranker (raymm/recommend/rerank.py) on the session's ranked artifact: it scores
a candidate as training and offline evaluation do, orders candidates by probability, and refuses bad
input and artifacts whose ranker is missing or does not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from raymm.models.artifact import RANKER_DIR
from raymm.models.errors import ModelLoadError
from raymm.models.ranker import CONFIG_FILE, Ranker
from raymm.recommend.rank_examples import predict, rank_setup, split_examples
from raymm.recommend.rerank import Reranker
from raymm.recommend.scorers import RetrieveThenRank, TwoTowerScorer
from raymm.recommend.vectors import user_vectors
from raymm.train.rank_objective import RankObjective
from tests.conftest import Trained


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
