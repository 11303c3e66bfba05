"""``none``: the same per-modality heads as ``contrastive``, no alignment loss (the ablation baseline)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from raymm.models.align.base import Aligner


class PlainAligner(Aligner):
    """No alignment: each modality's head maps it into ``shared_dim``, trained only by the
    recommendation loss; :meth:`loss` is 0.

    The "plain concatenation" baseline of multimodal recommenders, e.g. VBPR's learned
    embedding of visual features (He & McAuley, "VBPR: Visual Bayesian Personalized Ranking
    from Implicit Feedback", AAAI 2016). The heads are those of ``contrastive`` (the MLP
    :class:`~raymm.models.align.base.ProjectionHead` of ``hidden_dim`` and ``dropout``; the conv
    audio encoder for mel_stats audio when ``audio_encoder: conv``; ``pca_dim`` applies), so
    ``none`` and ``contrastive`` under one config differ only in the alignment loss, not in
    capacity. ``hidden_dim: 0`` gives one linear layer per modality (VBPR's linear embedding),
    for every method alike.
    """

    name = "none"
    uses_temperature = False
    aligns_modalities = False  # nothing to switch off: it never aligns

    def loss(
        self, projected: Mapping[str, Tensor], present: Mapping[str, Tensor], item_tags: Tensor | None = None
    ) -> Tensor:
        """Always 0 (a tensor on the device of the projections)."""
        first = next(iter(projected.values()))
        return torch.zeros((), device=first.device, dtype=first.dtype)
