"""User state from an interaction log, by the model's user-state spec (``model.user_state``).

A user is their ``max_history`` most recent items whose event counts (``user_state.events``),
oldest first, -1 padded on the left, plus every item they interacted with (seen, never
recommended again). One windowing function, :func:`history_before`, gives the history in front
of every event of a log (training examples, ranker examples) and :func:`eval_users` the state
after a whole log (evaluation and validation users); both are vectorised over all users.

The rule is the live state's (:class:`raymm.stream.state.UserRecord`), and
``tests/test_parity.py`` holds the two to the same answer on one log:

* order: by ``ts``, equal times in table order (a stable sort; online, in arrival order);
* a repeated event id of a user counts once, its first row (:func:`distinct_events`; online, a
  repeat is recognised while it is among the user's last ``dedupe_window`` event ids);
* items the catalog lacks hold their place in the window and are dropped from it after, the
  rest packed to the right: the live state knows no catalog (live items join it later), so it
  keeps the newest counting events whatever their item, and serving drops the ones its model
  does not know at request time. A window over known items only would reach further back than
  the stream can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymm.recommend.catalog import Catalog
from raymm.recommend.itemsets import ItemSets

_MS_PER_HOUR = 3_600_000.0


def distinct_events(interactions: pa.Table) -> pa.Table:
    """The interactions without the rows that repeat an earlier row's ``(user_id, event_id)``.

    An event sent twice (a producer retry, a client posting again) is one event, as the live
    state applies it once. Rows without an ``event_id`` (or a table without the column) are all
    kept; table order is kept.
    """
    if "event_id" not in interactions.column_names:
        return interactions
    ids = interactions.column("event_id")
    n_ids = len(ids) - ids.null_count
    # No id twice: nothing to look up (unique is cheaper than count_distinct here).
    if n_ids == 0 or len(pc.unique(ids)) - (ids.null_count > 0) == n_ids:
        return interactions
    keyed = pa.table(
        {
            "user_id": interactions.column("user_id"),
            "event_id": ids,
            "row": pa.array(np.arange(interactions.num_rows, dtype=np.int64)),
        }
    ).filter(pc.is_valid(ids))
    first = keyed.group_by(["user_id", "event_id"], use_threads=False).aggregate([("row", "min")])
    keep = np.asarray(pc.is_null(ids))
    keep[first.column("row_min").to_numpy()] = True
    return interactions.filter(pa.array(keep))


def by_user_and_time(interactions: pa.Table) -> pa.Table:
    """The interactions sorted by user, then time, equal times in table order (the order every
    window assumes), each event once (:func:`distinct_events`)."""
    return distinct_events(interactions).sort_by([("user_id", "ascending"), ("ts", "ascending")])


def positive_events(interactions: pa.Table, events: Sequence[str]) -> pa.Table:
    """Interactions whose event is one of ``events``, sorted by user then time."""
    keep = pc.is_in(interactions.column("event"), value_set=pa.array(list(events), pa.string()))
    return by_user_and_time(interactions.filter(keep))


def counts_event(interactions: pa.Table, events: Sequence[str]) -> np.ndarray:
    """(n,) bool: which rows' event is one of ``events``."""
    return np.asarray(pc.is_in(interactions.column("event"), value_set=pa.array(list(events), pa.string())))


def user_codes(interactions: pa.Table) -> np.ndarray:
    """(n,) int64 dense user codes of a table sorted by user (equal ids, equal codes)."""
    return np.asarray(
        pc.dictionary_encode(interactions.column("user_id")).combine_chunks().indices, dtype=np.int64
    )


def history_before(
    users: np.ndarray,
    rows: np.ndarray,
    counts: np.ndarray,
    max_history: int,
    at: np.ndarray | None = None,
    dtype: type[np.signedinteger] = np.int64,
) -> np.ndarray:
    """(n, max_history) for each event: the rows of its user's last ``max_history`` counting events
    strictly before it, oldest first, -1 padded on the left.

    ``users`` (n,) user codes and ``rows`` (n,) catalog rows of a log sorted by user then time,
    -1 for an item the catalog lacks (it takes its place in the window and is then dropped, see
    the module docstring); ``counts`` (n,) bool marks the events that enter a history. ``at``
    (m,) positions give the windows of those events alone, (m, max_history): the rest of the log
    still feeds them, but no window is built for it. ``dtype`` is the windows' integer type.
    """
    window = _window(users, rows, counts, max_history, at, dtype)
    return _known(window) if (rows[np.asarray(counts, dtype=bool)] < 0).any() else window


def distinct_histories(
    users: np.ndarray, rows: np.ndarray, counts: np.ndarray, max_history: int, at: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The windows of :func:`history_before` at the events ``at`` (ascending positions), each one once.

    Returns ``states`` (S, max_history) int32, the distinct windows in log order, and ``state``
    (m,) int32, the row of ``states`` that is each event's window. Two events of a user with no
    counting event between them (a skip after a click, say) have one window: at 60 events per
    user and a window of 100, one window per event is most of the memory of a ranker's examples.
    """
    counts = np.asarray(counts, dtype=bool)
    before = (np.cumsum(counts) - counts)[at]
    user = users[at]
    new = np.ones(len(at), dtype=bool)  # the first event, and each after a change of user or count
    new[1:] = (user[1:] != user[:-1]) | (before[1:] != before[:-1])
    states = history_before(users, rows, counts, max_history, at[new], np.int32)
    return states, (np.cumsum(new) - 1).astype(np.int32)


def _known(window: np.ndarray) -> np.ndarray:
    """``window`` without its -1 entries in the middle: the catalog rows packed to the right, in order."""
    return np.take_along_axis(window, np.argsort(window >= 0, axis=1, kind="stable"), axis=1)


#: Events whose windows :func:`_window` builds at a time: its index and mask temporaries are this
#: many rows, not the whole log's (at ``large``, 3M events x 100 entries, each temporary was 2.4 GB).
WINDOW_CHUNK_ROWS = 262_144


def _window(
    users: np.ndarray,
    rows: np.ndarray,
    counts: np.ndarray,
    max_history: int,
    at: np.ndarray | None = None,
    dtype: type[np.signedinteger] = np.int64,
) -> np.ndarray:
    """:func:`history_before` with the entries of unknown items left in place (-1)."""
    n = len(users)
    counts = np.asarray(counts, dtype=bool)
    at = np.arange(n) if at is None else np.asarray(at)
    window = np.full((len(at), max_history), -1, dtype=dtype)
    counted_rows = rows[counts]
    if n == 0 or counted_rows.size == 0:
        return window
    before = np.cumsum(counts) - counts  # counting events before each position, over the whole log
    first = np.r_[True, users[1:] != users[:-1]]
    user_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    floor = before[user_start]  # the first counting event of each event's user
    lags = np.arange(max_history, 0, -1)  # oldest (lag L) first, newest (lag 1) last
    for start in range(0, len(at), WINDOW_CHUNK_ROWS):
        part = at[start : start + WINDOW_CHUNK_ROWS]
        source = before[part, None] - lags[None, :]
        valid = source >= floor[part, None]
        window[start : start + len(part)] = np.where(valid, counted_rows[np.clip(source, 0, None)], -1)
    return window


def history_after(users: np.ndarray, rows: np.ndarray, counts: np.ndarray, max_history: int) -> np.ndarray:
    """(n_users, max_history): each user's history after all of their events (codes 0..n_users-1)."""
    n_users = int(users.max()) + 1 if len(users) else 0
    history = np.full((n_users, max_history), -1, dtype=np.int64)
    if not len(users):
        return history
    counts = np.asarray(counts, dtype=bool)
    window = _window(users, rows, counts, max_history)
    last = np.r_[np.flatnonzero(np.diff(users)), len(users) - 1]
    shifted = np.concatenate([window[last][:, 1:], rows[last][:, None]], axis=1)
    history[users[last]] = np.where(counts[last][:, None], shifted, window[last])
    return _known(history) if (rows[counts] < 0).any() else history


@dataclass
class EvalUsers:
    """Users to score: recent ``history`` (U, L) catalog rows, what they had ``seen``, held-out ``truth``."""

    user_ids: np.ndarray
    history: np.ndarray
    seen: ItemSets
    truth: ItemSets

    @property
    def history_length(self) -> np.ndarray:
        """(U,) number of real entries in each history."""
        return (self.history >= 0).sum(axis=1)

    def sample(self, n: int | None, seed: int) -> EvalUsers:
        """At most ``n`` of these users, drawn with ``seed``, in their original order; all of them
        (``self``) when ``n`` is None or not below the user count."""
        if n is None or n >= len(self.user_ids):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self.user_ids), n, replace=False))
        return EvalUsers(self.user_ids[rows], self.history[rows], self.seen.take(rows), self.truth.take(rows))


def eval_users(
    context: pa.Table, held_out: pa.Table, catalog: Catalog, events: Sequence[str], max_history: int
) -> EvalUsers:
    """Users with positives in ``held_out``: history from ``context`` (earlier events), truth from ``held_out``.

    Seen items are every item of the user in ``context`` (any event), excluded from ranking; a
    held-out positive on a seen item (a repeat) is dropped from the truth, since it cannot be
    recommended. A user whose every held-out positive is a repeat has an empty truth and is not
    evaluated.
    Users without a single counting event in ``context`` get an all-padding history. The history
    is the live state's window: the last ``max_history`` counting events whatever their item,
    less the items ``catalog`` lacks (see the module docstring); seen holds catalog items only.
    """
    truth_events = positive_events(held_out, events)
    truth_rows = catalog.positions(truth_events.column("item_id"))
    truth_users = np.asarray(truth_events.column("user_id").to_pylist(), dtype=object)
    user_ids = np.unique(truth_users[truth_rows >= 0].astype(str))
    lookup = pa.array(user_ids, pa.string())

    ordered = by_user_and_time(context)
    codes = np.asarray(pc.fill_null(pc.index_in(ordered.column("user_id"), value_set=lookup), -1))
    rows = catalog.positions(ordered.column("item_id"))
    mine = codes >= 0
    history = np.full((len(user_ids), max_history), -1, dtype=np.int64)
    counted = counts_event(ordered, events)[mine] if ordered.num_rows else np.zeros(0, bool)
    state = history_after(codes[mine], rows[mine], counted, max_history)
    history[: len(state)] = state
    keep = mine & (rows >= 0)
    seen = ItemSets.from_pairs(codes[keep], rows[keep], len(user_ids))
    t_users = np.asarray(
        pc.fill_null(pc.index_in(pa.array(truth_users.astype(str)), value_set=lookup), -1)
    ).astype(np.int64)
    # A held-out positive on an item the user already had is excluded from ranking, so it could
    # never be retrieved: it leaves the truth (repeat interactions in imported data).
    n_items = catalog.n_items
    seen_keys = codes[keep].astype(np.int64) * n_items + rows[keep]
    t_keep = truth_rows >= 0
    t_keep &= ~np.isin(t_users * n_items + truth_rows, seen_keys)
    truth = ItemSets.from_pairs(t_users[t_keep], truth_rows[t_keep], len(user_ids))
    return EvalUsers(user_ids, history, seen, truth)


def held_out_recency(context: pa.Table, held_out: pa.Table, user_ids: np.ndarray) -> np.ndarray:
    """(U,) log1p hours from each user's last ``context`` event to the first ``held_out`` event (NaN if none).

    The serving-time analogue of the ranker's recency for users scored at the start of a period.
    """
    last = context.group_by("user_id").aggregate([("ts", "max")])
    position = np.asarray(
        pc.fill_null(pc.index_in(pa.array(user_ids.astype(str)), value_set=last.column("user_id")), -1)
    )
    last_ms = last.column("ts_max").cast(pa.int64()).to_numpy()
    start_ms = float(pc.min(held_out.column("ts")).cast(pa.int64()).as_py())
    hours = (start_ms - last_ms[np.clip(position, 0, None)]) / _MS_PER_HOUR
    return np.where(position >= 0, np.log1p(np.maximum(hours, 0.0)), np.nan).astype(np.float32)


def item_counts(
    interactions: pa.Table, catalog: Catalog, events: Sequence[str], half_life_days: float | None = None
) -> np.ndarray:
    """(N,) counting events per catalog item in ``interactions`` (what popularity knows).

    With ``half_life_days``, each event counts ``0.5 ** (age / half_life_days)``, its age taken
    from the latest event of ``interactions``: recent popularity, float counts.
    """
    positives = positive_events(interactions, events)
    rows = catalog.positions(positives.column("item_id"))
    keep = rows >= 0
    if half_life_days is None:
        return np.bincount(rows[keep], minlength=catalog.n_items)
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be positive, got {half_life_days}")
    ts = positives.column("ts").cast(pa.int64()).to_numpy()
    if ts.size == 0:
        return np.zeros(catalog.n_items)
    age_days = (ts.max() - ts) / 86_400_000.0
    weights = 0.5 ** (age_days / half_life_days)
    return np.bincount(rows[keep], weights=weights[keep], minlength=catalog.n_items)
