"""Recommendation losses of the two-tower model: sampled softmax (with logQ correction) and BPR.

Scores are ``user . item / temperature`` on L2-normalised vectors. Candidates of a batch are the
B positives of the batch (in-batch negatives) plus, optionally, K extra items shared by all rows
(mixed negatives, e.g. drawn uniformly from the catalog). A candidate that is the same item as
a row's positive (the same item bought by two users of the batch) is masked out of that row's
negatives, since it is not a negative for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def log_sampling_probs(item_counts: Tensor) -> Tensor:
    """log of each item's probability of being a batch positive, from its training count.

    ``item_counts`` (N,) non-negative; the probability is count / total (items never seen get
    ``log(0.5 / total)`` so their log stays finite). Raises :class:`ValueError` for a negative
    count or an all-zero vector.
    """
    counts = item_counts.double()
    if bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise ValueError("item_counts must be non-negative with a positive total")
    return torch.log(counts.clamp_min(0.5) / counts.sum()).float()


def mixture_log_q(item_probs: Tensor, batch_size: int, n_uniform: int) -> Tensor:
    """log of each item's candidate probability under mixed negative sampling.

    With B candidates drawn by ``item_probs`` (N,) (the batch positives) and K drawn uniformly,
    a candidate slot holds item j with probability ``(B * p_j + K / N) / (B + K)`` (Yang et al.,
    "Mixed Negative Sampling for Learning Two-tower Neural Networks in Recommendations",
    WWW 2020). Pass its log as ``log_q`` and ``negative_log_q`` of :func:`sampled_softmax_loss`.
    """
    n_items = item_probs.shape[0]
    mixed = (batch_size * item_probs.double() + n_uniform / n_items) / (batch_size + n_uniform)
    return torch.log(mixed.clamp_min(1e-300)).float()


def _candidates(
    item_vectors: Tensor,
    item_ids: Tensor | None,
    negative_vectors: Tensor | None,
    negative_ids: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """All candidates (B + K, E) and the (B, B + K) mask of those that are not negatives."""
    batch = item_vectors.shape[0]
    eye = torch.eye(batch, dtype=torch.bool, device=item_vectors.device)
    if item_ids is None:
        collision = torch.zeros_like(eye)
    else:
        collision = (item_ids.unsqueeze(1) == item_ids.unsqueeze(0)) & ~eye
    candidates = item_vectors
    if negative_vectors is not None:
        candidates = torch.cat([item_vectors, negative_vectors], dim=0)
        extra = torch.zeros(batch, negative_vectors.shape[0], dtype=torch.bool, device=item_vectors.device)
        if item_ids is not None and negative_ids is not None:
            extra = item_ids.unsqueeze(1) == negative_ids.unsqueeze(0)
        collision = torch.cat([collision, extra], dim=1)
    return candidates, collision


def sampled_softmax_loss(
    user_vectors: Tensor,
    item_vectors: Tensor,
    *,
    temperature: Tensor | float,
    item_ids: Tensor | None = None,
    log_q: Tensor | None = None,
    negative_vectors: Tensor | None = None,
    negative_ids: Tensor | None = None,
    negative_log_q: Tensor | None = None,
) -> Tensor:
    """Sampled softmax over in-batch (+ extra) negatives with logQ correction.

    Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations",
    RecSys 2019: every candidate's logit, the positive's included, is reduced by the log of its
    sampling probability, so popular items are not over-penalised as negatives.

    ``user_vectors``, ``item_vectors``: (B, E), row i's positive is item row i. ``item_ids`` (B,)
    catalog indices of the positives: other rows with the same item are masked out of row i's
    negatives (None: no masking). ``log_q`` (B,) log sampling probability of each positive (None:
    no correction). ``negative_vectors`` (K, E) extra candidates shared by all rows, with
    ``negative_ids`` (K,) (masked where equal to the row's positive) and ``negative_log_q`` (K,)
    (needed when ``log_q`` is given). Returns the mean cross-entropy, a scalar.
    Raises :class:`ValueError` for mismatched shapes.
    """
    if user_vectors.shape != item_vectors.shape:
        raise ValueError(
            f"user_vectors {tuple(user_vectors.shape)} and item_vectors {tuple(item_vectors.shape)} must match"
        )
    if log_q is not None and negative_vectors is not None and negative_log_q is None:
        raise ValueError("negative_log_q is needed when log_q corrects the in-batch candidates")
    candidates, collision = _candidates(item_vectors, item_ids, negative_vectors, negative_ids)
    logits = user_vectors @ candidates.T / temperature
    if log_q is not None:
        column_log_q = log_q if negative_log_q is None else torch.cat([log_q, negative_log_q])
        logits = logits - column_log_q.to(logits.dtype).unsqueeze(0)
    logits = logits.masked_fill(collision, float("-inf"))
    targets = torch.arange(user_vectors.shape[0], device=user_vectors.device)
    return F.cross_entropy(logits, targets)


def bpr_loss(
    user_vectors: Tensor,
    item_vectors: Tensor,
    *,
    temperature: Tensor | float = 1.0,
    item_ids: Tensor | None = None,
    negative_vectors: Tensor | None = None,
    negative_ids: Tensor | None = None,
) -> Tensor:
    """Bayesian Personalized Ranking over in-batch (+ extra) negatives.

    Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009:
    ``-log sigmoid((s(u, pos) - s(u, neg)) / temperature)`` averaged over every (row, negative)
    pair, the negatives being the other rows' positives and the K ``negative_vectors``, with
    collisions (same item as the row's positive) masked as in :func:`sampled_softmax_loss`.
    The temperature rescales cosine scores, whose differences lie in [-2, 2]. Shapes as there.
    Returns 0 if no pair is left.
    """
    candidates, collision = _candidates(item_vectors, item_ids, negative_vectors, negative_ids)
    batch = item_vectors.shape[0]
    eye = torch.zeros_like(collision)
    eye[:, :batch] = torch.eye(batch, dtype=torch.bool, device=collision.device)
    valid = ~(collision | eye)
    positive = (user_vectors * item_vectors).sum(dim=1, keepdim=True)
    margins = (positive - user_vectors @ candidates.T) / temperature
    losses = -F.logsigmoid(margins)
    return (losses * valid).sum() / valid.sum().clamp_min(1)
