"""Alignment of per-modality item features into one shared space (see ``registry`` for the methods)."""

from __future__ import annotations

from raymm.models.align.base import Aligner, MelAudioEncoder, PCAReducer, ProjectionHead, info_nce
from raymm.models.align.cca import CCAAligner
from raymm.models.align.contrastive import ContrastiveAligner
from raymm.models.align.kg import KGAligner, shares_tag, supervised_contrastive_loss, tag_incidence
from raymm.models.align.linear import LinearAligner
from raymm.models.align.plain import PlainAligner
from raymm.models.align.registry import ALIGNERS, build_aligner, inactive_alignment

__all__ = [
    "ALIGNERS",
    "Aligner",
    "CCAAligner",
    "ContrastiveAligner",
    "KGAligner",
    "LinearAligner",
    "MelAudioEncoder",
    "PCAReducer",
    "PlainAligner",
    "ProjectionHead",
    "build_aligner",
    "inactive_alignment",
    "info_nce",
    "shares_tag",
    "supervised_contrastive_loss",
    "tag_incidence",
]
