"""The Ray Serve application: HTTP in, live recommendations out.

One graph, built by :func:`build_app` for ``serve run``, ``serve build`` and ``raymm serve`` alike::

    HTTP -> Recommender (FastAPI via @serve.ingress, OpenAPI at /docs; the artifact's model;
                         @serve.batch; user_config rolls models out)
              <-> state-0 .. state-{W-1}  (deployment-scoped actors: one EventConsumer each)
              -> Kafka (POST /v1/events, POST /v1/items)

**One deployment answers HTTP and scores.** A separate FastAPI ingress deployment in front of the
model cost a Serve hop per request (~3.5 ms of CPU in the ingress replica, plus the recommender's
side of the call, bench/serve_latency.py), for nothing: the HTTP layer is thin and scales with the
model. With Serve's throughput-optimized mode (:func:`raymm.runtime.init_ray`) HAProxy forwards
HTTP straight to the replica.

**Routing to the state owner.** A user's state lives with the consumer that applies the user's
partition. The recommender asks the shard of rank ``partition_for(user_id) % W``: the partition
Kafka's default partitioner (murmur2 of the key) gives the user, and the rank whose consumer
``assign()``s itself that partition (``partition % W == rank``). Serve's own routing (power of two
choices, or the experimental consistent-hash router) hashes differently, so requests are not
routed *to* the owner; the recommender calls the owner. Shards are Serve *deployment-scoped
actors*: Serve creates them with the deployment, health-checks them, recreates one that dies and
removes them with the app, and a recreated shard restores its partitions from their snapshots.
While a shard is missing or slow (``serve.state_timeout_s``), the request is answered with the
popularity fallback and ``"fallback": "state_unavailable"``, never with an error.

**Model roll-out.** The recommender's ``user_config`` holds the artifact URI; Serve calls
:meth:`Recommender.reconfigure` on each running replica, which loads the new model beside the old
one and swaps them in one assignment, so in-flight and new requests are all answered.
"""

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.config import DeploymentActorConfig
from starlette.exceptions import HTTPException as StarletteHTTPException

import raymm
from raymm.config import RaymmConfig
from raymm.data import io
from raymm.data.schema import EVENT_KINDS
from raymm.errors import RaymmError
from raymm.recommend.content import ContentEncoder
from raymm.recommend.index import IndexChoice
from raymm.recommend.recommender import Recommendation, Recommender, load_model
from raymm.recommend.search import SEARCH_MODALITIES, SearchIndex
from raymm.serve.shard import StateShard, owner_rank, shard_name
from raymm.stream.events import (
    DEAD_LETTER_TOPIC,
    EVENTS_TOPIC,
    ITEMS_TOPIC,
    DeadLetter,
    ItemLimits,
    ItemMessage,
    Rejected,
    UserEvent,
    decode_item,
)
from raymm.stream.state import StateSpec

log = logging.getLogger(__name__)

api = FastAPI(
    title="raymm",
    version=raymm.__version__,
    description="Live multimodal recommendations: users' events from Kafka, items' text, images and audio.",
)


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": ...}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: Any) -> None:
        super().__init__(status, code, detail)
        self.status, self.code, self.detail = status, code, detail

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.detail}"

    def answer(self) -> dict[str, Any]:
        """The error as a recommender answer (crossing the handle as a value, not an exception:
        Ray would log every 4xx as a replica error)."""
        return {ERROR_KEY: {"status": self.status, "code": self.code, "detail": self.detail}}


#: How often the recommender sends what it served to the state shards (the online hit rate).
SERVED_FLUSH_S = 0.1

#: The key of an error in a recommender answer; see :meth:`ApiError.answer`.
ERROR_KEY = "__raymm_error__"


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse({"error": "invalid_request", "detail": errors}, status_code=422)


@api.exception_handler(StarletteHTTPException)
async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": code, "detail": exc.detail}, status_code=exc.status_code)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"error": "internal", "detail": type(exc).__name__}, status_code=500)


# -- request and response bodies --------------------------------------------------------------


class ItemScore(BaseModel):
    item_id: str
    score: float


class Recommendations(BaseModel):
    """Recommended items, best first, with the model version that ranked them. ``fallback`` says
    why the popularity fallback answered (``unknown_user``, ``state_unavailable``), or null."""

    user_id: str | None
    items: list[ItemScore]
    model_version: str
    fallback: str | None = None


class SessionRequest(BaseModel):
    """A guest or session: recent item ids, oldest first, and no user id."""

    model_config = ConfigDict(extra="forbid")

    item_ids: list[str] = Field(min_length=1, max_length=1000)
    k: int = Field(10, ge=1)


class Accepted(BaseModel):
    event_id: str
    topic: str
    partition: int
    offset: int


class Health(BaseModel):
    status: str
    model_version: str | None
    shards: list[dict[str, Any]]
    items: int | None = None
    live_items: int | None = None
    search: str | None = None


# -- settings passed to the deployments ---------------------------------------------------------


@dataclass(frozen=True)
class ServeArgs:
    """What the deployments need, resolved once by :func:`build_app` (plain values: it is pickled)."""

    bootstrap_servers: str
    client_options: dict[str, Any]
    partitions: int
    world_size: int
    max_k: int
    max_body_bytes: int
    state_timeout_s: float
    max_item_bytes: int = 16 * 1024 * 1024
    index: IndexChoice = field(default_factory=IndexChoice)
    max_batch_size: int = 32
    batch_wait_ms: float = 1.0
    events_topic: str = EVENTS_TOPIC
    items_topic: str = ITEMS_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC


# -- the recommender -----------------------------------------------------------------------------


@dataclass
class _Job:
    recent: list[str]
    seen: list[str]
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


@dataclass
class _Served:
    """One artifact as served: the recommender (replaced, never changed, as live items arrive),
    the content encoder and the search index (None, with ``unavailable`` saying why, for an
    artifact without recorded encoders or aligned vectors)."""

    key: str
    model: Recommender
    encoder: ContentEncoder | None
    search: SearchIndex | None
    unavailable: str | None
    items_added: int = 0


def _load(uri: str, key: str, index: IndexChoice) -> _Served:
    model = load_model(uri, index=index)
    try:
        encoder = ContentEncoder.from_artifact(uri, model.artifact)
        search = SearchIndex.from_artifact(model.artifact)
    except RaymmError as exc:  # a model without encoders or aligned vectors still recommends
        log.warning("search and live items are off for %s: %s", uri, exc)
        return _Served(key, model, None, None, str(exc))
    return _Served(key, model, encoder, search, None)


def _answer(
    user_id: str | None, items: Sequence[Recommendation], model: Recommender, fallback: str | None
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "items": [{"item_id": r.item_id, "score": r.score} for r in items],
        "model_version": model.version,
        "fallback": fallback,
    }


# @serve.ingress pickles the FastAPI app, its routes and this class as they are when the class is
# defined: every module-level name the class uses must be defined above it.
@serve.ingress(api)
class RecommenderDeployment:
    """The HTTP API (FastAPI through ``@serve.ingress``) and the model: scores batches of users,
    asks the state shards for live user state, writes events and items to Kafka, and consumes
    ``raymm.items`` into the catalog and the search index (a thread of its own)."""

    def __init__(self, args: ServeArgs) -> None:
        from ray.serve import metrics

        self.args = args
        self.served: _Served | None = None
        self._producer: Any = None
        batched: Any  # @serve.batch methods, with Serve's setters
        for batched in (self._batched_users, self._batched):
            batched.set_max_batch_size(args.max_batch_size)
            batched.set_batch_wait_timeout_s(args.batch_wait_ms / 1000)
        self._served_queue: dict[int, list[tuple[str, list[str], float]]] = {}
        self._served_flush: asyncio.Task[None] | None = None
        self._lock = threading.Lock()  # the search index and the swap of a grown catalog
        self._shards: dict[int, Any] = {}
        self._stop = threading.Event()
        self._items_thread: threading.Thread | None = None
        self.latency = metrics.Histogram(
            "raymm_recommend_latency_ms",
            "time to answer a recommendation, ms",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
            tag_keys=("endpoint",),
        )
        self.fallbacks = metrics.Counter(
            "raymm_fallback_total", "answers by the fallback", tag_keys=("reason",)
        )
        self.live_items = metrics.Counter("raymm_live_items_total", "items added or updated from raymm.items")

    @property
    def model(self) -> Recommender | None:
        return None if self.served is None else self.served.model

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the artifact ``user_config["model"]`` and swap it in (a no-op for the same URI and
        version). Live items are then read again from the start of ``raymm.items`` into it."""
        uri = str(user_config["model"])
        key = f"{uri}#{user_config.get('version', '')}"
        if self.served is not None and self.served.key == key:
            return
        served = await asyncio.to_thread(_load, uri, key, self.args.index)
        self.served = served  # one assignment: a request sees the old model or the new
        log.info("serving model %s from %s", served.model.version, uri)
        if self._items_thread is None:
            self._items_thread = threading.Thread(target=self._consume_items, name="raymm-items", daemon=True)
            self._items_thread.start()

    def __del__(self) -> None:
        self._stop.set()

    # -- live items ------------------------------------------------------------------------------

    def _consume_items(self) -> None:
        """Read ``raymm.items`` from its start (every replica needs every item), encode new and
        updated items with the artifact's encoders, and add them to the catalog and the index.
        A roll-out starts the topic over for the new model. Bad messages go to the dead-letter
        topic; nothing here stops the thread."""
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        common = {"bootstrap_servers": self.args.bootstrap_servers, **self.args.client_options}
        consumer = KafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **common)
        dlq = KafkaProducer(acks="all", linger_ms=20, **common)
        limits = ItemLimits()
        applied_to: str | None = None
        try:
            while not self._stop.is_set():
                try:
                    if not consumer.assignment():
                        partitions = consumer.partitions_for_topic(self.args.items_topic)
                        if not partitions:
                            self._stop.wait(2.0)
                            continue
                        consumer.assign(
                            [TopicPartition(self.args.items_topic, p) for p in sorted(partitions)]
                        )
                    served = self.served
                    if served is None:
                        self._stop.wait(0.5)
                        continue
                    if served.key != applied_to:
                        consumer.seek_to_beginning()
                        applied_to = served.key
                    # Non-blocking poll and a sleep when idle: a blocking poll spins on brokers
                    # that answer fetches at once (see EventConsumer._run).
                    batch = consumer.poll(timeout_ms=0, max_records=256)
                    if not batch:
                        self._stop.wait(0.1)
                        continue
                    items: list[ItemMessage] = []
                    for records in batch.values():
                        for record in records:
                            try:
                                items.append(decode_item(record.key, record.value, limits))
                            except Rejected as rejected:
                                letter = DeadLetter.of(
                                    rejected,
                                    record.key,
                                    record.value,
                                    record.topic,
                                    record.partition,
                                    record.offset,
                                )
                                key, value = letter.encode()
                                dlq.send(self.args.dead_letter_topic, key=key, value=value)
                    if items:
                        self._add_items(served, items)
                except Exception:  # the items stream never stops serving; the log says why
                    log.exception("consuming %s failed; retrying in 2 s", self.args.items_topic)
                    self._stop.wait(2.0)
        finally:
            consumer.close()
            dlq.close(timeout=5)

    def _add_items(self, served: _Served, items: Sequence[ItemMessage]) -> None:
        if served.encoder is None or served.search is None:
            log.warning("%d live items ignored: %s", len(items), served.unavailable)
            return
        encoded = served.encoder.encode_items(items)
        kept = encoded.select(encoded.has_content)
        for item_id, errors in zip(encoded.item_ids, zip(*encoded.errors.values(), strict=True), strict=True):
            failed = [e for e in errors if e]
            if failed:
                log.warning("live item %s: %s", item_id, "; ".join(failed))
        if not len(kept):
            return
        grown = served.model.with_items(kept)
        with self._lock:
            served.search.add(kept)
            served.model = grown
            served.items_added += len(kept)
        self.live_items.inc(len(kept))

    def _require_model(self) -> Recommender:
        model = self.model
        if model is None:
            raise ApiError(503, "no_model", "the model is still loading")
        return model

    # -- state -------------------------------------------------------------------------------

    def _shard(self, rank: int, refresh: bool = False) -> Any:
        if refresh or rank not in self._shards:
            self._shards[rank] = serve.get_deployment_actor(shard_name(rank))
        return self._shards[rank]

    async def _call_shard(self, rank: int, method: str, *args: Any) -> Any:
        """``method(*args)`` on shard ``rank``; one retry with a fresh handle (a recreated shard)."""
        for attempt in range(2):
            try:
                handle = self._shard(rank, refresh=attempt > 0)
                ref = getattr(handle, method).remote(*args)
                async with asyncio.timeout(self.args.state_timeout_s):  # no extra task, unlike wait_for
                    return await ref
            except (ray.exceptions.RayActorError, ValueError):
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def user_states(self, user_ids: Sequence[str]) -> list[tuple[dict[str, Any] | None, str | None]]:
        """Per user (their live state or None, why not: ``unknown_user`` / ``state_unavailable``),
        in one call per owning shard, the shards asked at once."""
        by_rank: dict[int, list[int]] = {}
        for position, user_id in enumerate(user_ids):
            by_rank.setdefault(owner_rank(user_id, self.args.partitions, self.args.world_size), []).append(
                position
            )
        found: list[tuple[dict[str, Any] | None, str | None]] = [(None, "state_unavailable")] * len(user_ids)

        async def fetch(rank: int, positions: list[int]) -> None:
            try:
                states = await self._call_shard(rank, "get_users", [user_ids[p] for p in positions])
            except (TimeoutError, ray.exceptions.RayActorError, ValueError) as exc:
                log.warning(
                    "state shard %d unavailable for %d users: %s", rank, len(positions), type(exc).__name__
                )
                return
            for position, state in zip(positions, states, strict=True):
                found[position] = (state, None if state is not None else "unknown_user")

        await asyncio.gather(*(fetch(rank, positions) for rank, positions in by_rank.items()))
        return found

    def _record_served(self, user_id: str, item_ids: list[str]) -> None:
        """Queue what was served to ``user_id`` for the owner's online hit rate; sent every
        :data:`SERVED_FLUSH_S` in one call per shard (a call per request cost ~1 ms of CPU)."""
        rank = owner_rank(user_id, self.args.partitions, self.args.world_size)
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
                self._shard(rank).record_served.remote([(u, items, now - t) for u, items, t in served])

    # -- answers -------------------------------------------------------------------------------

    # -- HTTP ------------------------------------------------------------------------------------

    async def _body(self, request: Request, model: type[BaseModel], limit: int | None = None) -> Any:
        limit = limit or self.args.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "body_too_large", f"{declared} bytes, the limit is {limit}")
        body = await request.body()
        if len(body) > limit:
            raise ApiError(413, "body_too_large", f"{len(body)} bytes, the limit is {limit}")
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            code = "malformed_json" if any(e["type"] == "json_invalid" for e in errors) else "invalid_request"
            raise ApiError(422 if code == "invalid_request" else 400, code, errors) from None

    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> JSONResponse:
        report = await self.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @api.get("/v1/recommendations/{user_id}", response_model=Recommendations)
    async def recommendations(self, user_id: str, k: int = Query(10)) -> dict[str, Any]:
        return await self._recommend_user(user_id, k)

    @api.post("/v1/recommendations", response_model=Recommendations)
    async def session(self, request: Request) -> dict[str, Any]:
        body: SessionRequest = await self._body(request, SessionRequest)
        return await self._recommend_session(body.item_ids, body.k)

    @api.get("/v1/items/{item_id}/similar")
    async def similar(self, item_id: str, k: int = Query(10)) -> dict[str, Any]:
        return self._similar(item_id, k)

    @api.get("/v1/search")
    async def search(
        self, q: str = Query(min_length=1, max_length=512), k: int = Query(10), modality: str = Query("fused")
    ) -> dict[str, Any]:
        """Cross-media search: the text ``q`` against items' image, audio, text or fused vectors."""
        return await self._search(q, k, modality)

    @api.post("/v1/items", status_code=202)
    async def items(self, request: Request) -> dict[str, Any]:
        """A new or updated item (the ``raymm.items`` contract), written to Kafka."""
        item: ItemMessage = await self._body(request, ItemMessage, self.args.max_item_bytes)
        if item.text is None and item.image is None and item.audio is None:
            raise ApiError(422, "no_content", f"item {item.item_id!r} has none of text, image, audio")
        return {"item_id": item.item_id, **await self._send(self.args.items_topic, *item.encode())}

    @api.post("/v1/events", status_code=202, response_model=Accepted)
    async def events(self, request: Request) -> dict[str, Any]:
        event: UserEvent = await self._body(request, UserEvent)
        if event.event not in EVENT_KINDS:
            raise ApiError(422, "unknown_event", f"event {event.event!r} is none of {', '.join(EVENT_KINDS)}")
        return {"event_id": event.event_id, **await self._send(self.args.events_topic, *event.encode())}

    async def _send(self, topic: str, key: bytes, value: bytes) -> dict[str, Any]:
        """Write one message and wait for the broker's acknowledgement (in a thread)."""
        metadata = await asyncio.to_thread(self._kafka().send(topic, key=key, value=value).get, 10)
        return {"topic": metadata.topic, "partition": metadata.partition, "offset": metadata.offset}

    def _kafka(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = KafkaProducer(
                bootstrap_servers=self.args.bootstrap_servers,
                acks="all",
                linger_ms=1,
                **self.args.client_options,
            )
        return self._producer

    # -- through a handle (operators, benchmarks) ------------------------------------------------

    async def recommend_user(self, user_id: str, k: int) -> dict[str, Any]:
        """``GET /v1/recommendations/{user_id}`` without HTTP; an error comes back as a value."""
        try:
            return await self._recommend_user(user_id, k)
        except ApiError as exc:
            return exc.answer()

    async def _search(self, query: str, k: int, modality: str) -> dict[str, Any]:
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
        encoder, index = served.encoder, served.search

        def run() -> list[Any]:
            vectors = encoder.encode_query(query)
            with self._lock:
                return index.search(vectors, k, modality)

        hits = await asyncio.to_thread(run)
        self.latency.observe((time.perf_counter() - start) * 1000, tags={"endpoint": "search"})
        return {
            "query": query,
            "modality": modality,
            "items": [{"item_id": h.item_id, "score": h.score} for h in hits],
            "model_version": served.model.version,
        }

    async def _recommend_user(self, user_id: str, k: int) -> dict[str, Any]:
        start = time.perf_counter()
        self._check_k(k, self._require_model())
        answer = await self._batched_users(_UserJob(user_id, k))
        if answer.fallback:
            self.fallbacks.inc(tags={"reason": answer.fallback})
        if answer.has_state and answer.items:
            self._record_served(user_id, [r.item_id for r in answer.items])
        self.latency.observe((time.perf_counter() - start) * 1000, tags={"endpoint": "user"})
        return _answer(user_id, answer.items, answer.model, answer.fallback)

    async def _recommend_session(self, item_ids: list[str], k: int) -> dict[str, Any]:
        start = time.perf_counter()
        model = self._require_model()
        self._check_k(k, model)
        unknown = [i for i in item_ids if i not in model.row_of]
        if unknown:
            raise ApiError(422, "unknown_items", f"unknown item ids: {unknown[:10]} ({len(unknown)} in all)")
        items = await self._score(_Job(item_ids, [], k))
        self.latency.observe((time.perf_counter() - start) * 1000, tags={"endpoint": "session"})
        return _answer(None, items, model, None)

    def _similar(self, item_id: str, k: int) -> dict[str, Any]:
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

    def _check_k(self, k: int, model: Recommender) -> None:
        limit = min(self.args.max_k, model.max_k)
        if not 1 <= k <= limit:
            raise ApiError(422, "k_out_of_range", f"k must be in [1, {limit}], got {k}")

    async def _score(self, job: _Job) -> list[Recommendation]:
        return await self._batched(job)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.003)
    async def _batched_users(self, jobs: list[_UserJob]) -> list[_UserAnswer]:
        """Users' recommendations, batched: their states in one call per shard, one scoring pass.

        A state call per request was the largest cost of a request in the replica (py-spy). The
        batch waits up to ``serve.batch_wait_ms`` for company. It is scored in a thread: faiss and
        torch release the GIL, so the search runs on another core while the loop parses the next
        requests (scoring on the loop lowered the replica's saturation from ~150 to ~120/s)."""
        model = self._require_model()  # one model for the whole batch, even mid roll-out
        states = await self.user_states([job.user_id for job in jobs])
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

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.003)
    async def _batched(self, jobs: list[_Job]) -> list[list[Recommendation]]:
        model = self._require_model()  # one model for the whole batch, even mid roll-out
        k = max(job.k for job in jobs)
        answers = await asyncio.to_thread(
            model.recommend_many, [j.recent for j in jobs], k, seen=[j.seen for j in jobs]
        )
        return [answer[: job.k] for answer, job in zip(answers, jobs, strict=True)]

    async def health(self) -> dict[str, Any]:
        shards = []
        for rank in range(self.args.world_size):
            try:
                shards.append(await self._call_shard(rank, "health"))
            except (TimeoutError, ray.exceptions.RayActorError, ValueError) as exc:
                shards.append({"rank": rank, "alive": False, "error": type(exc).__name__})
        served = self.served
        ok = served is not None and all(s.get("alive") for s in shards)
        return {
            "status": "ok" if ok else "degraded",
            "model_version": None if served is None else served.model.version,
            "shards": shards,
            "items": None if served is None else len(served.model.item_ids),
            "live_items": None if served is None else served.items_added,
            "search": None if served is None else (served.unavailable or "ok"),
        }

    async def shard_call(self, rank: int, method: str, *args: Any) -> Any:
        """Call a shard method (for operators and tests: ``export``, ``metrics``, ``offsets``)."""
        return await self._call_shard(rank, method, *args)


# -- building the graph ---------------------------------------------------------------------------


def build_app(
    config: RaymmConfig, *, bootstrap_servers: str, model: str | None = None, version: str | None = None
) -> serve.Application:
    """The raymm Serve application for ``config``, reading events from ``bootstrap_servers``.

    ``model`` is the artifact (default ``serve.model``, else ``<out>/model``); its user-state spec
    is what the shards keep. ``version`` tags the ``user_config`` (default: a fresh one), so a
    redeploy with a new artifact URI rolls out through :meth:`RecommenderDeployment.reconfigure`.
    """
    settings = config.serve
    uri = io.absolute(model or settings.model or config.stage_dir("model"))
    spec = StateSpec.from_artifact(uri, config.stream.dedupe_window)
    args = ServeArgs(
        bootstrap_servers=bootstrap_servers,
        client_options=config.kafka.client_options(),
        partitions=config.kafka.partitions,
        world_size=settings.state_shards,
        max_k=settings.max_k,
        max_body_bytes=settings.max_body_bytes,
        state_timeout_s=settings.state_timeout_s,
        index=IndexChoice(settings.index, settings.faiss_min_items, settings.nprobe),
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
    )
    shards: list[dict[Any, Any] | DeploymentActorConfig] = [
        DeploymentActorConfig(
            name=shard_name(rank),
            actor_class=ray.remote(StateShard),
            init_kwargs={
                "rank": rank,
                "world_size": settings.state_shards,
                "bootstrap_servers": bootstrap_servers,
                "spec": spec.to_json(),
                "snapshot_uri": io.absolute(config.snapshot_uri()),
                "stream": config.stream.model_dump(mode="json"),
                "client_options": config.kafka.client_options(),
                "hit_window_s": settings.hit_window_s,
            },
            actor_options={"num_cpus": settings.shard_num_cpus, "max_concurrency": 32},
        )
        for rank in range(settings.state_shards)
    ]
    return serve.deployment(
        name="Recommender",
        num_replicas=settings.recommender_replicas,
        ray_actor_options={"num_cpus": settings.recommender_num_cpus},
        deployment_actors=shards,
        user_config={"model": uri, "version": version or uuid.uuid4().hex[:8]},
        max_ongoing_requests=256,
    )(RecommenderDeployment).bind(args)


def app_builder(args: dict[str, str]) -> serve.Application:
    """The app for ``serve run`` / ``serve build`` (Serve's application-builder convention)::

        serve run raymm.serve.app:app_builder config=configs/quickstart.yaml \\
            bootstrap_servers=broker:9092 [model=s3://bucket/model] [set=serve.state_shards=2,...]

    ``config`` is a raymm YAML file (default: the embedded defaults), ``set`` comma-separated
    overrides as ``--set`` takes them. Kafka must be reachable (``bootstrap_servers`` or
    ``kafka.bootstrap_servers``): ``serve run`` starts no embedded broker (``raymm serve`` does).
    """
    from raymm.config import load_config

    overrides = [o for o in args.get("set", "").split(",") if o]
    config = load_config(args.get("config"), overrides)
    bootstrap = args.get("bootstrap_servers") or config.kafka.bootstrap_servers
    if not bootstrap:
        raise RaymmError(
            "serve run needs Kafka: pass bootstrap_servers=HOST:PORT or set kafka.bootstrap_servers"
        )
    return build_app(config, bootstrap_servers=bootstrap, model=args.get("model"))
