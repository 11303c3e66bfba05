"""build_encoder: each (modality, kind) of the extract config to its encoder, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raymm.config import AudioEncoderConfig, ExtractConfig, ImageEncoderConfig, TextEncoderConfig
from raymm.errors import ConfigError
from raymm.features import ENCODERS, Encoder, NotFittedError, build_encoder
from raymm.features.audio import HFAudioEncoder, MelStatsEncoder
from raymm.features.image import EfficientNetLite0Encoder, HFImageEncoder
from raymm.features.text import HFTextEncoder, TfidfTextEncoder

from .media import image_bytes, tone, wav_bytes


def test_every_config_kind_has_an_encoder() -> None:
    for modality, config_type in (
        ("text", TextEncoderConfig),
        ("image", ImageEncoderConfig),
        ("audio", AudioEncoderConfig),
    ):
        kinds = config_type.model_fields["kind"].annotation.__args__  # type: ignore[union-attr]
        assert {(modality, kind) for kind in kinds} <= set(ENCODERS)


def test_defaults_build_the_packaged_offline_encoders() -> None:
    config = ExtractConfig()
    text = build_encoder("text", config.text, "cpu")
    image = build_encoder("image", config.image, "cpu")
    audio = build_encoder("audio", config.audio, "auto")
    assert isinstance(text, HFTextEncoder) and text.dim == 384
    assert isinstance(image, EfficientNetLite0Encoder) and image.dim == 1280
    assert isinstance(audio, MelStatsEncoder) and audio.dim == 64 * 16
    for encoder, value in ((text, "a song"), (image, image_bytes()), (audio, wav_bytes(tone([440], 0.5)))):
        assert isinstance(encoder, Encoder) and encoder.modality in ("text", "image", "audio")
        batch = encoder.encode([value, None])
        assert batch.vectors.shape == (2, encoder.dim) and batch.present.tolist() == [True, False]


def test_hf_kinds_load_saved_models(vit_dir: Path, wav2vec2_dir: Path, bert_dir: Path) -> None:
    assert isinstance(
        build_encoder("image", ImageEncoderConfig(kind="hf", model=str(vit_dir))), HFImageEncoder
    )
    assert isinstance(
        build_encoder("audio", AudioEncoderConfig(kind="hf", model=str(wav2vec2_dir))), HFAudioEncoder
    )
    assert build_encoder("text", TextEncoderConfig(model=str(bert_dir), pooling="cls")).pooling == "cls"


def test_tfidf_comes_back_unfitted() -> None:
    encoder = build_encoder("text", TextEncoderConfig(kind="tfidf", tfidf_dim=64))
    assert isinstance(encoder, TfidfTextEncoder) and encoder.dim == 64
    with pytest.raises(NotFittedError):
        encoder.encode(["a song"])


def test_refusals_name_what_was_wrong() -> None:
    with pytest.raises(ConfigError, match="unknown modality 'video'"):
        build_encoder("video", TextEncoderConfig())
    with pytest.raises(ConfigError, match="image encoder needs a ImageEncoderConfig, got TextEncoderConfig"):
        build_encoder("image", TextEncoderConfig())
    with pytest.raises(ConfigError, match=r"needs extract\.audio\.model"):
        build_encoder("audio", AudioEncoderConfig(kind="hf"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            build_encoder("audio", AudioEncoderConfig(), "cuda")
