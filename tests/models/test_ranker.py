"""The ranker model on its own: masking of missing modalities, persistence, its loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raymm.eval.pointwise import log_loss
from raymm.models.config import FusionConfig, RankerConfig
from raymm.models.errors import ModelLoadError
from raymm.models.ranker import CONFIG_FILE, Ranker
from raymm.training.rank_objective import platt_scaling

MODALITIES = ["text", "image", "audio"]
SHARED, EMBED = 16, 8


def _ranker(method: str = "gated") -> Ranker:
    torch.manual_seed(0)
    config = RankerConfig(hidden_dims=[32], fusion=FusionConfig(method=method, hidden_dim=32, heads=2))
    return Ranker(config, MODALITIES, SHARED, EMBED).eval()


def _batch(n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], ...]:
    generator = torch.Generator().manual_seed(seed)
    projected = {m: torch.randn(n, SHARED, generator=generator) for m in MODALITIES}
    present = {m: torch.ones(n, dtype=torch.bool) for m in MODALITIES}
    return projected, present


def _pairs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    items = torch.randn(n, EMBED, generator=generator)
    users = torch.randn(n, EMBED, generator=generator)
    context = torch.tensor([[1.0, 2.0]] * n)
    return items, users, context, (items * users).sum(-1)


@pytest.mark.parametrize("method", ["concat", "attention", "gated"])
def test_an_absent_modality_never_changes_the_score(method: str) -> None:
    ranker = _ranker(method)
    projected, present = _batch(4)
    present["image"][:2] = False
    items, users, context, retrieval = _pairs(4)
    before = ranker(projected, present, items, users, context, retrieval)
    projected["image"][:2] = torch.randn(2, SHARED) * 100  # garbage where the modality is absent
    after = ranker(projected, present, items, users, context, retrieval)
    assert torch.equal(before[:2], after[:2])
    assert torch.isfinite(after).all()


def test_items_missing_some_or_all_modalities_get_finite_scores() -> None:
    ranker = _ranker()
    projected, present = _batch(3)
    present["audio"][0] = False
    for m in MODALITIES:
        present[m][1] = False  # item 1 has no modality at all
    items, users, context, retrieval = _pairs(3)
    context[2, 0] = float("nan")  # unknown recency reads as the mean
    scores = ranker(projected, present, items, users, context, retrieval)
    assert torch.isfinite(scores).all()


def test_save_and_load_round_trip_and_refuse_other_widths(tmp_path: Path) -> None:
    ranker = _ranker()
    ranker.threshold, ranker.retrieval_weight, ranker.retrieval_temperature = 0.3, 0.5, 0.2
    ranker.calibration = (0.7, -0.4)
    ranker.fit_context(torch.tensor([[1.0, 0.0], [3.0, 2.0], [float("nan"), 4.0]]))
    ranker.save_pretrained(tmp_path)
    loaded = Ranker.from_pretrained(tmp_path, modalities=MODALITIES, shared_dim=SHARED, embed_dim=EMBED)
    projected, present = _batch(5)
    items, users, context, retrieval = _pairs(5)
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
    ranker = _ranker()
    projected, present = _batch(2)
    items, users, context, retrieval = _pairs(2)
    with pytest.raises(ValueError, match="must be 8-dim"):
        ranker(projected, present, items, users[:, :4], context, retrieval)


def test_focal_loss_with_gamma_zero_is_binary_cross_entropy() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([1.0, 0.0, 0.0])
    weights = torch.tensor([1.0, 2.0, 0.5])
    bce = _ranker().loss(logits, labels, weights)
    focal = Ranker(RankerConfig(loss="focal", focal_gamma=0.0), MODALITIES, SHARED, EMBED)
    assert focal.loss(logits, labels, weights) == pytest.approx(bce.item())
    sharper = Ranker(RankerConfig(loss="focal", focal_gamma=2.0), MODALITIES, SHARED, EMBED)
    assert sharper.loss(logits, labels, weights) < bce  # easy examples are down-weighted


def test_platt_scaling_calibrates_an_overconfident_scorer_without_reordering_it() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-true_logits))).astype(np.float32)
    overconfident = 1 / (1 + np.exp(-4 * true_logits))  # logits 4x too large
    scale, bias = platt_scaling(labels, overconfident, np.ones(4000, dtype=np.float32))
    assert scale == pytest.approx(0.25, abs=0.05) and bias == pytest.approx(0.0, abs=0.1)
    calibrated = 1 / (1 + np.exp(-(scale * 4 * true_logits + bias)))
    assert log_loss(labels, calibrated) < log_loss(labels, overconfident)
    # a monotone map: the order of the examples, and so any ranking by them, is unchanged
    np.testing.assert_array_equal(
        np.argsort(calibrated, kind="stable"), np.argsort(overconfident, kind="stable")
    )
    # and as serving applies it (Ranker.score): a batch's logits, the retriever's weighted part
    # included, become scale * logit + bias, in the same order as before calibration (64 distinct
    # logits, so the order is strict)
    ranker = _ranker()
    ranker.retrieval_weight = 2.0
    projected, present = _batch(64)
    with torch.no_grad():
        raw = ranker(projected, present, *_pairs(64))
        ranker.calibration = (scale, bias)
        served = ranker(projected, present, *_pairs(64))
    assert torch.unique(raw).numel() == 64
    np.testing.assert_array_equal(
        torch.argsort(served).numpy(),
        torch.argsort(raw).numpy(),
        err_msg="the calibrated logits rank the batch differently from the raw ones",
    )
    torch.testing.assert_close(served, raw * scale + bias)
