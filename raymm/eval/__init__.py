"""Offline evaluation: full-ranking top-K metrics and baselines (``metrics``, plain NumPy/PyTorch),
the test and cold-start protocols on a model artifact (``evaluate``), and the ablation report
that trains each variant with Ray Train and writes it up (``report``).

Only ``metrics`` is imported here: ``evaluate`` and ``report`` read the train stage, which itself
imports ``metrics``.
"""

from __future__ import annotations

from raymm.eval.metrics import DEFAULT_KS, ItemSets, popularity_scores, ranking_metrics

__all__ = ["DEFAULT_KS", "ItemSets", "popularity_scores", "ranking_metrics"]
