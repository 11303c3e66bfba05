"""Who owns a user: the one rule that the consumers, the forwarder and request routing share.

A user's state lives in one partition of ``raymm.events``, the *owner partition*
``partition_for(user_id)``, and rank ``r`` of ``W`` consumers owns the partitions with
``partition % W == r``. Serving routes a request for a user to ``owner_rank(user_id)`` by the same
rule, so the state a request reads is the state the user's events were applied to.

The owner partition is computed by raymm, never taken from where an event arrived: producers
disagree. Kafka's Java client and kafka-python hash the key with murmur2; librdkafka clients (kcat,
confluent-kafka for Python, Go and .NET, rdkafka for Rust) default to ``consistent_random``, CRC32
of the key; a producer without a key spreads events over every partition. A consumer that reads an
event on a partition other than its user's owner partition forwards it there
(:class:`raymm.stream.consumer.EventConsumer`), as a Kafka Streams repartition step does.

``partitioner`` picks the hash of the owner rule. ``murmur2`` (the default) matches Kafka's Java
client and kafka-python; ``crc32`` matches librdkafka's ``consistent_random`` and ``consistent``
for keyed events. Choosing the one that most producers use keeps forwarding rare; it never makes
forwarding unnecessary (null keys, mixed producers).

The partition count is the topic's, read from the broker and pinned: adding partitions would move
users to other partitions, so a count other than the configured one refuses to start
(:func:`raymm.stream.broker.ensure_topics`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

Partitioner = Literal["murmur2", "crc32"]
PARTITIONERS: tuple[str, ...] = get_args(Partitioner)


def partition_for(user_id: str, n_partitions: int, partitioner: Partitioner = "murmur2") -> int:
    """The owner partition of ``user_id`` on a topic of ``n_partitions``.

    ``murmur2``: Java's ``Utils.toPositive(Utils.murmur2(key)) % n`` on the UTF-8 key, as
    kafka-python's default partitioner and librdkafka's ``murmur2_random`` compute it. ``crc32``:
    ``crc32(key) % n``, librdkafka's ``consistent``/``consistent_random`` for a non-empty key.
    ``ValueError`` for ``n_partitions`` below 1 or an unknown partitioner.
    """
    if n_partitions < 1:
        raise ValueError(f"n_partitions must be at least 1, got {n_partitions}")
    key = user_id.encode("utf-8")
    if partitioner == "murmur2":
        from kafka.partitioner import murmur2  # here, so the settings can name a partitioner without kafka

        return int((murmur2(key) & 0x7FFFFFFF) % n_partitions)
    if partitioner == "crc32":
        return int(zlib.crc32(key) % n_partitions)
    raise ValueError(f"partitioner must be one of {', '.join(PARTITIONERS)}, got {partitioner!r}")


def owned_partitions(n_partitions: int, rank: int, world_size: int) -> list[int]:
    """The partitions consumer ``rank`` of ``world_size`` owns: ``partition % world_size == rank``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    return [p for p in range(n_partitions) if p % world_size == rank]


def owner_rank(user_id: str, n_partitions: int, world_size: int, partitioner: Partitioner = "murmur2") -> int:
    """The rank whose consumer holds ``user_id``'s state (the owner of the user's partition)."""
    return partition_for(user_id, n_partitions, partitioner) % world_size


@dataclass(frozen=True)
class Ownership:
    """The owner rule of one deployment: the topic's partition count, the ranks, the hash."""

    n_partitions: int
    world_size: int = 1
    partitioner: Partitioner = "murmur2"

    def __post_init__(self) -> None:
        if self.n_partitions < 1:
            raise ValueError(f"n_partitions must be at least 1, got {self.n_partitions}")
        if self.world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {self.world_size}")
        if self.partitioner not in PARTITIONERS:
            raise ValueError(
                f"partitioner must be one of {', '.join(PARTITIONERS)}, got {self.partitioner!r}"
            )

    def partition(self, user_id: str) -> int:
        """``user_id``'s owner partition."""
        return partition_for(user_id, self.n_partitions, self.partitioner)

    def partition_cache(self, max_users: int = 1 << 20) -> Callable[[str], int]:
        """:meth:`partition` with a memo of up to ``max_users`` users (emptied when full): murmur2
        in Python costs ~2.7 us a key here, a dict lookup ~0.04 us, and a consumer asks per event."""
        memo: dict[str, int] = {}

        def partition(user_id: str) -> int:
            found = memo.get(user_id)
            if found is None:
                if len(memo) >= max_users:
                    memo.clear()
                found = memo[user_id] = partition_for(user_id, self.n_partitions, self.partitioner)
            return found

        return partition

    def owner(self, user_id: str) -> int:
        """The rank that holds ``user_id``'s state and answers for them."""
        return self.partition(user_id) % self.world_size

    def partitions_of(self, rank: int) -> list[int]:
        """The partitions rank ``rank`` consumes and keeps state for."""
        return owned_partitions(self.n_partitions, rank, self.world_size)
