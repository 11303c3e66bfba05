"""The ranker's training objective and its calibration, plain PyTorch (the Ray Train loop wraps them).

The two-tower model stays frozen: user vectors come from its user tower over precomputed item
vectors (:func:`raymm.recommend.vectors.user_vectors`), item inputs from :class:`RankerInputs`.
:class:`RankObjective` is the module DDP wraps; scoring for validation, evaluation and serving is
the recommendation core's :class:`~raymm.recommend.rerank.Reranker`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raymm.models.ranker import Ranker, RankerInputs
from raymm.recommend.rank_examples import RankExamples


class RankObjective(nn.Module):
    """Wraps :class:`Ranker` with the per-item inputs so ``forward(item, users, recency, popularity)`` gives logits.

    The item inputs are plain attributes, not buffers: DDP would otherwise broadcast them every step.
    """

    def __init__(self, ranker: Ranker, inputs: RankerInputs) -> None:
        super().__init__()
        self.ranker = ranker
        self.inputs = inputs

    def to_device(self, device: torch.device) -> RankObjective:
        """Move the ranker and the item inputs to ``device``."""
        self.to(device)
        self.inputs = self.inputs.to(device)
        return self

    def forward(self, item: Tensor, users: Tensor, recency: Tensor, popularity: Tensor) -> Tensor:
        """(B,) logits for catalog rows ``item`` (B,), user vectors (B, E), raw recency and popularity (B,)."""
        projected, present, vectors, _ = self.inputs.rows(item)
        context = torch.stack([recency, popularity], dim=1)
        retrieval = (users * self.inputs.vectors[item]).sum(-1)
        return self.ranker(projected, present, vectors, users, context, retrieval)


def platt_scaling(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(scale, bias) minimising the weighted log-loss of ``sigmoid(scale * logit + bias)`` (Platt 1999).

    A monotone map of the logits: rankings are unchanged, probabilities become calibrated on the
    examples given (the validation examples, whose sampled negatives set the base rate).
    """
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    logits = torch.as_tensor(np.log(clipped / (1 - clipped)), dtype=torch.float64)
    # copies: the driver's validation examples are read-only object-store views
    target = torch.tensor(labels, dtype=torch.float64)
    weight = torch.tensor(weights, dtype=torch.float64)
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(params[0] * logits + params[1], target, weight=weight)
        loss.backward()
        return loss

    optimizer.step(closure)
    scale, bias = (float(v) for v in params.detach())
    return max(scale, 1e-3), bias


def context_matrix(examples: RankExamples) -> Tensor:
    """(n, 2) raw context (recency, popularity) of the examples, to fit the ranker's standardisation."""
    return torch.stack([torch.as_tensor(examples.recency), torch.as_tensor(examples.popularity)], dim=1)
