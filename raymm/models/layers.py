"""Layers shared by the aligner heads, the fusion methods and the towers.

Most of them read L2-normalised vectors, whose coordinates are of order ``1/sqrt(dim)``.
PyTorch's default ``nn.Linear`` init draws the bias from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
the same order as ``W @ x`` for such an input, while ``W`` shrinks ``x`` by about ``sqrt(3)``:
after two or three layers one random bias direction outweighs the item, and every item (and
so every user, an average of items) starts out as nearly the same vector (mean cosine 0.95-0.999),
a point where the recommendation loss has almost no gradient. Biases here start at zero (as in
BERT's and GPT-2's inits), so at initialisation each layer is a random linear map of its input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from raymm.models.config import TemperatureConfig


def linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default weight init and a zero bias."""
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> GELU -> Dropout -> Linear`` with zero biases; ``(B, in_dim) -> (B, out_dim)``."""
    return nn.Sequential(
        linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), linear(hidden_dim, out_dim)
    )


def register_temperature(module: nn.Module, config: TemperatureConfig, learn: bool = True) -> None:
    """Give ``module`` a ``log_temperature`` from ``config``: a parameter when it is learned (and
    ``learn``), else a buffer. Read it back with :func:`clamped_temperature`."""
    initial = torch.tensor(math.log(config.initial))
    if config.learn and learn:
        module.register_parameter("log_temperature", nn.Parameter(initial))
    else:
        module.register_buffer("log_temperature", initial)


def clamped_temperature(log_temperature: Tensor, config: TemperatureConfig) -> Tensor:
    """The temperature ``exp(log_temperature)`` clamped to [``config.min``, ``config.max``]."""
    return log_temperature.clamp(math.log(config.min), math.log(config.max)).exp()
