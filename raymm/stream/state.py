"""Live user state from ``raymm.events``, by the model's user-state spec, applied exactly once.

A user's state lives in their owner partition (:mod:`raymm.stream.ownership`; an event that
arrives elsewhere is forwarded there by the consumer), and a consumer owns whole partitions. So the state is kept per partition, together with the offset
applied last in it: :meth:`UserStateStore.apply_batch` skips anything at or below that offset,
which makes re-delivery after a restart harmless, and a snapshot of one partition (its users and
its offset, :mod:`raymm.stream.snapshot`) is all a new owner needs to take it over.

Per user, by :class:`StateSpec` (the artifact's ``model.user_state``):

* ``history``: the ``max_history`` most recent items whose event counts (``events``), oldest
  first by event time whatever order the events arrive in (:class:`UserRecord`), the window the
  user tower pools (``raymm.recommend.history`` offline; ``tests/test_parity.py`` holds the two
  to the same answer);
* ``seen``: the items the user had any event on, with their counts (never recommended again):
  all of them, or with ``max_seen`` the ``max_seen`` most recently touched, so a user's state is
  bounded whatever they do (a bot, a years-long user); an item that drops out may be recommended
  again;
* ``recent_ids``: the last ``dedupe_window`` event ids, so an event sent twice (a producer retry,
  a client posting again) is applied once.

Memory is bounded by ``max_users_in_memory`` across all partitions: the users whose last event is
the oldest move to a spill file (SQLite on local disk, :mod:`raymm.stream.spill`) and come back
when an event needs them; readers find them there too. Snapshots include spilled users.

Threads: one consumer thread writes (apply, add and drop partitions, spill); any thread reads
(:meth:`UserStateStore.get`). A lock guards every structure for as long as one batch or one
lookup takes; a snapshot is collected by the writer thread itself, so it never holds the lock
for long, and nothing here holds it while waiting on I/O other than the local spill file.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raymm.data import io
from raymm.errors import DataError
from raymm.models.config import UserStateConfig
from raymm.stream.events import EVENTS_TOPIC, Event

if TYPE_CHECKING:
    from raymm.stream.spill import Spill

_SPILL_CHUNK = 10_000


class PartitionNotHeld(KeyError):
    """A partition this store does not hold (never added, or dropped after a rebalance): a
    ``KeyError``, so callers that catch that keep working, whose message names the partition, the
    topic and the partitions that are held."""

    def __init__(self, partition: int, topic: str, held: Sequence[int]) -> None:
        super().__init__(partition)
        self.partition = partition
        self.message = f"partition {partition} of {topic} is not held here (held: {sorted(held) or 'none'})"

    def __str__(self) -> str:  # KeyError's own str() is the repr of its argument
        return self.message


@dataclass(frozen=True)
class StateSpec:
    """What a user's live state keeps: the model's user-state spec and the dedupe window."""

    max_history: int
    events: frozenset[str]
    dedupe_window: int = 32
    #: Items kept in ``seen`` per user, the most recently touched; None keeps every one.
    max_seen: int | None = None

    def __post_init__(self) -> None:
        if self.max_history < 1:
            raise ValueError(f"max_history must be at least 1, got {self.max_history}")
        if not self.events:
            raise ValueError("events must name at least one event kind")
        if self.dedupe_window < 0:
            raise ValueError(f"dedupe_window must be >= 0, got {self.dedupe_window}")
        if self.max_seen is not None and self.max_seen < 1:
            raise ValueError(f"max_seen must be at least 1 or None, got {self.max_seen}")

    @classmethod
    def of(
        cls, user_state: UserStateConfig, dedupe_window: int = 32, max_seen: int | None = None
    ) -> StateSpec:
        """The spec of a model's ``user_state`` section."""
        return cls(user_state.max_history, frozenset(user_state.events), dedupe_window, max_seen)

    @classmethod
    def from_artifact(
        cls, directory: str | Path, dedupe_window: int = 32, max_seen: int | None = None
    ) -> StateSpec:
        """The spec recorded in a model artifact's manifest (local path or URI)."""
        uri = io.join(str(directory), "manifest.json")
        manifest = io.read_json(uri, "model manifest")
        try:
            section = manifest["config"]["model"]["user_state"]
        except (KeyError, TypeError):
            raise DataError(f"{uri} records no model.user_state: not a raymm model artifact") from None
        return cls.of(UserStateConfig.model_validate(section), dedupe_window, max_seen)

    def to_json(self) -> dict[str, Any]:
        """The spec as recorded in a snapshot."""
        return {
            "max_history": self.max_history,
            "events": sorted(self.events),
            "dedupe_window": self.dedupe_window,
            "max_seen": self.max_seen,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> StateSpec:
        """The spec recorded by :meth:`to_json` (a snapshot from before ``max_seen`` kept every item)."""
        max_seen = document.get("max_seen")
        return cls(
            int(document["max_history"]),
            frozenset(document["events"]),
            int(document["dedupe_window"]),
            None if max_seen is None else int(max_seen),
        )


#: The time of a history entry whose time is not known (a record from a snapshot that kept no
#: ``history_ts``): older than any event, so such entries leave the window first.
UNKNOWN_TS = -(2**63)


@dataclass(slots=True)
class UserRecord:
    """One user's live state (mutable; only the consumer thread changes it).

    The state is a fold of the *set* of the user's events, whatever order they arrive in (an
    event forwarded from another partition reaches the owner after later ones of its user):
    ``history`` is the ``max_history`` newest counting events by ``(ts, arrival)``, oldest first,
    and ``history_ts`` (the same length) holds their times, so a late event takes its place by
    time; one older than every entry of a full window only enters ``seen``. Events of equal
    ``ts`` keep their arrival order, as the offline windows keep table order
    (:mod:`raymm.recommend.history`). Items are kept whether or not a model knows them (the
    state knows no catalog, and live items join it later): serving drops the unknown ones from
    the window at request time (``Recommender.known``), and the offline windows do the same.
    A repeated event id is skipped only while it is among the user's last ``dedupe_window``
    event ids (offline drops every repeat of a user's event id). Past ``max_seen`` items, the
    one touched longest ago *in arrival order* leaves ``seen``: the only part of the state that
    depends on arrival order, and only for a user beyond the bound.
    """

    history: list[str] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    n_events: int = 0
    last_ts_ms: int = 0
    recent_ids: list[str] = field(default_factory=list)
    history_ts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = len(self.history) - len(self.history_ts)
        if missing < 0:
            raise ValueError(
                f"history_ts holds {len(self.history_ts)} times for {len(self.history)} history items"
            )
        if missing:  # a record kept without its times: they are unknown, hence oldest
            self.history_ts[:0] = [UNKNOWN_TS] * missing

    def apply(self, event: Event, spec: StateSpec) -> bool:
        """Apply one event; False (and no change) when its id is among the recent ones."""
        if spec.dedupe_window:
            if event.event_id in self.recent_ids:
                return False
            self.recent_ids.append(event.event_id)
            if len(self.recent_ids) > spec.dedupe_window:
                del self.recent_ids[0]
        seen = self.seen
        if spec.max_seen is None:
            seen[event.item_id] = seen.get(event.item_id, 0) + 1
        else:  # the most recently touched last, so the first is the one to drop
            seen[event.item_id] = seen.pop(event.item_id, 0) + 1
            if len(seen) > spec.max_seen:
                del seen[next(iter(seen))]
        self.n_events += 1
        if event.ts_ms > self.last_ts_ms:
            self.last_ts_ms = event.ts_ms
        if event.event in spec.events:
            # After every entry of its time or earlier: equal times keep their arrival order.
            at = bisect.bisect_right(self.history_ts, event.ts_ms)
            self.history.insert(at, event.item_id)
            self.history_ts.insert(at, event.ts_ms)
            if len(self.history) > spec.max_history:
                del self.history[0], self.history_ts[0]
        return True

    def copy(self) -> UserRecord:
        return UserRecord(
            list(self.history),
            dict(self.seen),
            self.n_events,
            self.last_ts_ms,
            list(self.recent_ids),
            list(self.history_ts),
        )

    def to_json(self) -> str:
        return json.dumps(
            [
                self.history,
                list(self.seen),
                list(self.seen.values()),
                self.n_events,
                self.last_ts_ms,
                self.recent_ids,
                self.history_ts,
            ],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> UserRecord:
        history, items, counts, n_events, last_ts_ms, recent_ids, history_ts = json.loads(text)
        return cls(
            history, dict(zip(items, counts, strict=True)), n_events, last_ts_ms, recent_ids, history_ts
        )


@dataclass(frozen=True)
class UserState:
    """What a reader gets: a copy of one user's state, safe to keep while the stream goes on."""

    user_id: str
    partition: int
    history: tuple[str, ...]
    seen: Mapping[str, int]
    n_events: int
    last_ts_ms: int


@dataclass(frozen=True)
class BatchResult:
    """What one :meth:`UserStateStore.apply_batch` did with its messages."""

    applied: int = 0
    #: At or below the partition's applied offset: delivered again after a restart.
    replayed: int = 0
    #: An event id the user had recently: sent twice.
    duplicates: int = 0
    #: Refused by the decoder, or forwarded to the owner partition (``None`` in the batch): the
    #: offset moves on, nothing else.
    rejected: int = 0
    #: A forwarded event whose source offset was applied already (forwarded twice).
    forwarded_again: int = 0


class UserStateStore:
    """The live state of the users in the partitions one consumer owns; see the module docstring."""

    def __init__(
        self,
        spec: StateSpec,
        *,
        topic: str = EVENTS_TOPIC,
        max_users_in_memory: int | None = None,
        spill_dir: str | Path | None = None,
    ) -> None:
        if max_users_in_memory is not None and max_users_in_memory < 1:
            raise ValueError(f"max_users_in_memory must be positive or None, got {max_users_in_memory}")
        self.spec = spec
        self.topic = topic
        self.max_users_in_memory = max_users_in_memory
        self._lock = threading.Lock()
        self._offsets: dict[int, int] = {}
        #: Per held partition: {source partition: the highest source offset of a forwarded event
        #: applied here}. Forwards from one source arrive in source order, so anything at or
        #: below it was forwarded again.
        self._forwarded: dict[int, dict[int, int]] = {}
        self._hot: dict[int, dict[str, UserRecord]] = {}
        self._lru: OrderedDict[tuple[int, str], None] = OrderedDict()
        #: Per held partition: the users in memory whose spill row is stale (read back and not
        #: spilled since). A subset of the users in memory, so bounded with them.
        self._shadowed: dict[int, set[str]] = {}
        self._spill: Spill | None = None
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None

    # -- partitions ---------------------------------------------------------------------------

    def partitions(self) -> list[int]:
        """The partitions this store holds, sorted."""
        with self._lock:
            return sorted(self._offsets)

    def applied_offset(self, partition: int) -> int:
        """The offset applied last in ``partition`` (-1: none); :class:`PartitionNotHeld` if not held."""
        with self._lock:
            self._check_held(partition)
            return self._offsets[partition]

    def offsets(self) -> dict[int, int]:
        """Every held partition's applied offset."""
        with self._lock:
            return dict(self._offsets)

    def forwarded_offsets(self, partition: int) -> dict[int, int]:
        """``partition``'s {source partition: highest source offset applied} of forwarded events."""
        with self._lock:
            self._check_held(partition)
            return dict(self._forwarded[partition])

    def add_partition(
        self,
        partition: int,
        applied_offset: int = -1,
        users: Mapping[str, UserRecord] | None = None,
        forwarded: Mapping[int, int] | None = None,
    ) -> None:
        """Start holding ``partition`` at ``applied_offset`` with ``users`` and the forwarded
        events' source offsets ``forwarded`` (a restored snapshot).

        ``ValueError`` if it is held already (drop it first: its state would be replaced).
        """
        with self._lock:
            if partition in self._offsets:
                raise ValueError(f"partition {partition} of {self.topic} is held already")
            self._offsets[partition] = applied_offset
            self._forwarded[partition] = dict(forwarded or {})
            self._hot[partition] = {}
            self._shadowed[partition] = set()
            for user_id, record in (users or {}).items():
                self._hot[partition][user_id] = record
                self._lru[(partition, user_id)] = None
            self._evict()

    def _check_held(self, partition: int) -> None:
        """:class:`PartitionNotHeld` unless ``partition`` is held; call with the lock taken."""
        if partition not in self._offsets:
            raise PartitionNotHeld(partition, self.topic, list(self._offsets))

    def drop_partition(self, partition: int) -> None:
        """Forget ``partition`` and its users (its new owner restores them from a snapshot)."""
        with self._lock:
            self._offsets.pop(partition, None)
            self._forwarded.pop(partition, None)
            for user_id in self._hot.pop(partition, {}):
                self._lru.pop((partition, user_id), None)
            self._shadowed.pop(partition, None)
            if self._spill is not None:
                self._spill.drop_partition(partition)

    # -- writing (the consumer thread) ---------------------------------------------------------

    def apply(
        self, partition: int, offset: int, event: Event | None, source: tuple[int, int] | None = None
    ) -> bool:
        """Apply one message; True if it changed a user. See :meth:`apply_batch`."""
        sources = {offset: source} if source is not None else None
        return self.apply_batch(partition, [(offset, event)], sources).applied == 1

    def apply_batch(
        self,
        partition: int,
        messages: Sequence[tuple[int, Event | None]],
        sources: Mapping[int, tuple[int, int]] | None = None,
    ) -> BatchResult:
        """Apply ``(offset, event)`` messages of ``partition`` in offset order, exactly once each.

        A message at or below the applied offset is skipped; ``event=None`` (a message the decoder
        refused, or one forwarded elsewhere) only moves the offset on. ``sources`` maps the offset
        of a forwarded event to its (source partition, source offset); one at or below the highest
        source offset applied from that partition was forwarded again and is skipped.
        :class:`PartitionNotHeld` (a ``KeyError``) if the partition is not held; ``ValueError`` if the offsets go backwards within the batch.
        """
        applied = replayed = duplicates = rejected = forwarded_again = 0
        with self._lock:
            self._check_held(partition)
            last = self._offsets[partition]
            users = self._hot[partition]
            watermarks = self._forwarded[partition]
            # The batch's users not in memory, read back from the spill file in one query (a
            # user the file does not hold is new). One the batch then skips stays in the file.
            shadowed = self._shadowed[partition]
            spilled: dict[str, UserRecord] = {}
            if self._spill is not None and self._spill.rows(partition):
                spilled = self._spill.read(
                    partition,
                    {
                        event.user_id
                        for offset, event in messages
                        if event is not None and offset > last and event.user_id not in users
                    },
                )
            lru, spec = self._lru, self.spec
            for offset, event in messages:
                if offset <= last:
                    if offset < 0:
                        raise ValueError(f"offset {offset} of partition {partition} is negative")
                    replayed += 1
                    continue
                last = offset
                if event is None:
                    rejected += 1
                    continue
                if sources:
                    source = sources.get(offset)
                    if source is not None:
                        source_partition, source_offset = source
                        if source_offset <= watermarks.get(source_partition, -1):
                            forwarded_again += 1
                            continue
                        watermarks[source_partition] = source_offset
                user_id = event.user_id
                record = users.get(user_id)
                if record is None:
                    record = spilled.pop(user_id, None)
                    if record is None:
                        record = UserRecord()
                    else:  # its row stays in the file until the user is spilled again
                        shadowed.add(user_id)
                    users[user_id] = record
                    lru[partition, user_id] = None
                else:
                    lru.move_to_end((partition, user_id))
                if record.apply(event, spec):
                    applied += 1
                else:
                    duplicates += 1
            self._offsets[partition] = last
            self._evict()
        return BatchResult(applied, replayed, duplicates, rejected, forwarded_again)

    def _evict(self) -> None:
        """Move the least recently written users beyond the bound to the spill file (lock held)."""
        if self.max_users_in_memory is None or len(self._lru) <= self.max_users_in_memory:
            return
        if self._spill is None:
            from raymm.stream.spill import Spill  # it reads UserRecord from here

            self._spill = Spill(self._spill_dir)
        self._spill.put(self._evicted(self.max_users_in_memory))

    def _evicted(self, keep: int) -> Iterator[tuple[int, str, UserRecord, bool]]:
        """Take the least recently written users out of memory until ``keep`` are left: each
        ``(partition, user, record, whether the spill file has a stale row of the user)``.

        A generator, so the spill file writes each record as it leaves memory: no list of the
        batch's records (on a garbage collector that counts allocations, a long list of young
        containers triggers collections that promote the users read back with it).
        """
        lru, hot, shadowed = self._lru, self._hot, self._shadowed
        while len(lru) > keep:
            (partition, user_id), _ = lru.popitem(last=False)
            stale = user_id in shadowed[partition]
            if stale:
                shadowed[partition].remove(user_id)
            yield partition, user_id, hot[partition].pop(user_id), stale

    # -- reading (any thread) ----------------------------------------------------------------

    def get(self, user_id: str) -> UserState | None:
        """A copy of ``user_id``'s state, from memory or the spill file; None for a user this
        store has no event of (unknown, or in a partition another consumer owns)."""
        with self._lock:
            for partition, users in self._hot.items():
                record = users.get(user_id)
                if record is not None:
                    return self._view(user_id, partition, record)
            if self._spill is not None:
                found = self._spill.get(user_id, list(self._offsets))
                if found is not None:
                    return self._view(user_id, found[0], found[1])
        return None

    @staticmethod
    def _view(user_id: str, partition: int, record: UserRecord) -> UserState:
        return UserState(
            user_id, partition, tuple(record.history), dict(record.seen), record.n_events, record.last_ts_ms
        )

    def counts(self) -> dict[str, int]:
        """Users in memory and in the spill file."""
        with self._lock:
            rows = self._spill.rows() if self._spill is not None else 0
            return {
                "in_memory": len(self._lru),
                "spilled": rows - sum(len(stale) for stale in self._shadowed.values()),
            }

    def partition_users(self, partition: int) -> Iterator[tuple[str, UserRecord]]:
        """Every user of ``partition`` (in memory, then spilled), for a snapshot.

        Call it from the writer thread: the records are not copied, and stay unchanged only while
        that thread does not apply events. The lock is taken per chunk, never for the whole walk.
        """
        with self._lock:
            self._check_held(partition)
            hot = dict(self._hot[partition])
            spill = self._spill
        yield from hot.items()
        if spill is not None:
            after = ""
            while True:
                with self._lock:
                    # A user read back keeps a stale row until spilled again: memory has the state.
                    chunk, after = spill.chunk(partition, after, _SPILL_CHUNK, skip=hot)
                yield from chunk
                if not after:
                    break

    def export(self) -> dict[int, tuple[int, dict[str, UserRecord]]]:
        """The whole state, ``{partition: (applied offset, {user: record})}``, as copies: what
        two stores are compared by (a recovered one against one clean pass)."""
        return {
            partition: (
                self.applied_offset(partition),
                {u: r.copy() for u, r in self.partition_users(partition)},
            )
            for partition in self.partitions()
        }

    def close(self) -> None:
        """Remove the spill file (the state itself lives on in snapshots)."""
        with self._lock:
            if self._spill is not None:
                self._spill.close()
                self._spill = None
