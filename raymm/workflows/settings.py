"""The ablation experiment's configuration: the ``ablation`` section (which variants
:mod:`raymm.workflows.ablation` trains and compares, and the missing-modality study).

Plain pydantic on :class:`raymm.settings_base.StrictModel` (no torch, no Ray), so
:mod:`raymm.config` assembles this section without importing the experiment.
"""

from __future__ import annotations

from pydantic import Field

from raymm.settings_base import Modality, StrictModel

__all__ = ["AblationConfig"]


class AblationConfig(StrictModel):
    """``raymm evaluate --ablation`` (and the quickstart's report): which variants to train and compare.

    ``variants`` names variants (see :mod:`raymm.workflows.ablation`). The default holds each
    modality alone, ``concat`` (no alignment, concatenation), ``contrastive+gated`` (aligned and
    fused), and between them ``none+gated`` (fusion without alignment) and ``contrastive+concat``
    (alignment without the gated fusion), so that alignment and fusion are measured apart; then
    the popularity and content baselines. With ``missing_modality`` set, the report hides
    ``missing_rate`` of that modality's present rows (a seeded subset of items) in a copy of the
    features, re-evaluates every trained variant on it, and re-trains on it the variants listed
    in ``missing_retrain`` that are also in ``variants``. The cut-offs are ``evaluate.ks``.
    """

    #: Variants to train (baselines: fit) and compare, by the names :mod:`raymm.workflows.ablation` gives them.
    variants: list[str] = Field(
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
    #: The modality the missing-modality study hides rows of; None skips the study.
    missing_modality: Modality | None = "image"
    #: Share of that modality's present rows hidden (a seeded subset of items).
    missing_rate: float = Field(0.5, ge=0.0, le=1.0)
    #: Variants also re-trained on the features with rows hidden (those in ``variants`` only).
    missing_retrain: list[str] = Field(["concat", "contrastive+gated"])
