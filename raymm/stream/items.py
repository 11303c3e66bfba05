"""The items follower: ``raymm.items`` -> decode and validate -> dead letters, or the serving catalog.

Every serving replica needs every item, so an :class:`ItemsFollower` assigns itself every
partition of the topic and reads it from the start; it keeps no offsets of its own. What it
decodes goes to ``on_items`` in batches (a new or updated item replaces the one with its id, so
reading an item twice is harmless). :meth:`ItemsFollower.restart` reads the topic again from the
start, as a model roll-out needs: the new model encodes every live item with its own encoders.

It is a :class:`~raymm.stream.loop.PollLoop`, the loop the event consumers run: the same idle
back-off, dead letters counted by reason (design.md invariant 2), liveness and metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer

from raymm.stream.events import DEAD_LETTER_TOPIC, ITEMS_TOPIC, ItemLimits, ItemMessage, Rejected, decode_item
from raymm.stream.loop import PollLoop, assign_all
from raymm.stream.settings import KafkaSettings

log = logging.getLogger(__name__)

#: How long the follower waits for the items topic to exist before its loop retries.
_TOPIC_WAIT_S = 2.0


class ItemsFollower(PollLoop):
    """Follow ``topic`` from its start into ``on_items``; see the module docstring.

    ``on_items`` runs in the follower's thread with each poll's valid items, in offset order per
    partition; an exception from it is logged and counted as a loop error, and the batch is read
    again after :meth:`restart` only (items are not re-polled on their own).
    """

    kind = "items"

    def __init__(
        self,
        bootstrap_servers: str,
        on_items: Callable[[list[ItemMessage]], None],
        *,
        topic: str = ITEMS_TOPIC,
        dead_letter_topic: str = DEAD_LETTER_TOPIC,
        limits: ItemLimits | None = None,
        poll_max_records: int = 256,
        poll_timeout_ms: int = 200,
        liveness_timeout_s: float = 30.0,
        kafka: KafkaSettings | None = None,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            topic,
            dead_letter_topic=dead_letter_topic,
            poll_max_records=poll_max_records,
            poll_timeout_ms=poll_timeout_ms,
            liveness_timeout_s=liveness_timeout_s,
            kafka=kafka,
        )
        self.on_items = on_items
        self.limits = limits or ItemLimits()
        self._items: list[ItemMessage] = []
        self._assigned = False
        self.items_seen = 0

    def _on_open(self, consumer: KafkaConsumer) -> None:
        self._assign_when_ready(consumer, wait_s=0.0)

    def _assign_when_ready(self, consumer: KafkaConsumer, wait_s: float) -> bool:
        """Assign every partition once the topic exists (serving may start before it is created)."""
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            if wait_s:
                self._stop.wait(wait_s)
            return False
        assign_all(consumer, self.topic, len(partitions))
        consumer.seek_to_beginning()
        self._assigned = True
        return True

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """One poll; the valid items go to ``on_items``, the rest to the dead-letter topic."""
        consumer = self._require_open()
        if not self._assigned and not self._assign_when_ready(consumer, _TOPIC_WAIT_S):
            self._last_beat = time.monotonic()  # waiting for the topic is not being stuck
            return 0
        return super().poll_once(timeout_ms)

    def _handle(self, partition: int, records: Sequence[Any]) -> None:
        for record in records:
            try:
                self._items.append(decode_item(record.key, record.value, self.limits))
            except Rejected as rejected:
                self.dead_letter(rejected, record)

    def _after_poll(self, consumer: KafkaConsumer) -> None:
        items, self._items = self._items, []
        if items:
            self.items_seen += len(items)
            self.on_items(items)

    def restart(self) -> None:
        """Read the topic again from its start (in the follower's thread, before its next poll)."""

        def seek() -> None:
            consumer = self._require_open()
            self._items = []
            if self._assigned:
                consumer.seek_to_beginning()
                self._positions.clear()

        self.call_soon(seek)
