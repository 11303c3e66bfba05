"""A linear probe shared by the tests that check which facets a representation carries."""

from __future__ import annotations

import numpy as np


def ridge_probe_accuracy(
    features: np.ndarray, labels: np.ndarray, train: np.ndarray, ridge: float = 10.0
) -> float:
    """One-vs-rest ridge regression on standardised features; accuracy on the rows outside ``train``."""
    mean, std = features[train].mean(axis=0), features[train].std(axis=0) + 1e-6
    x = np.hstack([(features - mean) / std, np.ones((len(features), 1))])
    targets = np.eye(labels.max() + 1)[labels]
    gram = x[train].T @ x[train] + ridge * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, x[train].T @ targets[train])
    return float(np.mean(np.argmax(x[~train] @ weights, axis=1) == labels[~train]))
