"""``none``: plain per-modality linear projections, no alignment loss (the ablation baseline)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from raymm.models.align.base import AUDIO, Aligner
from raymm.models.layers import linear


class PlainAligner(Aligner):
    """No alignment: one linear projection per modality into ``shared_dim``, trained only by the
    recommendation loss; :meth:`loss` is 0.

    The "plain concatenation" baseline of multimodal recommenders, e.g. VBPR's linear
    embedding of visual features (He & McAuley, "VBPR: Visual Bayesian Personalized Ranking
    from Implicit Feedback", AAAI 2016). ``hidden_dim`` is ignored; mel_stats audio still uses
    the conv encoder when ``audio_encoder: conv``; ``pca_dim`` still applies.
    """

    name = "none"
    uses_temperature = False

    def _build_head(self, modality: str, in_dim: int) -> nn.Module:
        if self.conv_audio and modality == AUDIO:
            return super()._build_head(modality, in_dim)
        return linear(in_dim, self.shared_dim)

    def loss(
        self, projected: Mapping[str, Tensor], present: Mapping[str, Tensor], item_tags: Tensor | None = None
    ) -> Tensor:
        """Always 0 (a tensor on the device of the projections)."""
        first = next(iter(projected.values()))
        return torch.zeros((), device=first.device, dtype=first.dtype)
