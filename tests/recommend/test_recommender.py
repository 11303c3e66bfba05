"""A trained artifact as a recommender (raymm/recommend/recommender.py): ``load_model`` and the
:class:`Recommender`'s answers, on the session's artifacts with and without a ranker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymm.recommend.content import EncodedItems
from raymm.recommend.recommender import Recommender, load_model
from tests.conftest import Trained


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


def _ids(recommender: Recommender) -> list[str]:
    return [str(i) for i in recommender.item_ids]


def test_a_batch_answers_each_user_as_one_request_does(trained: Trained) -> None:
    recommender = load_model(trained.ranked)
    ids = _ids(recommender)
    recent, seen, hours = [ids[:3], ids[10:25], []], [[ids[40]], [], ids[50:52]], [2.0, None, 30.0]
    batch = recommender.recommend_many(recent, 8, seen=seen, recency_hours=hours)
    assert [len(answer) for answer in batch] == [8, 8, 8]
    for answer, *request in zip(batch, recent, seen, hours, strict=True):
        one = recommender.recommend(request[0], 8, seen=request[1], recency_hours=request[2])
        assert [r.item_id for r in answer] == [r.item_id for r in one]
        assert [r.score for r in answer] == pytest.approx([r.score for r in one], abs=1e-5)
        assert not {r.item_id for r in answer} & {*request[0], *request[1]}
    # the ranker reads how long ago the user's last event was: the scores move by more than the
    # 1e-5 a batch may differ by (how much depends on the retrieval weight validation chose)
    two_hours = recommender.recommend(recent[0], 8, recency_hours=2.0)
    unknown = recommender.recommend(recent[0], 8)
    assert max(abs(a.score - b.score) for a, b in zip(two_hours, unknown, strict=True)) > 1e-4
    # a seen item leaves the answer; the others keep their order
    without = recommender.recommend(recent[0], 8, seen=[two_hours[0].item_id], recency_hours=2.0)
    kept = [r.item_id for r in two_hours[1:]]
    assert two_hours[0].item_id not in {r.item_id for r in without}
    assert [r.item_id for r in without if r.item_id in kept] == kept
    assert recommender.recommend_many([], 8) == []


def test_the_history_window_is_the_latest_items_oldest_first_padded_on_the_left(trained: Trained) -> None:
    recommender = load_model(trained.model)
    ids, window = _ids(recommender), recommender.spec.max_history
    assert recommender.history_rows(ids[: window + 3]).tolist() == [list(range(3, window + 3))]
    assert recommender.history_rows(ids[5:7]).tolist() == [[-1] * (window - 2) + [5, 6]]
    assert recommender.history_rows([]).tolist() == [[-1] * window]
    assert recommender.known(["nope", ids[4], ids[2]]) == [ids[4], ids[2]]
    with pytest.raises(KeyError, match=r"unknown item ids \['nope'\] \(1 of 3\)"):
        recommender.rows([ids[0], "nope", ids[1]])
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        recommender.recommend(ids[:2], k=0)
    with pytest.raises(ValueError, match="recent, seen and recency_hours differ in length: 2, 1, 2"):
        recommender.recommend_many([[], []], seen=[[]], recency_hours=[None, None])


def test_similar_items_are_the_nearest_item_vectors_but_the_item_itself(trained: Trained) -> None:
    recommender = load_model(trained.model)
    ids = _ids(recommender)
    vectors = recommender.two_tower.item_vectors().numpy()
    scores = vectors @ vectors[3]
    scores[3] = -np.inf
    expected = np.argsort(-scores, kind="stable")[:5]
    answer = recommender.similar(ids[3], k=5)
    assert [r.item_id for r in answer] == [ids[r] for r in expected]
    assert [r.score for r in answer] == pytest.approx(scores[expected].tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        recommender.similar(ids[3], k=0)
    with pytest.raises(KeyError, match=r"unknown item ids \['nope'\]"):
        recommender.similar("nope")


def test_the_ranker_reorders_the_retrievers_top_n_and_a_request_for_more_is_refused(trained: Trained) -> None:
    ranked, plain = load_model(trained.ranked, top_n=7), load_model(trained.model)
    assert load_model(trained.ranked).top_n == trained.config.rank.retriever_top_n
    assert plain.reranker is None and plain.max_k == len(plain.item_ids)
    assert ranked.reranker is not None and ranked.max_k == 7
    recent = _ids(plain)[:4]
    answer = ranked.recommend(recent, k=7)
    retrieved = plain.recommend(recent, k=7)  # the same retriever, without the ranker
    assert len(answer) == 7 and {r.item_id for r in answer} == {r.item_id for r in retrieved}
    assert [r.score for r in answer] == sorted((r.score for r in answer), reverse=True)
    with pytest.raises(ValueError, match="k=20 exceeds the retriever's top_n=7: the ranker sees only those"):
        ranked.recommend(recent, k=20)


def test_a_request_for_more_than_the_served_top_n_gets_the_trained_top_n_re_ranked(trained: Trained) -> None:
    # What serving loads when validation chose fewer candidates (7) than the ranker trained on (12).
    fixed = load_model(trained.ranked, top_n=7)
    both = Recommender(fixed.artifact, fixed.reranker, 7, max_top_n=12)
    twelve = load_model(trained.ranked, top_n=12)
    assert both.max_k == 12 and fixed.max_k == 7
    recent = _ids(fixed)[:4]
    for k, like in ((5, fixed), (7, fixed), (10, twelve), (12, twelve)):
        got, want = both.recommend(recent, k=k), like.recommend(recent, k=k)
        assert [r.item_id for r in got] == [r.item_id for r in want], k
    with pytest.raises(ValueError, match="k=13 exceeds the retriever's top_n=12: the ranker sees only those"):
        both.recommend(recent, k=13)


def test_live_items_join_a_new_recommender_and_leave_the_old_one_as_it_was(trained: Trained) -> None:
    base = load_model(trained.model)
    ids = _ids(base)
    vectors = base.two_tower.item_vectors().numpy().copy()
    model = base.artifact.model
    rng = np.random.default_rng(0)
    live = EncodedItems(
        ["new", ids[9], "empty"],
        np.stack([vectors[4], vectors[2], vectors[5]]),
        {m: np.zeros((3, model.config.align.shared_dim), np.float32) for m in model.modalities},
        {m: np.array([True, True, False]) for m in model.modalities},  # "empty" has no content
        features={m: rng.normal(size=(3, d)).astype(np.float32) for m, d in model.input_dims.items()},
    )
    grown = base.with_items(live)
    # The served blend's content part (validation weighed it for this model): the new item's and
    # the re-published item's rows come from their features, the others stay.
    assert base.content is not None and grown.content is not None
    kept = live.select(np.array([0, 1]))
    expected = base.content.encode(
        {m: torch.from_numpy(f) for m, f in kept.features.items()},
        {m: torch.from_numpy(p) for m, p in kept.present.items()},
    )
    torch.testing.assert_close(grown.content.item_vectors()[[-1, 9]], expected)
    torch.testing.assert_close(grown.content.item_vectors()[:8], base.content.item_vectors()[:8])
    assert grown.known(["new", "empty", ids[9]]) == ["new", ids[9]]
    assert len(grown.item_ids) == len(ids) + 1 and str(grown.item_ids[-1]) == "new"
    nearest = grown.similar("new", k=1)[0]  # a copy of item 4's vector
    assert nearest.item_id == ids[4] and nearest.score == pytest.approx(
        float(vectors[4] @ vectors[4]), abs=1e-5
    )
    grown_vectors = grown.two_tower.item_vectors().numpy()
    assert np.array_equal(grown_vectors[9], vectors[2])  # a known id: its new vector in place
    assert grown.counts[9] == base.counts[9] and grown.counts[-1] == 0  # new items have no popularity yet
    # the old recommender still answers from its own catalog
    assert base.known(["new"]) == [] and np.array_equal(base.two_tower.item_vectors().numpy(), vectors)
