"""Snapshots of one partition's user state and its applied offset, in one checksummed object.

A snapshot file is a header line and an Arrow IPC stream:

    RAYMM-STATE\\n{"format": ..., "partition": 3, "applied_offset": 4711, "sha256": ..., ...}\\n<arrow>

The header records the topic, the partition, the offset applied last, the highest source offset
applied per source partition of forwarded events (:mod:`raymm.stream.consumer`), the state spec,
the user count, the payload's length and its SHA-256. Files live under ``<root>/<topic>/p<partition>/``,
named by the next offset to read and the time they were taken, so the newest sorts last. They
are written under a temporary name and renamed (:func:`raymm.data.io.write_bytes`), on a local
path or any pyarrow filesystem URI. :meth:`SnapshotStore.restore` takes the newest snapshot whose
checksum holds, says in the log which ones it skipped and why, and keeps ``keep`` per partition so
there is a previous good one to fall back to.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from raymm.data import io
from raymm.errors import DataError, RaymmError
from raymm.stream.state import StateSpec, UserRecord

log = logging.getLogger(__name__)

MAGIC = b"RAYMM-STATE\n"
FORMAT = "raymm.user-state"
#: 2 adds ``forwarded`` to the header and ``history_ts`` to the users; version 1 snapshots are read
#: as having no forwards, and their history times as unknown (older than any event).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SUFFIX = ".snap"
#: How many times a restore lists a partition's snapshots while another owner prunes them.
_RESTORE_LISTINGS = 3

_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("history", pa.list_(pa.string())),
        ("seen_items", pa.list_(pa.string())),
        ("seen_counts", pa.list_(pa.int64())),
        ("n_events", pa.int64()),
        ("last_ts_ms", pa.int64()),
        ("recent_ids", pa.list_(pa.string())),
        ("history_ts", pa.list_(pa.int64())),
    ]
)


class SnapshotCorrupt(RaymmError):
    """A snapshot that cannot be trusted: truncated, a checksum that does not match, or not one."""


@dataclass(frozen=True)
class PartitionSnapshot:
    """One partition's users and the offset applied last, as a snapshot holds them."""

    topic: str
    partition: int
    applied_offset: int
    spec: StateSpec
    created_at: dt.datetime
    users: dict[str, UserRecord]
    #: {source partition: the highest source offset of a forwarded event applied}.
    forwarded: dict[int, int] = field(default_factory=dict)


def encode_snapshot(
    topic: str,
    partition: int,
    applied_offset: int,
    spec: StateSpec,
    users: Iterable[tuple[str, UserRecord]],
    created_at: dt.datetime | None = None,
    forwarded: dict[int, int] | None = None,
) -> bytes:
    """The bytes of a snapshot of ``users`` at ``applied_offset``; see the module docstring."""
    ids: list[str] = []
    history: list[list[str]] = []
    items: list[list[str]] = []
    counts: list[list[int]] = []
    n_events: list[int] = []
    last_ts: list[int] = []
    recent: list[list[str]] = []
    history_ts: list[list[int]] = []
    for user_id, record in users:
        ids.append(user_id)
        history.append(record.history)
        items.append(list(record.seen))
        counts.append(list(record.seen.values()))
        n_events.append(record.n_events)
        last_ts.append(record.last_ts_ms)
        recent.append(record.recent_ids)
        history_ts.append(record.history_ts)
    table = pa.Table.from_arrays(
        [
            pa.array(column, type=f.type)
            for column, f in zip(
                (ids, history, items, counts, n_events, last_ts, recent, history_ts), _SCHEMA, strict=True
            )
        ],
        schema=_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _SCHEMA, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    payload = sink.getvalue().to_pybytes()
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "topic": topic,
        "partition": partition,
        "applied_offset": applied_offset,
        "forwarded": {str(p): o for p, o in sorted((forwarded or {}).items())},
        "n_users": table.num_rows,
        "spec": spec.to_json(),
        "created_at": (created_at or dt.datetime.now(dt.UTC)).isoformat(),
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload


def decode_snapshot(data: bytes, where: str) -> PartitionSnapshot:
    """The snapshot in ``data``; :class:`SnapshotCorrupt` naming ``where`` and what is wrong."""
    if not data.startswith(MAGIC):
        raise SnapshotCorrupt(f"{where}: not a raymm state snapshot (no {MAGIC!r} header)")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise SnapshotCorrupt(f"{where}: the header is cut off")
    try:
        header = json.loads(data[len(MAGIC) : end])
        payload = data[end + 1 :]
        if header["format"] != FORMAT or header["format_version"] not in READABLE_VERSIONS:
            raise SnapshotCorrupt(
                f"{where}: format {header['format']!r} version {header['format_version']}, this raymm "
                f"reads {FORMAT!r} versions {', '.join(map(str, READABLE_VERSIONS))}"
            )
        if len(payload) != header["payload_bytes"]:
            raise SnapshotCorrupt(
                f"{where}: {len(payload)} payload bytes, the header says {header['payload_bytes']}"
            )
        if hashlib.sha256(payload).hexdigest() != header["sha256"]:
            raise SnapshotCorrupt(f"{where}: the payload's SHA-256 does not match the header's")
        table = pa.ipc.open_stream(payload).read_all()
        spec = StateSpec.from_json(header["spec"])
        snapshot = PartitionSnapshot(
            topic=str(header["topic"]),
            partition=int(header["partition"]),
            applied_offset=int(header["applied_offset"]),
            spec=spec,
            created_at=dt.datetime.fromisoformat(header["created_at"]),
            users=_records(table),
            forwarded={int(p): int(o) for p, o in header.get("forwarded", {}).items()},
        )
    except SnapshotCorrupt:
        raise
    except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise SnapshotCorrupt(f"{where}: unreadable ({type(exc).__name__}: {exc})") from None
    if len(snapshot.users) != header["n_users"]:
        raise SnapshotCorrupt(f"{where}: {len(snapshot.users)} users, the header says {header['n_users']}")
    return snapshot


def _records(table: pa.Table) -> dict[str, UserRecord]:
    names = _SCHEMA.names
    columns = {name: table.column(name).to_pylist() for name in names if name in table.schema.names}
    if "history_ts" not in columns:  # version 1: the history's times were not kept
        columns["history_ts"] = [[] for _ in range(table.num_rows)]
    return {
        user_id: UserRecord(history, dict(zip(items, counts, strict=True)), n_events, last_ts, recent, times)
        for user_id, history, items, counts, n_events, last_ts, recent, times in zip(
            *(columns[name] for name in names), strict=True
        )
    }


@dataclass(frozen=True)
class Restored:
    """What :meth:`SnapshotStore.restore` found: the snapshot (None: replay from the start of the
    log), its URI, and the newer snapshots it skipped as corrupt, with why."""

    snapshot: PartitionSnapshot | None
    uri: str | None
    skipped: tuple[str, ...] = ()


class SnapshotStore:
    """Snapshots of partitions under ``root`` (a local path or a pyarrow filesystem URI)."""

    def __init__(self, root: str, keep: int = 3) -> None:
        if keep < 2:
            raise ValueError(
                f"keep must be at least 2 (a corrupt newest one needs a previous one), got {keep}"
            )
        self.root = io.absolute(str(root))
        self.keep = keep

    def directory(self, topic: str, partition: int) -> str:
        """Where ``partition``'s snapshots live."""
        return io.join(self.root, topic, f"p{partition:05d}")

    def save(self, snapshot_bytes: bytes, topic: str, partition: int, applied_offset: int) -> str:
        """Write one snapshot (atomically) and drop the oldest beyond ``keep``; returns its URI.

        A snapshot is never overwritten: its name is the next offset, the time and a random
        suffix, so two owners of one partition (an upgrade's two clusters, a roll-out's two sets
        of shards) writing the same offset at the same microsecond write two files. Both hold
        the same state, a deterministic fold of the log up to that offset. Either owner may
        prune the other's old snapshots; one already gone is no error.
        """
        now_us = int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)
        name = f"{applied_offset + 1:020d}-{now_us:017d}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        uri = io.join(self.directory(topic, partition), name)
        io.write_bytes(snapshot_bytes, uri)
        for old in self.list(topic, partition)[self.keep :]:
            with contextlib.suppress(FileNotFoundError):  # the other owner pruned it first
                io.remove(old)
        return uri

    def list(self, topic: str, partition: int) -> list[str]:
        """URIs of ``partition``'s snapshots, newest first (temporary files left by a crash are not
        snapshots and are not listed)."""
        directory = self.directory(topic, partition)
        if not io.exists(directory):
            return []
        names = [name for name in io.list_dir(directory) if name.endswith(SUFFIX)]
        return [io.join(directory, name) for name in sorted(names, reverse=True)]

    def restore(self, topic: str, partition: int) -> Restored:
        """The newest snapshot of ``partition`` whose checksum holds.

        Each corrupt one is skipped with a warning in the log naming it and why; so is the start
        of the log when none is valid (the partition is then replayed from its first offset).
        """
        skipped: list[str] = []
        tried: set[str] = set()
        listed = self.list(topic, partition)
        for attempt in range(_RESTORE_LISTINGS):
            found = _newest_valid(topic, partition, [u for u in listed if u not in tried], skipped)
            tried.update(listed)
            if found is not None:
                return found
            # Every one listed was corrupt, or some vanished: another owner pruned them after
            # writing newer ones. List again; stop when the listing no longer changes.
            again = self.list(topic, partition)
            if again == listed or attempt == _RESTORE_LISTINGS - 1:
                break
            listed = again
        if skipped:
            log.warning(
                "%s partition %d: no valid snapshot (%d corrupt); replaying the partition from the start "
                "of the log",
                topic,
                partition,
                len(skipped),
            )
        return Restored(None, None, tuple(skipped))


def _newest_valid(topic: str, partition: int, listed: list[str], skipped: list[str]) -> Restored | None:
    """The first snapshot of ``listed`` (newest first) that is valid; ``skipped`` gets why not."""
    for uri in listed:
        try:
            snapshot = decode_snapshot(io.read_bytes(uri, "state snapshot"), uri)
        except (SnapshotCorrupt, DataError) as exc:
            if not io.exists(uri):
                continue  # pruned by another owner since the listing: not corrupt
            log.warning("skipping corrupt snapshot of %s partition %d: %s", topic, partition, exc)
            skipped.append(str(exc))
            continue
        if snapshot.topic != topic or snapshot.partition != partition:
            reason = f"{uri}: holds {snapshot.topic} partition {snapshot.partition}, not {topic} {partition}"
            log.warning("skipping misplaced snapshot: %s", reason)
            skipped.append(reason)
            continue
        if skipped:
            log.warning(
                "%s partition %d: restored the previous good snapshot %s (applied offset %d) after "
                "skipping %d corrupt one(s); replaying from offset %d",
                topic,
                partition,
                uri,
                snapshot.applied_offset,
                len(skipped),
                snapshot.applied_offset + 1,
            )
        return Restored(snapshot, uri, tuple(skipped))
    return None
