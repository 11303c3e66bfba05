"""Cross-media search: a text query ranks items by their image, audio, text or fused vectors.

:class:`SearchIndex` holds, per search modality, the vectors of the items that have it:

* ``text`` / ``image`` / ``audio``: each item's **aligned** vector of that modality (the item
  tower's projection into the shared space, L2-normalised; the artifact's ``aligned_<modality>``
  columns, or :class:`~raymm.recommend.content.EncodedItems` for live items). Only items that
  have the modality are in its space, so an item without text is never a text result, and an
  item without text is still found through its image or audio;
* ``fused``: each item's item-tower vector (the retrieval vector of the two-tower index).

A query (:meth:`raymm.recommend.content.ContentEncoder.encode_query`) is compared by cosine with
its aligned text vector in the first three spaces and with its text-only item-tower vector in
``fused``. Each space is an :class:`~raymm.recommend.index.ExactIndex` (search through the one
top-k, :func:`raymm.recommend.topk.top_k`); an updated item keeps its row and gets its new
vectors in place; a modality an update no longer has is blanked and excluded from results.
Exact search reads every vector of a space per query, fine for catalogs up to a few hundred
thousand items; an approximate index would need deletions, which IVF lists do not offer cheaply.

How well a text query finds images or sounds depends on how well training aligned the
modalities (``model.align``): with ``align.method: none`` the spaces are not aligned and only
``text`` and ``fused`` search mean anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raymm.models.artifact import Artifact
from raymm.recommend.content import EncodedItems, QueryVectors
from raymm.recommend.index import ExactIndex
from raymm.recommend.itemsets import ItemSets
from raymm.settings_base import MODALITIES

#: The space of item-tower vectors (every item has one).
FUSED = "fused"
#: Every search modality raymm knows; a model offers its own modalities plus ``fused``.
SEARCH_MODALITIES = (*MODALITIES, FUSED)


@dataclass
class SearchHit:
    """One search result: the item and its cosine similarity with the query in that space."""

    item_id: str
    score: float


class _Space:
    """The items that have one modality, their vectors in an exact index, rows kept by item id."""

    def __init__(self, dim: int) -> None:
        self.index = ExactIndex(np.zeros((0, dim), dtype=np.float32))
        self.item_ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.blank: set[int] = set()  # rows of items that no longer have the modality

    def put(self, item_ids: Sequence[str], vectors: np.ndarray, present: np.ndarray) -> None:
        """Insert or update: an item's row gets ``vectors`` where ``present``, and is blanked where not."""
        rows = np.fromiter((self.row_of.get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        known = rows >= 0
        update, gone, new = known & present, known & ~present, ~known & present
        if update.any():
            self.index.replace(rows[update], vectors[update])
            self.blank.difference_update(rows[update].tolist())
        if gone.any():
            self.index.replace(rows[gone], np.zeros((int(gone.sum()), self.index.dim), dtype=np.float32))
            self.blank.update(rows[gone].tolist())
        if new.any():
            new_ids = [item_ids[i] for i in np.flatnonzero(new).tolist()]
            self.item_ids.extend(new_ids)  # before the vectors: every row a search finds has its id
            added = self.index.add(vectors[new])
            self.row_of.update(zip(new_ids, added.tolist(), strict=True))

    def search(self, query: np.ndarray, k: int) -> list[SearchHit]:
        exclude = ItemSets.from_lists([sorted(self.blank)]) if self.blank else None
        top = self.index.search(query[None, :], k, exclude)
        return [
            SearchHit(self.item_ids[row], float(score))
            for row, score in zip(top.rows[0].tolist(), top.scores[0].tolist(), strict=True)
            if row >= 0
        ]

    def __len__(self) -> int:
        return len(self.item_ids) - len(self.blank)


class SearchIndex:
    """Items searchable by a text query in each of ``modalities`` (the model's) and ``fused``.

    ``shared_dim`` is the aligned vectors' width, ``embed_dim`` the item-tower vectors'. Build it
    from an artifact with :meth:`from_artifact`; :meth:`add` live items; :meth:`search`. Not
    thread-safe: call :meth:`add` and :meth:`search` from one thread (a Serve replica's event
    loop) or under a lock. Raises ValueError for a modality raymm does not know.
    """

    def __init__(self, modalities: Sequence[str], shared_dim: int, embed_dim: int) -> None:
        unknown = [m for m in modalities if m not in SEARCH_MODALITIES or m == FUSED]
        if unknown or not modalities:
            raise ValueError(f"modalities must be some of text, image, audio; got {list(modalities)}")
        self._aligned = {m: _Space(shared_dim) for m in modalities}
        self._fused = _Space(embed_dim)

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> SearchIndex:
        """Every catalog item of ``artifact``, by its stored aligned and item vectors.

        Items with no modality at all (the catalog may hold some) are left out: there is nothing
        about them to search. Raises :class:`~raymm.models.errors.NoAlignedVectorsError` for an artifact that predates
        search (its item table has no aligned vectors).
        """
        aligned = artifact.aligned_vectors()
        model = artifact.model
        index = cls(model.modalities, model.config.align.shared_dim, model.config.towers.embed_dim)
        items = EncodedItems(
            [str(i) for i in artifact.item_ids], artifact.vectors(), aligned.vectors, aligned.present
        )
        index.add(items.select(items.has_content))
        return index

    @property
    def modalities(self) -> list[str]:
        """The search modalities this index answers: the model's, then ``fused``."""
        return [*self._aligned, FUSED]

    @property
    def n_items(self) -> int:
        """Number of items indexed (each has a fused vector)."""
        return len(self._fused)

    def add(self, items: EncodedItems) -> None:
        """Index new items and replace the vectors of item ids already indexed (an updated item).

        An item's modality that is absent leaves (or is removed from) that modality's space. If
        an item id repeats within ``items`` the last one wins. Raises ValueError, adding nothing,
        for items with no modality present (drop them with ``items.select(items.has_content)``),
        for vectors of the wrong width, or for other modalities than the index's.
        """
        if set(items.aligned) != set(self._aligned) or set(items.present) != set(self._aligned):
            raise ValueError(
                f"items carry aligned vectors for {sorted(items.aligned)}, the index holds {sorted(self._aligned)}"
            )
        empty = ~items.has_content
        if empty.any():
            raise ValueError(
                f"items {[items.item_ids[i] for i in np.flatnonzero(empty)][:5]} have no modality encoded "
                f"(errors: {_first_errors(items, empty)}); nothing was added"
            )
        last = _last_occurrences(items.item_ids)
        if last.size != len(items):
            items = items.select(last)
        vectors = _checked(items.vectors, self._fused.index.dim, "item vectors")
        aligned = {
            m: _checked(items.aligned[m], space.index.dim, f"{m} aligned vectors")
            for m, space in self._aligned.items()
        }
        for modality, space in self._aligned.items():
            space.put(items.item_ids, aligned[modality], np.asarray(items.present[modality], dtype=bool))
        self._fused.put(items.item_ids, vectors, np.ones(len(items), dtype=bool))

    def search(self, query: QueryVectors, k: int, modality: str) -> list[SearchHit]:
        """The best ``k`` items for ``query`` in ``modality``'s space, best first, by cosine.

        ``modality`` is one of :attr:`modalities`: ``text``/``image``/``audio`` rank the items
        that have that modality by its aligned vector against the query's aligned text vector;
        ``fused`` ranks every item by its item-tower vector against the query's. Fewer than ``k``
        hits come back when fewer items have the modality. Raises ValueError for an unknown
        modality or one the model was not trained with (naming the valid ones), or k < 1.
        """
        if modality not in self.modalities:
            reason = "the model was not trained with it" if modality in SEARCH_MODALITIES else "unknown"
            raise ValueError(
                f"cannot search modality {modality!r} ({reason}); expected one of {self.modalities}"
            )
        if modality == FUSED:
            return self._fused.search(np.asarray(query.fused, dtype=np.float32), k)
        return self._aligned[modality].search(np.asarray(query.aligned, dtype=np.float32), k)


def _checked(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"{what} must be (N, {dim}), got {matrix.shape}")
    return matrix


def _last_occurrences(item_ids: Sequence[str]) -> np.ndarray:
    """Sorted rows of the last occurrence of each item id."""
    last = {item_id: row for row, item_id in enumerate(item_ids)}
    return np.fromiter(sorted(last.values()), dtype=np.int64, count=len(last))


def _first_errors(items: EncodedItems, rows: np.ndarray) -> list[str]:
    found = [e for errors in items.errors.values() for e in np.asarray(errors, dtype=object)[rows] if e]
    return found[:3]
