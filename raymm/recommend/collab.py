"""Item-item collaborative filtering scored from the live history: EASE in a dot-product form.

EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) learns an item-item
weight matrix ``B`` in closed form from the Gram matrix ``G = X^T X`` of the binary user x item
matrix ``X``: ``P = (G + l2 I)^-1``, ``B = I - P diag(1/diag(P))``; a user with history ``x``
scores ``x B``. Dense, ``B`` is items^2 (40 GB at 100k items), so raymm keeps it factored:

with the eigen-decomposition ``G ~ V diag(lam) V^T`` (exact when every eigenvector is kept, the
top ``rank`` ones otherwise, the rest of ``G`` taken as 0) the score of an item ``j`` the user has
not seen (seen items are never recommended) is exactly

    (x B)_j = (x V) . c_j,   c_j = V_j diag(lam / (lam + l2)) / (1 - sum_k V_jk^2 lam_k / (lam_k + l2))

so a user is the sum of their history items' **query vectors** ``V_i`` and an item is its
**item vector** ``c_j``: a :class:`~raymm.recommend.scorers.DotProductScorer` like every other,
ranked by the same top-k or faiss index, its user side folded from the same live history window
as the two-tower's (one event changes the next answer; nothing is trained per user), and ``l2``
changes ``c`` without a new decomposition (validation tries several). At full rank it is EASE.

**Recency.** A user's query may weigh their history by recency: the item ``a`` positions before
the newest counts ``decay ** a`` (``decay`` 1 is EASE's binary history). EASE reads a history as a
set; raymm predicts a user's *next* items, and on MovieLens-100k the items a user rated last say
more of what they rate next than those rated 300 ratings ago. ``decay`` is chosen on validation
(:data:`DECAY_GRID`, 1 among the choices) and changes only the user side: the item vectors, the
index and the live state stay as they are, and serving folds the same window the same way.

Items with no interactions (new items, cold-start items) have zero rows in ``G``; their query and
item vectors come from content instead: a ridge map from the item's two-tower vector (what serving
computes for a live item) to its two collaborative vectors, fitted on the warm items
(:meth:`CollaborativeScorer.fill_from_content`).
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor

from raymm.recommend.history import positive_events
from raymm.recommend.scorers import DotProductScorer, FitContext

#: Catalogs up to this many items are decomposed densely (every eigenvector: exact EASE); larger
#: ones by a truncated SVD of the sparse ``X`` (ARPACK, ``rank`` vectors).
DENSE_MAX_ITEMS = 4096
#: l2 values validation tries, as multiples of the mean diagonal of G (an item's mean number of
#: users): relative, so one grid fits a 1k-user and a 1M-user log. EASE's paper regularised at
#: about the mean diagonal on its densest dataset and less on sparser ones; what the benchmarks
#: choose blended with the two-tower is in bench/results/peers.*.json (each model's ``blend``).
#: Factors of 4: against the factor-2 grid (0.1 ... 256, 11 values) validation chose the same blend
#: on all 3 synthetic seeds and the same validation NDCG on MovieLens-100k, in 63% of the trials.
L2_GRID: tuple[float, ...] = (0.25, 1.0, 4.0, 16.0, 64.0, 256.0)
#: Recency decays of the user's query validation tries (:meth:`CollaborativeScorer.with_decay`);
#: 1 is none. On MovieLens-100k's plain validation (the item-item part alone, the served 100-item
#: window, rank 128; a screen on 2026-12-07) NDCG@20 was 0.2990 undecayed, 0.3011 at 0.99, 0.3023
#: at 0.98, 0.3035 at 0.95, and flat below (0.3026-0.3035 from 0.9 to 0.5), so the grid stops at
#: 0.8; the synthetic benchmark's steady tastes choose 1 (bench/results/peers.synthetic.json).
DECAY_GRID: tuple[float, ...] = (1.0, 0.99, 0.97, 0.95, 0.9, 0.8)
#: Ridge strength of the content -> collaborative map, relative to the mean squared content norm.
CONTENT_MAP_L2 = 0.1


@dataclass
class Factors:
    """The decomposition of G: ``vectors`` (N, d) float64 orthonormal columns, ``values`` (d,) > 0."""

    vectors: np.ndarray
    values: np.ndarray
    mean_diagonal: float

    @property
    def rank(self) -> int:
        return int(self.values.size)


def interaction_matrix(context: FitContext) -> tuple[np.ndarray, np.ndarray, int]:
    """The binary user x item matrix of ``context``'s positives as (user codes, catalog rows,
    n_users), each (user, item) pair once; items the catalog lacks are left out."""
    positives = positive_events(context.interactions, context.events)
    rows = context.catalog.positions(positives.column("item_id"))
    codes = np.asarray(pc.dictionary_encode(positives.column("user_id")).combine_chunks().indices, np.int64)
    keep = rows >= 0
    n_items = context.catalog.n_items
    pairs = np.unique(codes[keep] * n_items + rows[keep])
    n_users = int(codes.max()) + 1 if codes.size else 0
    return pairs // n_items, pairs % n_items, n_users


def factorize(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, rank: int, seed: int
) -> Factors:
    """The top ``rank`` eigenpairs of ``G = X^T X`` (all of them up to :data:`DENSE_MAX_ITEMS` items
    when ``rank`` covers the catalog); eigenvalues below 1e-9 of the largest are dropped."""
    if users.size == 0:
        return Factors(np.zeros((n_items, 0)), np.zeros(0), 1.0)
    mean_diagonal = float(np.bincount(items, minlength=n_items).mean())
    x = scipy.sparse.csr_matrix((np.ones(users.size), (users, items)), shape=(n_users, n_items))
    if n_items <= DENSE_MAX_ITEMS:
        values, vectors = np.linalg.eigh((x.T @ x).toarray())
        order = np.argsort(values)[::-1][:rank]
        values, vectors = values[order], vectors[:, order]
    else:
        k = min(rank, n_users - 1, n_items - 1)
        _, singular, right = scipy.sparse.linalg.svds(x, k=k, random_state=seed)
        order = np.argsort(singular)[::-1]
        values, vectors = singular[order] ** 2, right[order].T
    keep = values > values.max(initial=0.0) * 1e-9
    return Factors(np.ascontiguousarray(vectors[:, keep]), values[keep], max(mean_diagonal, 1e-12))


#: Decompositions kept in this process, most recent last: the quickstart's and the benchmarks'
#: drivers fit the item-item part on the same split once per trained model and twice per evaluated
#: one (choices on the training split, test on train + validation), and it depends on the
#: interactions alone, not on the model. Two entries: a split's training and train + validation.
FACTORS_CACHE_SIZE = 2
_factors_cache: OrderedDict[tuple[Any, ...], Factors] = OrderedDict()


def cached_factorize(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, rank: int, seed: int
) -> Factors:
    """:func:`factorize`, the result kept for the next call with the same interactions and
    arguments (a digest of the pairs; the arrays are not kept). Factors are never changed in place."""
    digest = hashlib.blake2b(users.tobytes(), digest_size=16)
    digest.update(items.tobytes())
    key = (digest.hexdigest(), users.size, n_users, n_items, rank, seed)
    if key in _factors_cache:
        _factors_cache.move_to_end(key)
        return _factors_cache[key]
    factors = factorize(users, items, n_users, n_items, rank, seed)
    _factors_cache[key] = factors
    while len(_factors_cache) > FACTORS_CACHE_SIZE:
        _factors_cache.popitem(last=False)
    return factors


def ease_item_vectors(factors: Factors, l2: float) -> np.ndarray:
    """(N, d) item vectors ``c`` of the module docstring for absolute regularisation ``l2`` > 0."""
    if l2 <= 0:
        raise ValueError(f"l2 must be positive, got {l2}")
    shrink = factors.values / (factors.values + l2)
    leverage = (factors.vectors**2) @ shrink  # sum_k V_jk^2 lam_k / (lam_k + l2), in [0, 1)
    return factors.vectors * shrink / np.maximum(1.0 - leverage, 1e-6)[:, None]


class CollaborativeScorer(DotProductScorer):
    """EASE as a dot product (see the module docstring): fitted on a context's positives, or built
    from saved ``query_vectors`` and ``item_vectors`` (an artifact's, serving).

    ``l2`` is relative: the ridge strength is ``l2`` times G's mean diagonal. ``rank`` bounds the
    number of eigenvectors kept (the vector width). ``decay`` weighs the history by recency (see
    the module docstring; 1: every item alike).
    """

    name = "item-item (EASE)"

    def __init__(
        self,
        l2: float = 1.0,
        rank: int = 512,
        *,
        query_vectors: Tensor | None = None,
        item_vectors: Tensor | None = None,
        seed: int = 0,
        decay: float = 1.0,
    ) -> None:
        check_decay(decay)
        if l2 <= 0:
            raise ValueError(f"collab l2 must be positive, got {l2}")
        if rank < 1:
            raise ValueError(f"collab rank must be positive, got {rank}")
        if (query_vectors is None) != (item_vectors is None):
            raise ValueError("CollaborativeScorer needs both query_vectors and item_vectors, or neither")
        if (
            query_vectors is not None
            and item_vectors is not None
            and query_vectors.shape != item_vectors.shape
        ):
            raise ValueError(
                f"query vectors {tuple(query_vectors.shape)} and item vectors "
                f"{tuple(item_vectors.shape)} differ in shape"
            )
        self.l2, self.rank, self.seed, self.decay = l2, rank, seed, decay
        self.factors: Factors | None = None
        self._query, self._items = query_vectors, item_vectors
        self.interacted: np.ndarray | None = None  # (N,) bool: rows with collaborative evidence
        self.content_l2 = CONTENT_MAP_L2
        self.content: Tensor | None = None  # what rows without interactions are predicted from
        self.map: Tensor | None = None  # (E + 1, 2d) content -> [query | item], see content_map

    def fit(self, context: FitContext) -> CollaborativeScorer:
        users, items, n_users = interaction_matrix(context)
        n_items = context.catalog.n_items
        self.factors = cached_factorize(users, items, n_users, n_items, self.rank, context.seed or self.seed)
        self.interacted = np.bincount(items, minlength=n_items) > 0
        return self.set_l2(self.l2)

    def set_l2(self, l2: float) -> CollaborativeScorer:
        """Recompute the item vectors for relative regularisation ``l2`` (no new decomposition)."""
        if self.factors is None:
            raise RuntimeError("CollaborativeScorer: call fit() before set_l2()")
        self.l2 = l2
        factors = self.factors
        self._query = torch.from_numpy(factors.vectors.astype(np.float32))
        self._items = torch.from_numpy(
            ease_item_vectors(factors, l2 * factors.mean_diagonal).astype(np.float32)
        )
        if self.content is not None:
            self._fill(self.content)
        return self

    def fill_from_content(self, content: Tensor, l2: float = CONTENT_MAP_L2) -> CollaborativeScorer:
        """Give the rows without interactions query and item vectors predicted from ``content``
        (N, E), e.g. the two-tower item vectors: a ridge map fitted on the rows with interactions.
        Returns self; :meth:`content_map` is the map, for items that arrive later."""
        if self.interacted is None:
            raise RuntimeError("CollaborativeScorer: call fit() before fill_from_content()")
        if content.shape[0] != len(self.interacted):
            raise ValueError(
                f"content must have one row per catalog item ({len(self.interacted)}), got {content.shape[0]}"
            )
        self.content, self.content_l2 = content, l2
        return self._fill(content)

    def _fill(self, content: Tensor) -> CollaborativeScorer:
        assert self.interacted is not None
        self.map = content_map(
            content, self.query_vectors(), self.item_vectors(), self.interacted, self.content_l2
        )
        cold = torch.from_numpy(~self.interacted)
        if bool(cold.any()):
            query, items = map_content(content[cold], self.map)
            self._query = self.query_vectors().clone()
            self._items = self.item_vectors().clone()
            self._query[cold], self._items[cold] = query, items
        return self

    @property
    def width(self) -> int:
        return int(self.query_vectors().shape[1])

    def query_vectors(self) -> Tensor:
        if self._query is None:
            raise RuntimeError("CollaborativeScorer: call fit() or pass vectors first")
        return self._query

    def item_vectors(self) -> Tensor:
        if self._items is None:
            raise RuntimeError("CollaborativeScorer: call fit() or pass vectors first")
        return self._items

    def with_decay(self, decay: float) -> CollaborativeScorer:
        """This part with its user side weighed by ``decay`` (a shallow copy: the vectors are
        shared, and a later :meth:`set_l2` on either leaves the other's as they were)."""
        check_decay(decay)
        twin = copy.copy(self)
        twin.decay = decay
        return twin

    def user_vectors(self, history: np.ndarray) -> Tensor:
        rows = torch.as_tensor(np.asarray(history))
        weights = recency_weights(rows >= 0, self.decay)
        return (self.query_vectors()[rows.clamp(min=0)] * weights.unsqueeze(-1)).sum(dim=1)


def check_decay(decay: float) -> None:
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"collab decay must be in (0, 1], got {decay}")


def recency_weights(valid: Tensor, decay: float) -> Tensor:
    """(U, L) float weights of history entries: ``decay ** a`` for an entry with ``a`` valid
    entries after it in its row (the newest 1, padding 0), whichever side the padding is on."""
    if decay == 1.0:
        return valid.float()
    newer = valid.flip(-1).long().cumsum(-1).flip(-1) - valid.long()
    return torch.where(valid, torch.pow(torch.tensor(decay, dtype=torch.float64), newer).float(), 0.0)


def content_map(
    content: Tensor, query: Tensor, items: Tensor, rows: np.ndarray, l2: float = CONTENT_MAP_L2
) -> Tensor:
    """(E + 1, 2d) ridge map from content vectors (plus a bias) to [query | item] vectors, fitted
    on ``rows`` (bool (N,)); zeros when no row qualifies."""
    x = content[torch.from_numpy(rows)].double()
    width = query.shape[1]
    if x.shape[0] == 0:
        return torch.zeros(content.shape[1] + 1, 2 * width)
    x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    y = torch.cat([query, items], dim=1)[torch.from_numpy(rows)].double()
    penalty = l2 * float((x[:, :-1] ** 2).sum(dim=1).mean()) * torch.eye(x.shape[1], dtype=x.dtype)
    penalty[-1, -1] = 0.0
    return torch.linalg.solve(x.T @ x + penalty, x.T @ y).float()


def map_content(content: Tensor, mapping: Tensor) -> tuple[Tensor, Tensor]:
    """(query, item) vectors of items known only by their ``content`` (M, E), by ``mapping``."""
    out = torch.cat([content.float(), torch.ones(content.shape[0], 1)], dim=1) @ mapping
    width = mapping.shape[1] // 2
    return out[:, :width], out[:, width:]


class PersonalScorer(DotProductScorer):
    """The personal part of raymm's answer: the two-tower score plus ``weight`` times the
    collaborative score plus ``content_weight`` times the content score, one dot product over
    concatenated vectors (two-tower, item-item, content; a part that is None is left out)."""

    def __init__(
        self,
        two_tower: DotProductScorer,
        collaborative: CollaborativeScorer | None,
        weight: float,
        content: DotProductScorer | None = None,
        content_weight: float = 0.0,
    ) -> None:
        if weight < 0 or content_weight < 0:
            raise ValueError(
                f"collab weight and content weight must be >= 0, got {weight} and {content_weight}"
            )
        self.two_tower, self.collaborative, self.weight = two_tower, collaborative, weight
        self.content, self.content_weight = content, content_weight
        names = [two_tower.name]
        names += ["item-item"] if collaborative is not None else []
        names += ["content"] if content is not None else []
        self.name = " + ".join(names)
        self._items: Tensor | None = None

    def parts(self) -> list[tuple[DotProductScorer, float]]:
        """(scorer, weight) of each part present, in the vectors' column order."""
        found: list[tuple[DotProductScorer, float]] = [(self.two_tower, 1.0)]
        if self.collaborative is not None:
            found.append((self.collaborative, self.weight))
        if self.content is not None:
            found.append((self.content, self.content_weight))
        return found

    def item_vectors(self) -> Tensor:
        if self._items is None:
            parts = [scorer.item_vectors() for scorer, _ in self.parts()]
            self._items = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return self._items

    def user_vectors(self, history: np.ndarray) -> Tensor:
        parts = self.parts()
        users = [parts[0][0].user_vectors(history)]
        users += [weight * scorer.user_vectors(history) for scorer, weight in parts[1:]]
        return torch.cat(users, dim=1) if len(users) > 1 else users[0]
