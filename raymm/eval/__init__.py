"""Evaluation in plain NumPy/PyTorch: full-ranking top-K metrics and simple baselines."""

from __future__ import annotations

from raymm.eval.metrics import DEFAULT_KS, ItemSets, popularity_scores, ranking_metrics

__all__ = ["DEFAULT_KS", "ItemSets", "popularity_scores", "ranking_metrics"]
