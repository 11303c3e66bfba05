"""Image encoders: packaged EfficientNet-Lite0, tiny saved ViT/ResNet, bad bytes and URIs."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from raymm.config import ImageEncoderConfig
from raymm.errors import ConfigError
from raymm.features.image import (
    EfficientNetLite0Encoder,
    HFImageEncoder,
    decode_image,
    pool_image_output,
    resize_center_crop,
)

from .media import image_bytes


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-stage, 16-wide ResNet (pooler_output is (n, C, 1, 1))."""
    from transformers import ResNetConfig, ResNetModel, ViTImageProcessor

    directory = tmp_path_factory.mktemp("tiny-resnet")
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(
        directory
    )
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def direct_forward(directory: Path, images: list[bytes]) -> np.ndarray:
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()
    pil = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    with torch.no_grad():
        pooled = model(**processor(images=pil, return_tensors="pt")).pooler_output.flatten(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


IMAGES = [
    image_bytes((200, 30, 30)),
    image_bytes((20, 90, 200), size=(64, 32), stripes=True),
    image_bytes((10, 200, 10), fmt="JPEG"),
]


@pytest.mark.parametrize("model_dir", ["vit_dir", "resnet_dir"])
def test_hf_image_pooled_output_matches_a_direct_forward_pass(
    model_dir: str, request: pytest.FixtureRequest
) -> None:
    directory = request.getfixturevalue(model_dir)
    encoder = HFImageEncoder(ImageEncoderConfig(kind="hf", model=str(directory)), "cpu")
    assert encoder.dim == (32 if model_dir == "vit_dir" else 16) and encoder.pooling == "pooler_output"
    batch = encoder.encode(IMAGES)
    assert batch.present.all()
    np.testing.assert_allclose(batch.vectors, direct_forward(directory, IMAGES), atol=1e-5)


def test_hf_image_needs_a_model() -> None:
    with pytest.raises(ConfigError, match=r"needs extract\.image\.model"):
        HFImageEncoder(ImageEncoderConfig(kind="hf"), "cpu")


def test_lite0_is_1280d_and_takes_the_features_right_before_the_classifier() -> None:
    encoder = EfficientNetLite0Encoder(ImageEncoderConfig(image_size=64, normalize=False), "cpu")
    assert encoder.dim == 1280 and encoder.encoder_id == "efficientnet_lite0:imagenet"
    vectors = encoder.encode(IMAGES).vectors
    # The packaged network's own forward = classifier(GAP(features)): our vectors feed it exactly.
    pixels = torch.from_numpy(np.stack([encoder.decode(data) for data in IMAGES])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        logits = encoder.network((pixels - 127.0) / 128.0)
        ours = encoder.network._fc(torch.from_numpy(vectors))
    np.testing.assert_allclose(ours.numpy(), logits.numpy(), atol=1e-4)


def test_lite0_packaged_weights_load_offline_and_separate_content(lite0: EfficientNetLite0Encoder) -> None:
    red_png, red_jpeg = image_bytes((200, 30, 30)), image_bytes((200, 30, 30), fmt="JPEG")
    stripes = image_bytes((20, 90, 200), stripes=True)
    batch = lite0.encode([red_png, red_jpeg, stripes])
    assert batch.vectors.shape == (3, 1280) and batch.present.all()
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)
    similarity = batch.vectors @ batch.vectors.T
    assert similarity[0, 1] > 0.95 and similarity[0, 1] > similarity[0, 2] + 0.1
    assert len(lite0.revision) == 12


def test_bad_images_fail_their_rows_only(tmp_path: Path, lite0: EfficientNetLite0Encoder) -> None:
    good_file = tmp_path / "good.png"
    good_file.write_bytes(IMAGES[0])
    truncated = IMAGES[2][: len(IMAGES[2]) // 2]
    values = [
        IMAGES[0],
        b"\x89PNG not really",
        None,
        str(good_file),
        good_file.as_uri(),
        str(tmp_path / "missing.png"),
        truncated,
        b"",
        123,
    ]
    batch = lite0.encode(values)
    assert batch.present.tolist() == [True, False, False, True, True, False, False, False, False]
    errors = batch.errors
    assert errors[2] is None and errors[0] is None and errors[3] is None
    assert "undecodable image" in str(errors[1]) and "undecodable image" in str(errors[6])
    assert "not found" in str(errors[5]) and "missing.png" in str(errors[5])
    assert "empty" in str(errors[7]) and "got int" in str(errors[8])
    np.testing.assert_allclose(batch.vectors[3], batch.vectors[0], atol=1e-5)
    np.testing.assert_allclose(batch.vectors[4], batch.vectors[0], atol=1e-5)
    assert not batch.vectors[~batch.present].any()


def test_unreachable_http_uri_fails_its_row(lite0: EfficientNetLite0Encoder) -> None:
    batch = lite0.encode(["http://127.0.0.1:9/nothing.png", IMAGES[0]])
    assert batch.present.tolist() == [False, True]
    assert "cannot fetch http://127.0.0.1:9/nothing.png" in str(batch.errors[0])


def test_resize_center_crop_keeps_the_middle() -> None:
    pixels = np.zeros((100, 300, 3), dtype=np.uint8)
    pixels[:, 140:160] = 255  # a white bar in the middle of a wide image
    crop = resize_center_crop(decode_image(_png(pixels)), 32)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    assert crop[:, 16].min() > 200 and crop[:, 0].max() < 30


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_models_without_a_pooler_are_mean_pooled_over_tokens_or_space() -> None:
    tokens = torch.arange(24.0).reshape(2, 3, 4)
    pooled, how = pool_image_output(SimpleNamespace(pooler_output=None, last_hidden_state=tokens))
    assert how == "token_mean" and torch.equal(pooled, tokens.mean(dim=1))
    grid = torch.arange(48.0).reshape(2, 4, 3, 2)
    pooled, how = pool_image_output(SimpleNamespace(last_hidden_state=grid))
    assert how == "spatial_mean" and torch.equal(pooled, grid.mean(dim=(2, 3)))
