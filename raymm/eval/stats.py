"""Statistics for quality claims: seeds summarised as mean +- sd, per-user paired tests.

An ordering between two systems "holds" only when a paired test on the same users says so: the
per-user differences of a metric (e.g. NDCG@20) are tested with an exact-in-the-limit sign-flip
permutation test (two-sided; the null is "each user's difference is as likely negative as
positive") and, as a cross-check, the Wilcoxon signed-rank test. A 95% bootstrap interval of the
mean difference says how large it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SIGN_FLIPS = 20_000
BOOTSTRAPS = 5_000
#: An ordering holds when the paired p-value is below this.
ALPHA = 0.05


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "sd", "n", "values"}`` of per-seed values (sd with ddof=1; 0 for one value)."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(array.mean()), 4) if array.size else None,
        "sd": round(float(array.std(ddof=1)), 4) if array.size > 1 else 0.0,
        "n": int(array.size),
        "values": [round(float(v), 4) for v in array],
    }


def paired_test(first: np.ndarray, second: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of per-user values ``first`` and ``second`` (same users, same order).

    Returns the mean of each, the mean difference (first - second), its 95% bootstrap interval,
    the two-sided sign-flip p-value, the Wilcoxon signed-rank p-value, how many users were
    better, worse or tied, and ``first_better`` (True/False when significant at :data:`ALPHA`,
    None when not). Raises :class:`ValueError` for arrays of different shapes.
    """
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"paired values must be two (U,) arrays, got {first.shape} and {second.shape}")
    differences = first - second
    n = differences.size
    rng = np.random.default_rng(seed)
    observed = float(differences.mean()) if n else 0.0
    if n == 0 or not differences.any():
        p_flip, p_wilcoxon, interval = 1.0, 1.0, [0.0, 0.0]
    else:
        flipped = np.empty(SIGN_FLIPS)
        for start in range(0, SIGN_FLIPS, 1000):
            signs = rng.choice(np.array([-1.0, 1.0]), size=(min(1000, SIGN_FLIPS - start), n))
            flipped[start : start + len(signs)] = np.abs(signs @ differences / n)
        p_flip = (1 + int((flipped >= abs(observed) - 1e-12).sum())) / (SIGN_FLIPS + 1)
        means = np.array(
            [differences[rng.integers(0, n, n)].mean() for _ in range(BOOTSTRAPS)], dtype=np.float64
        )
        interval = [round(float(q), 4) for q in np.quantile(means, [0.025, 0.975])]
        from scipy.stats import wilcoxon

        p_wilcoxon = float(wilcoxon(differences, zero_method="wilcox").pvalue)
    significant = p_flip < ALPHA
    return {
        "users": int(n),
        "mean_first": round(float(first.mean()), 4) if n else None,
        "mean_second": round(float(second.mean()), 4) if n else None,
        "mean_difference": round(observed, 4),
        "relative_difference": round(observed / float(second.mean()), 4) if n and second.mean() else None,
        "bootstrap_95": interval,
        "sign_flip_p": round(p_flip, 5),
        "wilcoxon_p": round(p_wilcoxon, 5),
        "users_better": int((differences > 0).sum()),
        "users_worse": int((differences < 0).sum()),
        "users_tied": int((differences == 0).sum()),
        "first_better": (observed > 0) if significant else None,
    }
