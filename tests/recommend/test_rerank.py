"""Retrieve-then-rank's reranker (raymm/recommend/rerank.py) on the session's ranked artifact: it scores
a candidate as training and offline evaluation do, orders candidates by probability, and refuses bad
input and artifacts whose ranker is missing or does not fit."""

from __future__ import annotations

import collections
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raymm.models.artifact import RANKER_DIR
from raymm.models.errors import ModelLoadError
from raymm.models.ranker import CONFIG_FILE, Ranker
from raymm.recommend.rank_examples import predict, rank_setup, split_examples
from raymm.recommend.rerank import Reranker, ranker_inputs
from raymm.recommend.scorers import RetrieveThenRank, TwoTowerScorer
from raymm.recommend.topk import TopK
from raymm.recommend.vectors import user_vectors
from raymm.training.rank_objective import RankObjective
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


def _users(reranker: Reranker, n: int, seed: int = 1) -> torch.Tensor:
    """``n`` random L2-normalised user vectors of the artifact's width."""
    users = np.random.default_rng(seed).normal(size=(n, reranker.inputs.vectors.shape[1])).astype(np.float32)
    return torch.from_numpy(users / np.linalg.norm(users, axis=1, keepdims=True))


def test_the_inputs_of_the_catalog_are_those_saved_beside_the_ranker(trained: Trained) -> None:
    setup = rank_setup(str(trained.data), str(trained.features), str(trained.model))
    events = set(setup.two_tower.config.user_state.events)
    train = pq.read_table(trained.data / "train.parquet").to_pylist()
    counted = collections.Counter(row["item_id"] for row in train if row["event"] in events)
    counts = np.array([counted[item_id] for item_id in setup.catalog.item_ids], dtype=np.float64)
    inputs = ranker_inputs(setup.two_tower, setup.catalog, counts)
    saved = Reranker.from_artifact(trained.ranked).inputs  # items.safetensors and item_vectors.parquet
    torch.testing.assert_close(inputs.popularity, torch.from_numpy(np.log1p(counts).astype(np.float32)))
    torch.testing.assert_close(inputs.popularity, saved.popularity)
    torch.testing.assert_close(inputs.vectors, saved.vectors, atol=1e-6, rtol=0)
    torch.testing.assert_close(inputs.content_vectors, saved.content_vectors, atol=1e-6, rtol=0)
    assert set(inputs.projected) == set(saved.projected) == set(setup.two_tower.modalities)
    for m in setup.two_tower.modalities:
        torch.testing.assert_close(inputs.projected[m], saved.projected[m], atol=1e-6, rtol=0)
        assert torch.equal(inputs.present[m], saved.present[m])
        assert torch.equal(inputs.present[m], setup.catalog.present[m])
    # the content vectors leave the item-id embedding out: warm items differ from their full vectors
    assert not torch.allclose(inputs.content_vectors, inputs.vectors, atol=1e-3)


def test_rerank_keeps_each_users_best_k_candidates_by_logit_and_pads_with_minus_one(trained: Trained) -> None:
    reranker = Reranker.from_artifact(trained.ranked)
    users = _users(reranker, 2)
    rows = torch.tensor([[3, 8, 1, 20, 11, 5], [7, 2, 30, 4, -1, -1]])
    recency = torch.tensor([math.log1p(3.0), math.nan])
    logits = reranker.score_rows(users, rows, recency)
    assert torch.isfinite(logits[0]).all() and torch.isfinite(logits[1, :4]).all()
    assert logits[1, 4:].tolist() == [-math.inf, -math.inf]
    for u, n_real in ((0, 6), (1, 4)):  # a candidate scores the same alone as in a batch
        for j in range(n_real):
            alone = reranker.score_rows(users[u : u + 1], rows[u : u + 1, j : j + 1], recency[u : u + 1])
            assert alone.item() == pytest.approx(logits[u, j].item(), abs=1e-5)
    # rerank adds the candidates' own retrieval scores (the served retriever's), not the two-tower's
    retrieved = torch.tensor([[0.9, -0.4, 0.3, 0.8, -0.9, 0.1], [0.2, 0.7, -0.5, 0.4, -math.inf, -math.inf]])
    logits = reranker.score_rows(users, rows, recency, retrieved)
    assert reranker.ranker.retrieval_weight > 0 and not torch.allclose(
        logits[0], reranker.score_rows(users, rows, recency, torch.zeros(2, 6))[0]
    )
    top = reranker.rerank(TopK(rows, retrieved), users, recency, k=5)
    for u, n_real in ((0, 6), (1, 4)):
        order = np.argsort(-logits[u, :n_real].numpy(), kind="stable")
        assert top.rows[u].tolist() == ([rows[u, j].item() for j in order] + [-1])[:5]
        assert top.scores[u, :n_real].tolist() == pytest.approx(logits[u, order[:5]].tolist())
    assert top.scores[1, 4].item() == -math.inf
    assert reranker.rerank(TopK(rows, torch.zeros(2, 6)), users, recency, k=50).rows.shape == (2, 6)


def test_rank_gives_the_probabilities_of_the_logits_and_reads_recency_in_hours(trained: Trained) -> None:
    reranker = Reranker.from_artifact(trained.ranked)
    user = _users(reranker, 1)
    rows = np.array([5, 9, 14, 2, 30])

    def expected(log1p_hours: float) -> np.ndarray:
        logits = reranker.score_rows(user, torch.from_numpy(rows)[None], torch.tensor([log1p_hours]))[0]
        return torch.sigmoid(logits).numpy()

    for hours, log1p_hours in ((3.0, math.log1p(3.0)), (None, math.nan)):  # None: unknown, the mean
        ordered, probabilities = reranker.rank(user[0].numpy(), rows, recency=hours)
        want = expected(log1p_hours)
        order = np.argsort(-want, kind="stable")
        assert ordered.tolist() == rows[order].tolist()
        assert probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities, want[order], rtol=1e-6)
    assert not np.allclose(expected(math.log1p(3.0)), expected(math.nan))  # recency is read at all
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(
            ValueError, match=re.escape(f"recency must be finite hours >= 0 or None, got {bad}")
        ):
            reranker.rank(user[0].numpy(), rows, recency=bad)
    n = reranker.n_items
    with pytest.raises(
        ValueError, match=re.escape(f"candidate rows [-1, {n}] are outside the catalog [0, {n})")
    ):
        reranker.rank(user[0].numpy(), np.array([0, -1, n]))
    with pytest.raises(
        ValueError, match=re.escape("candidates must be a non-empty 1-D sequence, got shape (0,)")
    ):
        reranker.rank(user[0].numpy(), [])
