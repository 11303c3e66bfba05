"""Pointwise metrics of the ranking stage on hand-made examples whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raymm.eval.pointwise import (
    best_threshold,
    calibration_curve,
    classification_metrics,
    log_loss,
    roc_auc,
)

LABELS = np.array([0, 0, 1, 1, 0, 1])


def test_auc_of_a_perfect_an_inverted_and_a_constant_scorer() -> None:
    perfect = LABELS + 0.1 * np.arange(6)
    assert roc_auc(LABELS, perfect) == 1.0
    assert roc_auc(LABELS, -perfect) == 0.0
    assert roc_auc(LABELS, np.zeros(6)) == 0.5  # ties count one half


def test_auc_counts_pairs() -> None:
    # positives score 0.9, 0.4; negatives 0.5, 0.1: 3 of the 4 pairs are ordered right
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.75)


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(3), np.arange(3.0))


def test_log_loss_matches_its_definition() -> None:
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(expected)


def test_threshold_maximises_f1() -> None:
    labels = np.array([1, 1, 0, 1, 0, 0])
    probabilities = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
    # cut at 0.6 predicts the first four: tp 3, fp 1, fn 0 -> F1 6/7, better than any other cut
    assert best_threshold(labels, probabilities) == pytest.approx(0.6)
    metrics = classification_metrics(labels, probabilities, 0.6)
    assert metrics["precision"] == pytest.approx(0.75)
    assert metrics["recall"] == 1.0
    assert metrics["f1"] == pytest.approx(6 / 7)
    assert metrics["accuracy"] == pytest.approx(5 / 6)


def test_calibration_of_a_calibrated_and_an_overconfident_scorer() -> None:
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    calibrated = np.array([0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75])
    # bins 0 and 2 of 4 hold 4 examples each, 1 of 4 and 3 of 4 positive: observed = predicted
    assert calibration_curve(labels, calibrated, bins=4) == {
        "predicted": [0.25, 0.75],
        "observed": [0.25, 0.75],
        "count": [4, 4],
        "ece": 0.0,
    }
    # the same ranking pushed to 0 and 1: the same examples in the same bins, in the same order
    # (lowest predicted first), each bin a quarter off what it observes
    overconfident = np.where(calibrated > 0.5, 1.0, 0.0)
    assert calibration_curve(labels, overconfident, bins=4) == {
        "predicted": [0.0, 1.0],
        "observed": [0.25, 0.75],
        "count": [4, 4],
        "ece": pytest.approx(0.25),
    }
