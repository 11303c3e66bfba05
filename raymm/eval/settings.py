"""The evaluation stage's configuration: the ``evaluate`` section (cut-offs and the ablation report).

Plain pydantic on :class:`raymm.settings_base.StrictModel`, so :mod:`raymm.config` assembles this
section without evaluation importing the hub.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from raymm.settings_base import StrictModel

__all__ = ["EvaluateConfig"]


class EvaluateConfig(StrictModel):
    """``raymm evaluate``: cut-offs, and which variants the ablation report trains and compares.

    ``ablation`` names variants (see :mod:`raymm.workflows.ablation`). The default holds each
    modality alone, ``concat`` (no alignment, concatenation), ``contrastive+gated`` (aligned and
    fused), and between them ``none+gated`` (fusion without alignment) and ``contrastive+concat``
    (alignment without the gated fusion), so that alignment and fusion are measured apart; then
    the popularity and content baselines. With ``missing_modality`` set, the
    report hides ``missing_rate`` of that modality's present rows (a seeded subset of items) in a
    copy of the features, re-evaluates every trained variant on it, and re-trains on it the
    variants listed in ``missing_retrain`` that are also in ``ablation``.
    """

    ks: list[PositiveInt] = Field([10, 20, 50], min_length=1)
    ablation: list[str] = Field(
        [
            "text",
            "image",
            "audio",
            "concat",
            "none+gated",
            "contrastive+concat",
            "contrastive+gated",
            "popularity",
            "content",
        ]
    )
    missing_modality: Literal["text", "image", "audio"] | None = "image"
    missing_rate: float = Field(0.5, ge=0.0, le=1.0)
    missing_retrain: list[str] = Field(["concat", "contrastive+gated"])
