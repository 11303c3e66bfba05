"""Generated media for the encoder tests: small images, tones, WAV/FLAC bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

WORDS = [
    *("the", "a", "cat", "dog", "sat", "on", "mat", "runs", "fast", "slow"),
    *("red", "blue", "green", "guitar", "music", "loud", "quiet"),
]


def image_bytes(
    color: tuple[int, int, int] = (200, 30, 30),
    size: tuple[int, int] = (48, 40),
    fmt: str = "PNG",
    stripes: bool = False,
) -> bytes:
    """A small encoded image: flat ``color``, or black/``color`` vertical stripes."""
    pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = color
    if stripes:
        pixels[:, ::8] = 0
        pixels[:, 1::8] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def tone(freqs: Sequence[float], seconds: float, rate: int = 16000) -> np.ndarray:
    """A sum of sines at ``freqs`` Hz, amplitude 0.3 overall; (seconds * rate,) float64."""
    t = np.arange(round(seconds * rate)) / rate
    return 0.3 * sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)


def wav_bytes(samples: np.ndarray, rate: int = 16000, fmt: str = "WAV") -> bytes:
    """``samples`` ((t,) mono or (t, channels)) encoded as 16-bit WAV or FLAC."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def synthetic_catalog(path: Path, n_items: int, n_users: int, seed: int) -> Path:
    """A tiny synthetic dataset at ``path`` (every modality, 20% of each missing): the items the
    extraction tests read."""
    from raymm.config import load_config
    from raymm.data.schema import MODALITIES
    from raymm.data.synth import synthesize

    config = load_config(
        None,
        [f"synth.n_items={n_items}", f"synth.n_users={n_users}", "synth.events_per_user=5", "synth.size=tiny"]
        + [f"synth.missing.{m}=0.2" for m in MODALITIES],
    )
    synthesize(config.synth, str(path), seed=seed, progress=False)
    return path
