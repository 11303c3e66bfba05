"""The ground floor of the configuration: the strict base every stage's section type derives from.

Each stage defines its own section next to its code (``raymm/data/settings.py``,
``raymm/features/settings.py``, ...) on :class:`StrictModel`; :mod:`raymm.config` only assembles
them into :class:`raymm.config.RaymmConfig`. This module imports nothing of raymm, so any stage may
use it without reaching the hub.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["Precision", "StrictModel"]


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


#: Numeric precision an encoder runs in (``extract.<modality>.precision``).
Precision = Literal["fp32", "fp16", "bf16"]
