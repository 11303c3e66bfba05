"""The data stage's configuration: the ``synth``, ``import`` and ``validate`` sections.

Plain pydantic on :class:`raymm.settings_base.StrictModel`, so :mod:`raymm.config` assembles these
sections without the data stage importing the hub.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raymm.settings_base import StrictModel

__all__ = [
    "ImportConfig",
    "ImportFormat",
    "MissingRates",
    "SizeName",
    "SplitFractions",
    "SynthConfig",
    "ValidateConfig",
]

SizeName = Literal["tiny", "small", "large"]


class MissingRates(StrictModel):
    """Probability that an item's modality is missing (null) in the synthetic catalog."""

    text: float = Field(0.05, ge=0.0, le=1.0)
    image: float = Field(0.1, ge=0.0, le=1.0)
    audio: float = Field(0.1, ge=0.0, le=1.0)


class SynthConfig(StrictModel):
    """The synthetic multimodal benchmark (``raymm data synth``).

    ``size`` picks a preset (tiny: tests, small: quickstart, large: 100k items for benchmarks);
    ``n_items``/``n_users``/``events_per_user`` override the preset's numbers when set.
    """

    size: SizeName = "small"
    seed: int | None = None
    n_items: int | None = Field(None, gt=0)
    n_users: int | None = Field(None, gt=0)
    events_per_user: int | None = Field(None, gt=0)
    cold_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    stream_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    missing: MissingRates = Field(default_factory=MissingRates)
    image_size: int = Field(64, ge=16, le=512)
    audio_sample_rate: int = Field(16000, ge=8000, le=48000)
    noise: float = Field(0.15, ge=0.0, le=1.0)
    popularity_bias: float = Field(0.5, ge=0.0)
    #: Processes that render the media and sample the users (None: one per CPU this process may
    #: use); the dataset's bytes are the same for any number.
    workers: int | None = Field(None, gt=0)


SplitFractions = tuple[float, float, float]

#: The importers' names (raymm.data.importers.IMPORTERS; a test keeps the two in step).
ImportFormat = Literal["movielens", "recbole", "amazon2023", "mmrec"]


class ImportConfig(StrictModel):
    """``raymm data import``: which format, where its files are, how to split by time."""

    format: ImportFormat | None = None
    source: str | None = None
    name: str | None = None
    like_threshold: float = 4.0
    split: SplitFractions = (0.8, 0.1, 0.1)

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> ImportConfig:
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError(f"split must be three non-negative fractions summing to 1, got {self.split}")
        return self


class ValidateConfig(StrictModel):
    """``raymm data validate``: how deep to look."""

    decode_media: bool = True
    max_problems: int = Field(200, gt=0)
