"""``cca``: canonical correlation analysis, fitted in closed form on the training items."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from raymm.errors import ConfigError
from raymm.models.align.base import fix_signs, sym_inverse_sqrt
from raymm.models.align.closed_form import ClosedFormAligner
from raymm.models.config import AlignConfig


class CCAAligner(ClosedFormAligner):
    """Canonical correlation analysis into ``shared_dim`` canonical directions.

    Hotelling, "Relations between two sets of variates", Biometrika 1936; for more than two
    modalities the MAXVAR generalisation (Kettenring, "Canonical analysis of several sets of
    variables", Biometrika 1971). Each modality is centred and whitened
    (``W_m = (C_mm + ridge * mean_variance * I)^{-1/2}``); the whitened cross-covariances
    ``K_ab = W_a C_ab W_b`` of the pairs that ``mode`` selects (all pairs, or each modality with
    ``anchor``) fill the off-diagonal blocks of a block matrix with identity diagonal blocks,
    whose top eigenvectors give the canonical directions, each modality's block rescaled to unit
    variance. For two modalities this is exactly Hotelling's CCA: the eigenvalues are
    ``1 + rho_i`` with the singular vectors of ``K_ab`` (the SVD of the whitened
    cross-covariance) as blocks. Each C_mm uses the rows where m is present, each C_ab the rows
    where both are. ``canonical_correlations`` (shared_dim,) holds, per component, the mean
    over pairs of the sample correlation of that component on the rows holding both (0 beyond the min(d_m) components a fit can produce).
    """

    name = "cca"

    def __init__(
        self, config: AlignConfig, input_dims: Mapping[str, int], audio_bands: int | None = None
    ) -> None:
        if len(input_dims) < 2:
            raise ConfigError(f"align.method='cca' needs at least two modalities, got {list(input_dims)}")
        super().__init__(config, input_dims, audio_bands)
        self.register_buffer("canonical_correlations", torch.zeros(config.shared_dim))
        self.canonical_correlations: Tensor

    def _fit_maps(self, reduced: dict[str, Tensor], present: Mapping[str, Tensor]) -> None:
        means, whiteners, offsets = {}, {}, {}
        total = 0
        for modality in self.modalities:
            x = reduced[modality][self._rows_with(present, modality)].double()
            means[modality] = x.mean(dim=0)
            centred = x - means[modality]
            covariance = centred.T @ centred / (x.shape[0] - 1)
            dim = covariance.shape[0]
            scale = float(torch.trace(covariance)) / dim or 1.0
            eye = torch.eye(dim, dtype=covariance.dtype, device=covariance.device)
            whiteners[modality] = sym_inverse_sqrt(covariance + self.config.ridge * scale * eye)
            offsets[modality] = (total, total + dim)
            total += dim
        block = torch.eye(total, dtype=torch.float64, device=next(iter(means.values())).device)
        for a, b in self.pairs():
            rows = self._rows_with(present, a, b)
            xa = reduced[a][rows].double() - means[a]
            xb = reduced[b][rows].double() - means[b]
            whitened = whiteners[a] @ (xa.T @ xb / (xa.shape[0] - 1)) @ whiteners[b]
            (a0, a1), (b0, b1) = offsets[a], offsets[b]
            block[a0:a1, b0:b1] = whitened
            block[b0:b1, a0:a1] = whitened.T
        k = min(self.shared_dim, *(self.head_dims[m] for m in self.modalities))
        _, vectors = torch.linalg.eigh(block)
        top = fix_signs(vectors[:, -k:].flip(dims=[1]))
        directions = {}
        for modality, (start, stop) in offsets.items():
            part = top[start:stop]
            part = part / part.norm(dim=0, keepdim=True).clamp_min(1e-12)
            directions[modality] = whiteners[modality] @ part
            self._set_head(modality, directions[modality], -means[modality] @ directions[modality])
        correlations = torch.stack(
            [self._correlations(reduced, present, a, b, directions) for a, b in self.pairs()]
        )
        self.canonical_correlations.zero_()
        self.canonical_correlations[:k] = correlations.mean(dim=0).to(self.canonical_correlations.dtype)

    def _correlations(
        self,
        reduced: dict[str, Tensor],
        present: Mapping[str, Tensor],
        a: str,
        b: str,
        directions: dict[str, Tensor],
    ) -> Tensor:
        """(k,) sample correlations of the fitted components of a and b on the rows holding both."""
        rows = self._rows_with(present, a, b)
        za = reduced[a][rows].double() @ directions[a]
        zb = reduced[b][rows].double() @ directions[b]
        za, zb = za - za.mean(dim=0), zb - zb.mean(dim=0)
        return (za * zb).sum(dim=0) / (za.norm(dim=0) * zb.norm(dim=0)).clamp_min(1e-12)
