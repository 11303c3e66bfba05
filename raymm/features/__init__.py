"""Per-modality encoders: raw text, image and audio values to fixed-size vectors.

Plain PyTorch, no Ray: the extraction pipeline wraps them in actor pools. The surface is
:func:`build_encoder`, the :class:`Encoder` interface and what it returns, :class:`EncodedBatch`.
"""

from __future__ import annotations

from raymm.features.audio import mel_band_stats, mel_frames
from raymm.features.base import (
    BatchEncoder,
    EncodedBatch,
    Encoder,
    EncoderLoadError,
    InputDecodeError,
    NotFittedError,
    resolve_device,
)
from raymm.features.registry import ENCODERS, build_encoder
from raymm.features.text import TfidfTextEncoder

__all__ = [
    "ENCODERS",
    "BatchEncoder",
    "EncodedBatch",
    "Encoder",
    "EncoderLoadError",
    "InputDecodeError",
    "NotFittedError",
    "TfidfTextEncoder",
    "build_encoder",
    "mel_band_stats",
    "mel_frames",
    "resolve_device",
]
