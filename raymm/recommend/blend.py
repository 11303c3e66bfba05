"""What serving answers with, and how validation chooses it.

The served retriever is one dot product (:class:`~raymm.recommend.scorers.FallbackScorer` over
:class:`~raymm.recommend.collab.PersonalScorer`)::

    a(h) * (two_tower + collab_weight * item_item + content_weight * content
            + popularity_weight * popularity) + (1 - a(h)) * popularity

with ``a(h) = h / (h + shrinkage)`` for a history of ``h`` items, popularity counted with a
half-life, ``item_item`` read from the history weighed by recency (``collab_decay``, see
:mod:`raymm.recommend.collab`), and ``content`` the similarity of an item's raw features to the
history's mean (:class:`~raymm.recommend.scorers.ContentScorer`, projected to
``model.content.dim`` columns).
:class:`BlendSettings` holds the six numbers (and the item-item model's ``l2`` and recency
decay); :func:`choose_blend_settings` picks them on validation by coordinate search over fixed
grids (the item-item weight and ``l2`` jointly, then its decay and ``l2`` jointly),
every setting scored by the same evaluator; the manifest records them and every trial.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from torch import Tensor

from raymm.models.config import CollabConfig, ContentConfig
from raymm.recommend.catalog import Catalog
from raymm.recommend.collab import (
    DECAY_GRID,
    L2_GRID,
    CollaborativeScorer,
    PersonalScorer,
    check_decay,
)
from raymm.recommend.scorers import (
    HALF_LIFE_GRID_DAYS,
    SHRINKAGE_GRID,
    ContentScorer,
    DotProductScorer,
    FallbackScorer,
    FitContext,
    PopularityScorer,
    Scorer,
)

#: Weights of the item-item score validation tries, relative to the two-tower's score spread
#: (:func:`relative_scale`); 0 is the two-tower alone.
COLLAB_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Weights of the content score validation tries, relative to the two-tower's score spread; 0 leaves
#: it out. Validation chose 0.5-2 on MovieLens-100k's three seeds and 0-0.5 on the synthetic
#: benchmark's (bench/results/peers.*.json).
CONTENT_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Weights popularity keeps for a long history (FallbackScorer's ``popularity_weight``). The grid
#: reaches far because MovieLens-100k's validation kept choosing the top of a shorter one.
POPULARITY_WEIGHT_GRID: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
#: Passes of the coordinate search over the settings.
ROUNDS = 2
#: Users whose scores set the item-item score's scale against the two-tower's.
SCALE_USERS = 256


@dataclass(frozen=True)
class BlendSettings:
    """The served blend (see the module docstring). ``collab_weight`` is absolute (what serving
    multiplies by), ``collab_relative`` the grid value it came from (relative to the score spread
    at ``collab_l2`` and ``collab_decay``, :func:`relative_scale`); ``collab_l2`` is relative to
    the item-item Gram matrix's mean diagonal; ``collab_decay`` weighs the user's history by
    recency (1: not at all; an artifact from before it read 1). ``content_weight`` and
    ``content_relative`` are the content part's, the same way."""

    collab_weight: float = 0.0
    collab_relative: float = 0.0
    collab_l2: float = 1.0
    half_life_days: float | None = None
    shrinkage: float = 0.0
    popularity_weight: float = 0.0
    content_weight: float = 0.0
    content_relative: float = 0.0
    collab_decay: float = 1.0

    def __post_init__(self) -> None:
        check_decay(self.collab_decay)

    def label(self) -> str:
        half_life = "all" if self.half_life_days is None else f"{self.half_life_days:g}d"
        # The content part only when on: labels of blends without it read as they always did.
        content = f"/content={self.content_relative:g}" if self.content_weight > 0 else ""
        # Likewise the decay only when it weighs anything.
        decay = f"/decay={self.collab_decay:g}" if self.collab_decay != 1.0 else ""
        return (
            f"collab={self.collab_relative:g}/l2={self.collab_l2:g}{decay}{content}/pop={half_life}"
            f"/shrink={self.shrinkage:g}/floor={self.popularity_weight:g}"
        )

    def to_metrics(self) -> dict[str, Any]:
        """The manifest's ``metrics`` entries (``fallback_*`` names kept for older readers)."""
        return {
            "fallback_shrinkage": self.shrinkage,
            "fallback_half_life_days": self.half_life_days,
            "blend": asdict(self),
        }

    @staticmethod
    def chosen(metrics: Mapping[str, Any]) -> str:
        """What a manifest's ``metrics`` say serving blends, with that choice's validation NDCG."""
        settings = BlendSettings.from_metrics(metrics)
        if settings is None:
            return "none recorded"
        score = metrics.get("validation_ndcg_by_blend", {}).get(settings.label())
        return settings.label() + ("" if score is None else f" (validation ndcg@20 {score:.4f})")

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> BlendSettings | None:
        """The settings a manifest recorded; an artifact from before the item-item part has only
        the fallback's shrinkage and half-life; None when it has neither."""
        if "blend" in metrics:
            return cls(**metrics["blend"])
        if metrics.get("fallback_shrinkage") is None or "fallback_half_life_days" not in metrics:
            return None
        return cls(
            shrinkage=float(metrics["fallback_shrinkage"]), half_life_days=metrics["fallback_half_life_days"]
        )


def served_retriever(
    two_tower: DotProductScorer,
    collaborative: CollaborativeScorer | None,
    popularity: PopularityScorer,
    settings: BlendSettings,
    content: DotProductScorer | None = None,
) -> FallbackScorer:
    """The served retriever for ``settings``: the item-item and content parts are each left out at
    weight 0 (no extra vector width in the index) or when there is none; the item-item part reads
    the history with ``settings.collab_decay`` (a copy of ``collaborative``)."""
    collaborative = collaborative if settings.collab_weight > 0 else None
    if collaborative is not None and collaborative.decay != settings.collab_decay:
        collaborative = collaborative.with_decay(settings.collab_decay)
    content = content if settings.content_weight > 0 else None
    if collaborative is None and content is None:
        personal: DotProductScorer = two_tower
    else:
        personal = PersonalScorer(
            two_tower, collaborative, settings.collab_weight, content, settings.content_weight
        )
    return FallbackScorer(personal, popularity, settings.shrinkage, settings.popularity_weight)


#: The last content part :func:`fit_content` fitted: (a weak reference to its catalog, its
#: modalities and dim, the part). It depends on the catalog's features alone, and evaluation fits it
#: for validation and for test on one catalog (the benchmarks once per model); the weak reference
#: keeps no catalog alive, and a catalog freed never matches.
_last_content: list[tuple[weakref.ref[Catalog], tuple[str, ...] | None, int, ContentScorer]] = []


def fit_content(recorded: Mapping[str, Any], context: FitContext) -> ContentScorer:
    """The content part for the model ``recorded`` (the configuration as the manifest holds it):
    its modalities (every one the catalog holds when it names none) at ``model.content.dim``.
    The part fitted last is returned again for the same catalog object and settings (it is never
    changed in place: :meth:`ContentScorer.with_items` copies)."""
    model = recorded.get("model", {})
    dim = int(model.get("content", {}).get("dim", ContentConfig().dim))
    modalities = None if model.get("modalities") is None else tuple(model["modalities"])
    for catalog, names, width, scorer in _last_content:
        if catalog() is context.catalog and (names, width) == (modalities, dim):
            return scorer
    scorer = ContentScorer(modalities, dim).fit(context)
    _last_content[:] = [(weakref.ref(context.catalog), modalities, dim, scorer)]
    return scorer


def fit_served_retriever(
    two_tower: DotProductScorer,
    settings: BlendSettings,
    context: FitContext,
    recorded: Mapping[str, Any],
    content: ContentScorer | None = None,
) -> FallbackScorer:
    """The served retriever for ``settings`` with its item-item part and popularity fitted on
    ``context``, as serving's were on every interaction before it; the item-item rows of items
    without interactions are predicted from their two-tower vectors. ``recorded`` is the
    configuration the artifact's manifest holds: the item-item part keeps the rank
    (``model.collab.rank``) it was trained with, the default for artifacts that recorded none; the
    content part its modalities and ``model.content.dim`` (:func:`fit_content`), unless ``content``
    (the artifact's, which depends on the features alone) is given."""
    collaborative = None
    if settings.collab_weight > 0:
        rank = int(recorded.get("model", {}).get("collab", {}).get("rank", CollabConfig().rank))
        collaborative = CollaborativeScorer(l2=settings.collab_l2, rank=rank, seed=context.seed).fit(context)
        collaborative.fill_from_content(two_tower.item_vectors())
    if settings.content_weight > 0 and content is None:
        content = fit_content(recorded, context)
    popularity = PopularityScorer(half_life_days=settings.half_life_days).fit(context)
    return served_retriever(two_tower, collaborative, popularity, settings, content)


def relative_scale(two_tower: DotProductScorer, other: DotProductScorer, history: np.ndarray) -> float:
    """std(two-tower scores) / std(``other``'s scores) over the users of ``history`` with any item
    (at most :data:`SCALE_USERS`): a grid weight of 1 gives both parts the same spread."""
    rows = history[(history >= 0).any(axis=1)][:SCALE_USERS]
    if len(rows) == 0:
        return 1.0
    first = (two_tower.user_vectors(rows) @ two_tower.item_vectors().T).std()
    second = (other.user_vectors(rows) @ other.item_vectors().T).std()
    return float(first / second) if float(second) > 0 else 1.0


class SameUsers(DotProductScorer):
    """``inner`` with its user vectors kept per history batch (by its bytes). The search scores
    the same validation users under every setting, and the two-tower's and the content part's
    user vectors do not depend on any setting: computed once, not once a trial (they were 40% of
    a trial's time on the synthetic benchmark). Item vectors are ``inner``'s, never kept."""

    def __init__(self, inner: DotProductScorer) -> None:
        self.inner, self.name = inner, inner.name
        self._kept: dict[tuple[Any, ...], Tensor] = {}

    def item_vectors(self) -> Tensor:
        return self.inner.item_vectors()

    def user_vectors(self, history: np.ndarray) -> Tensor:
        rows = np.ascontiguousarray(history)
        key = (rows.shape, rows.dtype.str, hashlib.blake2b(rows.tobytes(), digest_size=16).digest())
        if key not in self._kept:
            self._kept[key] = self.inner.user_vectors(rows)
        return self._kept[key]


def choose_blend_settings(
    evaluate: Callable[[Scorer], float],
    two_tower: DotProductScorer,
    collaborative: CollaborativeScorer | None,
    context: FitContext,
    history: np.ndarray,
    rounds: int = ROUNDS,
    content: ContentScorer | None = None,
    *,
    popularity_coordinates: bool = True,
    collab_weights: tuple[float, ...] = COLLAB_WEIGHT_GRID,
) -> tuple[BlendSettings, dict[str, float]]:
    """The :class:`BlendSettings` with the best ``evaluate`` (validation NDCG), by coordinate
    search: each coordinate in turn over its grid, the others held, ``rounds`` passes; a change is
    kept only when it scores strictly better, so ties keep the simpler start. Popularity is fitted
    on ``context`` (the training split); ``history`` (validation users' histories) sets the
    item-item scale. ``collaborative`` (fitted, l2 changed in place) None: no item-item part;
    ``content`` (fitted) None: no content part, else its weight is one more coordinate
    (:data:`CONTENT_WEIGHT_GRID`, relative to the spread as the item-item weight is).

    The item-item weight and its ``l2`` are one coordinate, searched jointly over
    :data:`COLLAB_WEIGHT_GRID` x :data:`L2_GRID`: ``l2`` changes the item-item scores' spread, so
    the weight that suits one ``l2`` does not suit another, and searched one at a time they stop
    where neither alone improves (seen on the synthetic benchmark: weight 0 chosen where a larger
    ``l2`` with a larger weight scored higher on validation). The weight is relative to the
    spread at its own ``l2`` and decay (:func:`relative_scale`). The decay
    (:data:`~raymm.recommend.collab.DECAY_GRID`) is the next coordinate, searched jointly with
    ``l2`` at the relative weight held: the ``l2`` that suits a decayed history is smaller (the
    item-item part alone on MovieLens-100k's plain validation: 256 undecayed, 16 at 0.95), and
    searched alone the decay stopped at 0.99 with ``l2`` 256 on two of three seeds of
    ``bench/peers.py``'s plain choice, where 0.8 with ``l2`` 64 scored higher (validation NDCG@20
    0.3044 against 0.3015).
    ``popularity_coordinates`` False searches the personal part's weights alone (for an
    ``evaluate`` that scores the personal part without popularity, as ``bench/peers.py``'s plain
    table does); ``collab_weights`` is the item-item weight grid.
    Returns the settings and every trial's score by :meth:`BlendSettings.label`."""
    two_tower = SameUsers(two_tower)
    kept_content = None if content is None else SameUsers(content)
    popularity: dict[float | None, PopularityScorer] = {}
    scales: dict[tuple[float, float], float] = {}
    content_scale = 1.0 if kept_content is None else relative_scale(two_tower, kept_content, history)
    trials: dict[str, float] = {}

    def scale_at(l2: float, decay: float) -> float:
        """What a relative weight of 1 is in absolute terms at ``l2`` and ``decay``."""
        if collaborative is None:
            return 1.0
        if (l2, decay) not in scales:
            collaborative.set_l2(l2)
            scales[l2, decay] = relative_scale(two_tower, collaborative.with_decay(decay), history)
        return scales[l2, decay]

    def score(settings: BlendSettings) -> float:
        label = settings.label()
        if label not in trials:
            if settings.half_life_days not in popularity:
                popularity[settings.half_life_days] = PopularityScorer(
                    half_life_days=settings.half_life_days
                ).fit(context)
            if collaborative is not None and collaborative.l2 != settings.collab_l2:
                collaborative.set_l2(settings.collab_l2)
            trials[label] = evaluate(
                served_retriever(
                    two_tower, collaborative, popularity[settings.half_life_days], settings, kept_content
                )
            )
        return trials[label]

    def item_item(
        best: BlendSettings, relative: float, l2: float, decay: float | None = None
    ) -> BlendSettings:
        decay = best.collab_decay if decay is None else decay
        if relative == 0:  # the part off: its decay changes nothing, and starts again from none
            decay = 1.0
        return replace(
            best,
            collab_relative=relative,
            collab_weight=relative * scale_at(l2, decay),
            collab_l2=l2,
            collab_decay=decay,
        )

    def item_item_grid(best: BlendSettings) -> Iterator[BlendSettings]:
        """Off (``l2`` then changes nothing), or on at every weight x ``l2``, ``l2``-major so that
        each ``l2``'s item vectors are computed once a pass."""
        yield item_item(best, 0.0, best.collab_l2)
        for l2 in L2_GRID:
            for relative in collab_weights:
                if relative > 0:
                    yield item_item(best, relative, l2)

    def decay_grid(best: BlendSettings) -> Iterator[BlendSettings]:
        """The item-item part's recency decay and ``l2`` at its relative weight (nothing while it
        is off), ``l2``-major as above."""
        if best.collab_relative > 0:
            for l2 in L2_GRID:
                for decay in DECAY_GRID:
                    yield item_item(best, best.collab_relative, l2, decay)

    def content_grid(best: BlendSettings) -> Iterator[BlendSettings]:
        """The content part off, or on at every weight of its grid."""
        for relative in CONTENT_WEIGHT_GRID:
            yield replace(best, content_relative=relative, content_weight=relative * content_scale)

    def grid(name: str, values: tuple[Any, ...]) -> Callable[[BlendSettings], Iterator[BlendSettings]]:
        return lambda best: (replace(best, **{name: value}) for value in values)

    coordinates = (
        [
            grid("half_life_days", HALF_LIFE_GRID_DAYS),
            grid("shrinkage", SHRINKAGE_GRID),
            grid("popularity_weight", POPULARITY_WEIGHT_GRID),
        ]
        if popularity_coordinates
        else []
    )
    if content is not None:
        coordinates.insert(0, content_grid)
    if collaborative is not None:
        coordinates[:0] = [item_item_grid, decay_grid]
    start_relative = 1.0 if collaborative is not None else 0.0
    best = item_item(BlendSettings(shrinkage=4.0), start_relative, 1.0)
    best_score = score(best)
    for _ in range(rounds):
        changed = False
        for coordinate in coordinates:
            for candidate in coordinate(best):
                candidate_score = score(candidate)
                if candidate_score > best_score:
                    best, best_score, changed = candidate, candidate_score, True
        if not changed:
            break
    if collaborative is not None:
        collaborative.set_l2(best.collab_l2)
    return best, trials
