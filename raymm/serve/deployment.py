"""The serving replica: the model, batching, new items, and the answers the HTTP layer gives.

:class:`RecommenderDeployment` is the one deployment of the app (:func:`raymm.serve.app.build_app`
binds it). It answers HTTP itself, through ``@serve.ingress`` and the routes of
:mod:`raymm.serve.http`: a separate ingress deployment in front of the model cost a Serve hop per
request (~3.5 ms of CPU in the ingress replica, plus the recommender's side of the call,
bench/serve_latency.py), for nothing, since the HTTP layer is thin and scales with the model.

* **Users** are scored in batches: their live states in one call per state shard
  (:class:`~raymm.serve.shard_client.ShardClient`), one scoring pass in a thread.
* **Model roll-out**: the deployment's ``user_config`` holds the artifact URI; Serve calls
  :meth:`RecommenderDeployment.reconfigure` on each running replica, which loads the new model
  beside the old one and swaps them in one assignment, so in-flight and new requests are all
  answered.
* **New items**: an :class:`~raymm.stream.items.ItemsFollower` (the stream layer's poll loop, in
  a thread of its own) follows ``raymm.items`` and adds what it reads to the catalog and the
  search index; its dead letters are counted like the events'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ray import serve

from raymm.recommend.content import QueryEncodeError
from raymm.recommend.index import IndexChoice
from raymm.recommend.recommender import Recommendation, Recommender
from raymm.recommend.search import SEARCH_MODALITIES
from raymm.serve.auth import ApiKey, ApiKeySource
from raymm.serve.http import ApiError, api
from raymm.serve.metric_tags import tag_keys, tagged
from raymm.serve.served import ServedModel
from raymm.serve.shard_client import ShardClient
from raymm.stream.clients import kafka_client
from raymm.stream.events import (
    DEAD_LETTER_TOPIC,
    EVENTS_TOPIC,
    ITEMS_TOPIC,
    ItemLimits,
    ItemMessage,
    UserEvent,
)
from raymm.stream.items import ItemsFollower
from raymm.stream.ownership import Ownership, Partitioner
from raymm.stream.settings import KafkaSettings

__all__ = ["RecommenderDeployment", "ServeArgs", "batched"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeArgs:
    """What a replica needs, resolved once by :func:`~raymm.serve.app.build_app` (plain values:
    it is pickled). ``partitions`` is the events topic's actual partition count, read from Kafka.
    ``kafka`` is :meth:`KafkaSettings.shared <raymm.stream.settings.KafkaSettings.shared>` and
    ``api_key`` says where the key is, never what: the replica reads both secrets from its own
    environment or files (:mod:`raymm.serve.auth`)."""

    bootstrap_servers: str
    kafka: dict[str, Any]
    partitions: int
    world_size: int
    max_k: int
    max_body_bytes: int
    state_timeout_s: float
    ready_timeout_s: float = 1_800.0
    partitioner: Partitioner = "murmur2"
    max_item_bytes: int = 16 * 1024 * 1024
    index: IndexChoice = field(default_factory=IndexChoice)
    max_batch_size: int = 32
    batch_wait_ms: float = 1.0
    events_topic: str = EVENTS_TOPIC
    items_topic: str = ITEMS_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    api_key: ApiKeySource = field(default_factory=ApiKeySource)


@dataclass
class _SessionJob:
    recent: list[str]
    k: int


@dataclass
class _UserJob:
    user_id: str
    k: int


@dataclass
class _UserAnswer:
    items: list[Recommendation]
    fallback: str | None
    model: Recommender
    has_state: bool


def _answer(
    user_id: str | None, items: Sequence[Recommendation], model: Recommender, fallback: str | None
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "items": [{"item_id": r.item_id, "score": r.score} for r in items],
        "model_version": model.version,
        "fallback": fallback,
    }


Job = TypeVar("Job")
Result = TypeVar("Result")


def batched(
    handler: Callable[[list[Job]], Awaitable[list[Result]]], max_batch_size: int, wait_ms: float
) -> Callable[[Job], Awaitable[Result]]:
    """``handler`` (a list of jobs in, one result per job out) as a function of one job, batched by
    Serve: a batch runs when it holds ``max_batch_size`` jobs or its first has waited ``wait_ms``.

    ``@serve.batch`` on a method fixes its sizes when the class is defined (one queue per method,
    shared by every instance, changed only through setters); ours come from the configuration, so
    each replica wraps its bound methods here, each wrapper with a batch queue of its own."""
    batch: Any = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_ms / 1000)
    return batch(handler)


# @serve.ingress copies `api` here: every route of raymm.serve.http is registered by now.
@serve.ingress(api)
class RecommenderDeployment:
    """The replica: the artifact's model, batches of users scored with their live state, answers
    for the routes of :mod:`raymm.serve.http`, writes to Kafka, and new items from ``raymm.items``
    (a thread of its own)."""

    def __init__(self, args: ServeArgs) -> None:
        from ray.serve import metrics

        self.args = args
        self.kafka = KafkaSettings.received(args.kafka)
        self._api_key = args.api_key.load()
        self.served: ServedModel | None = None
        self.shards = ShardClient(
            Ownership(args.partitions, args.world_size, args.partitioner), args.state_timeout_s
        )
        self._producer: Any = None
        self._users = batched(self._score_users, args.max_batch_size, args.batch_wait_ms)
        self._sessions = batched(self._score_sessions, args.max_batch_size, args.batch_wait_ms)
        self.items: ItemsFollower | None = None
        # every series names the cluster and code that exported it (Serve adds the replica)
        self.latency = tagged(
            metrics.Histogram(
                "raymm_recommend_latency_ms",
                "time to answer a recommendation, ms",
                boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
                tag_keys=tag_keys("endpoint"),
            )
        )
        self.fallbacks = tagged(
            metrics.Counter("raymm_fallback_total", "answers by the fallback", tag_keys=tag_keys("reason"))
        )
        self.live_items = tagged(
            metrics.Counter("raymm_live_items_total", "items added or updated from raymm.items", tag_keys())
        )
        self.item_dead_letters = tagged(
            metrics.Counter(
                "raymm_items_dead_letters_total",
                "raymm.items messages sent to the dead-letter topic",
                tag_keys("reason"),
            )
        )

    @property
    def model(self) -> Recommender | None:
        return None if self.served is None else self.served.model

    @property
    def max_body_bytes(self) -> int:
        return self.args.max_body_bytes

    @property
    def max_item_bytes(self) -> int:
        return self.args.max_item_bytes

    @property
    def api_key(self) -> ApiKey | None:
        """What :func:`raymm.serve.http.authorized` checks on every route but /healthz; None: the
        API is open."""
        return self._api_key

    # -- model roll-out ------------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the artifact ``user_config["model"]`` and swap it in (a no-op for the same URI and
        version). Live items are then read again from the start of ``raymm.items`` into it."""
        uri = str(user_config["model"])
        key = f"{uri}#{user_config.get('version', '')}"
        if self.served is not None and self.served.key == key:
            return
        served = await asyncio.to_thread(ServedModel.load, uri, key, self.args.index)
        if self.served is None:  # a new replica: take traffic only once the state has caught up
            await self._wait_until_ready()
        self.served = served  # one assignment: a request sees the old model or the new
        log.info("serving model %s from %s", served.model.version, uri)
        self._start_items_follower()

    def __del__(self) -> None:
        if self.items is not None:
            with contextlib.suppress(Exception):  # the follower has no final work: only a close
                self.items.stop(timeout_s=5)

    async def _wait_until_ready(self) -> None:
        """Wait until every state shard has caught up with its partitions (``ready``).

        Serve counts the replica as starting until then, so a new cluster (a KubeRay
        ``NewCluster`` upgrade) or a new app version gets no traffic while its shards replay, and
        the old one keeps answering. Past ``ready_timeout_s`` the replica fails, naming the
        shards still behind."""
        deadline = time.monotonic() + self.args.ready_timeout_s
        next_report = time.monotonic() + 10.0
        while True:
            shards = await self.shards.health()
            behind = [s for s in shards if not (s.get("alive") and s.get("ready"))]
            if not behind:
                return
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(
                    f"state shards still behind after {self.args.ready_timeout_s:.0f} s "
                    f"(serve.ready_timeout_s): {behind}"
                )
            if now > next_report:
                log.info("waiting for state shards to catch up: %s", behind)
                next_report = now + 10.0
            await asyncio.sleep(0.2)

    # -- live items ------------------------------------------------------------------------------

    def _start_items_follower(self) -> None:
        """Follow ``raymm.items`` into the served model: started by the first model, read again
        from the start by every roll-out (the new model encodes every live item itself)."""
        if self.items is None:
            self.items = ItemsFollower(
                self.args.bootstrap_servers,
                self._on_items,
                topic=self.args.items_topic,
                dead_letter_topic=self.args.dead_letter_topic,
                limits=ItemLimits(max_value_bytes=self.args.max_item_bytes),
                kafka=self.kafka,
            )
            self.items.on_dead_letter = lambda reason: self.item_dead_letters.inc(tags={"reason": reason})
            self.items.start()
        else:
            self.items.restart()

    def _on_items(self, items: list[ItemMessage]) -> None:
        served = self.served
        if served is not None:
            self._add_items(served, items)

    def _add_items(self, served: ServedModel, items: Sequence[ItemMessage]) -> None:
        added = served.add_items(items)
        if added:
            self.live_items.inc(added)

    # -- answers (raymm.serve.http.Replica) ----------------------------------------------------

    async def answer_user(self, user_id: str, k: int) -> dict[str, Any]:
        start = time.perf_counter()
        self._check_k(k, self._require_model())
        answer = await self._users(_UserJob(user_id, k))
        if answer.fallback:
            self.fallbacks.inc(tags={"reason": answer.fallback})
        if answer.has_state and answer.items:
            self.shards.record_served(user_id, [r.item_id for r in answer.items])
        self.latency.observe((time.perf_counter() - start) * 1000, tags={"endpoint": "user"})
        return _answer(user_id, answer.items, answer.model, answer.fallback)

    async def answer_session(self, item_ids: list[str], k: int) -> dict[str, Any]:
        start = time.perf_counter()
        model = self._require_model()
        self._check_k(k, model)
        unknown = [i for i in item_ids if i not in model.row_of]
        if unknown:
            raise ApiError(422, "unknown_items", f"unknown item ids: {unknown[:10]} ({len(unknown)} in all)")
        items = await self._sessions(_SessionJob(item_ids, k))
        self.latency.observe((time.perf_counter() - start) * 1000, tags={"endpoint": "session"})
        return _answer(None, items, model, None)

    def answer_similar(self, item_id: str, k: int) -> dict[str, Any]:
        model = self._require_model()
        self._check_k(k, model)
        if item_id not in model.row_of:
            raise ApiError(404, "unknown_item", f"item {item_id!r} is not in the catalog")
        items = model.similar(item_id, k)
        return {
            "item_id": item_id,
            "items": [{"item_id": r.item_id, "score": r.score} for r in items],
            "model_version": model.version,
        }

    async def answer_search(self, query: str, k: int, modality: str) -> dict[str, Any]:
        start = time.perf_counter()
        served = self.served
        if served is None:
            raise ApiError(503, "no_model", "the model is still loading")
        if modality not in SEARCH_MODALITIES:
            raise ApiError(
                422, "unknown_modality", f"modality {modality!r} is none of {', '.join(SEARCH_MODALITIES)}"
            )
        self._check_k(k, served.model)
        if served.encoder is None or served.search is None:
            raise ApiError(503, "search_unavailable", served.unavailable)
        if modality not in served.search.modalities:
            raise ApiError(
                422,
                "unknown_modality",
                f"the model was not trained with {modality!r}; try {served.search.modalities}",
            )
        try:
            hits = await asyncio.to_thread(served.search_text, query, k, modality)
        except QueryEncodeError as exc:  # the query's fault (a blank one was a 500)
            raise ApiError(422, "unencodable_query", str(exc)) from None
        self.latency.observe((time.perf_counter() - start) * 1000, tags={"endpoint": "search"})
        return {
            "query": query,
            "modality": modality,
            "items": [{"item_id": h.item_id, "score": h.score} for h in hits],
            "model_version": served.model.version,
        }

    async def health(self) -> dict[str, Any]:
        shards = await self.shards.health()
        served = self.served
        ok = served is not None and all(s.get("alive") and s.get("ready") for s in shards)
        return {
            "status": "ok" if ok else "degraded",
            "model_version": None if served is None else served.model.version,
            "shards": shards,
            "items": None if served is None else len(served.model.item_ids),
            "live_items": None if served is None else served.items_added,
            "search": None if served is None else (served.unavailable or "ok"),
            "items_follower": None if self.items is None else self._follower_health(self.items),
        }

    @staticmethod
    def _follower_health(items: ItemsFollower) -> dict[str, Any]:
        loop = items.loop_metrics()
        return {
            "alive": items.alive(),
            "items": items.items_seen,
            "dead_letters": loop.dead_letters,
            "dead_letters_by_reason": loop.dead_letters_by_reason,
            "lag": sum(loop.lag.values()),
        }

    def _require_model(self) -> Recommender:
        model = self.model
        if model is None:
            raise ApiError(503, "no_model", "the model is still loading")
        return model

    def _check_k(self, k: int, model: Recommender) -> None:
        limit = min(self.args.max_k, model.max_k)
        if not 1 <= k <= limit:
            raise ApiError(422, "k_out_of_range", f"k must be in [1, {limit}], got {k}")

    # -- batches ---------------------------------------------------------------------------------

    async def _score_users(self, jobs: list[_UserJob]) -> list[_UserAnswer]:
        """Users' recommendations, batched (:func:`batched`): their states in one call per shard,
        one scoring pass.

        A state call per request was the largest cost of a request in the replica (py-spy). The
        batch waits up to ``serve.batch_wait_ms`` for company. It is scored in a thread: faiss and
        torch release the GIL, so the search runs on another core while the loop parses the next
        requests (scoring on the loop lowered the replica's saturation from ~150 to ~120/s)."""
        model = self._require_model()  # one model for the whole batch, even mid roll-out
        states = await self.shards.user_states([job.user_id for job in jobs])
        recent, seen, fallbacks = [], [], []
        for state, fallback in states:
            recent.append(model.known(state["history"]) if state else [])
            seen.append(model.known(state["seen"]) if state else [])
            fallbacks.append("no_history" if state is not None and not recent[-1] else fallback)
        k = max(job.k for job in jobs)
        answers = await asyncio.to_thread(model.recommend_many, recent, k, seen=seen)
        return [
            _UserAnswer(answer[: job.k], fallback, model, state is not None)
            for answer, job, fallback, (state, _) in zip(answers, jobs, fallbacks, states, strict=True)
        ]

    async def _score_sessions(self, jobs: list[_SessionJob]) -> list[list[Recommendation]]:
        """Guest sessions' recommendations, batched (:func:`batched`), scored in a thread."""
        model = self._require_model()  # one model for the whole batch, even mid roll-out
        k = max(job.k for job in jobs)
        answers = await asyncio.to_thread(model.recommend_many, [j.recent for j in jobs], k)
        return [answer[: job.k] for answer, job in zip(answers, jobs, strict=True)]

    # -- Kafka -----------------------------------------------------------------------------------

    async def publish_event(self, event: UserEvent) -> dict[str, Any]:
        return await self._send(self.args.events_topic, *event.encode())

    async def publish_item(self, item: ItemMessage) -> dict[str, Any]:
        return await self._send(self.args.items_topic, *item.encode())

    async def _send(self, topic: str, key: bytes, value: bytes) -> dict[str, Any]:
        """Write one message and wait for the broker's acknowledgement (in a thread)."""
        metadata = await asyncio.to_thread(self._kafka().send(topic, key=key, value=value).get, 10)
        return {"topic": metadata.topic, "partition": metadata.partition, "offset": metadata.offset}

    def _kafka(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = kafka_client(
                KafkaProducer, self.args.bootstrap_servers, self.kafka, acks="all", linger_ms=1
            )
        return self._producer

    # -- through a handle (operators, benchmarks) ------------------------------------------------

    async def recommend_user(self, user_id: str, k: int) -> dict[str, Any]:
        """``GET /v1/recommendations/{user_id}`` without HTTP; an error comes back as a value
        (:meth:`ApiError.answer`)."""
        try:
            return await self.answer_user(user_id, k)
        except ApiError as exc:
            return exc.answer()

    async def shard_call(self, rank: int, method: str, *args: Any) -> Any:
        """Call a shard method (for operators and tests: ``export``, ``metrics``, ``offsets``, ``stop``)."""
        return await self.shards.call(rank, method, *args)

    async def stop_shards(self, timeout_s: float) -> dict[int, str | None]:
        """Every shard stops consuming and writes its final snapshot, all at once, each within
        ``timeout_s`` (not the request path's ``state_timeout_s``: a final snapshot under load takes
        longer than a lookup). Per rank, None when it stopped or why not."""

        async def stop(rank: int) -> str | None:
            try:
                await self.shards.call(rank, "stop", timeout_s=timeout_s)
            except Exception as exc:  # every shard is asked, whatever one of them answers
                return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return None

        ranks = range(self.shards.world_size)
        return dict(zip(ranks, await asyncio.gather(*(stop(rank) for rank in ranks)), strict=True))
