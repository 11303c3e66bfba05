"""User state without a broker (raymm/stream/state.py): the spec's windows, exactly-once apply by
offset, dedupe by event id, and the spill file. Its snapshots are tests/stream/test_snapshot.py's."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest

from raymm.errors import DataError
from raymm.models.config import UserStateConfig
from raymm.stream.events import Event
from raymm.stream.snapshot import decode_snapshot, encode_snapshot
from raymm.stream.state import BatchResult, PartitionNotHeld, StateSpec, UserRecord, UserStateStore
from tests.stream.state_events import EPOCH, SPEC, bounded_store, event, random_events


def test_the_spec_keeps_a_bounded_window_of_counting_events_and_every_seen_item() -> None:
    store = UserStateStore(SPEC)
    store.add_partition(0)
    kinds = ["click", "view", "like", "click", "skip", "like"]
    for i, kind in enumerate(kinds):
        store.apply(0, i, event(i, item=f"i{i % 4}", kind=kind))
    state = store.get("u")
    assert state is not None
    # counting events: i0 click, i2 like, i3 click, i1(5) like -> the last three, oldest first
    assert state.history == ("i2", "i3", "i1")
    assert state.seen == {"i0": 2, "i1": 2, "i2": 1, "i3": 1}
    assert state.n_events == 6
    assert state.last_ts_ms == int((EPOCH + dt.timedelta(seconds=5)).timestamp() * 1000)
    assert store.get("someone-else") is None


def test_max_seen_keeps_the_most_recently_touched_items_through_spill_and_snapshot(tmp_path: Path) -> None:
    spec = StateSpec(max_history=3, events=frozenset({"click", "like"}), dedupe_window=4, max_seen=3)
    store = UserStateStore(spec, max_users_in_memory=1, spill_dir=tmp_path)
    store.add_partition(0)
    items = ["a", "b", "c", "a", "d", "e", "a"]  # a touched again before it is the oldest
    for i, item in enumerate(items):
        store.apply(0, 2 * i, event(i, item=item))
        store.apply(0, 2 * i + 1, event(100 + i, user="other"))  # "u" goes to the spill file and back
    state = store.get("u")
    assert state is not None and state.n_events == len(items)
    assert list(state.seen) == ["d", "e", "a"] and state.seen["a"] == 3  # b and c dropped, a kept
    assert state.history == ("d", "e", "a")
    data = encode_snapshot("raymm.events", 0, store.applied_offset(0), spec, store.partition_users(0))
    snapshot = decode_snapshot(data, "memory")
    assert snapshot.spec == spec and list(snapshot.users["u"].seen) == ["d", "e", "a"]
    # a snapshot written before max_seen existed records no bound: every item was kept
    assert StateSpec.from_json({k: v for k, v in spec.to_json().items() if k != "max_seen"}).max_seen is None
    with pytest.raises(ValueError, match="max_seen"):
        StateSpec(3, frozenset({"like"}), max_seen=0)
    store.close()


def test_apply_is_idempotent_by_offset_and_by_event_id() -> None:
    store = UserStateStore(SPEC)
    store.add_partition(0)
    first = store.apply_batch(0, [(0, event(0)), (1, event(1)), (2, None)])
    assert (first.applied, first.rejected) == (2, 1)
    again = store.apply_batch(0, [(0, event(0)), (1, event(1)), (2, None), (3, event(3))])
    assert (again.applied, again.replayed) == (1, 3)
    retry = store.apply_batch(0, [(4, event(3))])  # the same event id at a new offset
    assert (retry.applied, retry.duplicates) == (0, 1)
    assert store.applied_offset(0) == 4
    state = store.get("u")
    assert state is not None and state.n_events == 3 and state.history == ("i0", "i1", "i3")
    with pytest.raises(
        PartitionNotHeld, match=r"^partition 1 of .* is not held here \(held: \[0\]\)$"
    ) as not_held:
        store.apply(1, 0, event(9))  # partition 1 was never added
    assert isinstance(not_held.value, KeyError) and not_held.value.partition == 1
    store.drop_partition(0)
    with pytest.raises(PartitionNotHeld, match=r"held: none"):
        store.applied_offset(0)  # dropped: its offset is gone with it


def test_a_partition_cannot_be_added_twice_and_dropping_forgets_its_users() -> None:
    store = UserStateStore(SPEC)
    store.add_partition(2, applied_offset=10, users={"u": UserRecord(history=["a"])})
    with pytest.raises(ValueError, match=r"partition 2 .* held already"):
        store.add_partition(2)
    assert store.get("u") is not None and store.applied_offset(2) == 10
    store.drop_partition(2)
    assert store.get("u") is None and store.partitions() == []


def test_the_spill_file_bounds_memory_and_changes_nothing(tmp_path: Path) -> None:
    events = random_events(3000, users=120, seed=1)
    unbounded = UserStateStore(SPEC)
    bounded = UserStateStore(SPEC, max_users_in_memory=7, spill_dir=tmp_path)
    for store in (unbounded, bounded):
        for partition in range(3):
            store.add_partition(partition)
        for offset, e in enumerate(events):
            store.apply(hash(e.user_id) % 3, offset, e)
    assert bounded.counts()["in_memory"] == 7 and bounded.counts()["spilled"] == 113
    assert bounded.export() == unbounded.export()
    for user in ("u0", "u77", "u119"):
        assert bounded.get(user) == unbounded.get(user)
    bounded.drop_partition(0)
    assert bounded.counts()["in_memory"] + bounded.counts()["spilled"] == sum(
        len(users) for p, (_, users) in unbounded.export().items() if p != 0
    )
    bounded.close()
    assert not list(tmp_path.iterdir())


def test_the_spec_comes_from_the_model_config_and_the_artifact(tmp_path: Path) -> None:
    config = UserStateConfig(max_history=7, events=["like"])
    assert StateSpec.of(config, dedupe_window=0) == StateSpec(7, frozenset({"like"}), 0)
    (tmp_path / "manifest.json").write_text(
        json.dumps({"config": {"model": {"user_state": config.model_dump()}}})
    )
    assert StateSpec.from_artifact(tmp_path).max_history == 7
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(DataError, match=r"manifest\.json records no model\.user_state: not a raymm model"):
        StateSpec.from_artifact(tmp_path)


def _by_partition(events: list[Event], partitions: int = 3) -> dict[int, list[tuple[int, Event]]]:
    """Each partition's (offset, event) messages, a user always on one partition."""
    messages: dict[int, list[tuple[int, Event]]] = {p: [] for p in range(partitions)}
    for e in events:
        partition = int(e.user_id[1:]) % partitions
        messages[partition].append((len(messages[partition]), e))
    return messages


def test_spilled_users_read_back_a_batch_at_a_time_end_as_read_back_one_event_at_a_time(
    tmp_path: Path,
) -> None:
    messages = _by_partition(random_events(3000, users=150, seed=5))
    one_by_one = bounded_store(tmp_path / "one", 9)
    batched = bounded_store(tmp_path / "batch", 9)
    unbounded = UserStateStore(SPEC)
    for partition in range(3):
        unbounded.add_partition(partition)
    for partition, batch in messages.items():
        for offset, e in batch:
            one_by_one.apply(partition, offset, e)
    totals = BatchResult()
    for start in range(
        0, max(map(len, messages.values())), 250
    ):  # the partitions' batches interleaved, as polls return them
        for partition, batch in messages.items():
            part = batched.apply_batch(partition, batch[start : start + 250])
            totals = BatchResult(
                totals.applied + part.applied, duplicates=totals.duplicates + part.duplicates
            )
            unbounded.apply_batch(partition, batch[start : start + 250])
    assert batched.counts()["spilled"] > 100
    assert totals.applied + totals.duplicates == 3000 and totals.duplicates > 0
    assert batched.export() == one_by_one.export() == unbounded.export()
    assert batched.counts() == one_by_one.counts()


def test_a_user_read_back_and_spilled_again_keeps_its_latest_state_once(tmp_path: Path) -> None:
    store = bounded_store(tmp_path, 1, range(1))
    store.apply(0, 0, event(0, "u1"))
    store.apply(0, 1, event(1, "u2"))  # u1 spilled
    store.apply(0, 2, event(2, "u1"))  # u1 back in memory (its row in the file is now stale), u2 spilled
    assert store.counts() == {"in_memory": 1, "spilled": 1}
    state = store.get("u1")
    assert state is not None and state.history == ("i0", "i2")
    users = list(store.partition_users(0))
    assert sorted(u for u, _ in users) == ["u1", "u2"] and dict(users)["u1"].history == ["i0", "i2"]
    store.apply(0, 3, event(3, "u2"))  # u1 spilled again over its stale row
    store.apply(0, 4, event(4, "u3"))
    assert store.counts() == {"in_memory": 1, "spilled": 2}
    state = store.get("u1")
    assert state is not None and state.history == ("i0", "i2") and state.n_events == 2
    assert store.apply(0, 5, event(6, "u1", event_id="e2")) is False  # still deduped after two trips
    store.close()


def test_dropping_a_partition_drops_its_spilled_users_and_a_reader_on_another_thread_finds_the_rest(
    tmp_path: Path,
) -> None:
    messages = _by_partition(random_events(600, users=60, seed=7))
    store = bounded_store(tmp_path, 4)
    for partition, batch in messages.items():
        store.apply_batch(partition, batch)
    before = store.export()
    store.apply(0, len(messages[0]), event(9999, "u0"))  # u0 back in memory, a stale row left behind
    spilled_0 = [u for u in before[0][1] if u != "u0"]
    store.drop_partition(0)
    assert all(store.get(u) is None for u in [*spilled_0, "u0"])
    assert store.counts()["in_memory"] + store.counts()["spilled"] == len(before[1][1]) + len(before[2][1])
    found: dict[str, object] = {}
    reader = threading.Thread(target=lambda: found.update({u: store.get(u) for u in before[1][1]}))
    reader.start()
    reader.join()
    assert {u: s.history for u, s in found.items()} == {  # type: ignore[attr-defined]
        u: tuple(r.history) for u, r in before[1][1].items()
    }
    store.add_partition(0, before[0][0], before[0][1])  # taken over again from its snapshot
    assert store.export()[0] == before[0]


def test_a_record_with_the_spill_separator_in_an_id_spills_as_it_is(tmp_path: Path) -> None:
    store = bounded_store(tmp_path, 1, range(1))
    odd = "item\x1fwith\x1fseparators"
    store.apply(0, 0, event(0, "u1", item=odd, event_id="id\x1f1"))
    store.apply(0, 1, event(1, "u2", kind="view"))  # u1 spilled
    store.apply(0, 2, event(2, "u2", event_id="id\x1f1"))
    state = store.get("u1")
    assert state is not None and state.history == (odd,) and state.seen == {odd: 1}
    assert store.apply(0, 3, event(3, "u1", event_id="id\x1f1")) is False
    # Records no event makes (an empty id, nothing seen), restored from a snapshot, spill as they are.
    odd_records = {"u3": UserRecord(history=[""], seen={"": 2}, recent_ids=[""]), "u4": UserRecord()}
    store.add_partition(1, 7, odd_records)
    assert store.counts()["in_memory"] == 1
    assert dict(store.partition_users(1)) == odd_records
