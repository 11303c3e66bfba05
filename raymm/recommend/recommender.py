"""A trained artifact as a recommender: item ids in, item ids and scores out, as serving answers.

:func:`load_model` reads the artifact (two-tower model, item vectors, the popularity the
fallback uses and its shrinkage, and the ranker when there is one) into a :class:`Recommender`.
:meth:`Recommender.recommend` builds the user from their recent item ids with the artifact's
user-state spec, blends in popularity for short histories (:class:`FallbackScorer`: an unknown
user gets the popular items, not an untrained vector), excludes what they have seen, and
re-ranks the retriever's top-N with the ranker when the artifact has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from raymm.models.artifact import Artifact, load_artifact, served_top_n, trained_top_n
from raymm.models.blend_parts import COLLAB, CONTENT, CollabVectors
from raymm.models.errors import ModelLoadError
from raymm.models.ranker import RankerInputs, popularity_feature
from raymm.recommend.blend import BlendSettings, served_retriever
from raymm.recommend.collab import CollaborativeScorer, PersonalScorer, map_content
from raymm.recommend.content import EncodedItems
from raymm.recommend.index import FaissIndex, IndexChoice, ItemIndex
from raymm.recommend.itemsets import ItemSets
from raymm.recommend.rerank import Reranker
from raymm.recommend.scorers import ContentScorer, PopularityScorer, RetrieveThenRank, Scorer, TwoTowerScorer
from raymm.recommend.topk import top_k


@dataclass
class Recommendation:
    """One recommended item and its score (the ranker's logit, or the blended retrieval score)."""

    item_id: str
    score: float


class Recommender:
    """The artifact's recommender; build it with :func:`load_model`."""

    def __init__(
        self,
        artifact: Artifact,
        reranker: Reranker | None,
        top_n: int,
        catalog: tuple[np.ndarray, Tensor, np.ndarray] | None = None,
        index: IndexChoice | ItemIndex | None = None,
        popularity: Tensor | None = None,
        collab: CollabVectors | None = None,
        max_top_n: int | None = None,
        content: ContentScorer | None = None,
    ) -> None:
        """``catalog`` (item ids, item vectors, popularity counts) replaces the artifact's own
        (:meth:`with_items` passes the catalog with live items added, with ``popularity``, the
        scores its items had, ``collab`` and ``content``, their item-item and content parts, and the
        ``index`` over them). ``index``: how the retriever ranks
        the catalog (:class:`IndexChoice`; None: exact), or a built index of its item vectors.
        ``top_n`` candidates go to the ranker, ``max_top_n`` (default ``top_n``) for a request
        for more items (:class:`RetrieveThenRank`)."""
        self.artifact = artifact
        self.top_n = top_n
        self.max_top_n = top_n if max_top_n is None else max(top_n, max_top_n)
        self.spec = artifact.model.config.user_state
        artifact.model.eval()  # only ever evaluated here; switching modes per request cost ~0.9 ms
        self.reranker = reranker
        if catalog is None:
            collab = artifact.collab_vectors()
            saved = artifact.content_vectors()
            content = None if saved is None else ContentScorer.from_vectors(saved)
            table = artifact.item_vectors
            width = table.schema.field("vector").type.list_size
            flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            catalog = (
                np.asarray(table.column("item_id").to_pylist(), dtype=object),
                torch.from_numpy(np.array(flat, dtype=np.float32).reshape(-1, width)),
                np.asarray(table.column("popularity").to_numpy(), dtype=np.float64)
                if "popularity" in table.column_names
                else np.zeros(table.num_rows),
            )
        self.item_ids, vectors, self.counts = catalog
        self.row_of = {str(item_id): row for row, item_id in enumerate(self.item_ids)}
        metrics = artifact.manifest.metrics
        self.two_tower = TwoTowerScorer(artifact.model, item_vectors=vectors)
        self.popularity = PopularityScorer(self.counts, scores=popularity)
        try:
            self.settings = BlendSettings.from_metrics(metrics) or BlendSettings()
        except (TypeError, ValueError) as error:  # a hand-edited or foreign manifest
            raise ModelLoadError(
                f"{artifact.directory or 'the artifact'}: manifest.json's metrics.blend is not a "
                f"blend raymm can serve: {error}"
            ) from error
        if self.settings.collab_weight > 0 and collab is None:
            raise ModelLoadError(
                f"{artifact.directory or 'the artifact'}: its blend weighs the item-item part "
                f"({self.settings.collab_weight:g}) but it has no {COLLAB}; re-train, or copy the "
                f"whole artifact directory"
            )
        if self.settings.content_weight > 0 and content is None:
            raise ModelLoadError(
                f"{artifact.directory or 'the artifact'}: its blend weighs the content part "
                f"({self.settings.content_weight:g}) but it has no {CONTENT}; re-train, or copy the "
                f"whole artifact directory"
            )
        self.collab_vectors = collab
        self.collab = (
            None
            if collab is None
            else CollaborativeScorer(query_vectors=collab.query, item_vectors=collab.items)
        )
        self.content = content
        self.retriever = served_retriever(
            self.two_tower, self.collab, self.popularity, self.settings, self.content
        )
        self.index_choice = index if isinstance(index, IndexChoice) else IndexChoice()
        if isinstance(index, ItemIndex):
            self.retriever.use_index(index)
        elif self.index_choice.resolve(len(self.item_ids)) == "faiss":
            self.retriever.use_index(
                FaissIndex(self.retriever.item_vectors(), nprobe=self.index_choice.nprobe)
            )
        self.scorer: Scorer = (
            self.retriever
            if reranker is None
            else RetrieveThenRank(self.retriever, self.two_tower, reranker, top_n, self.max_top_n)
        )

    def with_items(self, items: EncodedItems) -> Recommender:
        """A recommender whose catalog also holds ``items`` (live items, encoded by
        :class:`~raymm.recommend.content.ContentEncoder`): new ids are appended as cold items (no
        popularity yet), known ids get their new vectors in place and keep their popularity. Items
        with no content at all are left out. This recommender is not changed, so readers keep a
        consistent catalog while the next one is built."""
        items = items.select(items.has_content)
        last = {item_id: position for position, item_id in enumerate(items.item_ids)}
        if len(last) < len(items.item_ids):  # an id twice in one batch: its last message wins
            items = items.select(np.array(sorted(last.values()), dtype=np.int64))
        ids = list(self.item_ids)
        rows = []
        for item_id in items.item_ids:
            row = self.row_of.get(item_id)
            if row is None:
                row = len(ids)
                ids.append(item_id)
            rows.append(row)
        grow = len(ids) - len(self.item_ids)
        changed_rows = torch.as_tensor(rows, dtype=torch.long)
        new_vectors = torch.from_numpy(np.ascontiguousarray(items.vectors, dtype=np.float32))

        def grown(base: Tensor, values: Tensor) -> Tensor:
            out = torch.cat([base, base.new_zeros((grow, *base.shape[1:]))])
            out[changed_rows] = values.to(base.dtype)
            return out

        vectors = grown(self.two_tower.item_vectors(), new_vectors)
        counts = np.concatenate([self.counts, np.zeros(grow)])
        # Known items keep their popularity scores (tie-breaks included); new ones score 0.
        popularity = torch.cat([self.popularity.item_vectors(), torch.zeros(grow, 1)])
        collab = (
            None
            if self.collab_vectors is None
            else self._grown_collab(self.collab_vectors, new_vectors, rows)
        )
        content = None
        if self.content is not None:
            # Every changed item's content row from its features: new content, new row.
            features = {m: torch.from_numpy(f) for m, f in items.features.items()}
            present = {m: torch.from_numpy(items.present[m]) for m in self.content.modalities or []}
            content = self.content.with_items(changed_rows, self.content.encode(features, present), len(ids))
        index: IndexChoice | ItemIndex = self.index_choice
        if isinstance(self.retriever.index, FaissIndex):
            # The retriever's vectors of the changed rows: two-tower, item-item, content, then popularity.
            parts = [vectors[changed_rows]]
            if isinstance(self.retriever.primary, PersonalScorer):
                if self.retriever.primary.collaborative is not None and collab is not None:
                    parts.append(collab.items[changed_rows])
                if self.retriever.primary.content is not None and content is not None:
                    parts.append(content.item_vectors()[changed_rows])
            changed = torch.cat([*parts, popularity[changed_rows]], dim=1)
            index = self.retriever.index.updated(changed_rows.numpy(), changed)
        reranker = None
        if self.reranker is not None:
            inputs = self.reranker.inputs
            reranker = Reranker.from_inputs(
                self.reranker.ranker,
                np.asarray(ids, dtype=object),
                RankerInputs(
                    {m: grown(v, torch.from_numpy(items.aligned[m])) for m, v in inputs.projected.items()},
                    {m: grown(v, torch.from_numpy(items.present[m])) for m, v in inputs.present.items()},
                    grown(inputs.content_vectors, new_vectors),
                    torch.cat([inputs.popularity, popularity_feature(np.zeros(grow))]),
                    grown(inputs.vectors, new_vectors),
                ),
            )
        return Recommender(
            self.artifact,
            reranker,
            self.top_n,
            (np.asarray(ids, dtype=object), vectors, counts),
            index=index,
            popularity=popularity,
            collab=collab,
            max_top_n=self.max_top_n,
            content=content,
        )

    def _grown_collab(self, collab: CollabVectors, new_vectors: Tensor, rows: list[int]) -> CollabVectors:
        """``collab`` with rows for the items :meth:`with_items` appends, predicted from their item
        vectors (``new_vectors``, one per entry of ``rows``); known items keep theirs (their
        item-item evidence came from interactions, which new content does not change)."""
        n_old = len(self.item_ids)
        new = torch.as_tensor([i for i, row in enumerate(rows) if row >= n_old], dtype=torch.long)
        query, items = map_content(new_vectors[new], collab.content_map)
        return CollabVectors(
            torch.cat([collab.query, query]), torch.cat([collab.items, items]), collab.content_map
        )

    @property
    def version(self) -> str:
        """The model version serving reports with each recommendation."""
        return self.artifact.version

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Catalog rows of ``item_ids``; :class:`KeyError` naming the unknown ones."""
        unknown = [i for i in item_ids if str(i) not in self.row_of]
        if unknown:
            raise KeyError(f"unknown item ids {unknown[:5]} ({len(unknown)} of {len(item_ids)})")
        return np.fromiter((self.row_of[str(i)] for i in item_ids), dtype=np.int64, count=len(item_ids))

    def history_rows(self, recent: Sequence[str]) -> np.ndarray:
        """(1, max_history) the user's history window from recent item ids (oldest first)."""
        rows = self.rows(list(recent)[-self.spec.max_history :])
        history = np.full((1, self.spec.max_history), -1, dtype=np.int64)
        if rows.size:
            history[0, -rows.size :] = rows
        return history

    @property
    def max_k(self) -> int:
        """The most items one answer can hold: the ranker's most candidates, or the catalog."""
        return self.max_top_n if isinstance(self.scorer, RetrieveThenRank) else len(self.item_ids)

    def similar(self, item_id: str, k: int = 10) -> list[Recommendation]:
        """The ``k`` items whose item-tower vectors are closest to ``item_id``'s (itself excluded).

        Raises :class:`KeyError` for an unknown item and :class:`ValueError` for k < 1.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        row = self.rows([item_id])
        vectors = self.two_tower.item_vectors()
        top = top_k(vectors[row], vectors, k, exclude=ItemSets.from_lists([row]))
        return [
            Recommendation(str(self.item_ids[r]), float(score))
            for r, score in zip(top.rows[0].tolist(), top.scores[0].tolist(), strict=True)
            if r >= 0
        ]

    def known(self, item_ids: Sequence[str]) -> list[str]:
        """``item_ids`` this catalog has, in order (live state may name items the model predates)."""
        return [str(i) for i in item_ids if str(i) in self.row_of]

    def recommend(
        self,
        recent: Sequence[str],
        k: int = 10,
        *,
        seen: Sequence[str] = (),
        recency_hours: float | None = None,
    ) -> list[Recommendation]:
        """The top ``k`` items for a user whose recent positive items are ``recent`` (oldest first).

        ``seen`` items (and ``recent`` ones) are never recommended; ``recency_hours`` since the
        user's last event feeds the ranker (None: unknown). Raises :class:`KeyError` for an
        unknown item id and :class:`ValueError` for k < 1.
        """
        return self.recommend_many([recent], k, seen=[seen], recency_hours=[recency_hours])[0]

    def recommend_many(
        self,
        recent: Sequence[Sequence[str]],
        k: int = 10,
        *,
        seen: Sequence[Sequence[str]] | None = None,
        recency_hours: Sequence[float | None] | None = None,
    ) -> list[list[Recommendation]]:
        """:meth:`recommend` for U users in one pass (one matrix product for the batch).

        ``recent``, ``seen`` and ``recency_hours`` have one entry per user; every user gets up to
        ``k`` items. Raises :class:`KeyError` for an unknown item id and :class:`ValueError` for
        k < 1 or lists of different lengths.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        n = len(recent)
        seen = seen if seen is not None else [()] * n
        hours = recency_hours if recency_hours is not None else [None] * n
        if not len(seen) == len(hours) == n:
            raise ValueError(
                f"recent, seen and recency_hours differ in length: {n}, {len(seen)}, {len(hours)}"
            )
        if n == 0:
            return []
        history = np.concatenate([self.history_rows(r) for r in recent])
        excluded = [
            np.unique(np.concatenate([self.rows(list(s)), h[h >= 0]]))
            for s, h in zip(seen, history, strict=True)
        ]
        recency = np.array([np.nan if h is None else np.log1p(h) for h in hours], np.float32)
        top = self.scorer.recommend(history, k, exclude=ItemSets.from_lists(excluded), recency=recency)
        return [
            [
                Recommendation(str(self.item_ids[row]), float(score))
                for row, score in zip(rows, scores, strict=True)
                if row >= 0
            ]
            for rows, scores in zip(top.rows.tolist(), top.scores.tolist(), strict=True)
        ]


def load_model(
    directory: str | Path, top_n: int | None = None, index: IndexChoice | None = None
) -> Recommender:
    """The artifact at ``directory`` as a :class:`Recommender` (with its ranker when it has one).

    ``top_n`` candidates go to the ranker (default: the artifact's ``served_top_n``, what training
    chose on validation, else its ``rank.retriever_top_n``; a request for more items than the
    chosen top-N gets all ``rank.retriever_top_n`` re-ranked, as the ranker was trained);
    ``index`` says how the catalog is searched (default exact; serving passes ``serve.index``).
    Raises :class:`~raymm.models.errors.ModelLoadError` for a missing or invalid artifact.
    """
    artifact = load_artifact(directory)
    reranker = Reranker.from_artifact(directory, artifact) if "rank" in artifact.manifest.stages else None
    manifest = artifact.manifest
    if top_n is not None:
        return Recommender(artifact, reranker, int(top_n), index=index)
    return Recommender(
        artifact, reranker, served_top_n(manifest), index=index, max_top_n=trained_top_n(manifest)
    )
