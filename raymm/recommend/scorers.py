"""Every recommender behind one interface: ``fit`` on a training context, ``recommend`` top k.

Like Cornac's ``Recommender`` (``fit`` / ``score``), but answering with the top k instead of a
full score row, so that memory stays bounded at any catalog size: each scorer ranks through the
one seen-masked :func:`~raymm.recommend.topk.top_k` (dot products, chunked) and, for
retrieve-then-rank, :class:`~raymm.recommend.rerank.Reranker`. One evaluator
(:mod:`raymm.eval.evaluate`) takes a list of these objects.

* :class:`TwoTowerScorer`: the trained two-tower model (user tower over the history's item
  vectors);
* :class:`PopularityScorer`: most popular items first (counts of counting events in the fit
  context; ties in a fixed seeded order);
* :class:`ContentScorer`: training-free content baseline: cosine between an item's raw feature
  vectors (standardised, normalised per modality, concatenated) and the mean of the user's
  history items' vectors;
* :class:`FallbackScorer`: a scorer blended with popularity by history length, so users with
  little or no history get a real answer: score = a(h) * primary + (1 - a(h)) * popularity with
  a(h) = h / (h + shrinkage), h the number of history items (a(0) = 0: popularity alone), plus
  an optional popularity floor for long histories. The shrinkage, the floor and the popularity's
  half-life (recent popularity, or every event alike) are chosen on validation
  (:func:`raymm.recommend.blend.choose_blend_settings`) and serving applies the same rule;
* :class:`RetrieveThenRank`: a retriever's top ``top_n`` re-ordered by the ranker;
* :class:`PrecomputedScorer`: scores computed elsewhere (a peer library such as Cornac), one
  row per user id, so the same evaluator ranks them; unknown users get a fallback scorer's answer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from raymm.models.blend_parts import ContentVectors
from raymm.models.towers import TwoTower
from raymm.recommend.catalog import Catalog
from raymm.recommend.history import item_counts
from raymm.recommend.index import ItemIndex
from raymm.recommend.itemsets import ItemSets
from raymm.recommend.rerank import Reranker
from raymm.recommend.topk import TopK, top_k, top_k_of_scores
from raymm.recommend.vectors import encode_catalog, user_vectors

#: Shrinkage values validation tries (:mod:`raymm.recommend.blend`) (0: popularity only for users with no history).
#: The grid reaches far: on MovieLens-100k validation kept choosing its top while the top was lower
#: (bench/cold_users.py, bench/results/peers.ml100k.json), so popularity may carry most of a
#: long history's answer when the data says so.
SHRINKAGE_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
#: Half-lives (days) of recent popularity validation tries; None counts every event
#: alike. On MovieLens-100k's time split recent popularity beats all-time popularity clearly
#: (bench/results/peers.ml100k.json): what was popular lately is what new users pick.
HALF_LIFE_GRID_DAYS: tuple[float | None, ...] = (None, 3.0, 7.0, 14.0, 30.0, 90.0)
#: Users per chunk when a scorer does more than a dot product per user (re-ranking).
USER_CHUNK = 256


@dataclass
class FitContext:
    """What a scorer may learn from: the catalog, the interactions before the evaluated period,
    the events that count as positives, and the seed for tie-breaking."""

    catalog: Catalog
    interactions: pa.Table
    events: Sequence[str]
    seed: int = 0


class Scorer(ABC):
    """One recommender: ``fit`` then ``recommend``. Subclasses set ``name``."""

    name: str = "scorer"

    def fit(self, context: FitContext) -> Scorer:
        """Learn what the scorer needs from ``context``; pre-trained scorers need nothing. Returns self."""
        return self

    @abstractmethod
    def recommend(
        self,
        history: np.ndarray,
        k: int,
        *,
        exclude: ItemSets | None = None,
        candidates: np.ndarray | None = None,
        recency: np.ndarray | None = None,
        user_ids: np.ndarray | None = None,
    ) -> TopK:
        """The top ``k`` catalog rows for each of U users, best first.

        ``history`` (U, L) catalog rows, oldest first, -1 padded; ``exclude`` per user rows never
        returned (seen items); ``candidates`` the rows that may be returned (None: all);
        ``recency`` (U,) raw log1p hours since each user's last event (NaN: unknown), used by
        scorers that read it; ``user_ids`` (U,) the users' ids, for scorers that look users up
        (:class:`PrecomputedScorer`).
        """


class DotProductScorer(Scorer):
    """A scorer whose score is ``user_vector . item_vector``: ranks through :func:`top_k`, or
    through an :class:`~raymm.recommend.index.ItemIndex` over its item vectors once
    :meth:`use_index` gave it one (serving's large catalogs: faiss IVF instead of reading every
    item vector per request)."""

    index: ItemIndex | None = None

    @abstractmethod
    def item_vectors(self) -> Tensor:
        """(N, E) one vector per catalog row."""

    @abstractmethod
    def user_vectors(self, history: np.ndarray) -> Tensor:
        """(U, E) one vector per history row."""

    def use_index(self, index: ItemIndex | None) -> DotProductScorer:
        """Rank through ``index`` (None: exact :func:`top_k` again). The index must hold this
        scorer's item vectors, row for row; ValueError if its size or width differs. Returns self."""
        if index is not None:
            items = self.item_vectors()
            if (index.n_items, index.dim) != tuple(items.shape):
                raise ValueError(
                    f"the index holds {index.n_items} x {index.dim} vectors, the scorer "
                    f"{items.shape[0]} x {items.shape[1]}"
                )
        self.index = index
        return self

    def recommend(
        self,
        history: np.ndarray,
        k: int,
        *,
        exclude: ItemSets | None = None,
        candidates: np.ndarray | None = None,
        recency: np.ndarray | None = None,
        user_ids: np.ndarray | None = None,
    ) -> TopK:
        if self.index is not None and candidates is None:
            return self.index.search(self.user_vectors(history), k, exclude=exclude)
        return top_k(
            self.user_vectors(history), self.item_vectors(), k, exclude=exclude, candidates=candidates
        )


class TwoTowerScorer(DotProductScorer):
    """The trained two-tower model: item vectors computed from ``catalog`` (which must hold the
    model's modalities) on first use, or given as ``item_vectors`` (an artifact's, serving)."""

    def __init__(
        self,
        model: TwoTower,
        catalog: Catalog | None = None,
        name: str = "two-tower",
        item_vectors: Tensor | None = None,
    ) -> None:
        if catalog is None and item_vectors is None:
            raise ValueError("TwoTowerScorer needs a catalog or precomputed item_vectors")
        self.model = model
        self.catalog = catalog
        self.name = name
        self._items = item_vectors

    def item_vectors(self) -> Tensor:
        if self._items is None:
            assert self.catalog is not None
            self._items = encode_catalog(self.model, self.catalog).vectors
        return self._items

    def user_vectors(self, history: np.ndarray) -> Tensor:
        return user_vectors(self.model, self.item_vectors(), history)


class PopularityScorer(DotProductScorer):
    """Most popular first: counting events per item in the fit context, ties in a seeded order.

    The item score is ``log1p(count) / log1p(max count)`` in [0, 1] plus a tie-breaking term below
    any count difference, so it also serves as the popularity half of :class:`FallbackScorer`.
    """

    name = "popularity"

    def __init__(
        self,
        counts: np.ndarray | None = None,
        seed: int = 0,
        *,
        scores: Tensor | None = None,
        half_life_days: float | None = None,
    ) -> None:
        """``counts`` (N,) per item, or ``scores`` (N, 1) as :meth:`item_vectors` gave them (a
        catalog grown by live items keeps its items' scores, tie-breaks included).
        ``half_life_days``: :meth:`fit` counts recent popularity (see
        :func:`~raymm.recommend.history.item_counts`); None counts every event alike."""
        self.seed = seed
        self.half_life_days = half_life_days
        self._items = (
            scores if scores is not None else None if counts is None else self._scores(np.asarray(counts))
        )
        if half_life_days is not None:
            self.name = f"popularity (half-life {half_life_days:g} d)"

    def fit(self, context: FitContext) -> PopularityScorer:
        self.seed = context.seed
        self._items = self._scores(self.counts(context))
        return self

    def counts(self, context: FitContext) -> np.ndarray:
        """The (N,) counts :meth:`fit` ranks by: recent ones with a half-life."""
        return item_counts(context.interactions, context.catalog, context.events, self.half_life_days)

    def _scores(self, counts: np.ndarray) -> Tensor:
        if counts.ndim != 1 or (counts.size and counts.min() < 0):
            raise ValueError(
                f"popularity counts must be a non-negative (N,) vector, got shape {counts.shape}"
            )
        logs = np.log1p(counts.astype(np.float64))
        scale = logs.max() if counts.size and logs.max() > 0 else 1.0
        tie_break = np.random.default_rng(self.seed).permutation(counts.size) / max(counts.size, 1)
        # log1p of counts differs by >= log1p(1/max) ~ 1/max between distinct counts; stay below it.
        gap = 0.5 / (max(float(counts.max(initial=0)), 1.0) + 1.0) / scale
        return torch.from_numpy((logs / scale + gap * tie_break).astype(np.float32)).unsqueeze(1)

    def item_vectors(self) -> Tensor:
        if self._items is None:
            raise RuntimeError("PopularityScorer: call fit() or pass counts first")
        return self._items

    def user_vectors(self, history: np.ndarray) -> Tensor:
        return torch.ones(len(history), 1)


class ContentScorer(DotProductScorer):
    """Content similarity to the history: the training-free content baseline, and the content part
    of the served blend (:mod:`raymm.recommend.blend`).

    Each modality's raw features are standardised over the catalog's present rows and
    L2-normalised; an item's vector concatenates them (absent modalities zero) scaled by
    1/sqrt(modalities present), and a user's vector is the mean of their history items' vectors.
    The item-item score is then the mean per-modality cosine over shared modalities.

    With ``dim`` smaller than that concatenation (2,688 wide for text, image and audio), item
    vectors are projected onto its top ``dim`` principal directions over the catalog, so the part
    adds ``dim`` columns to the served index at any catalog size. :meth:`encode` gives a new item
    (serving's live items) its vector from its raw features with the catalog's statistics and
    projection, the same function :meth:`fit` applies to the catalog; :meth:`state` and
    :meth:`from_state` carry them in the artifact.
    """

    name = "content"

    def __init__(self, modalities: Sequence[str] | None = None, dim: int | None = None) -> None:
        if dim is not None and dim < 1:
            raise ValueError(f"content dim must be positive, got {dim}")
        self.modalities = None if modalities is None else list(modalities)
        self.dim = dim
        self.mean: dict[str, Tensor] = {}
        self.scale: dict[str, Tensor] = {}
        self.projection: Tensor | None = None  # (sum of widths, dim)
        self._items: Tensor | None = None

    def fit(self, context: FitContext) -> ContentScorer:
        catalog = context.catalog
        names = self.modalities or list(catalog.features)
        self.modalities = names
        for modality in names:
            rows = catalog.features[modality][catalog.present[modality]]
            width = catalog.features[modality].shape[1]
            self.mean[modality] = rows.mean(dim=0) if rows.shape[0] > 1 else torch.zeros(width)
            self.scale[modality] = rows.std(dim=0) + 1e-4 if rows.shape[0] > 1 else torch.ones(width)
        self.projection = None
        items = self._raw(catalog.features, catalog.present)
        if self.dim is not None and self.dim < items.shape[1]:
            self.projection = principal_directions(items, self.dim)
            items = items @ self.projection
        self._items = items
        return self

    def _raw(self, features: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """(N, sum of widths) standardised, per-modality normalised, concatenated vectors."""
        names = self.modalities or []
        n = int(present[names[0]].shape[0]) if names else 0
        widths = [self.mean[m].shape[0] for m in names]
        # One buffer, each modality standardised and normalised in place in its slice: the
        # catalog is copied once, whatever its size.
        items = torch.empty(n, sum(widths))
        n_present = torch.zeros(n, 1)
        start = 0
        for modality, width in zip(names, widths, strict=True):
            block = items[:, start : start + width]
            mask = present[modality].to(torch.bool)
            block.copy_(features[modality]).sub_(self.mean[modality]).div_(self.scale[modality])
            block.div_(block.norm(dim=1, keepdim=True).clamp_min(1e-12)).mul_(mask.unsqueeze(1))
            n_present += mask.unsqueeze(1)
            start += width
        return items.div_(n_present.clamp(min=1).sqrt())

    def encode(self, features: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """(M, width) vectors of M items known by their raw ``features`` and ``present`` masks
        (modality -> (M, D) / (M,)), with the statistics and projection :meth:`fit` found."""
        if not self.mean:
            raise RuntimeError("ContentScorer: call fit() first")
        missing = [m for m in self.modalities or [] if m not in features or m not in present]
        if missing:
            raise ValueError(f"content vectors need the {missing} features too")
        items = self._raw(features, present)
        return items if self.projection is None else items @ self.projection

    def vectors(self) -> ContentVectors:
        """The artifact's record of this scorer (:meth:`from_vectors` rebuilds it)."""
        return ContentVectors(self.item_vectors(), dict(self.mean), dict(self.scale), self.projection)

    @classmethod
    def from_vectors(cls, vectors: ContentVectors) -> ContentScorer:
        """The scorer an artifact's :class:`~raymm.models.artifact.ContentVectors` describe."""
        scorer = cls(list(vectors.mean))
        scorer.mean, scorer.scale, scorer.projection = (
            dict(vectors.mean),
            dict(vectors.scale),
            vectors.projection,
        )
        scorer.dim = None if vectors.projection is None else int(vectors.projection.shape[1])
        scorer._items = vectors.items
        return scorer

    def with_items(self, rows: Tensor, vectors: Tensor, n_items: int) -> ContentScorer:
        """A copy over ``n_items`` rows whose ``rows`` hold ``vectors`` (from :meth:`encode`);
        rows past this catalog that ``rows`` does not name are zero. This scorer is unchanged."""
        items = self.item_vectors()
        grown = torch.cat([items, items.new_zeros((n_items - items.shape[0], items.shape[1]))])
        grown[rows] = vectors.to(grown.dtype)
        copy = ContentScorer(self.modalities, self.dim)
        copy.mean, copy.scale, copy.projection, copy._items = self.mean, self.scale, self.projection, grown
        return copy

    @property
    def width(self) -> int:
        return int(self.item_vectors().shape[1])

    def item_vectors(self) -> Tensor:
        if self._items is None:
            raise RuntimeError("ContentScorer: call fit() first")
        return self._items

    def user_vectors(self, history: np.ndarray) -> Tensor:
        items = self.item_vectors()
        rows = torch.as_tensor(history)
        valid = (rows >= 0).unsqueeze(-1)
        total = (items[rows.clamp(min=0)] * valid).sum(dim=1)
        return total / valid.sum(dim=1).clamp(min=1)


def principal_directions(rows: Tensor, dim: int, chunk: int = 8192) -> Tensor:
    """(W, dim) float32 the top ``dim`` principal directions of ``rows`` (N, W): eigenvectors of
    their covariance, accumulated in float64 ``chunk`` rows at a time (memory W^2, not N x W in
    float64) and decomposed exactly, so the same rows always give the same directions."""
    mean = rows.double().mean(dim=0)
    covariance = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64)
    for start in range(0, rows.shape[0], chunk):
        block = rows[start : start + chunk].double() - mean
        covariance += block.T @ block
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    return vectors[:, -dim:].flip(dims=(1,)).float().contiguous()


def history_weight(history: np.ndarray, shrinkage: float) -> Tensor:
    """(U,) weight a(h) = h / (h + shrinkage) of the personal score, h the real history entries (a(0) = 0)."""
    length = torch.as_tensor((np.asarray(history) >= 0).sum(axis=1), dtype=torch.float32)
    return torch.where(length > 0, length / (length + shrinkage), torch.zeros_like(length))


class FallbackScorer(DotProductScorer):
    """``primary`` blended with ``popularity`` by history length (see the module docstring).

    ``popularity_weight`` (g >= 0) keeps popularity in every answer: score = a(h) * (primary +
    g * popularity) + (1 - a(h)) * popularity, so a long history still leans on what is popular
    (items are picked by taste *and* popularity: the synthetic generator's logit adds
    log-popularity for everyone, and MovieLens users follow the fortnight's hits).
    """

    def __init__(
        self,
        primary: DotProductScorer,
        popularity: PopularityScorer,
        shrinkage: float,
        popularity_weight: float = 0.0,
    ) -> None:
        if shrinkage < 0:
            raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
        if popularity_weight < 0:
            raise ValueError(f"popularity_weight must be >= 0, got {popularity_weight}")
        self.primary, self.popularity, self.shrinkage = primary, popularity, shrinkage
        self.popularity_weight = popularity_weight
        self.name = f"{primary.name} + popularity fallback"
        self._items: Tensor | None = None

    def fit(self, context: FitContext) -> FallbackScorer:
        self.primary.fit(context)
        self.popularity.fit(context)
        self._items = None
        return self

    def item_vectors(self) -> Tensor:
        # Built once: every request and every evaluation chunk ranks against the same (N, E + 1).
        if self._items is None:
            self._items = torch.cat([self.primary.item_vectors(), self.popularity.item_vectors()], dim=1)
        return self._items

    def user_vectors(self, history: np.ndarray) -> Tensor:
        weight = history_weight(history, self.shrinkage).unsqueeze(1)
        return torch.cat(
            [weight * self.primary.user_vectors(history), 1.0 - weight + self.popularity_weight * weight],
            dim=1,
        )


class RetrieveThenRank(Scorer):
    """The top ``top_n`` of ``retriever`` for each user, re-ordered by ``reranker``'s logit.

    A request for more than ``top_n`` items gets the top ``max_top_n`` re-ordered (default:
    ``top_n``; serving passes the ``rank.retriever_top_n`` the ranker was trained on, so a
    validation-chosen smaller ``top_n`` speeds the usual request without refusing a larger one).
    The ranker reads the two-tower user vector (``user_model``'s), so a user's candidates and
    their re-ordering come from the same state.
    """

    def __init__(
        self,
        retriever: DotProductScorer,
        user_model: TwoTowerScorer,
        reranker: Reranker,
        top_n: int,
        max_top_n: int | None = None,
    ) -> None:
        max_top_n = top_n if max_top_n is None else max_top_n
        if not 1 <= top_n <= max_top_n:
            raise ValueError(f"need 1 <= top_n <= max_top_n, got top_n={top_n}, max_top_n={max_top_n}")
        self.retriever, self.user_model, self.reranker = retriever, user_model, reranker
        self.top_n, self.max_top_n = top_n, max_top_n
        self.name = f"{retriever.name} -> ranker"

    def recommend(
        self,
        history: np.ndarray,
        k: int,
        *,
        exclude: ItemSets | None = None,
        candidates: np.ndarray | None = None,
        recency: np.ndarray | None = None,
        user_ids: np.ndarray | None = None,
    ) -> TopK:
        if k > self.max_top_n:
            raise ValueError(
                f"k={k} exceeds the retriever's top_n={self.max_top_n}: the ranker sees only those"
            )
        top_n = self.top_n if k <= self.top_n else self.max_top_n
        raw_recency = np.full(len(history), np.nan, np.float32) if recency is None else recency
        parts = []
        for start in range(0, len(history), USER_CHUNK):
            rows = slice(start, start + USER_CHUNK)
            chunk_exclude = None if exclude is None else exclude.take(np.arange(len(history))[rows])
            retrieved = self.retriever.recommend(
                history[rows], top_n, exclude=chunk_exclude, candidates=candidates
            )
            users = self.user_model.user_vectors(history[rows])
            parts.append(self.reranker.rerank(retrieved, users, torch.as_tensor(raw_recency[rows]), k))
        if not parts:
            return TopK(torch.zeros((0, k), dtype=torch.long), torch.zeros((0, k)))
        return TopK(torch.cat([p.rows for p in parts]), torch.cat([p.scores for p in parts]))


class PrecomputedScorer(Scorer):
    """Scores another system computed: ``scores`` (U', N) float32, row ``i`` the user ``user_ids[i]``.

    Ranking goes through the same :func:`top_k` (seen items excluded, candidates honoured) as
    every raymm scorer. A user without a row (the system never saw them) gets ``fallback``'s
    answer, as raymm's own users without history get popularity; without ``fallback`` such a user
    is an error. Needs ``user_ids`` in :meth:`recommend`.
    """

    def __init__(
        self, name: str, user_ids: Sequence[str], scores: np.ndarray, fallback: Scorer | None = None
    ) -> None:
        if scores.ndim != 2 or scores.shape[0] != len(user_ids):
            raise ValueError(f"scores must be ({len(user_ids)}, N), got shape {scores.shape}")
        self.name = name
        self.scores = torch.as_tensor(np.ascontiguousarray(scores, dtype=np.float32))
        self.row = {str(user): i for i, user in enumerate(user_ids)}
        self.fallback = fallback

    def recommend(
        self,
        history: np.ndarray,
        k: int,
        *,
        exclude: ItemSets | None = None,
        candidates: np.ndarray | None = None,
        recency: np.ndarray | None = None,
        user_ids: np.ndarray | None = None,
    ) -> TopK:
        if user_ids is None:
            raise ValueError(f"{self.name}: precomputed scores need the users' ids")
        rows = np.array([self.row.get(str(user), -1) for user in user_ids], dtype=np.int64)
        unknown = np.flatnonzero(rows < 0)
        if unknown.size and self.fallback is None:
            raise ValueError(f"{self.name} has no scores for user {user_ids[unknown[0]]!r}")
        known = np.flatnonzero(rows >= 0)
        top = top_k_of_scores(
            self.scores[torch.from_numpy(rows[known])],
            k,
            exclude=None if exclude is None else exclude.take(known),
            candidates=candidates,
        )
        if unknown.size == 0:
            return top
        assert self.fallback is not None
        other = self.fallback.recommend(
            history[unknown],
            k,
            exclude=None if exclude is None else exclude.take(unknown),
            candidates=candidates,
            recency=None if recency is None else recency[unknown],
            user_ids=user_ids[unknown],
        )
        width = max(top.rows.shape[1], other.rows.shape[1])
        out_rows = torch.full((len(rows), width), -1, dtype=torch.long)
        out_scores = torch.full((len(rows), width), float("-inf"))
        for part, where in ((top, known), (other, unknown)):
            index = torch.from_numpy(where)
            out_rows[index, : part.rows.shape[1]] = part.rows
            out_scores[index, : part.scores.shape[1]] = part.scores
        return TopK(out_rows, out_scores)
