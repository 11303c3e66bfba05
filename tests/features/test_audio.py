"""Audio encoders: log-mel frames (tones land in the right bands), a tiny saved wav2vec 2.0, bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from raymm.config import AudioEncoderConfig
from raymm.features.audio import HFAudioEncoder, MelStatsEncoder, center_fit, mel_band_stats, mel_frames

from .media import tone, wav_bytes

CONFIG = AudioEncoderConfig(max_seconds=1.0, n_mels=32, frames=8)


@pytest.fixture(scope="module")
def mel() -> MelStatsEncoder:
    return MelStatsEncoder(CONFIG, "cpu")


def expected_band(freq: float, encoder: MelStatsEncoder) -> int:
    """The mel band whose triangular filter responds most to ``freq``, from torchaudio's filterbank."""
    n_fft = encoder.melspec.n_fft
    bank = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1, 0.0, encoder.sample_rate / 2, encoder.n_mels, encoder.sample_rate
    )
    return int(bank[round(freq * n_fft / encoder.sample_rate)].argmax())


def test_tones_peak_in_their_mel_bands(mel: MelStatsEncoder) -> None:
    batch = mel.encode([wav_bytes(tone([440], 1.0)), wav_bytes(tone([1760], 1.0))])
    assert batch.present.all() and batch.vectors.shape == (2, 32 * 8) and mel.dim == 256
    band_mean, band_std = mel_band_stats(batch.vectors, mel.n_mels)
    low, high = expected_band(440, mel), expected_band(1760, mel)
    assert low < high
    assert band_mean[0].argmax() == low and band_mean[1].argmax() == high
    # A steady tone: every time segment peaks in the same band.
    assert (mel_frames(batch.vectors, mel.n_mels)[0].argmax(axis=0) == low).all()
    assert band_std.shape == (2, 32)
    # normalize: each clip standardised as a whole.
    assert abs(batch.vectors.mean(axis=1)).max() < 1e-5
    np.testing.assert_allclose(batch.vectors.std(axis=1, ddof=1), 1.0, atol=1e-4)


def test_44k1_stereo_input_is_resampled_and_downmixed(mel: MelStatsEncoder) -> None:
    reference = mel.encode([wav_bytes(tone([1760], 1.0, rate=16000))]).vectors[0]
    stereo = np.stack([tone([1760], 1.0, rate=44100)] * 2, axis=1)
    batch = mel.encode(
        [wav_bytes(stereo, rate=44100), wav_bytes(tone([1760], 1.0, rate=44100), rate=44100, fmt="FLAC")]
    )
    assert batch.present.all()
    for vector in batch.vectors:
        assert mel_band_stats(vector[None], mel.n_mels)[0][0].argmax() == expected_band(1760, mel)
        assert np.corrcoef(vector, reference)[0, 1] > 0.99


def test_long_clips_keep_their_centre_deterministically(mel: MelStatsEncoder) -> None:
    # 3 s: 440 Hz, then 1760 Hz in the middle second, then 440 Hz. A 1 s centre crop hears only 1760 Hz.
    clip = np.concatenate([tone([440], 1.0), tone([1760], 1.0), tone([440], 1.0)])
    first, second = mel.encode([wav_bytes(clip)]).vectors, mel.encode([wav_bytes(clip)]).vectors
    np.testing.assert_array_equal(first, second)
    middle = mel.encode([wav_bytes(clip[16000:32000])]).vectors
    np.testing.assert_allclose(first, middle, atol=1e-4)
    assert (mel_frames(first, mel.n_mels)[0].argmax(axis=0) == expected_band(1760, mel)).all()


def test_short_clips_are_padded_with_silence_at_the_end() -> None:
    encoder = MelStatsEncoder(CONFIG.model_copy(update={"normalize": False}), "cpu")
    frames = mel_frames(encoder.encode([wav_bytes(tone([440], 0.25))]).vectors, encoder.n_mels)[0]
    assert frames[:, 0].max() > 0.0  # the tone, in the first segment
    np.testing.assert_allclose(frames[:, -3:], np.log(1e-6), atol=0.1)  # silence in the last ones


def test_center_fit_crops_the_middle_and_pads_the_end() -> None:
    wave = torch.arange(10.0)
    assert center_fit(wave, 4).tolist() == [3.0, 4.0, 5.0, 6.0]
    assert center_fit(wave[:3], 5).tolist() == [0.0, 1.0, 2.0, 0.0, 0.0]


def test_bad_audio_fails_its_row_only(tmp_path: Path, mel: MelStatsEncoder) -> None:
    good = wav_bytes(tone([440], 1.0))
    on_disk = tmp_path / "tone.wav"
    on_disk.write_bytes(good)
    header_only = good[:44]
    values = [
        good,
        good[: len(good) // 2],
        b"RIFF garbage that is not audio",
        None,
        header_only,
        str(on_disk),
        str(tmp_path / "gone.flac"),
        b"",
    ]
    batch = mel.encode(values)
    assert batch.present.tolist() == [True, False, False, False, False, True, False, False]
    errors = batch.errors
    assert errors[0] is None and errors[3] is None and errors[5] is None
    assert "truncated WAV" in str(errors[1]) and "truncated WAV" in str(errors[4])
    assert "unreadable audio" in str(errors[2])
    assert "not found" in str(errors[6]) and "gone.flac" in str(errors[6])
    assert "empty" in str(errors[7])
    np.testing.assert_allclose(batch.vectors[5], batch.vectors[0], atol=1e-6)
    assert not batch.vectors[~batch.present].any()


def test_hf_audio_is_the_mean_pooled_last_hidden_state(wav2vec2_dir: Path) -> None:
    config = AudioEncoderConfig(kind="hf", model=str(wav2vec2_dir), max_seconds=0.5)
    encoder = HFAudioEncoder(config, "cpu")
    assert encoder.dim == 32 and encoder.sample_rate == 16000 and encoder.n_samples == 8000
    files = [
        wav_bytes(tone([440], 0.5)),
        wav_bytes(tone([1760], 0.3)),
        wav_bytes(tone([300, 900], 0.5, 22050), 22050),
    ]
    batch = encoder.encode([*files, b"junk"])
    assert batch.present.tolist() == [True, True, True, False]

    from transformers import AutoFeatureExtractor, AutoModel

    extractor = AutoFeatureExtractor.from_pretrained(wav2vec2_dir)
    model = AutoModel.from_pretrained(wav2vec2_dir).eval()
    decoded = [soundfile.read(io.BytesIO(data), dtype="float32")[0] for data in files]
    resampled = torchaudio.functional.resample(torch.from_numpy(decoded[2]), 22050, 16000).numpy()
    waves = [decoded[0], np.pad(decoded[1], (0, 8000 - 4800)), resampled[:8000]]
    with torch.no_grad():
        hidden = model(**extractor(waves, sampling_rate=16000, return_tensors="pt")).last_hidden_state
    expected = torch.nn.functional.normalize(hidden.mean(dim=1), dim=-1).numpy()
    np.testing.assert_allclose(batch.vectors[:3], expected, atol=1e-5)
