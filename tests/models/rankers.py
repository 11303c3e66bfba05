"""A small ranker and batches for it, shared by the ranker's tests and the rank objective's."""

from __future__ import annotations

import torch

from raymm.models.config import FusionConfig, RankerConfig
from raymm.models.ranker import Ranker

MODALITIES = ["text", "image", "audio"]
SHARED, EMBED = 16, 8


def small_ranker(method: str = "gated") -> Ranker:
    """A ranker over three 16-d modalities and 8-d vectors, seeded, in eval mode."""
    torch.manual_seed(0)
    config = RankerConfig(hidden_dims=[32], fusion=FusionConfig(method=method, hidden_dim=32, heads=2))
    return Ranker(config, MODALITIES, SHARED, EMBED).eval()


def batch(n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], ...]:
    """(projected, present) of ``n`` items: random aligned vectors, every modality present."""
    generator = torch.Generator().manual_seed(seed)
    projected = {m: torch.randn(n, SHARED, generator=generator) for m in MODALITIES}
    present = {m: torch.ones(n, dtype=torch.bool) for m in MODALITIES}
    return projected, present


def pairs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(item vectors, user vectors, context, retrieval score) of ``n`` user-item pairs."""
    generator = torch.Generator().manual_seed(1)
    items = torch.randn(n, EMBED, generator=generator)
    users = torch.randn(n, EMBED, generator=generator)
    context = torch.tensor([[1.0, 2.0]] * n)
    return items, users, context, (items * users).sum(-1)
