"""Small synthetic multimodal batches for the model tests."""

from __future__ import annotations

import torch
from torch import Tensor


def paired_views(
    n: int, dims: dict[str, int], latent: int = 6, noise: float = 0.1, seed: int = 0
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Each modality a random linear view of one shared latent per item, plus Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent, generator=generator)
    features = {
        m: z @ torch.randn(latent, d, generator=generator) + noise * torch.randn(n, d, generator=generator)
        for m, d in dims.items()
    }
    present = {m: torch.ones(n, dtype=torch.bool) for m in dims}
    return features, present


def random_batch(
    n: int, dims: dict[str, int], p_present: float = 0.7, seed: int = 0
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Independent Gaussian features with each modality present with probability ``p_present``."""
    generator = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(n, d, generator=generator) for m, d in dims.items()}
    present = {m: torch.rand(n, generator=generator) < p_present for m in dims}
    return features, present
