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
    """Probability that an item's ``text``, ``image`` or ``audio`` is missing (null) in the synthetic
    catalog, drawn independently for each item and modality."""

    text: float = Field(0.05, ge=0.0, le=1.0)
    image: float = Field(0.1, ge=0.0, le=1.0)
    audio: float = Field(0.1, ge=0.0, le=1.0)


class SynthConfig(StrictModel):
    """The synthetic multimodal benchmark (``raymm data synth``).

    ``size`` picks a preset (tiny: tests, small: quickstart, large: 100k items for benchmarks);
    ``n_items``/``n_users``/``events_per_user`` override the preset's numbers when set.
    """

    size: SizeName = "small"
    #: Seed of the generator; None: the top-level ``seed``.
    seed: int | None = None
    n_items: int | None = Field(None, gt=0)
    n_users: int | None = Field(None, gt=0)
    events_per_user: int | None = Field(None, gt=0)
    #: Share of the items that are cold: created after the validation split begins, they have no
    #: train, validation or test event, only ``cold_start`` and ``stream`` ones.
    cold_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    #: Share of the timeline, at its end, whose events form ``stream.parquet`` (what ``raymm
    #: produce`` replays); train, validation and test split the time before it.
    stream_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    missing: MissingRates = Field(default_factory=MissingRates)
    #: Side of each item's square PNG image, in pixels.
    image_size: int = Field(64, ge=16, le=512)
    #: Sample rate of each item's audio clip (1 to 3 s of 16-bit mono WAV), in Hz.
    audio_sample_rate: int = Field(16000, ge=8000, le=48000)
    #: Probability that a modality shows a random value in place of each facet it shows, so no
    #: modality is a perfect view of the item (the same rate for text, image and audio).
    noise: float = Field(0.15, ge=0.0, le=1.0)
    #: Weight of an item's log popularity in what users pick (``affinity / temperature +
    #: popularity_bias * log(popularity)``); 0: taste alone decides.
    popularity_bias: float = Field(0.5, ge=0.0)
    #: Processes that render the media and sample the users (None: one per CPU this process may
    #: use); the dataset's bytes are the same for any number.
    workers: int | None = Field(None, gt=0)


SplitFractions = tuple[float, float, float]

#: The importers' names (raymm.data.importers.IMPORTERS; a test keeps the two in step).
ImportFormat = Literal["movielens", "recbole", "amazon2023", "mmrec"]


class ImportConfig(StrictModel):
    """``raymm data import``: which format, where its files are, how to split by time."""

    #: Which importer reads ``source``; ``raymm data import`` refuses to run without it.
    format: ImportFormat | None = None
    #: The directory or file to import, a local path or a pyarrow filesystem URI.
    source: str | None = None
    #: The dataset to read where ``source`` holds several (recbole and mmrec: ``<name>.inter``;
    #: amazon2023: the category), and its name in the manifest; None: the only one present.
    name: str | None = None
    #: Ratings at or above this become ``like`` events, those below ``view`` (``purchase`` for
    #: amazon2023, where a review implies one); a missing rating counts as below.
    like_threshold: float = 4.0
    #: Train, validation and test fractions of the interactions, cut at two times over all users;
    #: unused where the source carries its own split (mmrec's ``x_label``).
    split: SplitFractions = (0.8, 0.1, 0.1)

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> ImportConfig:
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError(f"split must be three non-negative fractions summing to 1, got {self.split}")
        return self


class ValidateConfig(StrictModel):
    """``raymm data validate``: how deep to look."""

    #: Decode every inline image (Pillow) and audio clip (soundfile) and report those that fail;
    #: media given as URIs are counted, not fetched.
    decode_media: bool = True
    #: Row numbers listed per problem at most; the problem still counts every row it found.
    max_problems: int = Field(200, gt=0)
