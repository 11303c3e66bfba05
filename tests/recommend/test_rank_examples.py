"""The ranker's examples (raymm/recommend/rank_examples.py) built from the session's events: labels
and weights from the event kinds, sampled negatives the user never saw, popularity without leakage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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


def _windows_by_definition(
    context: pa.Table,
    split: pa.Table,
    positions: dict[str, int],
    events: list[str],
    examples: list[str],
    length: int,
) -> list[list[int]]:
    """The window of each example event of ``split`` (user, then time order), read off the log event
    by event: the user's last ``length`` positive events before it, context included, an item the
    catalog lacks holding its place and then dropped, -1 padded on the left."""
    rows = [*context.to_pylist(), *({**r, "in_split": True} for r in split.to_pylist())]
    seen, by_user = set(), {}
    for row in rows:  # an event id repeated by a user counts once
        if row["event_id"] is None or (row["user_id"], row["event_id"]) not in seen:
            seen.add((row["user_id"], row["event_id"]))
            by_user.setdefault(row["user_id"], []).append(row)
    windows = []
    for user in sorted(by_user):
        history: list[int] = []
        for row in sorted(by_user[user], key=lambda r: r["ts"]):  # stable: equal times in log order
            item = positions.get(row["item_id"], -1)
            if row.get("in_split") and row["event"] in examples and item >= 0:
                known = [r for r in history[-length:] if r >= 0]
                windows.append([-1] * (length - len(known)) + known)
            if row["event"] in events:
                history.append(item)
    return windows


def test_examples_hold_each_history_once_and_expand_to_every_events_window(trained: Trained) -> None:
    """Each example's history is a row of ``states`` that its ``state`` points at: expanded, the
    histories are one window per logged event (by definition, event by event), and each sampled
    negative has its positive's; an event's negatives and the events of a user with no positive
    between them share one row."""
    config = shared_config(trained.root, "rank.hard_negative_share=0", "rank.negatives_per_positive=3")
    setup = rank_setup(str(trained.data), str(trained.features), str(trained.model))
    examples = split_examples(setup, config.rank, str(trained.data), "validation", seed=1)
    spec = setup.two_tower.config.user_state
    positions = {str(item): row for row, item in enumerate(setup.catalog.item_ids)}
    expected = _windows_by_definition(
        pq.read_table(trained.data / "train.parquet"),
        pq.read_table(trained.data / "validation.parquet"),
        positions,
        list(spec.events),
        [*spec.events, *config.rank.negative_events],
        spec.max_history,
    )
    logged = examples.kind == LOGGED
    assert examples.history[logged].tolist() == expected
    positives = np.flatnonzero(logged & (examples.label == 1.0))
    assert len(examples) == logged.sum() + 3 * positives.size  # no draw dropped: the sources are known
    assert (examples.state[~logged] == np.repeat(examples.state[positives], 3)).all()
    assert examples.states.dtype == np.int32 and examples.state.dtype == np.int32
    distinct = {tuple(w) for w in expected}
    assert len(distinct) <= len(examples.states) < logged.sum()  # shared, never merged across windows
    # a slice shares the states and expands to the same histories
    part = examples.take(np.arange(10, 40))
    assert part.states is examples.states and part.history.tolist() == examples.history[10:40].tolist()


def test_a_setup_without_features_keeps_what_the_ranker_reads_and_refuses_feature_reads(
    trained: Trained,
) -> None:
    setup = rank_setup(str(trained.data), str(trained.features), str(trained.model))
    light = setup.without_features()
    assert light.catalog.dims == setup.catalog.dims and light.catalog.n_items == setup.catalog.n_items
    assert all(v.numel() == 0 for v in light.catalog.features.values())
    assert light.inputs is setup.inputs and light.two_tower is setup.two_tower
    # the examples built from either are the same: they read ids and the per-item inputs only
    full = split_examples(setup, trained.config.rank, str(trained.data), "validation", seed=1)
    same = split_examples(light, trained.config.rank, str(trained.data), "validation", seed=1)
    assert np.array_equal(full.item, same.item) and np.array_equal(full.states, same.states)
    with pytest.raises(RuntimeError, match=r"features were released"):
        light.catalog.rows(slice(0, 4))
