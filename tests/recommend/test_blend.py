"""The served blend: the popularity floor, the coordinate search on validation, the manifest record."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymm.recommend.blend import (
    COLLAB_WEIGHT_GRID,
    BlendSettings,
    choose_blend_settings,
    fit_content,
    relative_scale,
    served_retriever,
)
from raymm.recommend.catalog import Catalog
from raymm.recommend.collab import DECAY_GRID, CollaborativeScorer, PersonalScorer
from raymm.recommend.scorers import ContentScorer, FallbackScorer, FitContext, PopularityScorer, Scorer
from tests.recommend.fixed import FixedScorer


def _context(n_items: int = 4) -> FitContext:
    catalog = Catalog(
        np.array([f"i{k}" for k in range(n_items)], dtype=object),
        {"text": torch.zeros(n_items, 1)},
        {"text": torch.ones(n_items, dtype=torch.bool)},
        torch.zeros(n_items, dtype=torch.long),
        [[] for _ in range(n_items)],
        [],
    )
    users = [f"u{k % 5}" for k in range(20)]
    items = [f"i{(k * 7) % n_items}" for k in range(20)]
    table = pa.table(
        {
            "user_id": users,
            "item_id": items,
            "event": ["like"] * 20,
            "ts": pa.array(np.arange(20) * 86_400_000, pa.timestamp("ms", tz="UTC")),
            "event_id": [f"e{k}" for k in range(20)],
        }
    )
    return FitContext(catalog, table, ["like"])


def test_the_popularity_floor_keeps_popularity_in_a_long_historys_answer() -> None:
    primary = FixedScorer([0.0, 1.0, 0.9, 0.8])
    popularity = PopularityScorer(np.array([100, 0, 1, 50]))
    long_history = np.array([[0, 1, 2, 3] * 10])
    plain = FallbackScorer(primary, popularity, shrinkage=1.0).recommend(long_history, 4).rows[0].tolist()
    floored = FallbackScorer(primary, popularity, 1.0, popularity_weight=10.0).recommend(long_history, 4)
    assert plain[:2] == [1, 2]  # 40 items of history: the personal score all but alone
    assert floored.rows[0].tolist()[:2] == [0, 3]  # popularity still counts
    with pytest.raises(ValueError, match="popularity_weight"):
        FallbackScorer(primary, popularity, 1.0, popularity_weight=-1.0)


def test_the_search_finds_the_setting_validation_prefers() -> None:
    context = _context()
    two_tower = FixedScorer([0.1, 0.2, 0.3, 0.4])
    collab = CollaborativeScorer(l2=1.0).fit(context)
    wanted = {"half_life_days": 14.0, "shrinkage": 8.0, "popularity_weight": 0.3, "collab_l2": 4.0}

    def validation(scorer: Scorer) -> float:
        assert isinstance(scorer, FallbackScorer)
        personal = scorer.primary
        relative = personal.weight if isinstance(personal, PersonalScorer) else 0.0
        found = {
            "half_life_days": scorer.popularity.half_life_days,
            "shrinkage": scorer.shrinkage,
            "popularity_weight": scorer.popularity_weight,
            "collab_l2": collab.l2,
        }
        score = sum(1.0 for key, value in wanted.items() if found[key] == value)
        return score + (1.0 if relative > 0 else 0.0)

    history = np.array([[0, 1], [-1, 2]])
    settings, trials = choose_blend_settings(validation, two_tower, collab, context, history)
    assert (settings.half_life_days, settings.shrinkage, settings.popularity_weight) == (14.0, 8.0, 0.3)
    assert settings.collab_l2 == 4.0 and settings.collab_relative > 0 and collab.l2 == 4.0
    assert trials[settings.label()] == max(trials.values()) == 5.0
    # Without an item-item part only the popularity settings are searched.
    alone, tried = choose_blend_settings(validation, two_tower, None, context, history)
    assert alone.collab_weight == 0 and all(label.startswith("collab=0/") for label in tried)
    assert len(tried) < len(trials)
    assert 0.0 in COLLAB_WEIGHT_GRID


def test_the_item_item_weight_and_l2_are_searched_together() -> None:
    """Validation that prefers a weight and an l2 only together (each alone scores below the start):
    searched one at a time, the search would stop at the start."""
    context = _context()
    two_tower = FixedScorer([0.1, 0.2, 0.3, 0.4])
    collab = CollaborativeScorer(l2=1.0).fit(context)
    scale = relative_scale(two_tower, collab.set_l2(16.0), np.array([[0, 1], [-1, 2]]))

    def validation(scorer: Scorer) -> float:
        assert isinstance(scorer, FallbackScorer)
        personal = scorer.primary
        weight = personal.weight if isinstance(personal, PersonalScorer) else 0.0
        if collab.l2 == 16.0 and weight == pytest.approx(4.0 * scale):
            return 2.0
        return 1.0 if (collab.l2, weight > 0) == (1.0, True) else 0.0

    settings, trials = choose_blend_settings(
        validation, two_tower, collab, context, np.array([[0, 1], [-1, 2]])
    )
    assert (settings.collab_relative, settings.collab_l2) == (4.0, 16.0)
    assert settings.collab_weight == pytest.approx(4.0 * scale) and collab.l2 == 16.0
    assert trials[settings.label()] == 2.0


def test_the_search_weighs_the_history_by_recency_when_validation_prefers_it() -> None:
    """The decay is a coordinate of its own; the weight stays relative to the spread at the
    chosen decay, the search's own item-item part is left undecayed, and serving's is decayed."""
    context = _context()
    two_tower = FixedScorer([0.1, 0.2, 0.3, 0.4])
    collab = CollaborativeScorer(l2=1.0).fit(context)
    history = np.array([[0, 1, 3], [-1, 2, 0]])

    def validation(scorer: Scorer) -> float:
        assert isinstance(scorer, FallbackScorer)
        personal = scorer.primary
        if not isinstance(personal, PersonalScorer) or personal.collaborative is None:
            return 0.0
        return 2.0 if personal.collaborative.decay == 0.9 else 1.0

    settings, trials = choose_blend_settings(validation, two_tower, collab, context, history)
    assert settings.collab_decay == 0.9 and "/decay=0.9/" in settings.label()
    assert trials[settings.label()] == 2.0 and collab.decay == 1.0
    scale = relative_scale(two_tower, collab.set_l2(settings.collab_l2).with_decay(0.9), history)
    assert settings.collab_weight == pytest.approx(settings.collab_relative * scale)
    served = served_retriever(two_tower, collab, PopularityScorer().fit(context), settings)
    assert isinstance(served.primary, PersonalScorer) and served.primary.collaborative is not None
    assert served.primary.collaborative.decay == 0.9
    # Every decay was tried; labels without a decay are those of an undecayed part.
    assert {label.split("/decay=")[1].split("/")[0] for label in trials if "/decay=" in label} == {
        f"{d:g}" for d in DECAY_GRID if d != 1.0
    }


def test_settings_round_trip_through_the_manifest_and_old_manifests_still_read() -> None:
    settings = BlendSettings(
        collab_weight=0.7, collab_relative=1.0, collab_l2=2.0, half_life_days=14.0, shrinkage=8.0
    )
    assert BlendSettings.from_metrics(settings.to_metrics()) == settings
    decayed = replace(settings, collab_decay=0.95)
    assert BlendSettings.from_metrics(decayed.to_metrics()) == decayed
    # A manifest written before the decay: the history read undecayed, as it was served.
    before = {key: value for key, value in asdict(settings).items() if key != "collab_decay"}
    assert BlendSettings.from_metrics({"blend": before}) == settings
    assert settings.collab_decay == 1.0 and "decay" not in settings.label()
    old = BlendSettings.from_metrics({"fallback_shrinkage": 4.0, "fallback_half_life_days": None})
    assert old == BlendSettings(shrinkage=4.0)
    assert BlendSettings.from_metrics({}) is None


def test_weight_zero_leaves_the_item_item_part_out_of_the_index() -> None:
    context = _context()
    two_tower = FixedScorer([0.1, 0.2, 0.3, 0.4])
    collab = CollaborativeScorer(l2=1.0).fit(context)
    popularity = PopularityScorer().fit(context)
    off = served_retriever(two_tower, collab, popularity, BlendSettings())
    on = served_retriever(
        two_tower, collab, popularity, BlendSettings(collab_weight=1.0, collab_relative=1.0)
    )
    assert off.item_vectors().shape[1] == 2
    assert on.item_vectors().shape[1] == 2 + collab.width


def test_the_content_weight_is_searched_and_recorded_and_off_adds_no_width() -> None:
    context = _context()
    two_tower = FixedScorer([0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(0)
    context.catalog.features["text"] = torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32))
    content = ContentScorer().fit(context)
    history = np.array([[0, 1], [-1, 2]])
    scale = relative_scale(two_tower, content, history)

    def validation(scorer: Scorer) -> float:
        assert isinstance(scorer, FallbackScorer)
        personal = scorer.primary
        weight = personal.content_weight if isinstance(personal, PersonalScorer) else 0.0
        return 1.0 if weight == pytest.approx(2.0 * scale) else 0.0

    settings, trials = choose_blend_settings(validation, two_tower, None, context, history, content=content)
    assert settings.content_relative == 2.0 and settings.content_weight == pytest.approx(2.0 * scale)
    assert "/content=2/" in settings.label() and trials[settings.label()] == 1.0
    assert BlendSettings.from_metrics(settings.to_metrics()) == settings
    # A blend without it keeps the label it always had (manifests' trials still match).
    assert "content" not in BlendSettings(shrinkage=4.0).label()
    # Without a content part the search never weighs one.
    _, tried = choose_blend_settings(validation, two_tower, None, context, history)
    assert not any("content" in label for label in tried)
    popularity = PopularityScorer().fit(context)
    off = served_retriever(two_tower, None, popularity, BlendSettings(), content)
    on = served_retriever(two_tower, None, popularity, settings, content)
    assert off.item_vectors().shape[1] == 2
    assert on.item_vectors().shape[1] == 2 + content.width
    # The content part adds the weighted mean similarity to the history, nothing else.
    expected = two_tower.item_vectors()[:, 0] + settings.content_weight * (
        content.item_vectors() @ content.user_vectors(history[:1])[0]
    )
    personal = on.primary.user_vectors(history[:1]) @ on.primary.item_vectors().T
    torch.testing.assert_close(personal[0], expected)


def test_the_content_part_is_fitted_once_per_catalog_and_settings() -> None:
    context = _context()
    rng = np.random.default_rng(1)
    context.catalog.features["text"] = torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32))
    recorded = {"model": {"modalities": None, "content": {"dim": 2}}}
    first = fit_content(recorded, context)
    assert fit_content(recorded, context) is first  # validation's and test's contexts share a catalog
    torch.testing.assert_close(first.item_vectors(), ContentScorer(None, 2).fit(context).item_vectors())
    wider = fit_content({"model": {"content": {"dim": 3}}}, context)
    assert wider is not first and wider.width == 3
    other = _context()  # the same ids, other features: another catalog object is fitted afresh
    other.catalog.features["text"] = torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32))
    refit = fit_content(recorded, other)
    assert refit is not first and not torch.allclose(refit.item_vectors(), first.item_vectors())


def test_the_search_computes_the_two_towers_user_vectors_once_per_batch() -> None:
    """The two-tower's and content part's user vectors depend on no setting: the search keeps
    them per history batch (SameUsers) instead of recomputing them every trial, and the scores
    are those of the part itself."""
    calls: list[bytes] = []

    class Counted(FixedScorer):
        def user_vectors(self, history: np.ndarray) -> torch.Tensor:
            calls.append(np.ascontiguousarray(history).tobytes())
            return torch.as_tensor((np.asarray(history) >= 0).sum(axis=1, keepdims=True), dtype=torch.float32)

    context = _context()
    history = np.array([[0, 1, 3], [-1, 2, 0]])
    two_tower = Counted([0.1, 0.2, 0.3, 0.4])
    scores: list[torch.Tensor] = []

    def validation(scorer: Scorer) -> float:
        scores.append(scorer.user_vectors(history))
        return float(scores[-1].sum())

    _, trials = choose_blend_settings(
        validation, two_tower, CollaborativeScorer(l2=1.0).fit(context), context, history
    )
    # One batch: validation's rows, which relative_scale reads too (every row has items).
    assert len(trials) > 20 and len(calls) == 1
    # The kept vectors are the two-tower's own: its column of the served user vector.
    direct = Counted([0.1, 0.2, 0.3, 0.4]).user_vectors(history)
    for user_vectors in scores:
        weight = user_vectors[:, :1] / direct  # a(h) times the two-tower's vector
        assert torch.allclose(weight, weight[:, :1].expand_as(weight))


def test_a_blend_with_a_decay_outside_zero_to_one_is_refused() -> None:
    for decay in (0.0, 1.5):
        with pytest.raises(ValueError, match="decay must be in"):
            BlendSettings(collab_decay=decay)
        with pytest.raises(ValueError, match="decay must be in"):
            BlendSettings.from_metrics({"blend": {**asdict(BlendSettings()), "collab_decay": decay}})
