"""The recommender's side of the state shards: who to ask for a user, asking, and telling.

A user's live state lives with the :class:`~raymm.serve.shard.StateShard` that owns the user's
partition (:class:`raymm.stream.ownership.Ownership`, the rule the shards' consumers assign
themselves by). Serve's own request routing (power of two choices, or the experimental
consistent-hash router) hashes differently, so requests are not routed *to* the owner; the
replica calls the owner. Shards are Serve *deployment-scoped actors*: Serve creates them with the
deployment, health-checks them, recreates one that dies and removes them with the app.

A shard that is missing or slower than ``timeout_s`` costs its users their state, never their
answer: :meth:`ShardClient.user_states` says ``state_unavailable`` for them and the caller falls
back. A call that finds its actor gone is retried once with a fresh handle (a recreated shard).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray import serve

from raymm.serve.shard import shard_name
from raymm.stream.ownership import Ownership

__all__ = ["SERVED_FLUSH_S", "ShardClient", "UserState"]

log = logging.getLogger(__name__)

#: How often what was served is sent to the state shards (the online hit rate).
SERVED_FLUSH_S = 0.1

#: A user's live state as a shard returns it (``history`` oldest first, ``seen``, ...), or None.
UserState = dict[str, Any] | None

# What a shard call raises when the shard is away: the actor died (or is being recreated), Serve
# has no actor of that name yet (ValueError), or it did not answer in time.
_AWAY = (TimeoutError, ray.exceptions.RayActorError, ValueError)


class ShardClient:
    """Calls the state shards of the replica's deployment (use it inside a Serve replica)."""

    def __init__(self, ownership: Ownership, timeout_s: float) -> None:
        self.ownership = ownership
        self.timeout_s = timeout_s
        self._handles: dict[int, Any] = {}
        self._served_queue: dict[int, list[tuple[str, list[str], float]]] = {}
        self._served_flush: asyncio.Task[None] | None = None

    @property
    def world_size(self) -> int:
        return self.ownership.world_size

    def _handle(self, rank: int, refresh: bool = False) -> Any:
        if refresh or rank not in self._handles:
            self._handles[rank] = serve.get_deployment_actor(shard_name(rank))
        return self._handles[rank]

    async def call(self, rank: int, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """``method(*args)`` on shard ``rank``, within ``timeout_s`` (default: the request path's);
        one retry with a fresh handle (a recreated shard). Raises ``TimeoutError``, ``RayActorError``
        or ``ValueError`` (no such actor) when the shard is away."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        for attempt in range(2):
            try:
                handle = self._handle(rank, refresh=attempt > 0)
                ref = getattr(handle, method).remote(*args)
                async with asyncio.timeout(limit):  # no extra task, unlike wait_for
                    return await ref
            except (ray.exceptions.RayActorError, ValueError):
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def user_states(self, user_ids: Sequence[str]) -> list[tuple[UserState, str | None]]:
        """Per user (their live state or None, why not: ``unknown_user`` / ``state_unavailable``),
        in one call per owning shard, the shards asked at once."""
        by_rank: dict[int, list[int]] = {}
        for position, user_id in enumerate(user_ids):
            by_rank.setdefault(self.ownership.owner(user_id), []).append(position)
        found: list[tuple[UserState, str | None]] = [(None, "state_unavailable")] * len(user_ids)

        async def fetch(rank: int, positions: list[int]) -> None:
            try:
                states = await self.call(rank, "get_users", [user_ids[p] for p in positions])
            except _AWAY as exc:
                log.warning(
                    "state shard %d unavailable for %d users: %s", rank, len(positions), type(exc).__name__
                )
                return
            for position, state in zip(positions, states, strict=True):
                found[position] = (state, None if state is not None else "unknown_user")

        await asyncio.gather(*(fetch(rank, positions) for rank, positions in by_rank.items()))
        return found

    def record_served(self, user_id: str, item_ids: list[str]) -> None:
        """Queue what was served to ``user_id`` for the owner's online hit rate; sent every
        :data:`SERVED_FLUSH_S` in one call per shard (a call per request cost ~1 ms of CPU).
        Call it from the replica's event loop."""
        rank = self.ownership.owner(user_id)
        self._served_queue.setdefault(rank, []).append((user_id, item_ids, time.monotonic()))
        if self._served_flush is None or self._served_flush.done():
            self._served_flush = asyncio.get_running_loop().create_task(self._flush_served())

    async def _flush_served(self) -> None:
        await asyncio.sleep(SERVED_FLUSH_S)
        queued, self._served_queue = self._served_queue, {}
        now = time.monotonic()
        for rank, served in queued.items():
            # If the shard is away, the online hit rate misses these serves; the answers did not.
            with contextlib.suppress(ValueError, ray.exceptions.RayActorError):
                self._handle(rank).record_served.remote([(u, items, now - t) for u, items, t in served])

    async def health(self) -> list[dict[str, Any]]:
        """Every shard's :meth:`~raymm.serve.shard.StateShard.health`, asked at once; a shard that
        is away reads ``{"rank", "alive": False, "error": <exception name>}``."""

        async def one(rank: int) -> dict[str, Any]:
            try:
                return dict(await self.call(rank, "health"))
            except _AWAY as exc:
                return {"rank": rank, "alive": False, "error": type(exc).__name__}

        return list(await asyncio.gather(*(one(rank) for rank in range(self.world_size))))
