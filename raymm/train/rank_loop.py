"""The ranker's training step and scoring, plain PyTorch (the Ray Train loop wraps them).

The two-tower model stays frozen: user vectors come from its user tower over precomputed item
vectors (:func:`raymm.train.loop.user_vectors`), item inputs from :class:`RankerInputs`.
:class:`RankObjective` is the module DDP wraps; :func:`predict` scores labelled examples;
:func:`retrieve_then_rank` measures the ranker where it serves, re-ordering the retriever's top-N
(validation picks the ranker's retrieval weight with it; ``raymm evaluate`` reports it on test).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raymm.errors import ConfigError
from raymm.eval.metrics import ranking_metrics
from raymm.models.ranker import Ranker, RankerInputs
from raymm.models.towers import TwoTower
from raymm.train.data import EvalUsers
from raymm.train.loop import user_vectors
from raymm.train.rank_data import RankExamples

_MS_PER_HOUR = 3_600_000.0


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
            torch.as_tensor(part.item, device=device),
            users,
            torch.as_tensor(part.recency, device=device),
            torch.as_tensor(part.popularity, device=device),
        )
        parts.append(torch.sigmoid(logits).cpu().numpy())
    objective.train(was_training)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def platt_scaling(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(scale, bias) minimising the weighted log-loss of ``sigmoid(scale * logit + bias)`` (Platt 1999).

    A monotone map of the logits: rankings are unchanged, probabilities become calibrated on the
    examples given (the validation examples, whose sampled negatives set the base rate).
    """
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    logits = torch.as_tensor(np.log(clipped / (1 - clipped)), dtype=torch.float64)
    target = torch.as_tensor(labels, dtype=torch.float64)
    weight = torch.as_tensor(weights, dtype=torch.float64)
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


@torch.no_grad()
def retrieve_then_rank(
    two_tower: TwoTower,
    ranker: Ranker,
    inputs: RankerInputs,
    users: EvalUsers,
    recency: np.ndarray,
    ks: Sequence[int],
    top_n: int,
    chunk: int = 256,
) -> dict[str, dict[str, float]]:
    """Ranking metrics of retrieval alone and of its top ``top_n`` re-ordered by the ranker.

    The re-ranking score is the ranker's logit (its retrieval weight included). ``recency`` (U,)
    raw log1p hours per user (NaN: unknown). Returns ``{"retrieval": {...}, "retrieve_then_rank":
    {...}}`` (:func:`~raymm.eval.metrics.ranking_metrics`). Raises :class:`ConfigError` if
    ``top_n`` is below the largest K (the two would then rank different candidate sets).
    """
    if top_n < max(ks):
        raise ConfigError(f"rank.retriever_top_n={top_n} must be at least the largest K {max(ks)}")
    ranker.eval()
    items = inputs.vectors
    people = user_vectors(two_tower, items, users.history)
    retrieval = people @ items.T
    owners = np.repeat(np.arange(users.seen.n_users), users.seen.sizes)
    retrieval[torch.as_tensor(owners), torch.as_tensor(users.seen.indices)] = float("-inf")
    top = torch.topk(retrieval, min(top_n, items.shape[0]), dim=1)
    content = ranker.item_content(inputs.projected, inputs.present)
    reranked = torch.full_like(retrieval, float("-inf"))
    recency_t = torch.as_tensor(recency, dtype=torch.float32)
    for start in range(0, people.shape[0], chunk):
        rows = slice(start, start + chunk)
        candidates = top.indices[rows]  # (C, n)
        flat = candidates.reshape(-1)
        per_user = candidates.shape[1]
        context = torch.stack([recency_t[rows].repeat_interleave(per_user), inputs.popularity[flat]], dim=1)
        retrieved = top.values[rows]
        real = retrieved > float("-inf")  # fewer unseen items than top_n: keep them out
        logits = ranker.score(
            content[flat],
            inputs.content_vectors[flat],
            people[rows].repeat_interleave(per_user, dim=0),
            context,
            torch.where(real, retrieved, 0.0).reshape(-1),
        ).view_as(candidates)
        reranked[rows].scatter_(1, candidates, torch.where(real, logits, float("-inf")))
    ks = tuple(ks)
    return {
        "retrieval": ranking_metrics(users.truth, scores=retrieval, ks=ks),
        "retrieve_then_rank": ranking_metrics(users.truth, scores=reranked, ks=ks),
    }


def held_out_recency(context: pa.Table, held_out: pa.Table, user_ids: np.ndarray) -> np.ndarray:
    """(U,) log1p hours from each user's last ``context`` event to the first ``held_out`` event (NaN if none).

    The serving-time analogue of the training recency for users scored at the start of a period.
    """
    last = context.group_by("user_id").aggregate([("ts", "max")])
    position = np.asarray(
        pc.fill_null(pc.index_in(pa.array(user_ids.astype(str)), value_set=last.column("user_id")), -1)
    )
    last_ms = last.column("ts_max").cast(pa.int64()).to_numpy()
    start_ms = float(pc.min(held_out.column("ts")).cast(pa.int64()).as_py())
    hours = (start_ms - last_ms[np.clip(position, 0, None)]) / _MS_PER_HOUR
    return np.where(position >= 0, np.log1p(np.maximum(hours, 0.0)), np.nan).astype(np.float32)
