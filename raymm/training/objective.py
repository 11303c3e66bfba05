"""The two-tower training objective, plain PyTorch.

:class:`NextItemObjective` is the module Ray Train wraps in DDP: its ``forward`` takes a batch of
(history, target) catalog rows, runs the item tower once over the batch's unique items, pools
each history into a user vector and returns the loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from raymm.models.align.kg import tag_incidence
from raymm.models.losses import mixture_log_q
from raymm.models.towers import LossBreakdown, TwoTower
from raymm.recommend.catalog import Catalog


def informative_tags(tag_lists: list[list[int]], n_tags: int, max_share: float) -> list[list[int]]:
    """Each item's tags without those carried by more than ``max_share`` of the items.

    The ``kg`` aligner makes two items positives when they share a tag; a tag on most items
    (MovieLens' country and language entities, a broad genre) would make nearly every pair of a
    batch positive and pull the whole catalog together.
    """
    counts = np.bincount(
        np.fromiter((t for tags in tag_lists for t in tags), dtype=np.int64), minlength=n_tags
    )
    keep = counts <= max_share * max(len(tag_lists), 1)
    return [[t for t in tags if keep[t]] for tags in tag_lists]


class NextItemObjective(nn.Module):
    """Wraps :class:`TwoTower` with the catalog so that ``forward(history, target)`` is the loss.

    The catalog tensors are plain attributes, not buffers: DDP would otherwise broadcast the
    whole feature matrix every step.
    """

    def __init__(self, model: TwoTower, catalog: Catalog, log_q: np.ndarray, use_tags: bool) -> None:
        super().__init__()
        self.model = model
        self.catalog = catalog
        self.log_q = torch.tensor(log_q)  # a copy: Ray hands workers read-only arrays
        self.use_tags = use_tags
        self.n_tags = max(len(catalog.tag_names), 1)
        self.tag_lists = (
            informative_tags(catalog.tags, self.n_tags, model.config.align.kg_max_tag_share)
            if use_tags
            else catalog.tags
        )
        self.n_uniform = model.config.loss.mixed_negatives

    def to_device(self, device: torch.device) -> NextItemObjective:
        """Move the model and the catalog tensors to ``device``."""
        self.to(device)
        self.catalog.features = {m: v.to(device) for m, v in self.catalog.features.items()}
        self.catalog.present = {m: v.to(device) for m, v in self.catalog.present.items()}
        self.catalog.id_index = self.catalog.id_index.to(device)
        self.log_q = self.log_q.to(device)
        return self

    def forward(self, history: Tensor, target: Tensor) -> LossBreakdown:
        """``history`` (B, L) long catalog rows, -1 padded, oldest first; ``target`` (B,) long.

        With ``loss.mixed_negatives`` = K > 0, K catalog rows drawn uniformly join the batch's
        positives as negatives, and every candidate's logQ is the mixture's (:func:`mixture_log_q`).
        """
        valid = history >= 0
        uniform = torch.randint(0, self.catalog.n_items, (self.n_uniform,), device=target.device)
        rows, inverse = torch.unique(torch.cat([history[valid], target, uniform]), return_inverse=True)
        encoding = self.model.encode_items(*self.catalog.rows(rows))
        n_history = int(valid.sum())
        history_vectors = encoding.vectors.new_zeros((*history.shape, encoding.vectors.shape[1]))
        history_vectors[valid] = encoding.vectors[inverse[:n_history]]
        users = self.model.user_vector(history_vectors, valid)
        n_target = n_history + len(target)
        positive = encoding.select(inverse[n_history:n_target])
        tags = None
        if self.use_tags:
            tag_lists = [self.tag_lists[i] for i in target.tolist()]
            tags = tag_incidence(tag_lists, self.n_tags).to(target.device)
        if not self.n_uniform:
            return self.model.loss(users, positive, item_ids=target, log_q=self.log_q[target], item_tags=tags)
        log_q = mixture_log_q(self.log_q.exp(), len(target), self.n_uniform)
        return self.model.loss(
            users,
            positive,
            item_ids=target,
            log_q=log_q[target],
            negatives=encoding.select(inverse[n_target:]),
            negative_ids=uniform,
            negative_log_q=log_q[uniform],
            item_tags=tags,
        )
