"""Snapshots of a partition's user state (raymm/stream/snapshot.py) without a broker: they round-trip
state and offset, refuse damage naming why, fall back past corrupt ones, are pruned, live on S3 as on
a local disk, and read the older format."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from raymm.stream.events import Event
from raymm.stream.snapshot import SnapshotCorrupt, SnapshotStore, decode_snapshot, encode_snapshot
from raymm.stream.state import UserRecord, UserStateStore
from tests.stream.state_events import SPEC, bounded_store, random_events


def _store_with(events: list[Event]) -> UserStateStore:
    store = UserStateStore(SPEC)
    store.add_partition(5)
    store.apply_batch(5, list(enumerate(events)))
    return store


def test_a_snapshot_round_trips_state_and_offset() -> None:
    store = _store_with(random_events(500, users=30, seed=2))
    data = encode_snapshot("raymm.events", 5, store.applied_offset(5), SPEC, store.partition_users(5))
    snapshot = decode_snapshot(data, "memory")
    assert (snapshot.topic, snapshot.partition, snapshot.applied_offset, snapshot.spec) == (
        "raymm.events",
        5,
        499,
        SPEC,
    )
    assert snapshot.users == store.export()[5][1]
    empty = decode_snapshot(encode_snapshot("t", 0, -1, SPEC, []), "memory")
    assert empty.users == {} and empty.applied_offset == -1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-10], "payload bytes"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "SHA-256"),
        (lambda b: b"garbage", "not a raymm state snapshot"),
        (lambda b: b[:20], "header is cut off"),
        (lambda b: b.replace(b'"format_version":2', b'"format_version":9', 1), "version 9"),
    ],
)
def test_a_damaged_snapshot_is_refused_naming_why(damage, message: str) -> None:  # type: ignore[no-untyped-def]
    data = encode_snapshot("t", 0, 3, SPEC, [("u", UserRecord(history=["a"]))])
    with pytest.raises(SnapshotCorrupt, match=message):
        decode_snapshot(damage(data), "snap-x")


def test_restore_falls_back_past_corrupt_snapshots_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshots = SnapshotStore(str(tmp_path), keep=3)
    events = random_events(90, users=5, seed=3)
    for end in (30, 60, 90):
        store = _store_with(events[:end])
        data = encode_snapshot("raymm.events", 5, end - 1, SPEC, store.partition_users(5))
        snapshots.save(data, "raymm.events", 5, end - 1)
    newest, middle, oldest = snapshots.list("raymm.events", 5)
    assert snapshots.restore("raymm.events", 5).snapshot.applied_offset == 89  # type: ignore[union-attr]

    raw = bytearray(Path(newest).read_bytes())
    raw[-5] ^= 0xFF
    Path(newest).write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="raymm.stream.snapshot"):
        restored = snapshots.restore("raymm.events", 5)
    assert restored.uri == middle and restored.snapshot is not None and restored.snapshot.applied_offset == 59
    assert restored.snapshot.users == _store_with(events[:60]).export()[5][1]
    assert any("SHA-256" in r.message for r in caplog.records)
    assert any(
        "previous good snapshot" in r.message and "replaying from offset 60" in r.message
        for r in caplog.records
    )

    for uri in (middle, oldest):
        Path(uri).write_bytes(b"RAYMM-STATE\n{")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raymm.stream.snapshot"):
        nothing = snapshots.restore("raymm.events", 5)
    assert nothing.snapshot is None and len(nothing.skipped) == 3
    assert any("from the start of the log" in r.message for r in caplog.records)


def test_old_snapshots_are_pruned_and_temporary_files_ignored(tmp_path: Path) -> None:
    snapshots = SnapshotStore(str(tmp_path), keep=2)
    for offset in range(5):
        snapshots.save(encode_snapshot("t", 1, offset, SPEC, []), "t", 1, offset)
    (Path(snapshots.directory("t", 1)) / "x.snap.tmp-123").write_bytes(b"half")
    kept = snapshots.list("t", 1)
    assert [Path(uri).name[:20] for uri in kept] == [f"{5:020d}", f"{4:020d}"]
    with pytest.raises(ValueError, match="keep must be at least 2"):
        SnapshotStore(str(tmp_path), keep=1)


def test_snapshots_live_on_s3(s3_dir: str) -> None:
    snapshots = SnapshotStore(s3_dir)
    store = _store_with(random_events(200, users=10, seed=4))
    uri = snapshots.save(
        encode_snapshot("raymm.events", 5, 199, SPEC, store.partition_users(5)), "raymm.events", 5, 199
    )
    assert uri.startswith("s3://")
    restored = snapshots.restore("raymm.events", 5)
    assert restored.uri == uri and restored.snapshot is not None
    assert restored.snapshot.users == store.export()[5][1]


def test_a_version_1_snapshot_is_read_with_no_forwards_and_unknown_history_times() -> None:
    """Snapshots written before forwarding (format 1: no ``forwarded``, no ``history_ts``) restore."""
    import hashlib

    import pyarrow as pa

    from raymm.stream.snapshot import _SCHEMA, MAGIC
    from raymm.stream.state import UNKNOWN_TS

    v1 = pa.schema([f for f in _SCHEMA if f.name != "history_ts"])
    table = pa.table(
        {
            "user_id": ["u1"],
            "history": [["i1", "i2"]],
            "seen_items": [["i1", "i2"]],
            "seen_counts": [[1, 1]],
            "n_events": [2],
            "last_ts_ms": [5],
            "recent_ids": [["e1", "e2"]],
        },
        schema=v1,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, v1) as writer:
        writer.write_table(table)
    payload = sink.getvalue().to_pybytes()
    header = {
        "format": "raymm.user-state",
        "format_version": 1,
        "topic": "raymm.events",
        "partition": 3,
        "applied_offset": 41,
        "n_users": 1,
        "spec": SPEC.to_json(),
        "created_at": "2026-01-01T00:00:00+00:00",
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    snapshot = decode_snapshot(MAGIC + json.dumps(header).encode() + b"\n" + payload, "v1")
    assert snapshot.forwarded == {}
    record = snapshot.users["u1"]
    assert (record.history, record.history_ts) == (["i1", "i2"], [UNKNOWN_TS, UNKNOWN_TS])
    assert snapshot.applied_offset == 41


def test_a_snapshot_of_a_store_with_spilled_users_round_trips(tmp_path: Path) -> None:
    store = bounded_store(tmp_path / "spill", 5, range(5, 6))
    store.apply_batch(5, list(enumerate(random_events(500, users=40, seed=6))))
    assert store.counts()["spilled"] > 30
    data = encode_snapshot("raymm.events", 5, store.applied_offset(5), SPEC, store.partition_users(5))
    snapshot = decode_snapshot(data, "memory")
    assert snapshot.users == store.export()[5][1] == _store_with(random_events(500, 40, 6)).export()[5][1]
    restored = UserStateStore(SPEC, max_users_in_memory=5, spill_dir=tmp_path / "restored")
    restored.add_partition(5, snapshot.applied_offset, snapshot.users)
    assert restored.counts() == {"in_memory": 5, "spilled": len(snapshot.users) - 5}
    assert restored.export() == store.export()
