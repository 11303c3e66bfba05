"""Audio encoders: fixed-size pooled log-mel frames (``kind: mel_stats``) or a ``transformers`` model.

Every clip is decoded on its own with ``soundfile`` (WAV, FLAC, OGG, ... from bytes or a URI),
downmixed to mono, resampled to the target rate with ``torchaudio.functional.resample``, and
brought to exactly ``max_seconds``: longer clips keep their centre (deterministic), shorter ones
are zero-padded at the end. A file that cannot be read, a WAV whose header promises more bytes
than it has (truncated), a clip with no samples or non-finite samples fails its row.

``mel_stats``: log-mel spectrogram (power mel with ``n_mels`` bands, 25 ms Hann windows every
10 ms, ``ln(x + 1e-6)``), average-pooled along time into ``frames`` equal segments. The vector
has ``dim = n_mels * frames`` laid out band-major: ``vector.reshape(n_mels, frames)[b, f]`` is
band ``b`` (low to high frequency) in segment ``f`` (start to end of the clip); see
:func:`mel_frames`. Padding is part of the time axis, so segment ``f`` always covers the same
``max_seconds / frames`` seconds of the clip. With ``normalize`` each clip is standardised by one
mean and one standard deviation over all its entries (per-clip gain removed, spectral shape
kept); L2 is not used because the training stage's conv/GRU audio encoder reads these values as
a spectrogram. :func:`mel_band_stats` gives each band's mean/std over the segments, a compact
(2 * n_mels) summary for baselines.

``hf``: ``AutoFeatureExtractor`` + ``AutoModel`` on the waveform at the extractor's sampling rate
(which wins over ``sample_rate`` when they differ, since the model was trained at it); the
vector is the mean of ``last_hidden_state`` over time, L2-normalised if ``normalize``. Clips are
padded to the same length first, so a clip's vector does not depend on its batch.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio

from raymm.errors import ConfigError
from raymm.features.base import (
    BatchEncoder,
    InputDecodeError,
    TorchRuntime,
    describe_source,
    hf_revision,
    l2_normalize,
    load_on_device,
    read_media,
    revision_hash,
    to_numpy,
)
from raymm.features.settings import AudioEncoderConfig

WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
LOG_FLOOR = 1e-6
_RIFF_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # what streaming writers put in the RIFF size field


def _check_not_truncated(data: bytes, where: str) -> None:
    # libsndfile quietly returns the frames a cut-off WAV still holds; a short read is a broken
    # file, not a shorter clip, so compare the RIFF size with the bytes present.
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        declared = int.from_bytes(data[4:8], "little")
        if declared not in _RIFF_UNKNOWN_SIZES and declared + 8 > len(data):
            raise InputDecodeError(
                f"audio: truncated WAV{where}: header declares {declared + 8} bytes, got {len(data)}"
            )


def decode_audio(value: Any, sample_rate: int, n_samples: int) -> torch.Tensor:
    """One audio value as mono float32 at ``sample_rate``, centre-cropped or zero-padded; (n_samples,).

    Raises :class:`InputDecodeError` naming the problem for unreadable or truncated audio.
    """
    data = read_media(value, "audio")
    _check_not_truncated(data, describe_source(value))
    try:
        samples, source_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        where = f"{describe_source(value)} ({len(data)} bytes)"
        raise InputDecodeError(f"audio: unreadable audio data{where}: {exc}") from exc
    if samples.shape[0] == 0:
        raise InputDecodeError(f"audio: no samples in the audio data{describe_source(value)}")
    if not np.isfinite(samples).all():
        raise InputDecodeError(f"audio: non-finite samples in the audio data{describe_source(value)}")
    mono = torch.from_numpy(samples.mean(axis=1))
    if source_rate != sample_rate:
        # Crop first (with a margin for the resampling filter) so long files resample cheaply.
        margin = int(source_rate * 0.05)
        mono = center_fit(mono, math.ceil(n_samples * source_rate / sample_rate) + 2 * margin, pad=False)
        mono = torchaudio.functional.resample(mono, source_rate, sample_rate)
    return center_fit(mono, n_samples)


def center_fit(wave: torch.Tensor, n_samples: int, pad: bool = True) -> torch.Tensor:
    """The centre ``n_samples`` of ``wave`` (t,); shorter waves are zero-padded at the end if ``pad``."""
    length = wave.shape[-1]
    if length > n_samples:
        start = (length - n_samples) // 2
        return wave[start : start + n_samples]
    if pad and length < n_samples:
        return torch.nn.functional.pad(wave, (0, n_samples - length))
    return wave


def mel_frames(vectors: np.ndarray, n_mels: int) -> np.ndarray:
    """``mel_stats`` vectors (n, n_mels * frames) as spectrograms (n, n_mels, frames).

    Raises :class:`ValueError` if the width is not a multiple of ``n_mels``.
    """
    n, width = vectors.shape
    if width % n_mels:
        raise ValueError(f"mel_stats vectors of width {width} cannot hold {n_mels} bands")
    return vectors.reshape(n, n_mels, width // n_mels)


def mel_band_stats(vectors: np.ndarray, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation over the time segments; two (n, n_mels) arrays."""
    spectrogram = mel_frames(vectors, n_mels)
    return spectrogram.mean(axis=2), spectrogram.std(axis=2)


class MelStatsEncoder(BatchEncoder):
    """Log-mel frames pooled to ``frames`` segments; ``dim = n_mels * frames`` (band-major).

    Runs in fp32 whatever ``precision`` says (spectrograms lose too much in half precision).
    Every step is computed per clip, so a clip's vector does not depend on its batch (measured
    bitwise equal in batches of 1, 17 and 64, shuffled): no filler rows needed.
    """

    modality = "audio"
    pooling = "time_avg"

    def __init__(self, config: AudioEncoderConfig, device: str = "cpu") -> None:
        self.sample_rate = config.sample_rate
        self.n_samples = round(config.max_seconds * config.sample_rate)
        self.n_mels, self.frames = config.n_mels, config.frames
        self.normalize = config.normalize
        self.batch_size = config.resources.batch_size
        win_length = round(WINDOW_SECONDS * self.sample_rate)
        hop_length = round(HOP_SECONDS * self.sample_rate)
        n_fft = 1 << (win_length - 1).bit_length()
        self.runtime = TorchRuntime(device, "fp32")
        self.melspec = self.runtime.place(
            torchaudio.transforms.MelSpectrogram(
                sample_rate=self.sample_rate,
                n_fft=n_fft,
                win_length=win_length,
                hop_length=hop_length,
                n_mels=self.n_mels,
                power=2.0,
            )
        )
        self.dim = self.n_mels * self.frames
        self.encoder_id = f"mel_stats:{self.n_mels}x{self.frames}"
        settings = {
            "kind": "mel_stats",
            "sample_rate": self.sample_rate,
            "n_samples": self.n_samples,
            "n_mels": self.n_mels,
            "frames": self.frames,
            "n_fft": n_fft,
            "win_length": win_length,
            "hop_length": hop_length,
            "log_floor": LOG_FLOOR,
            "normalize": self.normalize,
        }
        self.revision = revision_hash(settings=settings)

    def decode(self, value: Any) -> torch.Tensor:
        return decode_audio(value, self.sample_rate, self.n_samples)

    def embed(self, decoded: list[torch.Tensor]) -> np.ndarray:
        waves = self.runtime.to_device(torch.stack(decoded))
        with self.runtime.inference():
            log_mel = torch.log(self.melspec(waves) + LOG_FLOOR)
            pooled = torch.nn.functional.adaptive_avg_pool1d(log_mel, self.frames)
            if self.normalize:
                mean = pooled.mean(dim=(1, 2), keepdim=True)
                std = pooled.std(dim=(1, 2), keepdim=True).clamp(min=1e-5)
                pooled = (pooled - mean) / std
        return to_numpy(pooled.flatten(1))


class HFAudioEncoder(BatchEncoder):
    """A ``transformers`` audio model (wav2vec 2.0, HuBERT, AST, ...), mean-pooled over time.

    ``dim`` is found by one forward pass on silence at load time. Raises :class:`ConfigError`
    without ``model`` and :class:`EncoderLoadError` if loading fails.
    """

    modality = "audio"
    pooling = "time_mean"
    fixed_rows = True  # every call one input shape (clips are one length already), see base

    def __init__(self, config: AudioEncoderConfig, device: str = "cpu") -> None:
        from transformers import AutoFeatureExtractor

        if not config.model:
            raise ConfigError("extract.audio.kind 'hf' needs extract.audio.model (a directory or hub id)")
        self.extractor, self.model, self.runtime = load_on_device(
            config.model, "audio", AutoFeatureExtractor, device, config.resources.precision
        )
        self.sample_rate = int(getattr(self.extractor, "sampling_rate", None) or config.sample_rate)
        self.n_samples = round(config.max_seconds * self.sample_rate)
        self.normalize = config.normalize
        self.batch_size = config.resources.batch_size
        self.encoder_id = f"hf:{config.model}"
        self.dim = int(self._forward([torch.zeros(self.n_samples)]).shape[1])
        settings = {
            "kind": "hf",
            "sample_rate": self.sample_rate,
            "n_samples": self.n_samples,
            "normalize": self.normalize,
        }
        self.revision = hf_revision(config.model, self.model, settings)

    def decode(self, value: Any) -> torch.Tensor:
        return decode_audio(value, self.sample_rate, self.n_samples)

    def embed(self, decoded: list[torch.Tensor]) -> np.ndarray:
        return to_numpy(self._forward(decoded))

    def _forward(self, waves: list[torch.Tensor]) -> torch.Tensor:
        features = self.extractor(
            [wave.numpy() for wave in waves], sampling_rate=self.sample_rate, return_tensors="pt"
        )
        inputs = self.runtime.inputs_to_device(features)
        with self.runtime.inference():
            hidden = self.model(**inputs).last_hidden_state
        pooled = hidden.float().mean(dim=1)
        return l2_normalize(pooled) if self.normalize else pooled
