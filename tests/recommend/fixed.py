"""A scorer with fixed item scores, the same for every user: the blend tests' personal part."""

from __future__ import annotations

import numpy as np
import torch

from raymm.recommend.scorers import DotProductScorer


class FixedScorer(DotProductScorer):
    """Scores fixed per item, the same for every user with a history."""

    name = "fixed"

    def __init__(self, scores: list[float]) -> None:
        self.scores = torch.tensor(scores).unsqueeze(1)

    def item_vectors(self) -> torch.Tensor:
        return self.scores

    def user_vectors(self, history: np.ndarray) -> torch.Tensor:
        return torch.ones(len(history), 1)
