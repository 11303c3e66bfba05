"""raymm: a distributed, streaming, multimodal recommender on Ray."""

from __future__ import annotations

__version__ = "0.1.0"
