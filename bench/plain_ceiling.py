"""Plain-table ceiling on MovieLens-100k: what keeps raymm's personal scorer behind Cornac's EASE?

In ``bench/peers.py``'s plain table (no system blended with recent popularity) raymm trails EASE on
MovieLens-100k. raymm's personal scorer is the two-tower plus the item-item part (EASE in a factored
form, :mod:`raymm.recommend.collab`) plus the content part; chosen on plain validation, nearly all
of its weight goes to the item-item part. So this asks how raymm's item-item part differs from
Cornac's EASE, and what each difference costs, on the same split, evaluator and users:

1. **the window**: serving scores the item-item part from the live state's
   ``model.user_state.max_history`` (100) most recent positives; Cornac's EASE reads every positive;
2. **the rank**: raymm keeps ``model.collab.rank`` (128) eigenvectors of the co-occurrence matrix;
   every one of them is exact EASE;
3. **the sign**: Cornac's EASE keeps only the positive entries of its item-item matrix (``posB``,
   on by default); a factored form cannot clip them. The reading with it is a dense EASE
   (items x items), written here, not raymm's.

And what raymm does about it: **recency** (``collab_decay``, :data:`raymm.recommend.collab.DECAY_GRID`):
the user's query weighs the item ``a`` positions before the newest by ``decay ** a``, the decay
chosen on plain validation jointly with ``l2``; EASE reads a history as a set.

Each reading's ``l2`` (relative to the mean diagonal of the co-occurrence matrix, raymm's
:data:`~raymm.recommend.collab.L2_GRID`) is chosen on plain validation NDCG@20; the test split is
scored with the part refitted on train + validation, as ``peers.py`` does. A user without history
gets recent popularity (the half-life chosen on validation), as in the plain table.

Also, when ``bench/peers.py --dataset ml100k`` left its models in ``out/peers/ml100k/raymm``: raymm's
whole personal scorer (two-tower + item-item + content) with its weights chosen on plain
validation, at the served window and over every positive (the two-tower and content parts always
read the served window), undecayed; and at the served window with the decay searched too (a second
pass over decay x ``l2`` x item-item weight, the content weight of the first pass held). And Cornac's EASE as the plain table scored it
(``bench/results/peers.ml100k.json``), with a paired test per user against the plain table's
per-user values (``out/peers/ml100k/per_user.parquet``).

Writes ``bench/results/plain_ceiling.json`` and prints one JSON line. About 5 minutes on 2 cores
(300 s on 2026-12-07 with the recency-weighted readings).

    .venv/bin/python bench/plain_ceiling.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from _shared import BASE_CONFIG, RESULTS, ROOT, finish, log
from _shared.quality import PACKAGE_TRAINING, K, score, validation_ndcg
from fetch_ml100k import prepare
from torch import Tensor

from raymm.config import load_config
from raymm.eval.evaluate import EvalSetup, eval_setup
from raymm.eval.stats import mean_sd, paired_test
from raymm.models.artifact import load_artifact
from raymm.models.config import CollabConfig, UserStateConfig
from raymm.recommend.blend import (
    COLLAB_WEIGHT_GRID,
    CONTENT_WEIGHT_GRID,
    BlendSettings,
    fit_content,
    relative_scale,
    served_retriever,
)
from raymm.recommend.collab import (
    DECAY_GRID,
    L2_GRID,
    CollaborativeScorer,
    interaction_matrix,
    recency_weights,
)
from raymm.recommend.scorers import (
    HALF_LIFE_GRID_DAYS,
    DotProductScorer,
    FallbackScorer,
    FitContext,
    PopularityScorer,
    TwoTowerScorer,
)
from raymm.runtime import init_ray

BENCH = "plain_ceiling"
#: Every user's whole history fits: MovieLens-100k's most active user has 737 ratings.
FULL_WINDOW = 1000
SERVED_WINDOW = UserStateConfig().max_history
SHIPPED_RANK = CollabConfig().rank
#: More eigenvectors than MovieLens-100k has items: exact EASE.
EXACT_RANK = 4096
#: The personal scorer's item-item weights on plain validation: the blend's grid, then further up
#: (plain validation chose the top of the blend's grid, 8, on 2 of 3 models).
PLAIN_COLLAB_GRID = (*COLLAB_WEIGHT_GRID, 16.0, 32.0, 64.0, 256.0)
WORK = ROOT / "out" / "peers" / "ml100k"


class Latest(DotProductScorer):
    """``inner`` reading only the latest ``n`` entries of each history row (rows are oldest first,
    padded with -1 on the left): the served window inside a longer evaluation window."""

    def __init__(self, inner: DotProductScorer, n: int) -> None:
        self.inner, self.n, self.name = inner, n, inner.name

    @property
    def decay(self) -> float:
        """The item-item part's recency decay (served_retriever reads it; 1 for other parts)."""
        return float(getattr(self.inner, "decay", 1.0))

    def with_decay(self, decay: float) -> Latest:
        assert isinstance(self.inner, CollaborativeScorer), "only the item-item part has a decay"
        return Latest(self.inner.with_decay(decay), self.n)

    def item_vectors(self) -> Tensor:
        return self.inner.item_vectors()

    def user_vectors(self, history: np.ndarray) -> Tensor:
        return self.inner.user_vectors(np.asarray(history)[:, -self.n :])


class DenseEASE(DotProductScorer):
    """EASE with a dense items x items matrix, as Cornac's: ``B = -P / diag(P)``, zero diagonal,
    ``P = (G + l2 I)^-1``; ``positive`` keeps only B's positive entries (Cornac's ``posB``). A user
    is the binary vector of their history, an item its column of B."""

    name = "EASE (dense)"

    def __init__(self, context: FitContext, positive: bool) -> None:
        users, items, n_users = interaction_matrix(context)
        n = context.catalog.n_items
        x = np.zeros((n_users, n), dtype=np.float64)
        x[users, items] = 1.0
        self.gram, self.n, self.positive = x.T @ x, n, positive
        self.mean_diagonal = float(np.diag(self.gram).mean())
        self._items: Tensor | None = None

    def set_l2(self, l2: float) -> DenseEASE:
        p = np.linalg.inv(self.gram + l2 * self.mean_diagonal * np.eye(self.n))
        b = -p / np.diag(p)
        np.fill_diagonal(b, 0.0)
        if self.positive:
            b[b < 0] = 0.0
        self._items = torch.from_numpy(np.ascontiguousarray(b.T).astype(np.float32))
        return self

    def item_vectors(self) -> Tensor:
        assert self._items is not None, "call set_l2 first"
        return self._items

    def user_vectors(self, history: np.ndarray) -> Tensor:
        rows = np.asarray(history)
        out = torch.zeros(len(rows), self.n)
        users, positions = np.nonzero(rows >= 0)
        out[users, rows[users, positions]] = 1.0
        return out


class Decayed(DotProductScorer):
    """``inner``'s binary history weighed by recency as raymm's item-item part is
    (:func:`~raymm.recommend.collab.recency_weights`): for the dense EASE reading."""

    def __init__(self, inner: DenseEASE, decay: float) -> None:
        self.inner, self.decay, self.name = inner, decay, inner.name

    def item_vectors(self) -> Tensor:
        return self.inner.item_vectors()

    def user_vectors(self, history: np.ndarray) -> Tensor:
        rows = np.asarray(history)
        weights = recency_weights(torch.from_numpy(rows >= 0), self.decay)
        out = torch.zeros(len(rows), self.inner.n)
        users, positions = np.nonzero(rows >= 0)
        out.index_put_(
            (torch.from_numpy(users), torch.from_numpy(rows[users, positions])),
            weights[users, positions],
            accumulate=True,
        )
        return out


def plain(scorer: DotProductScorer, popularity: PopularityScorer) -> FallbackScorer:
    """``scorer`` unblended; a user with no history gets ``popularity``."""
    return FallbackScorer(scorer, popularity, 0.0)


def means(values: dict[str, np.ndarray]) -> dict[str, float]:
    return {m: round(float(values[m].mean()), 4) for m in (f"recall@{K}", f"ndcg@{K}")}


def with_decay(part: Any, decay: float) -> DotProductScorer:
    """``part`` reading the history weighed by ``decay`` (1: as it is)."""
    if decay == 1.0:
        return part
    return part.with_decay(decay) if isinstance(part, CollaborativeScorer) else Decayed(part, decay)


def item_item_reading(
    setup: EvalSetup,
    make: Any,
    window: int,
    popularity: tuple[PopularityScorer, PopularityScorer],
    decays: tuple[float, ...] = (1.0,),
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``make(context)`` -> a part with ``set_l2``; its l2 (and decay, over ``decays``) chosen on
    plain validation at ``window``, then refitted on train + validation and scored on test."""
    wrap = (lambda s: Latest(s, window)) if window < FULL_WINDOW else (lambda s: s)
    validation_part = make(setup.train_context)
    trials = {}
    for l2 in L2_GRID:
        validation_part.set_l2(l2)
        for decay in decays:
            scorer = plain(wrap(with_decay(validation_part, decay)), popularity[0])
            trials[l2, decay] = validation_ndcg(scorer, setup)
    l2, decay = max(trials, key=lambda key: trials[key])
    test_part = make(setup.context).set_l2(l2)
    scorer = plain(wrap(with_decay(test_part, decay)), popularity[1])
    _, values = score(scorer, setup, setup.protocols["test"].users)
    reading = {
        "l2": l2,
        "validation_ndcg@20_by_l2": {
            f"{k:g}": round(max(v for (at, _), v in trials.items() if at == k), 4) for k in L2_GRID
        },
        "validation_ndcg@20": round(trials[l2, decay], 4),
        "test": means(values),
    }
    if len(decays) > 1:
        reading["decay"] = decay
        reading["validation_ndcg@20_by_decay"] = {
            f"{d:g}": round(max(v for (_, e), v in trials.items() if e == d), 4) for d in decays
        }
    return reading, values


def personal_reading(
    setup: EvalSetup,
    model_dir: Path,
    window: int,
    popularity: tuple[PopularityScorer, PopularityScorer],
    decays: tuple[float, ...] = (1.0,),
) -> dict[str, Any]:
    """raymm's personal scorer from ``model_dir`` with its item-item and content weights and ``l2``
    chosen on plain validation; the item-item part reads ``window``, the others the served one.
    With ``decays``, a second pass searches the decay x ``l2`` x item-item weight, the content
    weight held."""
    artifact = load_artifact(str(model_dir), expected_dims=setup.catalog.dims)
    recorded = artifact.manifest.config
    rank = int(recorded["model"]["collab"]["rank"])
    two_tower = Latest(
        TwoTowerScorer(artifact.model, setup.catalog.subset(artifact.model.modalities)), SERVED_WINDOW
    )

    def parts(context: FitContext) -> tuple[DotProductScorer, DotProductScorer, CollaborativeScorer]:
        collab = CollaborativeScorer(rank=rank, seed=context.seed or 0).fit(context)
        collab.fill_from_content(two_tower.item_vectors())
        item_item = Latest(collab, window) if window < FULL_WINDOW else collab
        return item_item, Latest(fit_content(recorded, context), SERVED_WINDOW), collab

    item_item, content, collab = parts(setup.train_context)
    rows = setup.validation.history
    content_scale = relative_scale(two_tower, content, rows)
    best: tuple[float, BlendSettings] | None = None
    for l2 in L2_GRID:
        collab.set_l2(l2)
        scale = relative_scale(two_tower, item_item, rows)
        for weight, content_weight in itertools.product(PLAIN_COLLAB_GRID, CONTENT_WEIGHT_GRID):
            settings = BlendSettings(
                collab_weight=weight * scale,
                collab_relative=weight,
                collab_l2=l2,
                content_weight=content_weight * content_scale,
                content_relative=content_weight,
                half_life_days=popularity[0].half_life_days,
            )
            value = validation_ndcg(
                plain(
                    served_retriever(two_tower, item_item, popularity[0], settings, content).primary,
                    popularity[0],
                ),
                setup,
            )
            if best is None or value > best[0]:
                best = (value, settings)
    assert best is not None
    held = best[1]
    for l2 in L2_GRID if len(decays) > 1 else ():
        collab.set_l2(l2)
        for decay in decays:
            scale = relative_scale(two_tower, item_item.with_decay(decay), rows)
            for weight in PLAIN_COLLAB_GRID:
                settings = replace(
                    held,
                    collab_weight=weight * scale,
                    collab_relative=weight,
                    collab_l2=l2,
                    collab_decay=decay,
                )
                value = validation_ndcg(
                    plain(
                        served_retriever(two_tower, item_item, popularity[0], settings, content).primary,
                        popularity[0],
                    ),
                    setup,
                )
                if value > best[0]:
                    best = (value, settings)
    value, settings = best
    item_item, content, collab = parts(setup.context)
    collab.set_l2(settings.collab_l2)
    served = served_retriever(two_tower, item_item, popularity[1], settings, content)
    _, values = score(plain(served.primary, popularity[1]), setup, setup.protocols["test"].users)
    return {
        "model": model_dir.name,
        "chosen": settings.label(),
        "validation_ndcg@20": round(value, 4),
        "test": means(values),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=WORK, help="bench/peers.py's ml100k work directory")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data, features, _ = prepare()
    config = load_config(
        BASE_CONFIG,
        [
            f"out={args.work / 'plain_ceiling'}",
            "ray.log_to_driver=false",
            "model.modalities=[text]",
            f"model.user_state.max_history={FULL_WINDOW}",
            *PACKAGE_TRAINING,
        ],
    )
    init_ray(config.ray)
    setup = eval_setup(config, str(data), str(features))
    for users in (setup.validation, setup.protocols["test"].users):
        history = users.history
        if (history[:, 0] >= 0).any():
            raise SystemExit(f"a user's history fills the {FULL_WINDOW}-item window: raise FULL_WINDOW")
        if ((history >= 0).any(axis=1) & (history[:, -1] < 0)).any():
            raise SystemExit("history rows are not padded on the left: Latest() would read the wrong items")

    # Recent popularity for users without history, its half-life chosen on validation (peers.py's row).
    by_half_life = {
        h: validation_ndcg(PopularityScorer(half_life_days=h).fit(setup.train_context), setup)
        for h in HALF_LIFE_GRID_DAYS
    }
    half_life = max(by_half_life, key=lambda h: by_half_life[h])
    popularity = (
        PopularityScorer(half_life_days=half_life).fit(setup.train_context),
        PopularityScorer(half_life_days=half_life).fit(setup.context),
    )
    log(BENCH, f"recent popularity half-life {half_life} days")

    readings: dict[str, Any] = {}
    per_user: dict[str, dict[str, np.ndarray]] = {}
    variants = [
        ("raymm item-item: served window, rank 128 (as served)", SERVED_WINDOW, SHIPPED_RANK, None),
        ("raymm item-item: every positive, rank 128", FULL_WINDOW, SHIPPED_RANK, None),
        ("raymm item-item: served window, exact", SERVED_WINDOW, EXACT_RANK, None),
        ("raymm item-item: every positive, exact", FULL_WINDOW, EXACT_RANK, None),
        ("dense EASE: every positive, exact, B >= 0 (Cornac's form)", FULL_WINDOW, None, True),
    ]
    decayed = [
        (
            "raymm item-item: served window, rank 128, recency-weighted (as served now)",
            SERVED_WINDOW,
            SHIPPED_RANK,
            None,
        ),
        ("raymm item-item: served window, exact, recency-weighted", SERVED_WINDOW, EXACT_RANK, None),
        ("dense EASE, B >= 0: served window, recency-weighted", SERVED_WINDOW, None, True),
        ("dense EASE, B >= 0: every positive, recency-weighted", FULL_WINDOW, None, True),
    ]
    for (name, window, rank, positive), decays in itertools.chain(
        zip(variants, itertools.repeat((1.0,))), zip(decayed, itertools.repeat(DECAY_GRID))
    ):
        if positive is None:
            make = lambda context, rank=rank: CollaborativeScorer(rank=rank, seed=0).fit(context)  # noqa: E731
        else:
            make = lambda context, positive=positive: DenseEASE(context, positive)  # noqa: E731
        readings[name], per_user[name] = item_item_reading(setup, make, window, popularity, decays)
        log(BENCH, f"{name}: {readings[name]['test']} (validation {readings[name]['validation_ndcg@20']})")

    document: dict[str, Any] = {
        "question": "what keeps raymm's personal scorer behind Cornac's EASE in the plain table on MovieLens-100k",
        "dataset": "ml100k",
        "users": {
            "validation": len(setup.validation.user_ids),
            "test": len(setup.protocols["test"].users.user_ids),
        },
        "recent_popularity_half_life_days": half_life,
        "item_item": readings,
    }

    peers_file = RESULTS / "peers.ml100k.json"
    if peers_file.is_file():
        peers = json.loads(peers_file.read_text())
        ease = peers["plain"]["EASE"]
        document["cornac_ease_plain_row"] = {
            "source": "bench/results/peers.ml100k.json",
            "chosen": ease["best"],
            "plain_validation_ndcg@20_by_lamb": {
                f"{row['params']['lamb']:g}": row["plain_validation_ndcg@20"] for row in ease["grid"]
            },
            "test": {m: ease["test"][m]["mean"] for m in (f"recall@{K}", f"ndcg@{K}")},
        }
        table_file = args.work / "per_user.parquet"
        if table_file.is_file():
            table = pq.read_table(table_file).to_pandas()
            # One row per user and seed (the plain table's best peer runs every seed): seed means,
            # as peers.py pairs them.
            rows = (
                table[(table.table == "plain") & (table.system == "EASE")]
                .groupby("user_id")[[f"recall@{K}", f"ndcg@{K}"]]
                .mean()
            )
            order = [str(u) for u in setup.protocols["test"].users.user_ids]
            if set(order) <= set(rows.index):
                cornac = rows.loc[order]
                document["paired_against_cornac_ease"] = {
                    name: {
                        m: paired_test(per_user[name][m], cornac[m].to_numpy())
                        for m in (f"recall@{K}", f"ndcg@{K}")
                    }
                    for name in readings
                }

    models = sorted(args.work.glob("raymm/g0-s*/manifest.json"))
    if models:
        personal: dict[str, Any] = {}
        for window, label, decays in (
            (SERVED_WINDOW, "served window", (1.0,)),
            (FULL_WINDOW, "every positive", (1.0,)),
            (SERVED_WINDOW, "served window, recency-weighted", DECAY_GRID),
        ):
            runs = [personal_reading(setup, m.parent, window, popularity, decays) for m in models]
            personal[f"item-item part over the {label}"] = {
                "runs": runs,
                "test": {m: mean_sd([r["test"][m] for r in runs]) for m in (f"recall@{K}", f"ndcg@{K}")},
                "validation_ndcg@20": mean_sd([r["validation_ndcg@20"] for r in runs]),
            }
            log(BENCH, f"personal scorer, {label}: {personal[f'item-item part over the {label}']['test']}")
        document["personal_scorer_chosen_on_plain_validation"] = personal
    else:
        document["personal_scorer_chosen_on_plain_validation"] = None
        document["not_run"] = (
            "no raymm models in the work directory: run bench/peers.py --dataset ml100k first"
        )
    document["wall_s"] = round(time.perf_counter() - started, 1)
    return finish(BENCH, document)


if __name__ == "__main__":
    main()
