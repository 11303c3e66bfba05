"""``contrastive``: per-modality MLP heads trained with symmetric InfoNCE between modalities."""

from __future__ import annotations

from raymm.models.align.base import Aligner


class ContrastiveAligner(Aligner):
    """Cross-modal contrastive alignment (CLIP).

    Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
    ICML 2021. Each modality has an MLP projection head (``hidden_dim``, ``dropout``; the conv
    :class:`~raymm.models.align.base.MelAudioEncoder` for mel_stats audio when
    ``audio_encoder: conv``) into ``shared_dim``. The loss is the symmetric InfoNCE between two
    modalities of the same item, on the rows where both are present, averaged over the pairs
    that ``mode`` selects (``pairs``: every pair; ``anchor``: each modality with ``anchor``).
    The temperature (``temperature``: initial, learn, min, max) is learned as its log, clamped to
    [``min``, ``max``]. ``pca_dim``
    optionally reduces raw features first (then :meth:`fit` must run once on the training items).
    """

    name = "contrastive"
