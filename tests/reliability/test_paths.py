"""No user id, item id or request string ever becomes part of a file path.

Per-user and per-item data reaches disk in two places, both driven here with hostile ids: the user
state's spill file (:mod:`raymm.stream.state`, one SQLite file named by the store, ids as bound
parameters) and the snapshots (:mod:`raymm.stream.snapshot`, named by offset, time and a random
suffix under ``<root>/<topic>/p<partition>``, ids inside the Arrow payload). The ids go in through
the real decoder where it accepts them, and the state they carry comes back exactly.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from raymm.stream.events import MAX_ID_LENGTH, Event, EventDecoder, EventLimits, UserEvent
from raymm.stream.snapshot import SnapshotStore, encode_snapshot
from raymm.stream.state import StateSpec, UserStateStore

SPEC = StateSpec(max_history=5, events=frozenset({"like", "click", "view"}))
TOPIC = "raymm.events"
PARTITIONS = 2
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
HOSTILE = [
    "../../etc/passwd",
    "../../../../../../../../tmp/raymm-escaped",
    "..",
    ".",
    "/",
    "a/b",
    "a\\b",
    "..\\..\\windows",
    "\x00",
    "nul\x00byte",
    "C:\\x",
    "~",
    "$HOME",
    "%2e%2e%2f",
    "file:///etc/passwd",
    "s3://bucket/key",
    "a\x1fb",  # the spill file's own id separator
    " ",
    "\n",
    "*",
    "é/ü",
    "\U0001f600/..",
    "x" * MAX_ID_LENGTH,
    "y/" * (MAX_ID_LENGTH // 2),
]
SNAPSHOT_NAME = re.compile(r"\d{20}-\d{17}-[0-9a-f]{8}\.snap")
SPILL_NAME = re.compile(r"users-[0-9a-f]+\.sqlite")


def _events(escape: str) -> list[Event]:
    """Events whose user and item ids are all hostile, decoded as a consumer decodes them (ids over
    the decoder's 256 characters are built directly: the store itself sets no bound)."""
    ids = [*HOSTILE, escape]
    limits = EventLimits(max_key_bytes=4 * MAX_ID_LENGTH, earliest=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    decode = EventDecoder(limits, NOW)
    events = []
    for i, user_id in enumerate(ids):
        for j, kind in enumerate(("view", "click", "like")):
            item_id = ids[(i + j + 1) % len(ids)]
            event = UserEvent(
                event_id=f"e{i}-{j}",
                user_id=user_id,
                item_id=item_id,
                event=kind,
                ts=NOW - dt.timedelta(seconds=i),
            )
            events.append(decode(*event.encode()))
    long_ids = ["z" * 10_000, "../" * 5_000]
    events += [
        Event(f"long-{n}", user_id, long_ids[1 - n], "like", 1_780_000_000_000)
        for n, user_id in enumerate(long_ids)
    ]
    return events


def _files(root: Path) -> list[Path]:
    return [Path(directory, name) for directory, _, names in os.walk(root) for name in names]


def test_hostile_ids_never_reach_a_file_path(tmp_path: Path) -> None:
    configured = tmp_path / "a" / "b" / "c"  # deep, so that "../.." stays inside tmp_path and is seen
    state_root, spill_dir = configured / "state", configured / "spill"
    escape = tmp_path.parent / f"{tmp_path.name}-escaped"  # an absolute path, outside tmp_path
    events = _events(str(escape / "user"))
    assert len({e.user_id for e in events}) == len(HOSTILE) + 3

    store = UserStateStore(SPEC, topic=TOPIC, max_users_in_memory=3, spill_dir=spill_dir)
    snapshots = SnapshotStore(str(state_root))
    for partition in range(PARTITIONS):
        store.add_partition(partition)
    for offset, event in enumerate(events):
        store.apply(offset % PARTITIONS, offset, event)
    assert store.counts()["spilled"] > 0, "the spill file was not used"
    spilled = _files(configured)  # the spill file, while the store is open
    expected = store.export()
    for partition in range(PARTITIONS):
        applied = store.applied_offset(partition)
        data = encode_snapshot(TOPIC, partition, applied, SPEC, store.partition_users(partition))
        snapshots.save(data, TOPIC, partition, applied)
    store.close()

    # Every id's state comes back exactly, from the snapshot.
    for partition, (applied, users) in expected.items():
        restored = snapshots.restore(TOPIC, partition).snapshot
        assert restored is not None and restored.applied_offset == applied
        assert restored.users == users
    assert {u for _, users in expected.values() for u in users} == {e.user_id for e in events}

    # Files exist only where configured, named by the store, never by an id.
    assert spilled and all(p.parent == spill_dir and SPILL_NAME.fullmatch(p.name) for p in spilled), spilled
    written = _files(tmp_path)
    assert written, "no snapshot was written"
    for path in written:
        relative = path.relative_to(state_root).parts  # ValueError: a file outside state_root
        assert len(relative) == 3 and relative[0] == TOPIC and re.fullmatch(r"p\d{5}", relative[1]), path
        assert SNAPSHOT_NAME.fullmatch(relative[2]), path
    assert not escape.exists()
    assert not Path("/tmp/raymm-escaped").exists()
