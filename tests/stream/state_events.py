"""Events and stores shared by the user-state and snapshot tests."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

from raymm.stream.events import Event, UserEvent
from raymm.stream.state import StateSpec, UserStateStore

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SPEC = StateSpec(max_history=3, events=frozenset({"click", "like"}), dedupe_window=4)


def event(
    i: int, user: str = "u", item: str | None = None, kind: str = "click", event_id: str | None = None
) -> Event:
    """Event ``i``: ``user`` ``kind``s ``item`` (default ``i<i>``) at EPOCH + i s, id ``e<i>`` unless given."""
    return Event.of(
        UserEvent(
            event_id=event_id or f"e{i}",
            user_id=user,
            item_id=item or f"i{i}",
            event=kind,
            ts=EPOCH + dt.timedelta(seconds=i),
        )
    )


def random_events(n: int, users: int, seed: int) -> list[Event]:
    """Mixed kinds, repeated items, and one event in 20 sent again (a producer retry)."""
    rng = random.Random(seed)
    events: list[Event] = []
    for i in range(n):
        if events and rng.random() < 0.05:
            events.append(rng.choice(events[-10:]))
            continue
        events.append(
            event(
                i,
                f"u{rng.randrange(users)}",
                f"i{rng.randrange(40)}",
                rng.choice(["view", "click", "like", "skip"]),
            )
        )
    return events


def bounded_store(tmp_path: Path, bound: int, partitions: range = range(3)) -> UserStateStore:
    """A store of ``partitions`` that keeps at most ``bound`` users in memory, spilling to ``tmp_path``."""
    store = UserStateStore(SPEC, max_users_in_memory=bound, spill_dir=tmp_path)
    for partition in partitions:
        store.add_partition(partition)
    return store
