"""The evaluation stage's configuration: the ``evaluate`` section (the cut-offs).

Plain pydantic on :class:`raymm.settings_base.StrictModel`, so :mod:`raymm.config` assembles this
section without evaluation importing the hub. Which variants the ablation report compares is the
experiment's ``ablation`` section (:mod:`raymm.workflows.settings`).
"""

from __future__ import annotations

from pydantic import Field, PositiveInt

from raymm.settings_base import StrictModel

__all__ = ["EvaluateConfig"]


class EvaluateConfig(StrictModel):
    """``raymm evaluate``: the cut-offs every ranking metric is computed at."""

    #: The K of every ranking metric (recall@K, NDCG@K...); ``train.val_metric`` picks one of them.
    ks: list[PositiveInt] = Field([10, 20, 50], min_length=1)
