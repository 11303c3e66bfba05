"""The rank objective's calibration: Platt scaling of the ranker's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymm.eval.pointwise import log_loss
from raymm.training.rank_objective import platt_scaling
from tests.models.rankers import batch, pairs, small_ranker


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
    ranker = small_ranker()
    ranker.retrieval_weight = 2.0
    projected, present = batch(64)
    with torch.no_grad():
        raw = ranker(projected, present, *pairs(64))
        ranker.calibration = (scale, bias)
        served = ranker(projected, present, *pairs(64))
    assert torch.unique(raw).numel() == 64
    np.testing.assert_array_equal(
        torch.argsort(served).numpy(),
        torch.argsort(raw).numpy(),
        err_msg="the calibrated logits rank the batch differently from the raw ones",
    )
    torch.testing.assert_close(served, raw * scale + bias)
