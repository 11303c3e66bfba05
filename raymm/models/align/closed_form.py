"""The shared base of the alignment methods whose projections are fitted in closed form."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from raymm.errors import ConfigError
from raymm.models.align.base import AUDIO, Aligner
from raymm.models.config import AlignConfig


class ClosedFormAligner(Aligner):
    """Linear heads (d_m -> shared_dim) whose weights :meth:`fit` computes from the training items' statistics.

    With ``trainable: False`` the heads and the temperature are frozen: a fixed first stage
    whose :meth:`loss` still reports the InfoNCE of the fitted projections, without gradient.
    With ``trainable: True`` the fit only initialises the heads,
    which then train with the InfoNCE loss of ``contrastive``. The conv audio encoder cannot be
    fitted in closed form: ``audio_encoder: conv`` with mel audio raises :class:`ConfigError`.
    Output dimensions beyond what the fit can produce (``shared_dim`` > a modality's width)
    are zero.
    """

    closed_form = True

    def __init__(
        self, config: AlignConfig, input_dims: Mapping[str, int], audio_bands: int | None = None
    ) -> None:
        if config.audio_encoder == "conv" and AUDIO in input_dims:
            raise ConfigError(
                f"align.method={self.name!r} fits linear maps in closed form and cannot drive "
                "audio_encoder='conv'; use audio_encoder='mlp' or a learned method (contrastive, kg, none)"
            )
        super().__init__(config, input_dims, audio_bands)
        self.register_buffer("heads_fitted", torch.tensor(False))
        self.heads_fitted: Tensor
        for parameter in self.heads.parameters():
            parameter.requires_grad_(config.trainable)

    def _learns_temperature(self) -> bool:
        return self.config.trainable and super()._learns_temperature()

    def _build_head(self, modality: str, in_dim: int) -> nn.Module:
        return nn.Linear(in_dim, self.shared_dim)

    def _heads_fitted(self) -> bool:
        return bool(self.heads_fitted)

    def _fit_heads(self, reduced: dict[str, Tensor], present: Mapping[str, Tensor]) -> None:
        self._fit_maps(reduced, present)
        self.heads_fitted.fill_(True)

    def _fit_maps(self, reduced: dict[str, Tensor], present: Mapping[str, Tensor]) -> None:
        raise NotImplementedError

    def _set_head(self, modality: str, directions: Tensor, offset: Tensor) -> None:
        """Make head ``modality`` compute ``x @ directions + offset`` in its first k outputs, 0 after.

        ``directions`` (d_m, k) and ``offset`` (k,), k <= shared_dim.
        """
        head = self.heads[modality]
        assert isinstance(head, nn.Linear)
        k = directions.shape[1]
        weight = torch.zeros_like(head.weight)
        bias = torch.zeros_like(head.bias)
        weight[:k] = directions.T.to(weight.dtype)
        bias[:k] = offset.to(bias.dtype)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)

    def _rows_with(self, present: Mapping[str, Tensor], *modalities: str) -> Tensor:
        """(B,) bool: the rows where all ``modalities`` are present.

        Raises :class:`ValueError` naming the modalities if fewer than 2 such rows exist.
        """
        rows = present[modalities[0]].clone()
        for modality in modalities[1:]:
            rows &= present[modality]
        if int(rows.sum()) < 2:
            raise ValueError(
                f"{self.name} fit needs at least 2 items with {' and '.join(modalities)} present, "
                f"got {int(rows.sum())}"
            )
        return rows
