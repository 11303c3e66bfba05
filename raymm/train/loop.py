"""The training step and validation, plain PyTorch: read top to bottom in one sitting.

:class:`NextItemObjective` is the module Ray Train wraps in DDP: its ``forward`` takes a batch of
(history, target) catalog rows, runs the item tower once over the batch's unique items, pools
each history into a user vector and returns the loss. :func:`evaluate_ranking` scores every
catalog item for each evaluation user (full ranking, seen items excluded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from raymm.eval.metrics import ItemSets, ranking_metrics
from raymm.models.align.kg import tag_incidence
from raymm.models.losses import mixture_log_q
from raymm.models.towers import LossBreakdown, TwoTower
from raymm.train.data import Catalog, EvalUsers


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
        encoding = self.model.encode_items(
            {m: v[rows] for m, v in self.catalog.features.items()},
            {m: v[rows] for m, v in self.catalog.present.items()},
            self.catalog.id_index[rows],
        )
        n_history = int(valid.sum())
        history_vectors = encoding.vectors.new_zeros((*history.shape, encoding.vectors.shape[1]))
        history_vectors[valid] = encoding.vectors[inverse[:n_history]]
        users = self.model.user_vector(history_vectors, valid)
        n_target = n_history + len(target)
        positive = encoding.select(inverse[n_history:n_target])
        tags = None
        if self.use_tags:
            tag_lists = [self.catalog.tags[i] for i in target.tolist()]
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


@torch.no_grad()
def catalog_vectors(model: TwoTower, catalog: Catalog, chunk: int = 4096) -> Tensor:
    """(N, E) item vectors of every catalog item, in eval mode, computed in chunks."""
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, catalog.n_items, chunk):
        rows = slice(start, start + chunk)
        parts.append(
            model.item_vectors(
                {m: v[rows] for m, v in catalog.features.items()},
                {m: v[rows] for m, v in catalog.present.items()},
                catalog.id_index[rows],
            )
        )
    model.train(was_training)
    return torch.cat(parts)


@torch.no_grad()
def user_vectors(model: TwoTower, item_vectors: Tensor, history: np.ndarray) -> Tensor:
    """(U, E) user vectors from (U, L) history rows (-1 padded) over precomputed item vectors."""
    was_training = model.training
    model.eval()
    rows = torch.as_tensor(history, device=item_vectors.device)
    valid = rows >= 0
    vectors = item_vectors[rows.clamp(min=0)] * valid.unsqueeze(-1)
    users = model.user_vector(vectors, valid)
    model.train(was_training)
    return users


def evaluate_ranking(
    model: TwoTower,
    catalog: Catalog,
    users: EvalUsers,
    ks: Sequence[int],
    candidates: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking metrics for ``users`` (seen items excluded); ``candidates`` limits the ranked items.

    With ``candidates`` (catalog rows, e.g. the cold-start items) truth and seen sets are mapped
    onto those rows; items outside them cannot be recommended.
    """
    items = catalog_vectors(model, catalog)
    people = user_vectors(model, items, users.history)
    truth, seen = users.truth, users.seen
    if candidates is not None:
        items = items[torch.as_tensor(candidates, device=items.device)]
        truth = restrict(truth, candidates, catalog.n_items)
        seen = restrict(seen, candidates, catalog.n_items)
    return ranking_metrics(truth, user_vectors=people, item_vectors=items, seen=seen, ks=tuple(ks))


def restrict(sets: ItemSets, candidates: np.ndarray, n_items: int) -> ItemSets:
    """Re-index item sets onto the candidate rows, dropping items outside them."""
    position = np.full(n_items, -1, dtype=np.int64)
    position[candidates] = np.arange(len(candidates))
    users = np.repeat(np.arange(len(sets.indptr) - 1), np.diff(sets.indptr))
    mapped = position[sets.indices]
    keep = mapped >= 0
    return ItemSets.from_pairs(users[keep], mapped[keep], len(sets.indptr) - 1)
