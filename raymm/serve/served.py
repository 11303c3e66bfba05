"""One model artifact as a replica serves it: the recommender, the content encoder and the
search index, grown by the items that arrive live.

A roll-out loads a new :class:`ServedModel` beside the old one and swaps the replica's reference
to it in one assignment; a request holds the one it started with. New items never change the
recommender a request may be using: :meth:`ServedModel.add_items` builds a grown copy and swaps
it in, and the search index, which grows in place, is read and grown under the object's lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from raymm.errors import RaymmError
from raymm.recommend.content import ContentEncoder, ItemContent
from raymm.recommend.index import IndexChoice
from raymm.recommend.recommender import Recommender, load_model
from raymm.recommend.search import SearchHit, SearchIndex

__all__ = ["ServedModel"]

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """The artifact at ``key`` (its URI and version) as served. ``encoder`` and ``search`` are
    None, with ``unavailable`` saying why, for an artifact without recorded encoders or aligned
    vectors: it still recommends, but neither searches nor takes live items."""

    key: str
    model: Recommender
    encoder: ContentEncoder | None
    search: SearchIndex | None
    unavailable: str | None
    items_added: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, uri: str, key: str, index: IndexChoice) -> ServedModel:
        """Load the artifact at ``uri`` (blocking: seconds for a large catalog)."""
        model = load_model(uri, index=index)
        try:
            encoder = ContentEncoder.from_artifact(uri, model.artifact)
            search = SearchIndex.from_artifact(model.artifact)
        except RaymmError as exc:  # a model without encoders or aligned vectors still recommends
            log.warning("search and live items are off for %s: %s", uri, exc)
            return cls(key, model, None, None, str(exc))
        return cls(key, model, encoder, search, None)

    def add_items(self, items: Sequence[ItemContent]) -> int:
        """Encode ``items`` with the artifact's encoders and add those with content to the search
        index and to the catalog; returns how many were added (0 when live items are off)."""
        if self.encoder is None or self.search is None:
            log.warning("%d live items ignored: %s", len(items), self.unavailable)
            return 0
        encoded = self.encoder.encode_items(items)
        kept = encoded.select(encoded.has_content)
        for item_id, errors in zip(encoded.item_ids, zip(*encoded.errors.values(), strict=True), strict=True):
            failed = [e for e in errors if e]
            if failed:
                log.warning("live item %s: %s", item_id, "; ".join(failed))
        if not len(kept):
            return 0
        grown = self.model.with_items(kept)
        with self._lock:
            self.search.add(kept)
            self.model = grown
            self.items_added += len(kept)
        return len(kept)

    def search_text(self, query: str, k: int, modality: str) -> list[SearchHit]:
        """The ``k`` items whose ``modality`` vectors best match the text ``query`` (blocking).
        The caller checks first that search is available and ``modality`` one of its modalities."""
        if self.encoder is None or self.search is None:
            raise RuntimeError(f"search is unavailable: {self.unavailable}")
        vectors = self.encoder.encode_query(query)
        with self._lock:
            return self.search.search(vectors, k, modality)
