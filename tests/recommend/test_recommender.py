"""A trained artifact as a recommender (raymm/recommend/recommender.py): ``load_model`` and the
:class:`Recommender`'s answers, on the session's artifacts with and without a ranker."""

from __future__ import annotations

import pytest

from raymm.recommend.recommender import load_model
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
