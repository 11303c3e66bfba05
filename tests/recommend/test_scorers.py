"""The scorers behind one interface: popularity, the content baseline, the fallback blend."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymm.recommend.catalog import Catalog
from raymm.recommend.history import item_counts
from raymm.recommend.scorers import (
    ContentScorer,
    FallbackScorer,
    FitContext,
    PopularityScorer,
    history_weight,
)
from tests.recommend.fixed import FixedScorer


def _catalog(features: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> Catalog:
    n = len(next(iter(features.values())))
    return Catalog(
        np.array([f"i{k}" for k in range(n)], dtype=object),
        {m: torch.from_numpy(v.astype(np.float32)) for m, v in features.items()},
        {m: torch.from_numpy(v) for m, v in present.items()},
        torch.zeros(n, dtype=torch.long),
        [[] for _ in range(n)],
        [],
    )


def test_popularity_ranks_by_count_with_seeded_ties() -> None:
    counts = np.array([3, 0, 7, 3, 1])
    history = np.full((2, 4), -1)
    first = PopularityScorer(counts, seed=0).recommend(history, 5).rows
    assert (
        first[0].tolist()[0] == 2
        and set(first[0].tolist()[1:3]) == {0, 3}
        and first[0].tolist()[3:] == [4, 1]
    )
    assert first[0].tolist() == first[1].tolist()  # every user alike
    assert PopularityScorer(counts, seed=0).recommend(history, 5).rows.tolist() == first.tolist()  # seeded
    with pytest.raises(ValueError, match="non-negative"):
        PopularityScorer(np.array([1, -1]))


def test_content_baseline_finds_the_item_like_the_history() -> None:
    rng = np.random.default_rng(0)
    text = rng.normal(size=(50, 8))
    image = rng.normal(size=(50, 6))
    text[7] = text[3] + 0.01  # item 7 is item 3's near twin in text; item 3 has no image
    present = {"text": np.ones(50, bool), "image": np.arange(50) != 3}
    catalog = _catalog({"text": text, "image": image}, present)
    scorer = ContentScorer().fit(FitContext(catalog, None, []))  # type: ignore[arg-type]
    top = scorer.recommend(np.array([[-1, 3]]), 3, exclude=None)
    assert top.rows[0, 0] == 3 and top.rows[0, 1] == 7


def test_fallback_gives_popularity_to_empty_histories_and_blends_by_length() -> None:
    primary = FixedScorer([0.0, 1.0, 0.5, 0.2])
    popularity = PopularityScorer(np.array([9, 0, 1, 4]))
    history = np.array([[-1, -1, -1], [-1, -1, 2], [0, 1, 3]])
    assert history_weight(history, 1.0).tolist() == [0.0, 0.5, 0.75]
    blended = FallbackScorer(primary, popularity, shrinkage=1.0).recommend(history, 4).rows
    assert blended[0].tolist() == popularity.recommend(history[:1], 4).rows[0].tolist()
    personal_only = FallbackScorer(primary, popularity, shrinkage=0.0).recommend(history, 4).rows
    assert personal_only[2].tolist() == [1, 2, 3, 0] and personal_only[0].tolist() == blended[0].tolist()


def _events(rows: list[tuple[str, int]]) -> pa.Table:
    """Interactions: (item id, day) pairs, one user each, all 'like'."""
    day = 86_400_000
    return pa.table(
        {
            "user_id": [f"u{k}" for k in range(len(rows))],
            "item_id": [item for item, _ in rows],
            "event": ["like"] * len(rows),
            "ts": pa.array([d * day for _, d in rows], pa.timestamp("ms", tz="UTC")),
            "event_id": [f"e{k}" for k in range(len(rows))],
        }
    )


def test_recent_popularity_weighs_events_by_their_age() -> None:
    catalog = _catalog({"text": np.zeros((2, 1))}, {"text": np.ones(2, dtype=bool)})
    # i0: three events 100 days ago; i1: two events on the last day.
    context = FitContext(catalog, _events([("i0", 0)] * 3 + [("i1", 100)] * 2), ["like"])
    assert item_counts(context.interactions, catalog, ["like"]).tolist() == [3, 2]
    recent = item_counts(context.interactions, catalog, ["like"], half_life_days=10.0)
    assert recent[1] == pytest.approx(2.0) and recent[0] == pytest.approx(3 * 0.5**10)
    history = np.full((1, 2), -1)
    assert PopularityScorer().fit(context).recommend(history, 1).rows.tolist() == [[0]]
    assert PopularityScorer(half_life_days=10.0).fit(context).recommend(history, 1).rows.tolist() == [[1]]
    with pytest.raises(ValueError, match="half_life_days"):
        item_counts(context.interactions, catalog, ["like"], half_life_days=0.0)


def test_projected_content_keeps_the_near_twin_and_a_new_item_gets_its_catalog_twins_vector() -> None:
    rng = np.random.default_rng(1)
    text = rng.normal(size=(60, 12))
    image = rng.normal(size=(60, 10))
    text[7], image[7] = text[3] + 0.01, image[3] + 0.01  # item 7 is item 3's near twin
    present = {"text": np.ones(60, bool), "image": np.arange(60) % 5 != 0}
    catalog = _catalog({"text": text, "image": image}, present)
    context = FitContext(catalog, None, [])  # type: ignore[arg-type]
    full = ContentScorer().fit(context)
    projected = ContentScorer(dim=6).fit(context)
    assert full.width == 22 and full.projection is None
    assert projected.width == 6 and projected.projection is not None
    # Orthonormal directions, so a projected score is the full score within the kept subspace.
    torch.testing.assert_close(projected.projection.T @ projected.projection, torch.eye(6), atol=1e-5, rtol=0)
    assert projected.recommend(np.array([[3]]), 2).rows[0, :2].tolist() == [3, 7]
    # A new item known by its raw features gets the vector the catalog's row with those features got.
    rows = [3, 5]  # item 5 has no image: its absent modality stays absent
    encoded = projected.encode(
        {m: catalog.features[m][rows] for m in ("text", "image")},
        {m: catalog.present[m][rows] for m in ("text", "image")},
    )
    torch.testing.assert_close(encoded, projected.item_vectors()[rows])
    # The same rows give the same directions (an exact decomposition, no random start).
    again = ContentScorer(dim=6).fit(context)
    torch.testing.assert_close(again.item_vectors(), projected.item_vectors(), rtol=0, atol=0)
    # Saved and loaded as an artifact carries it, it scores the same.
    loaded = ContentScorer.from_vectors(projected.vectors())
    torch.testing.assert_close(loaded.encode(*_rows(catalog, rows)), encoded)
    with pytest.raises(ValueError, match=r"need the \['image'\] features"):
        projected.encode({"text": catalog.features["text"][rows]}, {"text": catalog.present["text"][rows]})
    with pytest.raises(ValueError, match="content dim must be positive"):
        ContentScorer(dim=0)


def _rows(catalog: Catalog, rows: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return {m: v[rows] for m, v in catalog.features.items()}, {m: v[rows] for m, v in catalog.present.items()}
