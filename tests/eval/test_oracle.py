"""The synthetic benchmark's oracle: the generator's truth, saved at synth time, ranks best."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raymm.config import SynthConfig
from raymm.data.dataset import load_dataset
from raymm.data.synth import synthesize
from raymm.eval.evaluate import evaluate_scorer, per_user_metrics
from raymm.eval.oracle import OracleScorer, load_oracle
from raymm.eval.stats import paired_test
from raymm.recommend.catalog import build_catalog
from raymm.recommend.history import eval_users
from raymm.recommend.scorers import FitContext, PopularityScorer, PrecomputedScorer

EVENTS = ["click", "like", "purchase", "play", "view"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("oracle") / "tiny"
    synthesize(SynthConfig.model_validate({"size": "tiny"}), str(path), 3, progress=False)
    return path


def _setup(path: Path):  # type: ignore[no-untyped-def]
    dataset = load_dataset(str(path), tables=())
    ids = dataset.items.column("item_id")
    # The oracle reads no features: a constant one-column table gives the catalog its rows.
    features = pa.table(
        {
            "item_id": ids,
            "text": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(len(ids) * 2, np.float32)), 2),
        }
    )
    train = dataset.interactions("train")
    context = pa.concat_tables([train, dataset.interactions("validation")])
    catalog = build_catalog(features, dataset.items, train)
    users = eval_users(context, dataset.interactions("test"), catalog, EVENTS, 20)
    return catalog, context, users


def test_the_oracle_beats_popularity_and_a_precomputed_copy_ranks_the_same(tiny: Path) -> None:
    oracle = load_oracle(str(tiny))
    assert oracle is not None and oracle.preferences.shape[0] == 120
    catalog, context, users = _setup(tiny)
    scorer = OracleScorer(oracle, catalog)
    popularity = PopularityScorer().fit(FitContext(catalog, context, EVENTS, 0))
    ids, oracle_values = per_user_metrics(scorer, users, (20,), catalog.n_items)
    _, popular_values = per_user_metrics(popularity, users, (20,), catalog.n_items)
    test = paired_test(oracle_values["ndcg@20"], popular_values["ndcg@20"])
    assert test["mean_difference"] > 0 and test["first_better"] is True, test

    # The same scores handed over as a matrix (as peers' are) rank identically.
    full = scorer.recommend(users.history, catalog.n_items, user_ids=users.user_ids)
    matrix = np.full((len(users.user_ids), catalog.n_items), -1e9, np.float32)
    rows = full.rows.numpy()
    np.put_along_axis(matrix, np.clip(rows, 0, None), np.where(rows >= 0, full.scores.numpy(), -1e9), 1)
    copy = PrecomputedScorer("copy", users.user_ids, matrix)
    assert evaluate_scorer(copy, users, (20,), catalog.n_items) == evaluate_scorer(
        scorer, users, (20,), catalog.n_items
    )
    assert len(ids) == int((users.truth.sizes > 0).sum())


def test_an_imported_dataset_has_no_oracle(tiny: Path, tmp_path: Path) -> None:
    dataset = load_dataset(str(tiny), tables=())
    from raymm.data.dataset import write_dataset

    splits = {s: dataset.interactions(s) for s in ("train", "validation", "test")}
    write_dataset(str(tmp_path / "plain"), dataset.items, splits, {"name": "plain"})
    assert load_oracle(str(tmp_path / "plain")) is None


def test_unknown_users_need_a_fallback(tiny: Path) -> None:
    catalog, _, users = _setup(tiny)
    copy = PrecomputedScorer("empty", [], np.zeros((0, catalog.n_items), np.float32))
    with pytest.raises(ValueError, match="no scores for user"):
        copy.recommend(users.history[:1], 5, user_ids=users.user_ids[:1])
