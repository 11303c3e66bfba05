"""User state from a log: history windows against a hand-built log, evaluation users."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

import raymm.recommend.history as history_module
from raymm.recommend.catalog import build_catalog
from raymm.recommend.history import (
    EvalUsers,
    distinct_events,
    distinct_histories,
    eval_users,
    history_after,
    history_before,
)
from raymm.recommend.itemsets import ItemSets
from tests.conftest import make_items

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_history_windows_match_a_hand_built_log() -> None:
    # user 0: rows 5, 6 (skip), 7; user 1: rows 8, 9. Only counted events enter a history.
    users = np.array([0, 0, 0, 1, 1])
    rows = np.array([5, 6, 7, 8, 9])
    counts = np.array([True, False, True, True, True])
    assert history_before(users, rows, counts, 2).tolist() == [[-1, -1], [-1, 5], [-1, 5], [-1, -1], [-1, 8]]
    assert history_before(users, rows, counts, 1).tolist() == [[-1], [5], [5], [-1], [8]]
    assert history_after(users, rows, counts, 2).tolist() == [[5, 7], [8, 9]]
    # a user whose last event does not count keeps the window before it
    assert history_after(np.array([0, 0]), np.array([1, 2]), np.array([True, False]), 3).tolist() == [
        [-1, -1, 1]
    ]


def test_an_item_the_catalog_lacks_holds_its_place_in_the_window_and_is_then_dropped() -> None:
    # user 0 counts rows 5, -1 (unknown), 7, 8: a window of 3 reaches back to the unknown item,
    # not past it to 5, as the live state (which knows no catalog) keeps it.
    users = np.array([0, 0, 0, 0])
    rows = np.array([5, -1, 7, 8])
    counts = np.ones(4, dtype=bool)
    assert history_after(users, rows, counts, 3).tolist() == [[-1, 7, 8]]
    assert history_before(users, rows, counts, 3).tolist() == [
        [-1, -1, -1],
        [-1, -1, 5],
        [-1, -1, 5],
        [-1, 5, 7],
    ]
    assert history_after(users[:2], rows[:2], counts[:2], 3).tolist() == [[-1, -1, 5]]


def _windows_by_brute_force(
    users: np.ndarray, rows: np.ndarray, counts: np.ndarray, length: int
) -> list[list[int]]:
    """Each event's window read off the log one event at a time: the reference for the vectorised one."""
    out = []
    for i in range(len(users)):
        earlier = [int(rows[j]) for j in range(i) if users[j] == users[i] and counts[j]][-length:]
        out.append([-1] * (length - len(earlier)) + earlier)
    return out


def test_windows_built_in_chunks_equal_the_event_by_event_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunk boundaries fall inside users (7 rows a chunk, users of 1-40 events), so a window that
    # reaches back across a boundary must still read the user's earlier chunk.
    rng = np.random.default_rng(0)
    users = np.sort(rng.integers(0, 12, 200))
    rows = rng.integers(0, 30, 200)
    counts = rng.random(200) < 0.7
    monkeypatch.setattr(history_module, "WINDOW_CHUNK_ROWS", 7)
    expected = _windows_by_brute_force(users, rows, counts, 5)
    assert history_before(users, rows, counts, 5).tolist() == expected
    last = np.r_[np.flatnonzero(np.diff(users)), len(users) - 1]
    after = history_after(users, rows, counts, 5)
    for i in last:  # after a user's last event: that event's window plus the event if it counts
        tail = [*expected[i][1:], int(rows[i])] if counts[i] else expected[i]
        assert after[users[i]].tolist() == tail


def test_a_repeated_event_id_of_a_user_is_one_event() -> None:
    log = pa.table(
        {
            "user_id": ["u", "u", "v", "u", "u", "u"],
            "event_id": ["e1", "e2", "e1", "e1", None, None],
            "item_id": ["a", "b", "c", "a", "d", "d"],
        }
    )
    # u's second e1 goes; v's e1 is another user's event; rows without an id all stay.
    assert distinct_events(log).column("item_id").to_pylist() == ["a", "b", "c", "d", "d"]
    assert distinct_events(log.slice(0, 3)).num_rows == 3  # one e1 each for u and v
    assert distinct_events(log.drop_columns(["event_id"])).num_rows == 6


def _log(rows: list[tuple[str, str, str, int]]) -> pa.Table:
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event": [r[2] for r in rows],
            "ts": pa.array([EPOCH + dt.timedelta(hours=r[3]) for r in rows], pa.timestamp("ms", tz="UTC")),
        }
    )


def test_eval_users_take_recent_positives_as_history_and_every_event_as_seen() -> None:
    items = make_items(6)
    features = pa.table({"item_id": items.column("item_id")})
    features = features.append_column(
        "text", pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(12, np.float32)), 2)
    )
    context = _log(
        [("u1", "i3", "view", 2), ("u1", "i1", "click", 1), ("u1", "i2", "skip", 3), ("u2", "i4", "like", 1)]
    )
    held_out = _log([("u1", "i5", "purchase", 9), ("u3", "i0", "play", 9), ("u2", "i0", "skip", 9)])
    catalog = build_catalog(features, items, context)
    users = eval_users(context, held_out, catalog, ["view", "click", "like", "purchase", "play"], 3)
    assert users.user_ids.tolist() == ["u1", "u3"]  # u2's held-out event is a skip: nothing to find
    row = {item: k for k, item in enumerate(catalog.item_ids)}
    assert users.history.tolist() == [[-1, row["i1"], row["i3"]], [-1, -1, -1]]  # time order, skip left out
    assert sorted(users.seen.take(np.array([0])).indices.tolist()) == sorted(
        [row["i1"], row["i2"], row["i3"]]
    )
    assert users.truth.take(np.array([1])).indices.tolist() == [row["i0"]]
    assert users.history_length.tolist() == [2, 0]


def test_a_sample_of_eval_users_keeps_each_users_history_seen_and_truth_together() -> None:
    n = 50
    history = np.arange(n)[:, None] * np.ones((1, 2), dtype=np.int64)  # user k's history is [k, k]
    sets = ItemSets.from_pairs(np.arange(n), np.arange(n) + 1000, n)  # user k's item is k + 1000
    users = EvalUsers(np.array([f"u{k}" for k in range(n)]), history, sets, sets)
    assert users.sample(None, seed=0) is users and users.sample(n, seed=0) is users
    sample = users.sample(7, seed=3)
    kept = [int(u[1:]) for u in sample.user_ids]
    assert len(kept) == 7 and kept == sorted(kept)  # original order
    assert sample.history[:, 0].tolist() == kept
    assert sample.seen.indices.tolist() == sample.truth.indices.tolist() == [k + 1000 for k in kept]
    assert users.sample(7, seed=3).user_ids.tolist() == sample.user_ids.tolist()  # seeded


def test_windows_of_some_events_and_their_distinct_states_equal_the_event_by_event_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The windows of chosen events only (the ranker's examples) still read the whole log, across
    # chunks; each distinct one is held once, and every chosen event points at its own.
    rng = np.random.default_rng(1)
    users = np.sort(rng.integers(0, 12, 200))
    rows = rng.integers(0, 30, 200)
    counts = rng.random(200) < 0.5
    at = np.flatnonzero(rng.random(200) < 0.6)
    monkeypatch.setattr(history_module, "WINDOW_CHUNK_ROWS", 7)
    expected = np.array(_windows_by_brute_force(users, rows, counts, 5))[at]
    assert history_before(users, rows, counts, 5, at).tolist() == expected.tolist()
    states, state = distinct_histories(users, rows, counts, 5, at)
    assert states.dtype == np.int32 and state.dtype == np.int32
    assert states[state].tolist() == expected.tolist()
    # one state per (user, window): users with the same (e.g. empty) window keep their own
    assert len(states) == len({(int(users[i]), tuple(w)) for i, w in zip(at, expected.tolist(), strict=True)})
    nothing = distinct_histories(users, rows, counts, 5, np.zeros(0, dtype=np.int64))
    assert nothing[0].shape == (0, 5) and nothing[1].shape == (0,)
