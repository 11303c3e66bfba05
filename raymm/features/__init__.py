"""Per-modality encoders: raw text, image and audio values to fixed-size vectors.

Plain PyTorch, no Ray: the extraction pipeline wraps them in actor pools. The surface is
:func:`build_encoder`, the :class:`Encoder` interface and what it returns, :class:`EncodedBatch`.

Names are imported lazily, so importing the stage's configuration
(:mod:`raymm.features.settings`, which :mod:`raymm.config` assembles) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "ENCODERS": "raymm.features.registry",
    "BatchEncoder": "raymm.features.base",
    "EncodedBatch": "raymm.features.base",
    "Encoder": "raymm.features.base",
    "EncoderLoadError": "raymm.features.base",
    "InputDecodeError": "raymm.features.base",
    "NotFittedError": "raymm.features.base",
    "TfidfTextEncoder": "raymm.features.text",
    "build_encoder": "raymm.features.registry",
    "mel_band_stats": "raymm.features.audio",
    "mel_frames": "raymm.features.audio",
    "resolve_device": "raymm.features.base",
}

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

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raymm.features' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
