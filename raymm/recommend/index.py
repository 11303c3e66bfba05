"""Item indexes for serving-scale retrieval: the best k catalog rows per query vector.

Serving asks for a user's top k out of the whole catalog on every request, and adds cold items
while it runs. Exact search reads every item vector per query, so over a large catalog it is
bound by memory bandwidth; an inverted-file (IVF) index reads only the few clusters nearest the
query. Both sit behind one :class:`ItemIndex` interface, keyed by name in :data:`INDEXES`, so
serving and the ``bench/retrieval.py`` benchmark swap them by a config string:

* ``"exact"``: :class:`ExactIndex`, every item scored by :func:`raymm.recommend.topk.top_k`. The
  reference for recall and the right choice for small catalogs; it can also replace an item's
  vector in place (an updated item).
* ``"faiss"``: :class:`FaissIndex`, faiss IVF-Flat on inner product, approximate (or IVF-SQ8:
  the same lists holding 8-bit codes, a quarter of the memory).

Plain NumPy/PyTorch/faiss; no Ray, so the index is tested and benchmarked without a cluster.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from raymm.recommend.itemsets import ItemSets
from raymm.recommend.topk import TopK, top_k

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | Tensor


def _as_matrix(values: ArrayLike, dim: int | None, name: str) -> np.ndarray:
    """``values`` as a C-contiguous float32 (rows, dim) array; ValueError naming ``name`` if it is
    not 2-D, has another width than ``dim`` (None: any) or holds NaN or infinity."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    matrix = np.ascontiguousarray(values, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dim) array, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"{name} must have width {dim} (the index's dim), got shape {matrix.shape}")
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} holds NaN or infinite values in rows {np.flatnonzero(bad)[:10].tolist()}")
    return matrix


class ItemIndex(ABC):
    """Catalog item vectors, searchable by inner product; rows 0..n_items-1 in the order added.

    Subclasses implement :meth:`_add` and :meth:`_search`; this class validates what callers pass,
    so every kind rejects the same bad input with the same message.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self._dim = dim

    @property
    def dim(self) -> int:
        """Width E of the item and query vectors."""
        return self._dim

    @property
    @abstractmethod
    def n_items(self) -> int:
        """Number of items added so far; their rows are 0..n_items-1."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Approximate bytes held by the index's vectors, codes and ids (not Python overhead)."""

    def add(self, vectors: ArrayLike) -> np.ndarray:
        """Append (M, E) item vectors; returns their (M,) int64 rows, ``n_items`` .. ``n_items + M - 1``.

        Incremental: serving calls it with one or a few cold items at a time. ValueError for
        another width than ``dim`` or NaN/infinite values (nothing is added then).
        """
        matrix = _as_matrix(vectors, self._dim, "vectors")
        start = self.n_items
        self._add(matrix)
        return np.arange(start, start + matrix.shape[0], dtype=np.int64)

    def search(self, queries: ArrayLike, k: int, exclude: ItemSets | None = None) -> TopK:
        """The best k rows per query by inner product, best first.

        ``queries`` (Q, E); ``exclude`` one set of catalog rows per query (Q sets, e.g. what each
        user has seen) that are never returned. Returns :class:`TopK` with ``rows`` (Q, k) int64
        and ``scores`` (Q, k) float32; slots past the items found hold -1 and -inf. ValueError for
        another width than ``dim``, NaN/infinite queries, k < 1, or an ``exclude`` with another
        number of sets than queries or rows outside the catalog.
        """
        matrix = _as_matrix(queries, self._dim, "queries")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if exclude is not None:
            if exclude.n_users != matrix.shape[0]:
                raise ValueError(f"exclude holds {exclude.n_users} sets for {matrix.shape[0]} queries")
            if exclude.indices.size and exclude.indices.max() >= self.n_items:
                raise ValueError(
                    f"exclude holds item row {exclude.indices.max()}, the index has {self.n_items} items"
                )
        return self._search(matrix, k, exclude)

    @abstractmethod
    def _add(self, vectors: np.ndarray) -> None:
        """Append validated (M, E) float32 vectors."""

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int, exclude: ItemSets | None) -> TopK:
        """Search validated (Q, E) float32 queries; ``exclude`` has Q sets of rows < n_items."""


class ExactIndex(ItemIndex):
    """Exact inner-product search: every item scored per query by :func:`~raymm.recommend.topk.top_k`.

    Exists as the reference an approximate index is measured against, and as the index for
    catalogs small enough that reading every vector per request is cheap. The vectors live in a
    float32 buffer whose capacity doubles when full, so adding one item at a time costs amortised
    O(E) each rather than a copy of the catalog.

    Parameters: ``vectors`` (N, E) initial items (N may be 0); ``capacity`` initial buffer rows
    (default: N, at least 1).
    """

    def __init__(self, vectors: ArrayLike, *, capacity: int | None = None) -> None:
        matrix = _as_matrix(vectors, None, "vectors")
        super().__init__(matrix.shape[1])
        self._buffer = np.empty((max(capacity or 0, matrix.shape[0], 1), self._dim), dtype=np.float32)
        self._count = 0
        self._add(matrix)

    @property
    def n_items(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return int(self._buffer.nbytes)

    @property
    def vectors(self) -> np.ndarray:
        """(n_items, E) float32 view of the stored vectors (do not write to it)."""
        return self._buffer[: self._count]

    def replace(self, rows: ArrayLike, vectors: ArrayLike) -> None:
        """Overwrite the vectors of existing ``rows`` (M,) with (M, E) ``vectors``: an updated item
        keeps its row. (Exact only: an IVF index would have to move the item between lists.)

        ValueError for rows outside 0..n_items-1, a count other than M, another width than ``dim``
        or NaN/infinite values (nothing changes then).
        """
        matrix = _as_matrix(vectors, self._dim, "vectors")
        index = np.asarray(rows.detach().cpu().numpy() if isinstance(rows, Tensor) else rows, dtype=np.int64)
        if index.shape != (matrix.shape[0],):
            raise ValueError(
                f"rows must be ({matrix.shape[0]},) for {matrix.shape[0]} vectors, got {index.shape}"
            )
        if index.size and (index.min() < 0 or index.max() >= self._count):
            raise ValueError(f"rows must lie in [0, {self._count}), got min {index.min()} max {index.max()}")
        self._buffer[index] = matrix

    def _add(self, vectors: np.ndarray) -> None:
        needed = self._count + vectors.shape[0]
        if needed > self._buffer.shape[0]:
            grown = np.empty((max(needed, 2 * self._buffer.shape[0]), self._dim), dtype=np.float32)
            grown[: self._count] = self._buffer[: self._count]
            self._buffer = grown
        self._buffer[self._count : needed] = vectors
        self._count = needed

    def _search(self, queries: np.ndarray, k: int, exclude: ItemSets | None) -> TopK:
        return top_k(torch.from_numpy(queries), torch.from_numpy(self.vectors), k, exclude=exclude)


# faiss warns below 39 training points per list: k-means then places centroids on too few points.
MIN_POINTS_PER_LIST = 39
# bench/retrieval.py's sweep on clustered 1M x 64 items (bench/results/retrieval.json): this many
# probes reached design.md's recall@100 target at every nlist it measured, at a small share of the
# latency target.
DEFAULT_NPROBE = 32


def default_nlist(n_vectors: int) -> int:
    """Lists for an IVF over ``n_vectors`` items: the power of two nearest 4 sqrt(N), the low end of
    the 4-16 sqrt(N) range of the faiss guidelines, capped so each list trains on >= 39 points.
    0 when fewer than 2 lists could be trained (then :class:`FaissIndex` searches exactly)."""
    if n_vectors < 2 * MIN_POINTS_PER_LIST:
        return 0
    nearest = 2 ** round(math.log2(4 * math.sqrt(n_vectors)))
    return int(min(nearest, n_vectors // MIN_POINTS_PER_LIST))


class FaissIndex(ItemIndex):
    """Approximate inner-product search with a faiss inverted-file index (IVF-Flat or IVF-SQ8).

    Why: exact search over a 1M-item catalog reads every vector per query; IVF partitions the
    items by k-means into ``nlist`` lists and scores only the ``nprobe`` lists whose centroids best
    match the query, so a query reads about ``nprobe / nlist`` of the catalog (Jégou, Douze and
    Schmid, "Product quantization for nearest neighbor search", TPAMI 2011, for the inverted
    file; Johnson, Douze and Jégou, "Billion-scale similarity search with GPUs", IEEE Trans. Big
    Data 2019, for faiss). Vectors are stored uncompressed (Flat), so the only error is a true
    neighbour in a list that was not probed; ``bench/retrieval.py`` measures that recall and the
    latency for a sweep of nprobe, which is where the defaults come from.

    Training: k-means on the initial ``vectors`` (a random sample of ``train_size`` of them when
    there are more). Items added later go into the list of their nearest centroid, so the lists
    stay as trained: fine for cold items trickling in, but after the catalog's distribution has
    moved, build a new index. If the initial vectors are too few to train ``nlist`` lists (fewer
    than 39 per list, faiss's own threshold), the index is an exact faiss ``IndexFlatIP`` instead,
    and :attr:`fallback_reason` says why (None for a real IVF); it stays exact as items are added.

    Exclusion: faiss searches all queries with one k, so each batch fetches
    ``k + max(excluded per query)`` candidates and drops excluded rows after, vectorised; a query
    with a long exclude list makes its whole batch fetch deeper.

    Parameters:

    * ``vectors`` (N, E) float32 initial items, also the training set.
    * ``nlist``: number of lists; default :func:`default_nlist` (about 4 sqrt(N)).
    * ``nprobe``: lists scored per query, default :data:`DEFAULT_NPROBE`; settable later via
      :attr:`nprobe`. Higher is slower and more accurate.
    * ``train_size``: most vectors k-means trains on, default 64 per list (faiss samples 256 per
      list anyway; 64 keeps training short with little loss of list quality).
    * ``threads``: OpenMP threads faiss uses; None leaves faiss's setting. faiss's thread count is
      global to the process, so it is set before each train, add and search of this index.
    * ``seed``: for the training sample and k-means.
    * ``encoding``: how the lists store the vectors. ``flat`` (default): float32, 4 E bytes per
      item. ``sq8``: faiss's 8-bit scalar quantizer (each dimension's trained range in 256
      steps), E bytes per item; scores are approximate too, so recall at the same nprobe is a
      little lower (bench/results/retrieval.10m.json measures both).

    Raises ValueError for non-positive ``nlist``, ``nprobe``, ``train_size`` or ``threads``, or an
    unknown ``encoding``.
    """

    def __init__(
        self,
        vectors: ArrayLike,
        *,
        nlist: int | None = None,
        nprobe: int = DEFAULT_NPROBE,
        train_size: int | None = None,
        threads: int | None = None,
        seed: int = 0,
        encoding: Literal["flat", "sq8"] = "flat",
    ) -> None:
        import faiss  # imported here so the exact index and the rest of raymm work without faiss

        matrix = _as_matrix(vectors, None, "vectors")
        super().__init__(matrix.shape[1])
        for name, value in (("nlist", nlist), ("train_size", train_size), ("threads", threads)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if encoding not in ("flat", "sq8"):
            raise ValueError(f"encoding must be 'flat' or 'sq8', got {encoding!r}")
        self._faiss = faiss
        self._threads = threads
        self._apply_threads()
        n_vectors = matrix.shape[0]
        lists = default_nlist(n_vectors) if nlist is None else nlist
        self.fallback_reason: str | None = None
        if lists < 1 or n_vectors < MIN_POINTS_PER_LIST * lists:
            self.fallback_reason = (
                f"{n_vectors} vectors cannot train an IVF of {max(lists, 2)} lists (needs >= "
                f"{MIN_POINTS_PER_LIST} per list); searching exactly with IndexFlatIP"
            )
            logger.warning("FaissIndex: %s", self.fallback_reason)
            self._index: Any = faiss.IndexFlatIP(self._dim)
            self.nlist = 0
        else:
            quantizer = faiss.IndexFlatIP(self._dim)
            if encoding == "flat":
                self._index = faiss.IndexIVFFlat(quantizer, self._dim, lists, faiss.METRIC_INNER_PRODUCT)
            else:
                self._index = faiss.IndexIVFScalarQuantizer(
                    quantizer, self._dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
                )
            self._index.cp.seed = seed
            self._quantizer = quantizer  # the IVF index does not own it from Python; keep it alive
            self.nlist = lists
            sample_size = min(n_vectors, train_size or 64 * lists)
            rng = np.random.default_rng(seed)
            sample = matrix if sample_size == n_vectors else matrix[rng.choice(n_vectors, sample_size, False)]
            self._index.train(sample)
        self.nprobe = nprobe
        self._index.add(matrix)

    @property
    def nprobe(self) -> int:
        """Lists scored per query (1..nlist; 0 for the exact fallback, which has no lists)."""
        return int(self._index.nprobe) if self.nlist else 0

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"nprobe must be positive, got {value}")
        if self.nlist:
            self._index.nprobe = min(value, self.nlist)

    @property
    def n_items(self) -> int:
        return int(self._index.ntotal)

    @property
    def nbytes(self) -> int:
        codes = self.n_items * self._index.code_size
        if not self.nlist:
            return int(codes)
        return int(codes + self.n_items * np.dtype(np.int64).itemsize + self.nlist * self._dim * 4)

    def updated(self, rows: ArrayLike, vectors: ArrayLike) -> FaissIndex:
        """A copy of this index in which ``rows`` (M,) hold ``vectors`` (M, E): rows below
        ``n_items`` are replaced (an updated item), the others must continue the rows from
        ``n_items`` on (new items). The trained lists are kept (no k-means): an item goes into the
        list of its nearest centroid. This index is not changed, so searches running on it stay
        consistent while the copy is made. ValueError for rows that leave a gap or repeat, another
        width, or NaN/infinite values.
        """
        matrix = _as_matrix(vectors, self._dim, "vectors")
        index = np.asarray(rows.detach().cpu().numpy() if isinstance(rows, Tensor) else rows, dtype=np.int64)
        if index.shape != (matrix.shape[0],):
            raise ValueError(
                f"rows must be ({matrix.shape[0]},) for {matrix.shape[0]} vectors, got {index.shape}"
            )
        old, new = index[index < self.n_items], np.sort(index[index >= self.n_items])
        if (index.size and index.min() < 0) or np.unique(index).size != index.size:
            raise ValueError("rows must be distinct and non-negative")
        if not np.array_equal(new, np.arange(self.n_items, self.n_items + new.size)):
            raise ValueError(
                f"new rows must continue from {self.n_items} without gaps, got {new[:5].tolist()}..."
            )
        copy = object.__new__(FaissIndex)
        copy.__dict__.update(self.__dict__)
        self._apply_threads()
        if not self.nlist:  # the exact fallback numbers rows by position: rebuild it
            stored = self._index.reconstruct_n(0, self.n_items) if self.n_items else np.zeros((0, self._dim))
            grown = np.concatenate([stored, np.zeros((new.size, self._dim))]).astype(np.float32)
            grown[index] = matrix
            copy._index = self._faiss.IndexFlatIP(self._dim)
            copy._index.add(grown)
            return copy
        copy._index = self._faiss.clone_index(self._index)
        if old.size:
            copy._index.remove_ids(old)
        copy._index.add_with_ids(matrix, index)
        return copy

    def _apply_threads(self) -> None:
        if self._threads is not None:
            self._faiss.omp_set_num_threads(self._threads)

    def _add(self, vectors: np.ndarray) -> None:
        self._apply_threads()
        self._index.add(vectors)

    def _search(self, queries: np.ndarray, k: int, exclude: ItemSets | None) -> TopK:
        self._apply_threads()
        depth = k + (int(exclude.sizes.max()) if exclude is not None and exclude.n_users else 0)
        scores, rows = self._index.search(queries, depth)
        dropped = rows < 0
        if exclude is not None and exclude.indices.size:
            # One int64 key per (query, row) pair; rows are shifted by one so faiss's -1 stays >= 0.
            width = self.n_items + 1
            owners, excluded = exclude.gather(np.arange(queries.shape[0], dtype=np.int64))
            found_keys = np.arange(queries.shape[0], dtype=np.int64)[:, None] * width + rows + 1
            dropped |= np.isin(found_keys, owners * width + excluded + 1)
        # A stable sort on the drop flag moves the kept rows to the front, keeping their order.
        order = np.argsort(dropped, axis=1, kind="stable")[:, :k]
        rows, scores, dropped = (np.take_along_axis(a, order, axis=1) for a in (rows, scores, dropped))
        rows[dropped], scores[dropped] = -1, -np.inf
        return TopK(torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(scores.astype(np.float32)))


IndexKind = Literal["exact", "faiss"]

#: From this many items ``auto`` picks faiss. bench/retrieval.py at 5k, 10k, 20k, 50k and 100k items
#: (bench/results/retrieval.{5k,10k,20k,50k,100k}.json, rows_by_items): faiss's single-query CPU p99
#: at its chosen nprobe was below exact's at every size, from 5k on (0.35 against 0.77 ms; exact's
#: torch top_k costs ~0.3 ms per call however small the catalog), so the crossover lies at or below
#: 5k, the smallest size measured. Below it exact costs under a millisecond and keeps recall 1.
FAISS_MIN_ITEMS = 5_000


@dataclass(frozen=True)
class IndexChoice:
    """Which index a recommender ranks its catalog with (serving's ``serve.index`` settings).

    ``kind``: ``exact`` (:func:`top_k` over every item), ``faiss`` (:class:`FaissIndex`), or
    ``auto``: faiss from ``faiss_min_items`` items on, exact below. ``nprobe``: faiss's lists
    scored per query.
    """

    kind: Literal["auto", "exact", "faiss"] = "exact"
    faiss_min_items: int = FAISS_MIN_ITEMS
    nprobe: int = DEFAULT_NPROBE

    def resolve(self, n_items: int) -> IndexKind:
        """The kind to use for a catalog of ``n_items``."""
        if self.kind == "auto":
            return "faiss" if n_items >= self.faiss_min_items else "exact"
        return self.kind


INDEXES: dict[str, Callable[..., ItemIndex]] = {"exact": ExactIndex, "faiss": FaissIndex}
"""Index kinds by the name serving's config and the benchmark use."""


def build_index(kind: IndexKind, vectors: ArrayLike, **options: Any) -> ItemIndex:
    """An index of ``kind`` over (N, E) ``vectors``; ``options`` go to its constructor (see
    :class:`ExactIndex`, :class:`FaissIndex`). ValueError for an unknown kind."""
    if kind not in INDEXES:
        raise ValueError(f"unknown index kind {kind!r}, expected one of {sorted(INDEXES)}")
    return INDEXES[kind](vectors, **options)
