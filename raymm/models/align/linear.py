"""``linear``: ridge least-squares maps from each modality into the anchor's PCA space."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from raymm.models.align.base import fix_signs
from raymm.models.align.closed_form import ClosedFormAligner


class LinearAligner(ClosedFormAligner):
    """Linear alignment into the anchor modality's principal subspace.

    The shared space is spanned by the top ``shared_dim`` principal components of the
    ``anchor`` modality (Pearson 1901; Hotelling 1933); every other modality gets the ridge
    regression map (Hoerl & Kennard, "Ridge regression", Technometrics 1970) that best predicts
    the anchor's coordinates from its own features on the items where both are present:
    ``W = (X^T X + ridge * tr(X^T X)/d * I)^{-1} X^T Y`` on centred data, plus the offset
    that maps means to means. The closed-form analogue of aligning every modality to a
    pivot language, as in cross-lingual embedding mapping (Mikolov et al., "Exploiting
    similarities among languages for machine translation", 2013).
    """

    name = "linear"

    def _fit_maps(self, reduced: dict[str, Tensor], present: Mapping[str, Tensor]) -> None:
        anchor = self.anchor
        x_anchor = reduced[anchor][self._rows_with(present, anchor)].double()
        anchor_mean = x_anchor.mean(dim=0)
        centred = x_anchor - anchor_mean
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        k = min(self.shared_dim, x_anchor.shape[1])
        basis = fix_signs(vectors[:, -k:].flip(dims=[1]))  # (d_anchor, k)
        self._set_head(anchor, basis, -anchor_mean @ basis)
        for modality in self.modalities:
            if modality == anchor:
                continue
            rows = self._rows_with(present, modality, anchor)
            x = reduced[modality][rows].double()
            y = (reduced[anchor][rows].double() - anchor_mean) @ basis
            x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
            xc, yc = x - x_mean, y - y_mean
            gram = xc.T @ xc
            dim = gram.shape[0]
            scale = float(torch.trace(gram)) / dim or 1.0
            eye = torch.eye(dim, dtype=gram.dtype, device=gram.device)
            weights = torch.linalg.solve(gram + self.config.ridge * scale * eye, xc.T @ yc)
            self._set_head(modality, weights, y_mean - x_mean @ weights)
