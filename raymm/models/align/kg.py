"""``kg``: knowledge-graph anchored alignment; items sharing an entity (tag) are positives.

Tags of a batch come as an item x tag incidence, either a dense (B, T) multi-hot tensor (bool or
0/1) or a torch sparse (B, T) tensor; :func:`tag_incidence` builds the sparse one from per-item
lists of tag indices (for example the catalog's ``tags`` column mapped to integer ids).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain

import numpy as np
import torch
from torch import Tensor

from raymm.models.align.base import Aligner, stack_modalities


def tag_incidence(tag_lists: Sequence[Sequence[int]], n_tags: int | None = None) -> Tensor:
    """A sparse (B, T) float incidence from per-item tag index lists; duplicates count once.

    ``n_tags`` defaults to 1 + the largest index. Raises :class:`ValueError` for a negative index
    or one at or above ``n_tags``.
    """
    lengths = np.fromiter((len(tags) for tags in tag_lists), dtype=np.int64, count=len(tag_lists))
    columns = np.fromiter(chain.from_iterable(tag_lists), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(tag_lists), dtype=np.int64), lengths)
    width = int(columns.max()) + 1 if n_tags is None and columns.size else int(n_tags or 0)
    if columns.size and (columns.min() < 0 or columns.max() >= width):
        raise ValueError(f"tag indices must lie in [0, {width}), got min {columns.min()} max {columns.max()}")
    keys = np.unique(rows * max(width, 1) + columns)
    indices = torch.from_numpy(np.stack([keys // max(width, 1), keys % max(width, 1)]))
    values = torch.ones(keys.size, dtype=torch.float32)
    with torch.sparse.check_sparse_tensor_invariants(enable=True):
        return torch.sparse_coo_tensor(indices, values, (len(tag_lists), width)).coalesce()


def shares_tag(item_tags: Tensor) -> Tensor:
    """(B, B) bool: items i and j share at least one tag (the diagonal is True where i has a tag).

    ``item_tags`` is a dense (B, T) multi-hot or a torch sparse (B, T) incidence.
    Raises :class:`ValueError` if it is not two-dimensional.
    """
    if item_tags.ndim != 2:
        raise ValueError(f"item_tags must be a (B, T) incidence, got shape {tuple(item_tags.shape)}")
    if item_tags.is_sparse or item_tags.layout in (torch.sparse_csr, torch.sparse_csc):
        # Only the tags this batch uses matter: a dense (B, tags used) incidence stays small.
        coo = item_tags.to_sparse_coo().coalesce()
        rows, columns = coo.indices()
        used, compact = torch.unique(columns[coo.values() != 0], return_inverse=True)
        incidence = torch.zeros(item_tags.shape[0], used.numel(), device=item_tags.device)
        incidence[rows[coo.values() != 0], compact] = 1.0
    else:
        incidence = item_tags.float()
    return incidence @ incidence.T > 0


def supervised_contrastive_loss(
    views: Tensor, valid: Tensor, positives: Tensor, temperature: Tensor | float
) -> Tensor:
    """Supervised contrastive loss ``L_out`` of Khosla et al. (2020) over a set of views.

    ``views`` (N, D) L2-normalised, ``valid`` (N,) bool, ``positives`` (N, N) bool (the diagonal
    is ignored). For each valid anchor with at least one valid positive: minus the mean, over its
    positives, of the log-softmax of its similarity to that positive among all other valid
    views. Returns the mean over such anchors, or 0 (attached to ``views``) if there are none.
    """
    n = views.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=views.device)
    candidates = valid.unsqueeze(0) & valid.unsqueeze(1) & ~eye
    logits = (views @ views.T / temperature).masked_fill(~candidates, float("-inf"))
    # Anchors without candidates have an all -inf row; give them a finite one and drop them below.
    logits = torch.where(candidates.any(dim=1, keepdim=True), logits, torch.zeros_like(logits))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = positives & candidates
    n_positive = positive.sum(dim=1)
    anchors = n_positive > 0
    if not bool(anchors.any()):
        return views.sum() * 0.0
    mean_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(
        dim=1
    ) / n_positive.clamp_min(1)
    return -mean_log_prob[anchors].mean()


class KGAligner(Aligner):
    """Knowledge-graph anchored alignment: a supervised contrastive loss across modalities.

    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, with the knowledge graph's
    item-entity edges as the supervision (entity-anchored alignment as in KG-enhanced
    multimodal recommenders, e.g. Sun et al., "Multi-modal Knowledge Graphs for Recommender
    Systems", CIKM 2020). Heads as in ``contrastive`` (MLP, or the conv audio encoder). Every
    present (item, modality) of the batch is a view; a view's positives are the other
    modalities of the same item and every view of an item that shares a tag with it
    (``item_tags`` as a (B, T) multi-hot or sparse incidence, see :func:`tag_incidence`).
    Without tags it reduces to multi-view contrastive alignment of each item's own modalities.
    Temperature as in ``contrastive``.
    """

    name = "kg"
    aligns_modalities = False  # items sharing a tag are positives, so one modality still aligns

    def loss(
        self, projected: Mapping[str, Tensor], present: Mapping[str, Tensor], item_tags: Tensor | None = None
    ) -> Tensor:
        """Supervised contrastive loss over all present views; see the class docstring.

        Raises :class:`ValueError` if ``item_tags`` does not have one row per item of the batch.
        """
        views = stack_modalities(projected, self.modalities)  # (B, M, D)
        batch, n_modalities, _ = views.shape
        valid = stack_modalities(present, self.modalities)  # (B, M)
        same_item = torch.eye(batch, dtype=torch.bool, device=views.device)
        if item_tags is None:
            related = same_item
        else:
            if item_tags.shape[0] != batch:
                raise ValueError(f"item_tags has {item_tags.shape[0]} rows, the batch has {batch} items")
            related = same_item | shares_tag(item_tags.to(views.device))
        # View (i, m) sits at row i * M + m; item relations expand to every pair of modalities.
        positives = related.repeat_interleave(n_modalities, 0).repeat_interleave(n_modalities, 1)
        return supervised_contrastive_loss(
            views.reshape(batch * n_modalities, -1), valid.reshape(-1), positives, self.temperature
        )
