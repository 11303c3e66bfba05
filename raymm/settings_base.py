"""The ground floor of the configuration: the strict base every stage's section type derives from.

Each stage defines its own section next to its code (``raymm/data/settings.py``,
``raymm/features/settings.py``, ...) on :class:`StrictModel`; :mod:`raymm.config` only assembles
them into :class:`raymm.config.RaymmConfig`. This module imports nothing of raymm, so any stage may
use it without reaching the hub.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

__all__ = ["MODALITIES", "Modality", "Precision", "StrictModel"]


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


#: Numeric precision an encoder runs in (``extract.<modality>.resources.precision``).
Precision = Literal["fp32", "fp16", "bf16"]


#: A kind of item content raymm encodes; every list of modalities derives from this one.
Modality = Literal["text", "image", "audio"]
#: The modalities in their canonical order (the items table's columns, the features' columns).
MODALITIES: tuple[Modality, ...] = get_args(Modality)
