"""The ranker's examples (raymm/recommend/rank_examples.py) built from the session's events: labels
and weights from the event kinds, sampled negatives the user never saw, popularity without leakage."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from raymm.recommend.rank_examples import HARD, LOGGED, UNIFORM, rank_setup, split_examples
from tests.conftest import Trained, shared_config


def test_examples_are_labelled_from_events_and_negatives_are_unseen(trained: Trained) -> None:
    config = shared_config(trained.root, "rank.hard_negative_share=0.5", "rank.negatives_per_positive=4")
    setup = rank_setup(str(trained.data), str(trained.features), str(trained.model))
    examples = split_examples(setup, config.rank, str(trained.data), "train", seed=0)
    events = np.asarray(pq.read_table(trained.data / "train.parquet").column("event").to_pylist())
    logged = examples.kind == LOGGED
    assert logged.sum() == np.isin(events, ["click", "like", "purchase", "play", "view", "skip"]).sum()
    assert examples.label[logged].sum() == (events != "skip").sum()
    assert set(np.unique(examples.weight[logged])) == {0.5, 1.0}  # view weighs 0.5
    assert (examples.label[~logged] == 0).all() and {UNIFORM, HARD} <= set(examples.kind.tolist())
    # no sampled negative is an item its user interacted with: its state's history never holds it
    sampled = ~logged
    assert not (examples.history[sampled] == examples.item[sampled, None]).any()
    assert (examples.history < setup.catalog.n_items).all()


def test_training_popularity_leaves_the_example_itself_out(trained: Trained) -> None:
    """A training positive sees its item's count minus its own event; validation events see the count."""
    setup = rank_setup(str(trained.data), str(trained.features), str(trained.model))
    counts = np.expm1(setup.inputs.popularity.numpy().astype(np.float64))
    train = split_examples(setup, trained.config.rank, str(trained.data), "train", seed=0)
    positive = (train.kind == LOGGED) & (train.label == 1.0)
    assert np.allclose(np.expm1(train.popularity[positive]), counts[train.item[positive]] - 1, atol=1e-3)
    skips = (train.kind == LOGGED) & (train.label == 0.0)
    assert np.allclose(np.expm1(train.popularity[skips]), counts[train.item[skips]], atol=1e-3)
    validation = split_examples(setup, trained.config.rank, str(trained.data), "validation", seed=1)
    assert np.allclose(np.expm1(validation.popularity), counts[validation.item], atol=1e-3)
