"""The recommendation core: what training (validation), evaluation and serving all import.

Plain NumPy/PyTorch, no Ray: the item catalog as tensors (:mod:`.catalog`), user state from a
log by the model's user-state spec (:mod:`.history`), item and user vectors (:mod:`.vectors`),
the one seen-masked top-k scorer (:mod:`.topk`) and the item index for serving-scale retrieval
(:mod:`.index`), retrieve-then-rank (:mod:`.rerank`), and every recommender behind one
interface (:mod:`.scorers`). New content (live items, text queries) is encoded with the artifact's
own encoders and item tower by :mod:`.content` and searched across media by :mod:`.search`; they
are not imported here because they load the encoders' packages (PIL, soundfile, torchaudio).
"""

from __future__ import annotations

from raymm.recommend.catalog import Catalog, build_catalog
from raymm.recommend.history import EvalUsers, eval_users
from raymm.recommend.itemsets import ItemSets
from raymm.recommend.rerank import Reranker
from raymm.recommend.scorers import (
    ContentScorer,
    FallbackScorer,
    FitContext,
    PopularityScorer,
    RetrieveThenRank,
    Scorer,
    TwoTowerScorer,
)
from raymm.recommend.topk import TopK, top_k

__all__ = [
    "Catalog",
    "ContentScorer",
    "EvalUsers",
    "FallbackScorer",
    "FitContext",
    "ItemSets",
    "PopularityScorer",
    "Reranker",
    "RetrieveThenRank",
    "Scorer",
    "TopK",
    "TwoTowerScorer",
    "build_catalog",
    "eval_users",
    "top_k",
]
