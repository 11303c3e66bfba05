"""The model stage in plain PyTorch: alignment, fusion, the two towers and their losses.

No Ray here: the Ray Train loop in ``raymm.training`` imports these modules.
"""

from __future__ import annotations
