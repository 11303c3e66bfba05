"""Pointwise metrics of a binary scorer (the ranker's P(engage)), plain NumPy.

* :func:`roc_auc`: the probability that a random positive scores above a random negative (ties
  count one half), computed from average ranks (Mann-Whitney U);
* :func:`log_loss`: mean binary cross-entropy of probabilities clipped to [1e-7, 1 - 1e-7];
* :func:`best_threshold`: the probability threshold (predict 1 when p >= t) that maximises F1,
  chosen on validation and then applied unchanged to test;
* :func:`classification_metrics`: all of the above plus accuracy, precision, recall, F1 at a
  threshold, and the expected calibration error;
* :func:`calibration_curve`: the reliability curve (mean prediction vs observed positive rate in
  equal-width probability bins) and its expected calibration error (ECE, bin-size weighted mean
  of |observed - predicted|); :func:`plot_calibration` draws it (matplotlib Agg).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_EPS = 1e-7


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must have one shape")
    if y.size == 0:
        raise ValueError("no examples to score")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; raises :class:`ValueError` if only one class is present."""
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    average_rank = upper - (counts - 1) / 2.0  # 1-based ranks, ties share their mean rank
    rank_sum = average_rank[inverse][y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log) of probabilities clipped away from 0 and 1."""
    y, p = _check(labels, probabilities)
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def best_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold t maximising F1 of ``p >= t`` (the highest such t on ties); 0.5 without positives."""
    y, p = _check(labels, probabilities)
    n_pos = y.sum()
    if n_pos == 0:
        return 0.5
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    true_pos = np.cumsum(y_sorted)
    predicted = np.arange(1, p.size + 1)
    # Only the last position of a run of equal probabilities is a reachable cut.
    last = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    f1 = np.where(last, 2 * true_pos / (predicted + n_pos), -1.0)
    return float(p_sorted[int(np.argmax(f1))])


def calibration_curve(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability curve in ``bins`` equal-width bins of [0, 1] (empty bins left out), plus the ECE.

    Returns ``{"predicted": [...], "observed": [...], "count": [...], "ece": float}``.
    """
    y, p = _check(labels, probabilities)
    index = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    filled = count > 0
    predicted = np.bincount(index, weights=p, minlength=bins)[filled] / count[filled]
    observed = np.bincount(index, weights=y, minlength=bins)[filled] / count[filled]
    ece = float(np.sum(count[filled] * np.abs(observed - predicted)) / y.size)
    return {
        "predicted": predicted.tolist(),
        "observed": observed.tolist(),
        "count": count[filled].tolist(),
        "ece": ece,
    }


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float
) -> dict[str, float]:
    """AUC, log-loss, and accuracy/precision/recall/F1 of ``p >= threshold``; plus ECE and counts.

    AUC is NaN when only one class is present.
    """
    y, p = _check(labels, probabilities)
    predicted = p >= threshold
    true_pos = float(np.sum(predicted & (y == 1)))
    precision = true_pos / max(float(predicted.sum()), 1.0)
    recall = true_pos / max(float(y.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    both_classes = 0 < y.sum() < y.size
    return {
        "auc": roc_auc(y, p) if both_classes else float("nan"),
        "log_loss": log_loss(y, p),
        "accuracy": float(np.mean(predicted == (y == 1))),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "threshold": float(threshold),
        "ece": calibration_curve(y, p)["ece"],
        "positive_rate": float(y.mean()),
        "n": float(y.size),
    }


def plot_calibration(curves: dict[str, dict[str, Any]], path: str) -> str:
    """Draw reliability curves (label -> :func:`calibration_curve` result) to a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.8, 4.4))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    for label, curve in curves.items():
        axis.plot(
            curve["predicted"], curve["observed"], marker="o", label=f"{label} (ECE {curve['ece']:.3f})"
        )
    axis.set_xlabel("mean predicted P(engage)")
    axis.set_ylabel("observed positive rate")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title("Ranker calibration")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
