"""The alignment methods by the name ``align.method`` uses in the config.

* ``contrastive``: :class:`~raymm.models.align.contrastive.ContrastiveAligner`, symmetric
  InfoNCE between modalities (Radford et al., "CLIP", ICML 2021).
* ``cca``: :class:`~raymm.models.align.cca.CCAAligner`, closed-form CCA (Hotelling 1936;
  MAXVAR generalisation, Kettenring 1971).
* ``linear``: :class:`~raymm.models.align.linear.LinearAligner`, ridge maps into the anchor's
  PCA space (Hoerl & Kennard 1970).
* ``kg``: :class:`~raymm.models.align.kg.KGAligner`, tag-supervised contrastive loss
  (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020).
* ``none``: :class:`~raymm.models.align.plain.PlainAligner`, the heads of ``contrastive`` with
  no alignment loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from raymm.errors import ConfigError
from raymm.models.align.base import Aligner
from raymm.models.align.cca import CCAAligner
from raymm.models.align.contrastive import ContrastiveAligner
from raymm.models.align.kg import KGAligner
from raymm.models.align.linear import LinearAligner
from raymm.models.align.plain import PlainAligner
from raymm.models.config import AlignConfig

ALIGNERS: dict[str, type[Aligner]] = {
    "contrastive": ContrastiveAligner,
    "cca": CCAAligner,
    "linear": LinearAligner,
    "kg": KGAligner,
    "none": PlainAligner,
}


def build_aligner(
    config: AlignConfig, input_dims: Mapping[str, int], audio_bands: int | None = None
) -> Aligner:
    """The aligner ``config.method`` names, for modalities of widths ``input_dims`` (name -> d_m).

    ``audio_bands``: the mel bands of ``mel_stats`` audio features (from their manifest), which
    the conv audio encoder needs to read the vector as a spectrogram.

    Closed-form parts (``pca_dim``, cca, linear) come back unfitted: call ``fit`` on the training items
    before ``project`` (``aligner.requires_fit`` says whether). Raises :class:`ConfigError` for
    an unknown method or input dimensions the method cannot take.
    """
    try:
        method = ALIGNERS[config.method]
    except KeyError:
        raise ConfigError(f"unknown align.method {config.method!r}; known: {', '.join(ALIGNERS)}") from None
    return method(config, input_dims, audio_bands)


def inactive_alignment(config: AlignConfig, modalities: Sequence[str]) -> str | None:
    """Why ``config.method`` aligns nothing for a model of ``modalities``, or None when it can.

    contrastive, cca and linear tie two or more modalities together: with one modality the
    alignment loss is 0 and the heads are what the recommendation loss (or, for linear, a PCA of
    that modality) makes them, so "aligned" results of such a run measure no alignment. kg
    (positives by shared tags) and none (no alignment by design) have nothing to report. The
    answer is one sentence for the console and the artifact's manifest (``notes``).
    """
    method = ALIGNERS.get(config.method)
    if method is None or not method.aligns_modalities or len(modalities) >= 2:
        return None
    if method.closed_form:
        how = "its heads are a closed-form fit of that modality alone and its alignment loss is 0"
    else:
        how = "its alignment loss is 0 and the heads learn from the recommendation loss alone"
    return (
        f"align.method={config.method!r} aligns modalities with each other, but this model reads "
        f"only {', '.join(modalities) or 'none'}: {how}, so the alignment is inactive"
    )
