"""The ranker's training step and scoring, plain PyTorch (the Ray Train loop wraps them).

The two-tower model stays frozen: user vectors come from its user tower over precomputed item
vectors (:func:`raymm.train.loop.user_vectors`), item inputs from :class:`RankerInputs`.
:class:`RankObjective` is the module DDP wraps; :func:`predict` scores labelled examples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from raymm.models.ranker import Ranker, RankerInputs
from raymm.models.towers import TwoTower
from raymm.train.loop import user_vectors
from raymm.train.rank_data import RankExamples


class RankObjective(nn.Module):
    """Wraps :class:`Ranker` with the per-item inputs so ``forward(item, users, recency)`` gives logits.

    The item inputs are plain attributes, not buffers: DDP would otherwise broadcast them every step.
    """

    def __init__(self, ranker: Ranker, inputs: RankerInputs) -> None:
        super().__init__()
        self.ranker = ranker
        self.inputs = inputs

    def to_device(self, device: torch.device) -> RankObjective:
        """Move the ranker and the item inputs to ``device``."""
        self.to(device)
        self.inputs = RankerInputs(
            {m: v.to(device) for m, v in self.inputs.projected.items()},
            {m: v.to(device) for m, v in self.inputs.present.items()},
            self.inputs.vectors.to(device),
            self.inputs.popularity.to(device),
        )
        return self

    def forward(self, item: Tensor, users: Tensor, recency: Tensor) -> Tensor:
        """(B,) logits for catalog rows ``item`` (B,), user vectors (B, E) and raw recency (B,)."""
        projected, present, vectors, popularity = self.inputs.rows(item)
        context = torch.stack([recency, popularity], dim=1)
        return self.ranker(projected, present, vectors, users, context)


@torch.no_grad()
def predict(
    objective: RankObjective, two_tower: TwoTower, examples: RankExamples, chunk: int = 8192
) -> np.ndarray:
    """(n,) P(engage) of every example, in eval mode, in chunks."""
    was_training = objective.training
    objective.eval()
    device = objective.inputs.vectors.device
    parts = []
    for start in range(0, len(examples), chunk):
        part = examples.take(np.arange(start, min(start + chunk, len(examples))))
        users = user_vectors(two_tower, objective.inputs.vectors, part.history)
        logits = objective(
            torch.as_tensor(part.item, device=device), users, torch.as_tensor(part.recency, device=device)
        )
        parts.append(torch.sigmoid(logits).cpu().numpy())
    objective.train(was_training)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def context_matrix(examples: RankExamples, inputs: RankerInputs) -> Tensor:
    """(n, 2) raw context (recency, popularity) of the examples, to fit the ranker's standardisation."""
    popularity = inputs.popularity[torch.as_tensor(examples.item)]
    return torch.stack([torch.as_tensor(examples.recency), popularity], dim=1)
