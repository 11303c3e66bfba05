"""The ranker model on its own: masking of missing modalities, persistence, its loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raymm.models.config import RankerConfig
from raymm.models.errors import ModelLoadError
from raymm.models.ranker import CONFIG_FILE, Ranker
from tests.models.rankers import EMBED, MODALITIES, SHARED, batch, pairs, small_ranker


@pytest.mark.parametrize("method", ["concat", "attention", "gated"])
def test_an_absent_modality_never_changes_the_score(method: str) -> None:
    ranker = small_ranker(method)
    projected, present = batch(4)
    present["image"][:2] = False
    items, users, context, retrieval = pairs(4)
    before = ranker(projected, present, items, users, context, retrieval)
    projected["image"][:2] = torch.randn(2, SHARED) * 100  # garbage where the modality is absent
    after = ranker(projected, present, items, users, context, retrieval)
    assert torch.equal(before[:2], after[:2])
    assert torch.isfinite(after).all()


def test_items_missing_some_or_all_modalities_get_finite_scores() -> None:
    ranker = small_ranker()
    projected, present = batch(3)
    present["audio"][0] = False
    for m in MODALITIES:
        present[m][1] = False  # item 1 has no modality at all
    items, users, context, retrieval = pairs(3)
    context[2, 0] = float("nan")  # unknown recency reads as the mean
    scores = ranker(projected, present, items, users, context, retrieval)
    assert torch.isfinite(scores).all()


def test_save_and_load_round_trip_and_refuse_other_widths(tmp_path: Path) -> None:
    ranker = small_ranker()
    ranker.threshold, ranker.retrieval_weight, ranker.retrieval_temperature = 0.3, 0.5, 0.2
    ranker.calibration = (0.7, -0.4)
    ranker.fit_context(torch.tensor([[1.0, 0.0], [3.0, 2.0], [float("nan"), 4.0]]))
    ranker.save_pretrained(tmp_path)
    loaded = Ranker.from_pretrained(tmp_path, modalities=MODALITIES, shared_dim=SHARED, embed_dim=EMBED)
    projected, present = batch(5)
    items, users, context, retrieval = pairs(5)
    assert torch.allclose(
        ranker(projected, present, items, users, context, retrieval),
        loaded(projected, present, items, users, context, retrieval),
    )
    assert (loaded.threshold, loaded.retrieval_weight, loaded.calibration) == (0.3, 0.5, (0.7, -0.4))
    with pytest.raises(ModelLoadError, match="embed_dim: ranker has 8, expected 64"):
        Ranker.from_pretrained(tmp_path, modalities=MODALITIES, shared_dim=SHARED, embed_dim=64)
    with pytest.raises(ModelLoadError, match="modalities"):
        Ranker.from_pretrained(tmp_path, modalities=["text"], shared_dim=SHARED, embed_dim=EMBED)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    document["format_version"] = 99
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(ModelLoadError, match="ranker format version 99"):
        Ranker.from_pretrained(tmp_path, modalities=MODALITIES, shared_dim=SHARED, embed_dim=EMBED)


def test_wrong_vector_widths_are_refused() -> None:
    ranker = small_ranker()
    projected, present = batch(2)
    items, users, context, retrieval = pairs(2)
    with pytest.raises(ValueError, match="must be 8-dim"):
        ranker(projected, present, items, users[:, :4], context, retrieval)


def test_focal_loss_with_gamma_zero_is_binary_cross_entropy() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([1.0, 0.0, 0.0])
    weights = torch.tensor([1.0, 2.0, 0.5])
    bce = small_ranker().loss(logits, labels, weights)
    focal = Ranker(RankerConfig(loss="focal", focal_gamma=0.0), MODALITIES, SHARED, EMBED)
    assert focal.loss(logits, labels, weights) == pytest.approx(bce.item())
    sharper = Ranker(RankerConfig(loss="focal", focal_gamma=2.0), MODALITIES, SHARED, EMBED)
    assert sharper.loss(logits, labels, weights) < bce  # easy examples are down-weighted
