"""Fusion of an item's aligned modality vectors into one content vector.

Every method shares one interface, :class:`Fusion`: ``forward(projected, present)`` takes
modality -> (B, D) aligned vectors (as :meth:`Aligner.project` returns them) and modality -> (B,)
bool presence, and returns ``(fused, weights)``: fused (B, out_dim) and, for methods that weigh
modalities, weights (B, M) in the order of ``fusion.modalities`` (0 for absent modalities, summing
to 1 over the present ones), else None. Guarantees common to all methods:

* an absent modality never influences the output: its vector is zeroed before anything reads
  it, and the method marks it missing explicitly (a learned missing slot, a padding mask, a
  zero gate), never by zero-filling alone;
* an item with no modality present gets a learned ``empty`` vector (weights all 0);
* in training, modality dropout (ModDrop; Neverova et al., "ModDrop: adaptive multi-modal
  gesture recognition", TPAMI 2016) hides each present modality with probability
  ``modality_dropout`` but never all of an item's present modalities.

Methods by config name (:data:`FUSIONS`): ``concat``, ``attention``, ``gated``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from raymm.errors import ConfigError
from raymm.models.align.base import stack_modalities
from raymm.models.config import FusionConfig
from raymm.models.layers import linear, mlp


def modality_dropout(present: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Hide each True of ``present`` (B, M) bool with probability ``p``; keep at least one per row.

    Rows that had a present modality keep one (chosen uniformly among their present ones) if the
    draw hid them all; rows with none stay empty. Returns a new (B, M) bool tensor.
    """
    if p <= 0.0:
        return present
    draws = torch.rand(present.shape, generator=generator, device=present.device)
    kept = present & (draws >= p)
    lost_all = present.any(dim=1) & ~kept.any(dim=1)
    # A uniformly random present modality per row: the argmax of uniform noise over present slots.
    survivor = torch.rand(present.shape, generator=generator, device=present.device).masked_fill(
        ~present, -1.0
    )
    rescue = torch.zeros_like(present).scatter_(1, survivor.argmax(dim=1, keepdim=True), True)
    return kept | (rescue & lost_all.unsqueeze(1))


class Fusion(nn.Module):
    """Base of every fusion method; see the module docstring for the contract.

    ``modalities`` fixes the order of the weights' columns; ``in_dim`` is the aligned width
    (``align.shared_dim``); ``out_dim`` is ``config.out_dim`` or ``in_dim``. Subclasses
    implement :meth:`_fuse` on stacked, masked inputs.
    """

    name: ClassVar[str] = ""

    def __init__(self, config: FusionConfig, modalities: Sequence[str], in_dim: int) -> None:
        super().__init__()
        if not modalities:
            raise ConfigError("fusion needs at least one modality, got none")
        self.config = config
        self.modalities = list(modalities)
        self.in_dim = in_dim
        self.out_dim = config.out_dim or in_dim
        self.empty = nn.Parameter(torch.randn(self.out_dim) * 0.02)

    def forward(
        self, projected: Mapping[str, Tensor], present: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        """(fused (B, out_dim), weights (B, M) or None); see the module docstring.

        Raises :class:`ValueError` if a modality is missing or a vector is not (B, in_dim).
        """
        missing = [m for m in self.modalities if m not in projected or m not in present]
        if missing:
            raise ValueError(f"fusion input lacks modalities {missing}; expected {self.modalities}")
        vectors = stack_modalities(projected, self.modalities)  # (B, M, D)
        if vectors.shape[2] != self.in_dim:
            raise ValueError(f"fusion expects vectors of width {self.in_dim}, got {vectors.shape[2]}")
        mask = stack_modalities(present, self.modalities).to(torch.bool)  # (B, M)
        if self.training:
            mask = modality_dropout(mask, self.config.modality_dropout)
        vectors = torch.where(mask.unsqueeze(2), vectors, 0.0)
        fused, weights = self._fuse(vectors, mask)
        any_present = mask.any(dim=1, keepdim=True)
        fused = torch.where(any_present, fused, self.empty.expand_as(fused))
        return fused, weights

    def _fuse(self, vectors: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """``vectors`` (B, M, D) with absent rows zeroed, ``mask`` (B, M) -> (fused, weights).

        Rows with no modality must still come out finite (they are replaced by ``empty``).
        """
        raise NotImplementedError


class ConcatFusion(Fusion):
    """Concatenation + MLP, the early-fusion baseline (as in VBPR, He & McAuley, AAAI 2016).

    Each absent modality's slot holds a learned per-modality "missing" vector instead of its
    (zeroed) features, and the (B, M) presence mask is concatenated too, so the MLP
    (``hidden_dim``, ``dropout``) sees missingness explicitly. Weights: None.
    """

    name = "concat"

    def __init__(self, config: FusionConfig, modalities: Sequence[str], in_dim: int) -> None:
        super().__init__(config, modalities, in_dim)
        n = len(self.modalities)
        self.missing = nn.Parameter(torch.randn(n, in_dim) * 0.02)
        self.mlp = mlp(n * in_dim + n, config.hidden_dim, self.out_dim, config.dropout)

    def _fuse(self, vectors: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        slots = torch.where(mask.unsqueeze(2), vectors, self.missing.expand_as(vectors))
        return self.mlp(torch.cat([slots.flatten(1), mask.to(vectors.dtype)], dim=1)), None


class AttentionFusion(Fusion):
    """Attention pooling of modality tokens with a learned query.

    Pooling by multi-head attention with a learned seed (Lee et al., "Set Transformer",
    ICML 2019; Ilse et al., "Attention-based Deep Multiple Instance Learning", ICML 2018;
    attention of Vaswani et al. 2017). Tokens are the aligned vectors plus a learned
    modality-type embedding; absent modalities are excluded by the key padding mask. ``heads``
    must divide ``in_dim``. Weights: the attention over modalities, averaged over heads.
    """

    name = "attention"

    def __init__(self, config: FusionConfig, modalities: Sequence[str], in_dim: int) -> None:
        super().__init__(config, modalities, in_dim)
        if in_dim % config.heads:
            raise ConfigError(f"fusion.heads={config.heads} must divide the aligned width {in_dim}")
        self.type_embedding = nn.Parameter(torch.randn(len(self.modalities), in_dim) * 0.02)
        self.query = nn.Parameter(torch.randn(1, 1, in_dim) * 0.02)
        self.attention = nn.MultiheadAttention(in_dim, config.heads, dropout=config.dropout, batch_first=True)
        self.out = linear(in_dim, self.out_dim)

    def _fuse(self, vectors: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        tokens = vectors + self.type_embedding
        # An all-masked row would give NaN (even through torch.where's gradient): unmask empty rows.
        padding = ~mask & mask.any(dim=1, keepdim=True)
        query = self.query.expand(vectors.shape[0], 1, -1)
        pooled, attention = self.attention(query, tokens, tokens, key_padding_mask=padding, need_weights=True)
        weights = attention[:, 0, :] * mask.to(attention.dtype)
        return self.out(pooled[:, 0]), weights


class GatedFusion(Fusion):
    """A learned per-item softmax gate over the present modalities.

    In the spirit of Gated Multimodal Units (Arevalo et al., "Gated Multimodal Units for
    Information Fusion", ICLR workshop 2017): a gate MLP reads all (masked) modality vectors and
    the mask, its logits of absent modalities are set to -inf, and the fused vector is the
    gate-weighted sum of the aligned vectors followed by a linear layer to ``out_dim``. Weights:
    the gate, 0 on absent modalities and summing to 1 over present ones (all 0 for empty items).
    """

    name = "gated"

    def __init__(self, config: FusionConfig, modalities: Sequence[str], in_dim: int) -> None:
        super().__init__(config, modalities, in_dim)
        n = len(self.modalities)
        self.gate = mlp(n * in_dim + n, config.hidden_dim, n, config.dropout)
        self.out = linear(in_dim, self.out_dim)

    def _fuse(self, vectors: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        logits = self.gate(torch.cat([vectors.flatten(1), mask.to(vectors.dtype)], dim=1))
        logits = logits.masked_fill(~mask & mask.any(dim=1, keepdim=True), float("-inf"))
        weights = torch.softmax(logits, dim=1) * mask.to(logits.dtype)
        return self.out((weights.unsqueeze(2) * vectors).sum(dim=1)), weights


#: Fusion methods by the name ``fusion.method`` uses in the config.
FUSIONS: dict[str, type[Fusion]] = {
    "concat": ConcatFusion,
    "attention": AttentionFusion,
    "gated": GatedFusion,
}


def build_fusion(config: FusionConfig, modalities: Sequence[str], in_dim: int) -> Fusion:
    """The fusion ``config.method`` names over ``modalities`` of aligned width ``in_dim``.

    Raises :class:`ConfigError` for an unknown method or heads that do not divide ``in_dim``.
    """
    try:
        method = FUSIONS[config.method]
    except KeyError:
        raise ConfigError(f"unknown fusion.method {config.method!r}; known: {', '.join(FUSIONS)}") from None
    return method(config, modalities, in_dim)
