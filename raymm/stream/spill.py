"""The spill file of :class:`~raymm.stream.state.UserStateStore`: users moved out of memory, one
SQLite table on local disk, a record as two columns (:func:`_spill_row`, :func:`_spilled_record`).
A cache, not a store (see :class:`Spill`): the state lives on in snapshots and the log."""

from __future__ import annotations

import functools
import shutil
import sqlite3
import tempfile
from array import array
from collections.abc import Collection, Container, Iterable
from pathlib import Path
from typing import Any

from raymm.stream.state import UserRecord

__all__ = ["Spill"]

#: The spill file's page cache (SQLite's default size): the memory it takes beyond the users kept.
_SPILL_CACHE_KIB = 2000
#: User ids per spill-file query (SQLite allows 32,766 parameters since 3.32, 999 before).
_READ_CHUNK = 900

#: Joins a record's ids into the spill file's ``ids`` column. A record with an id that holds it
#: goes to the file as JSON instead (:func:`_spill_row`).
_SEP = "\x1f"
_ROW = "ids, numbers"
#: Columns of a spill row: partition, user_id and ``_ROW``.
_COLUMNS = 4
#: Rows per INSERT statement when users are spilled (4 parameters a row; SQLite's limit is 32,766).
_WRITE_CHUNK = 256


@functools.cache
def _insert(rows: int) -> str:
    """The INSERT statement of ``rows`` spill rows."""
    row = "(" + ", ".join("?" * _COLUMNS) + ")"
    return f"INSERT OR REPLACE INTO users (partition, user_id, {_ROW}) VALUES " + ", ".join([row] * rows)


def _spill_row(record: UserRecord) -> tuple[str, bytearray]:
    """``record`` as the spill file's ``(ids, numbers)`` columns.

    ``ids``: the history, seen items and recent event ids joined by ``_SEP``; ``numbers``: int64s
    ``n_events, last_ts_ms``, the three lengths, the history times, the seen counts. A bytearray,
    not bytes: sqlite3 binds str, int and bytearray as they are, and looks anything else up in
    its adapter registry (two failed attribute lookups a value). A record with ``_SEP`` in an id
    is JSON in ``ids`` with empty ``numbers``.
    """
    history, seen, recent_ids = record.history, record.seen, record.recent_ids
    ids = [*history, *seen, *recent_ids]
    text = _SEP.join(ids)
    if ids and text.count(_SEP) != len(ids) - 1:
        return record.to_json(), bytearray()
    header = (record.n_events, record.last_ts_ms, len(history), len(seen), len(ids))
    return text, bytearray(array("q", [*header, *record.history_ts, *seen.values()]))


def _spilled_record(ids_column: str, numbers_column: bytes) -> UserRecord:
    """The record :func:`_spill_row` wrote as ``(ids_column, numbers_column)``."""
    if not numbers_column:
        return UserRecord.from_json(ids_column)
    numbers = array("q")
    numbers.frombytes(numbers_column)
    values = numbers.tolist()
    n_history, n_seen = values[2], values[3]
    ids = ids_column.split(_SEP) if values[4] else []
    times_end = 5 + n_history
    # Built field by field: the constructor's check (history and times of one length) holds by
    # construction here, and skipping it is a third of the cost of reading a user back.
    record: UserRecord = _new_record(UserRecord)
    record.history = ids[:n_history]
    record.history_ts = values[5:times_end]
    record.seen = dict(zip(ids[n_history : n_history + n_seen], values[times_end:], strict=True))
    record.recent_ids = ids[n_history + n_seen :]
    record.n_events = values[0]
    record.last_ts_ms = values[1]
    return record


_new_record = object.__new__


class Spill:
    """Users moved out of memory: one SQLite table on local disk, keyed by (partition, user).

    A cache, not a store: state survives a crash in snapshots and the log (design.md section 3,
    invariant 1), and a new store never reopens an old file (each gets a file of its own, removed
    on close). So the file has no journal, no fsync and an exclusive lock, and one transaction
    stays open for its whole life, never committed: a write changes pages in SQLite's page cache
    (bounded, ``_SPILL_CACHE_KIB``), which go to the file only when the cache is full, instead of
    every write's pages at every statement's commit. Readers use the same connection, so they see
    every write. A row is read back without being deleted (the store knows which users in memory
    have a stale row) and replaced when the user is spilled again. The store's lock guards every
    call.
    """

    def __init__(self, directory: Path | None) -> None:
        self._owned = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="raymm-spill-")) if directory is None else directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"users-{id(self):x}.sqlite"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # 16 KiB pages: a spilled user's row is ~0.5 KiB, and a batch's rows touch fewer pages.
        self._db.execute("PRAGMA page_size=16384")
        self._db.execute(f"PRAGMA cache_size=-{_SPILL_CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        self._db.execute(
            "CREATE TABLE users (partition INTEGER, user_id TEXT, ids TEXT, numbers BLOB, "
            "PRIMARY KEY (partition, user_id)) WITHOUT ROWID"
        )
        self._db.execute("BEGIN")
        #: Rows per partition, stale ones included.
        self._rows: dict[int, int] = {}

    def rows(self, partition: int | None = None) -> int:
        """Rows in the file (of ``partition``), stale ones included."""
        return self._rows.get(partition, 0) if partition is not None else sum(self._rows.values())

    def put(self, records: Iterable[tuple[int, str, UserRecord, bool]]) -> None:
        """Write ``(partition, user, record, has a stale row)`` rows, replacing the stale ones.

        Up to ``_WRITE_CHUNK`` rows an INSERT: sqlite3 releases the GIL around each statement
        step, so a row a step (``executemany``) handed the GIL to the client's I/O threads once
        a row, and bound a row at a time.
        """
        counts = self._rows
        values: list[Any] = []
        for partition, user_id, record, stale in records:
            if not stale:
                counts[partition] = counts.get(partition, 0) + 1
            values += (partition, user_id, *_spill_row(record))
        left, at = len(values) // _COLUMNS, 0
        while left:
            # Full chunks, then powers of two: a handful of statement texts, all in sqlite3's cache.
            rows = _WRITE_CHUNK if left >= _WRITE_CHUNK else 1 << (left.bit_length() - 1)
            self._db.execute(_insert(rows), values[at : at + rows * _COLUMNS])
            at += rows * _COLUMNS
            left -= rows

    def read(self, partition: int, user_ids: Collection[str]) -> dict[str, UserRecord]:
        """The records of those of ``user_ids`` the file holds in ``partition`` (rows stay)."""
        found: dict[str, UserRecord] = {}
        wanted = list(user_ids)
        for start in range(0, len(wanted), _READ_CHUNK):
            chunk = wanted[start : start + _READ_CHUNK]
            rows = self._db.execute(
                f"SELECT user_id, {_ROW} FROM users WHERE partition = ? AND user_id IN "
                f"({','.join('?' * len(chunk))})",
                (partition, *chunk),
            )
            for row in rows:
                found[row[0]] = _spilled_record(row[1], row[2])
        return found

    def get(self, user_id: str, partitions: Collection[int]) -> tuple[int, UserRecord] | None:
        """``user_id``'s row in the first of ``partitions`` that has one."""
        if not partitions:
            return None
        row = self._db.execute(
            f"SELECT partition, {_ROW} FROM users WHERE partition IN ({','.join('?' * len(partitions))}) "
            "AND user_id = ? LIMIT 1",
            (*partitions, user_id),
        ).fetchone()
        return None if row is None else (int(row[0]), _spilled_record(row[1], row[2]))

    def chunk(
        self, partition: int, after: str, size: int, skip: Container[str] = ()
    ) -> tuple[list[tuple[str, UserRecord]], str]:
        """The records of up to ``size`` rows of ``partition`` with a user id after ``after``, by
        user id, less those of the users in ``skip``; and the last user id read ("": no more rows)."""
        rows = self._db.execute(
            f"SELECT user_id, {_ROW} FROM users WHERE partition = ? AND user_id > ? ORDER BY user_id LIMIT ?",
            (partition, after, size),
        ).fetchall()
        records = [(row[0], _spilled_record(row[1], row[2])) for row in rows if row[0] not in skip]
        return records, rows[-1][0] if len(rows) == size else ""

    def drop_partition(self, partition: int) -> None:
        self._db.execute("DELETE FROM users WHERE partition = ?", (partition,))
        self._rows.pop(partition, None)

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)
