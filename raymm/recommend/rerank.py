"""Retrieve-then-rank: the ranker re-orders the retriever's candidates, batched over users.

:class:`Reranker` holds the ranker and, computed once, everything per item it reads: the
retriever's item vectors, the item tower's content vectors (no id embedding), popularity and the
ranker's fused content of each item. :meth:`Reranker.score_rows` then scores (U, n) candidate
rows in one pass of the ranker's MLP; :meth:`Reranker.rerank` re-orders a :class:`TopK`;
:meth:`Reranker.rank` does it for one user (serving). Offline evaluation, the validation that
chooses the ranker's retrieval weight, and serving all call these, so they score a candidate the
same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from raymm.models.artifact import Artifact, load_artifact, ranker_dir
from raymm.models.errors import ModelLoadError
from raymm.models.persist import as_uri
from raymm.models.ranker import Ranker, RankerInputs, popularity_feature, read_item_inputs
from raymm.models.towers import TwoTower
from raymm.recommend.catalog import Catalog
from raymm.recommend.topk import TopK
from raymm.recommend.vectors import encode_catalog


@torch.no_grad()
def ranker_inputs(model: TwoTower, catalog: Catalog, counts: np.ndarray) -> RankerInputs:
    """The frozen two-tower's per-item outputs the ranker reads, for every catalog row (eval mode).

    ``catalog`` must hold the model's modalities; ``counts`` (N,) positive events per item (the
    popularity the ranker sees).
    """
    full = encode_catalog(model, catalog)
    content = encode_catalog(model, catalog, with_ids=False)
    return RankerInputs(
        full.projected,
        {m: catalog.present[m].clone() for m in model.modalities},
        content.vectors,
        popularity_feature(counts),
        full.vectors,
    )


class Reranker:
    """P(engage) of candidates for users; build it with :meth:`from_artifact` or :meth:`from_inputs`.

    ``item_ids`` (N,) str in catalog (artifact) row order; ``inputs`` the per-item ranker inputs
    (:func:`ranker_inputs`, or ``ranker/items.safetensors``).
    """

    def __init__(self, ranker: Ranker, item_ids: np.ndarray, inputs: RankerInputs) -> None:
        self.ranker = ranker.eval()
        self.item_ids = item_ids
        self.row_of = {str(item_id): row for row, item_id in enumerate(item_ids)}
        self.inputs = inputs
        with torch.inference_mode():
            self.content = ranker.item_content(inputs.projected, inputs.present)

    @classmethod
    def from_inputs(cls, ranker: Ranker, item_ids: np.ndarray, inputs: RankerInputs) -> Reranker:
        """A reranker over inputs already in memory (training's validation, evaluation)."""
        return cls(ranker, item_ids, inputs)

    @classmethod
    def from_artifact(cls, directory: str | Path, artifact: Artifact | None = None) -> Reranker:
        """Load the ranker of the artifact at ``directory`` and precompute every item's inputs.

        ``artifact`` is that directory's artifact when the caller has loaded it already (it is not
        read twice). Raises :class:`ModelLoadError` if the artifact has no ranker, or it does not
        fit the artifact's two-tower model (modalities, widths) or item table.
        """
        path = as_uri(directory)
        artifact = artifact or load_artifact(path)
        if "rank" not in artifact.manifest.stages:
            raise ModelLoadError(f"{path}: the artifact has no ranking stage; run `raymm train --stage rank`")
        two_tower = artifact.model
        ranker = Ranker.from_pretrained(
            ranker_dir(path),
            modalities=two_tower.modalities,
            shared_dim=two_tower.config.align.shared_dim,
            embed_dim=two_tower.config.towers.embed_dim,
        )
        table = artifact.item_vectors
        item_ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
        width = table.schema.field("vector").type.list_size
        flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = torch.from_numpy(np.array(flat, dtype=np.float32).reshape(-1, width))  # writable copy
        return cls(ranker, item_ids, read_item_inputs(ranker_dir(path), vectors, ranker.modalities))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def rows(self, candidates: Sequence[str] | np.ndarray) -> np.ndarray:
        """Catalog rows of candidate item ids (str) or rows (int); :class:`ValueError` for unknown ones."""
        array = np.asarray(candidates)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"candidates must be a non-empty 1-D sequence, got shape {array.shape}")
        if np.issubdtype(array.dtype, np.integer):
            bad = array[(array < 0) | (array >= self.n_items)]
            if bad.size:
                raise ValueError(
                    f"candidate rows {bad[:5].tolist()} are outside the catalog [0, {self.n_items})"
                )
            return array.astype(np.int64)
        unknown = [str(c) for c in array if str(c) not in self.row_of]
        if unknown:
            raise ValueError(f"unknown item ids {unknown[:5]} ({len(unknown)} of {array.size} candidates)")
        return np.fromiter((self.row_of[str(c)] for c in array), dtype=np.int64, count=array.size)

    @torch.inference_mode()
    def score_rows(
        self, user_vectors: Tensor, rows: Tensor, recency: Tensor, retrieval: Tensor | None = None
    ) -> Tensor:
        """(U, n) logits of candidate ``rows`` (U, n) long for (U, E) user vectors; -inf where a row is -1.

        ``recency`` (U,) raw ``log1p`` hours since each user's previous event (NaN: unknown, read
        as the training mean). ``retrieval`` (U, n): the retriever's score of each candidate, the
        term the ranker adds at its ``retrieval_weight``; None: the two-tower's (``u . v``).
        """
        real = rows >= 0
        flat = rows.clamp(min=0).reshape(-1)
        per_user = rows.shape[1]
        users = user_vectors.repeat_interleave(per_user, dim=0)
        context = torch.stack(
            [recency.float().repeat_interleave(per_user), self.inputs.popularity[flat]], dim=1
        )
        if retrieval is None:
            retrieval_flat = (self.inputs.vectors[flat] * users).sum(-1)
        else:
            retrieval_flat = torch.where(real, retrieval.float(), 0.0).reshape(-1)
        logits = self.ranker.score(
            self.content[flat], self.inputs.content_vectors[flat], users, context, retrieval_flat
        ).view_as(rows)
        return torch.where(real, logits, float("-inf"))

    def rerank(self, candidates: TopK, user_vectors: Tensor, recency: Tensor, k: int) -> TopK:
        """The best ``k`` of each user's ``candidates`` by the ranker's logit, best first. The
        retrieval term is the candidates' own scores: what the served retriever (two-tower,
        item-item and popularity, blended) gave them, so re-ranking keeps what the blend knows."""
        logits = self.score_rows(user_vectors, candidates.rows, recency, candidates.scores)
        top = torch.topk(logits, min(k, logits.shape[1]), dim=1)
        rows = torch.gather(candidates.rows, 1, top.indices)
        return TopK(torch.where(top.values > float("-inf"), rows, -1), top.values)

    def rank(
        self,
        user_vector: np.ndarray | Tensor,
        candidates: Sequence[str] | np.ndarray,
        recency: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One user's candidates re-ordered by P(engage), best first, and those probabilities (float32).

        ``user_vector`` (E,) is the two-tower user vector; ``candidates`` item ids or catalog
        rows (returned as given, re-ordered); ``recency`` hours since the user's previous event
        (None: unknown). Raises :class:`ValueError` for unknown candidates, a user vector of the
        wrong shape, or a negative or non-finite recency.
        """
        rows = self.rows(candidates)
        width = self.inputs.vectors.shape[1]
        if np.asarray(user_vector).ndim != 1 or np.asarray(user_vector).shape[0] != width:
            raise ValueError(f"user_vector must have shape ({width},), got {np.asarray(user_vector).shape}")
        if recency is not None and not (math.isfinite(recency) and recency >= 0):
            raise ValueError(f"recency must be finite hours >= 0 or None, got {recency}")
        user = torch.as_tensor(np.asarray(user_vector, dtype=np.float32)).reshape(1, -1)
        raw_recency = torch.tensor([math.nan if recency is None else math.log1p(recency)])
        logits = self.score_rows(user, torch.from_numpy(rows).unsqueeze(0), raw_recency)[0]
        probabilities = torch.sigmoid(logits).numpy()
        order = np.argsort(-probabilities, kind="stable")
        return np.asarray(candidates)[order], probabilities[order]
