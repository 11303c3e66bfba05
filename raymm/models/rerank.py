"""The serving hook of the ranking stage: re-rank the retriever's top-N for one user in one pass.

:meth:`Reranker.from_artifact` loads the artifact's ranker and, once, everything per item it
needs: the two-tower item vectors (``item_vectors.parquet``), and from ``ranker/items.safetensors``
the aligned modality vectors, presence masks and popularity, fused by the ranker into one content
vector per item. :meth:`Reranker.rank` then gathers the candidates' rows and runs the ranker's
scoring MLP once over all of them (``torch.inference_mode``), with no feature files and no
two-tower forward at request time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from raymm.models.artifact import RANKER_DIR, load_artifact
from raymm.models.errors import ModelLoadError
from raymm.models.ranker import Ranker, read_item_inputs


class Reranker:
    """P(engage) for a user's candidates; build it with :meth:`from_artifact`.

    ``item_ids`` (N,) str in artifact row order; ``content`` (N, F) fused item content,
    ``vectors`` (N, E) the ranker's item (content) vectors, ``retrieval_vectors`` (N, E) the
    retriever's item vectors and ``popularity`` (N,) raw popularity, all precomputed.
    """

    def __init__(
        self,
        ranker: Ranker,
        item_ids: np.ndarray,
        content: Tensor,
        vectors: Tensor,
        retrieval_vectors: Tensor,
        popularity: Tensor,
    ) -> None:
        self.ranker = ranker.eval()
        self.item_ids = item_ids
        self.row_of = {str(item_id): row for row, item_id in enumerate(item_ids)}
        self.content = content
        self.vectors = vectors
        self.retrieval_vectors = retrieval_vectors
        self.popularity = popularity

    @classmethod
    def from_artifact(cls, directory: str | Path) -> Reranker:
        """Load the ranker of the artifact at ``directory`` and precompute every item's inputs.

        Raises :class:`ModelLoadError` if the artifact has no ranker, or it does not fit the
        artifact's two-tower model (modalities, widths) or item table.
        """
        path = Path(directory)
        artifact = load_artifact(path)
        if "rank" not in artifact.manifest.get("stages", {}):
            raise ModelLoadError(f"{path}: the artifact has no ranking stage; run `raymm train --stage rank`")
        two_tower = artifact.model
        ranker = Ranker.from_pretrained(
            path / RANKER_DIR,
            modalities=two_tower.modalities,
            shared_dim=two_tower.config.align.shared_dim,
            embed_dim=two_tower.config.towers.embed_dim,
        )
        table = artifact.item_vectors
        item_ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
        width = table.schema.field("vector").type.list_size
        flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = torch.from_numpy(np.array(flat, dtype=np.float32).reshape(-1, width))  # writable copy
        inputs = read_item_inputs(path / RANKER_DIR, vectors, ranker.modalities)
        with torch.inference_mode():
            content = ranker.item_content(inputs.projected, inputs.present)
        return cls(ranker, item_ids, content, inputs.content_vectors, vectors, inputs.popularity)

    def rows(self, candidates: Sequence[str] | np.ndarray) -> np.ndarray:
        """Artifact rows of candidate item ids (str) or rows (int); :class:`ValueError` for unknown ones."""
        array = np.asarray(candidates)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"candidates must be a non-empty 1-D sequence, got shape {array.shape}")
        if np.issubdtype(array.dtype, np.integer):
            bad = array[(array < 0) | (array >= len(self.item_ids))]
            if bad.size:
                raise ValueError(
                    f"candidate rows {bad[:5].tolist()} are outside the catalog [0, {len(self.item_ids)})"
                )
            return array.astype(np.int64)
        unknown = [str(c) for c in array if str(c) not in self.row_of]
        if unknown:
            raise ValueError(f"unknown item ids {unknown[:5]} ({len(unknown)} of {array.size} candidates)")
        return np.fromiter((self.row_of[str(c)] for c in array), dtype=np.int64, count=array.size)

    def rank(
        self,
        user_vector: np.ndarray | Tensor,
        candidates: Sequence[str] | np.ndarray,
        recency: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates re-ordered by P(engage), best first, and those probabilities (float32).

        ``user_vector`` (E,) is the two-tower user vector; ``candidates`` item ids or artifact
        rows (returned as given, re-ordered); ``recency`` hours since the user's previous event
        (None: unknown, read as the training mean). Raises :class:`ValueError` for unknown
        candidates, a user vector of the wrong shape, or a negative or non-finite recency.
        """
        rows = self.rows(candidates)
        user = torch.as_tensor(np.asarray(user_vector, dtype=np.float32)).reshape(-1)
        if np.asarray(user_vector).ndim != 1 or user.shape[0] != self.vectors.shape[1]:
            raise ValueError(
                f"user_vector must have shape ({self.vectors.shape[1]},), got {np.asarray(user_vector).shape}"
            )
        if recency is not None and not (math.isfinite(recency) and recency >= 0):
            raise ValueError(f"recency must be finite hours >= 0 or None, got {recency}")
        index = torch.from_numpy(rows)
        raw_recency = math.nan if recency is None else math.log1p(recency)
        with torch.inference_mode():
            context = torch.stack([torch.full((rows.size,), raw_recency), self.popularity[index]], dim=1)
            users = user.unsqueeze(0).expand(rows.size, -1)
            retrieval = self.retrieval_vectors[index] @ user
            logits = self.ranker.score(self.content[index], self.vectors[index], users, context, retrieval)
            probabilities = torch.sigmoid(logits).numpy()
        order = np.argsort(-probabilities, kind="stable")
        return np.asarray(candidates)[order], probabilities[order]
