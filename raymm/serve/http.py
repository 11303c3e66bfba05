"""The HTTP layer of the Serve application: the FastAPI app, its routes, bodies and errors.

The routes are plain functions. Each asks the replica it runs in for the answer through
:func:`replica` (Serve's ``servable_object``: the :class:`~raymm.serve.deployment.RecommenderDeployment`
that ``@serve.ingress(api)`` wraps), and needs of it only what :class:`Replica` lists. So this
module knows HTTP (parsing, limits, status codes, the JSON error body) and nothing of models,
batching or state shards.

Every error is answered as ``{"error": code, "detail": ...}``: the replica's refusals as
:class:`ApiError`, FastAPI's validation errors as ``invalid_request`` (422), unknown paths as
``not_found`` (404), and anything unexpected as ``internal`` (500, logged). When the replica has an
API key, every route but ``/healthz`` depends on :func:`authorized` (401 ``unauthorized``; see
:mod:`raymm.serve.auth`). The docs pages (``/docs``, ``/redoc``) and their assets come from
:mod:`raymm.serve.docs`, with no network beyond the app.

``@serve.ingress(api)`` copies ``api`` when the deployment class is defined: a route added
after :mod:`raymm.serve.deployment` is imported would not be served.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Protocol, TypeVar, cast

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

import raymm
from raymm.data.schema import EVENT_KINDS
from raymm.serve.auth import ApiKey
from raymm.serve.docs import serve_docs
from raymm.stream.events import ItemMessage, UserEvent

__all__ = [
    "ERROR_KEY",
    "Accepted",
    "ApiError",
    "Health",
    "ItemScore",
    "Recommendations",
    "Replica",
    "SessionRequest",
    "api",
    "authorized",
]

log = logging.getLogger(__name__)

api = FastAPI(
    title="raymm",
    version=raymm.__version__,
    description="Live multimodal recommendations: users' events from Kafka, items' text, images and audio.",
    # FastAPI's own pages load their assets from a CDN: blank on an air-gapped cluster.
    docs_url=None,
    redoc_url=None,
)
serve_docs(api)

#: The key of an error in an answer given through a handle; see :meth:`ApiError.answer`.
ERROR_KEY = "__raymm_error__"


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": ...}`` with ``status`` (and ``headers``)."""

    def __init__(self, status: int, code: str, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, code, detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.detail}"

    def answer(self) -> dict[str, Any]:
        """The error as a value under :data:`ERROR_KEY` (crossing a handle as a value, not an
        exception: Ray would log every 4xx as a replica error)."""
        return {ERROR_KEY: {"status": self.status, "code": self.code, "detail": self.detail}}


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {"error": exc.code, "detail": exc.detail}, status_code=exc.status, headers=exc.headers
    )


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
    #: The ``raymm.items`` follower: alive, items read, dead letters (by reason), lag.
    items_follower: dict[str, Any] | None = None


# -- what the routes need of the replica --------------------------------------------------------


class Replica(Protocol):
    """What the routes ask of the serving replica. A method raises :class:`ApiError` for a request
    it refuses (``k`` out of range, unknown items, no model yet); ``publish_*`` return where Kafka
    put the message (``topic``, ``partition``, ``offset``)."""

    @property
    def max_body_bytes(self) -> int: ...

    @property
    def max_item_bytes(self) -> int: ...

    @property
    def api_key(self) -> ApiKey | None: ...

    async def answer_user(self, user_id: str, k: int) -> dict[str, Any]: ...

    async def answer_session(self, item_ids: list[str], k: int) -> dict[str, Any]: ...

    def answer_similar(self, item_id: str, k: int) -> dict[str, Any]: ...

    async def answer_search(self, query: str, k: int, modality: str) -> dict[str, Any]: ...

    async def health(self) -> dict[str, Any]: ...

    async def publish_event(self, event: UserEvent) -> dict[str, Any]: ...

    async def publish_item(self, item: ItemMessage) -> dict[str, Any]: ...


async def replica() -> Replica:
    """The deployment instance this request runs in (a FastAPI dependency).

    ``async`` so FastAPI calls it on the event loop: a plain ``def`` dependency runs in FastAPI's
    thread pool, a thread hop per request that cost ~13% of the replica's busy CPU (py-spy,
    bench/serve_latency.py at 100/s)."""
    from ray import serve

    return cast(Replica, serve.get_replica_context().servable_object)


ReplicaDep = Annotated[Replica, Depends(replica)]

# Two ways to send the key, both in the OpenAPI schema (its clients and fuzzers can send either).
_bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token (serve.api_key).")
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key (serve.api_key).")


async def authorized(
    recommender: ReplicaDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    key_header: Annotated[str | None, Security(_key_header)],
) -> None:
    """Let the request through when the replica has no API key, or the request carries it
    (``Authorization: Bearer`` or ``X-API-Key``); otherwise 401 ``unauthorized`` with
    ``WWW-Authenticate: Bearer``. The answer never repeats what was sent."""
    key = recommender.api_key
    if key is None:
        return
    presented = [bearer.credentials if bearer is not None else None, key_header]
    if any([key.matches(p) for p in presented]):  # a list: both are compared, always
        return
    detail = (
        "the API key is wrong"
        if any(p is not None for p in presented)
        else "this API needs a key: send Authorization: Bearer <key> or X-API-Key: <key>"
    )
    raise ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


#: What every route but /healthz takes: the key check, and its answer in the schema.
KEYED: dict[str, Any] = {
    "dependencies": [Depends(authorized)],
    "responses": {401: {"description": "Missing or wrong API key (when serve.api_key is set)."}},
}

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, model: type[M], limit: int) -> M:
    """The request body as ``model``: 413 ``body_too_large`` beyond ``limit`` bytes (declared or
    read), 400 ``malformed_json``, 422 ``invalid_request`` naming each bad field."""
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


# -- routes ------------------------------------------------------------------------------------


@api.get("/healthz", response_model=Health)
async def healthz(recommender: ReplicaDep) -> JSONResponse:
    report = await recommender.health()
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


@api.get("/v1/recommendations/{user_id}", response_model=Recommendations, **KEYED)
async def recommendations(recommender: ReplicaDep, user_id: str, k: int = Query(10)) -> dict[str, Any]:
    return await recommender.answer_user(user_id, k)


@api.post("/v1/recommendations", response_model=Recommendations, **KEYED)
async def session(recommender: ReplicaDep, request: Request) -> dict[str, Any]:
    body = await read_body(request, SessionRequest, recommender.max_body_bytes)
    return await recommender.answer_session(body.item_ids, body.k)


@api.get("/v1/items/{item_id}/similar", **KEYED)
async def similar(recommender: ReplicaDep, item_id: str, k: int = Query(10)) -> dict[str, Any]:
    return recommender.answer_similar(item_id, k)


@api.get("/v1/search", **KEYED)
async def search(
    recommender: ReplicaDep,
    q: str = Query(min_length=1, max_length=512),
    k: int = Query(10),
    modality: str = Query("fused"),
) -> dict[str, Any]:
    """Cross-media search: the text ``q`` against items' image, audio, text or fused vectors."""
    return await recommender.answer_search(q, k, modality)


@api.post("/v1/items", status_code=202, **KEYED)
async def items(recommender: ReplicaDep, request: Request) -> dict[str, Any]:
    """A new or updated item (the ``raymm.items`` contract), written to Kafka."""
    item = await read_body(request, ItemMessage, recommender.max_item_bytes)
    if item.text is None and item.image is None and item.audio is None:
        raise ApiError(422, "no_content", f"item {item.item_id!r} has none of text, image, audio")
    return {"item_id": item.item_id, **await recommender.publish_item(item)}


@api.post("/v1/events", status_code=202, response_model=Accepted, **KEYED)
async def events(recommender: ReplicaDep, request: Request) -> dict[str, Any]:
    event = await read_body(request, UserEvent, recommender.max_body_bytes)
    if event.event not in EVENT_KINDS:
        raise ApiError(422, "unknown_event", f"event {event.event!r} is none of {', '.join(EVENT_KINDS)}")
    return {"event_id": event.event_id, **await recommender.publish_event(event)}
