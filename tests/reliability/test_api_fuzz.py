"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis) on the real deployed app: no answer
is a 5xx, and every 4xx carries the JSON error body ``{"error": code, "detail": ...}``.

The POST routes read their bodies by hand (to enforce the byte limit before parsing), so FastAPI's
schema does not describe them; the fuzzer is given each route's body model (the one the route
validates with). Requests come from two forms of that schema: as served, in valid (positive) and
schema-violating (negative) forms; and narrowed to the catalog's item ids, a few user ids and the
event kinds, in valid form, so that requests also get past the refusals to the scoring, search and
publishing paths (random ids name no item, and a random event kind is refused).

The app serves the session's model made with the real encoders, so that every route can answer
(the other session model has no text encoder, and search answers it with a 503
``search_unavailable``). It runs without an API key here.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel
from schemathesis import GenerationMode

from raymm.data.schema import EVENT_KINDS
from raymm.models.artifact import ITEM_VECTORS
from raymm.serve.http import SessionRequest, api
from raymm.stream.events import ItemMessage, UserEvent
from tests.conftest import Trained
from tests.serve.live import LiveApp, live_app

#: The body model each POST route validates with (raymm.serve.http's read_body calls).
BODIES: dict[str, type[BaseModel]] = {
    "/v1/recommendations": SessionRequest,
    "/v1/events": UserEvent,
    "/v1/items": ItemMessage,
}
# POSTs first: the events they publish give the fuzz users state before their recommendations.
OPERATIONS = sorted(
    ((method.upper(), path) for path, ops in api.openapi()["paths"].items() for method in ops),
    key=lambda operation: (operation[0] != "POST", operation[1]),
)
USERS = [f"fuzz-user-{n}" for n in range(3)]
EXAMPLES = 10  # per form: 30 requests per operation


@pytest.fixture(scope="module")
def app(encoded_model: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    with live_app(encoded_model, tmp_path_factory.mktemp("fuzz"), shards=1, partitions=2) as running:
        yield running


@pytest.fixture(scope="module")
def schemas(app: LiveApp, encoded_model: Trained) -> tuple[Any, Any]:
    """The app's own schema as it serves it, with the POST routes' bodies; and the same narrowed to
    the catalog (see the module docstring)."""
    served = _with_bodies(requests.get(f"{app.url}/openapi.json", timeout=30).json())
    item_ids = pq.read_table(encoded_model.model / ITEM_VECTORS, columns=["item_id"]).column(0).to_pylist()
    return (
        schemathesis.openapi.from_dict(served),
        schemathesis.openapi.from_dict(_narrowed(served, sorted(item_ids)[:20])),
    )


def _with_bodies(document: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(document)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for path, model in BODIES.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        document["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return document


def _narrowed(document: dict[str, Any], item_ids: list[str]) -> dict[str, Any]:
    document = copy.deepcopy(document)
    ids = {"item_id": {"type": "string", "enum": item_ids}, "user_id": {"type": "string", "enum": USERS}}
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                parameter["schema"] = ids.get(parameter["name"], parameter["schema"])

    def body(path: str) -> dict[str, Any]:
        schema: dict[str, Any] = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return dict(schema["schema"]["properties"])

    now_ms = int(time.time() * 1000)
    session = body("/v1/recommendations")
    session["item_ids"] = {**session["item_ids"], "items": ids["item_id"]}
    event = body("/v1/events")
    event.update(
        item_id=ids["item_id"],
        user_id=ids["user_id"],
        event={"type": "string", "enum": list(EVENT_KINDS)},
        # Listed: for "integer" the fuzzer may write 1796528416597.0, which the contract refuses.
        ts={"type": "integer", "enum": [now_ms - 60_000 * n for n in range(10)]},
    )
    item = body("/v1/items")
    item["text"] = {"type": "string", "minLength": 1, "maxLength": 200}  # an item needs content
    for path, properties in (("/v1/recommendations", session), ("/v1/events", event), ("/v1/items", item)):
        content = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        content["schema"] = {**content["schema"], "properties": properties}
    content["schema"]["required"] = ["item_id", "text"]
    return document


def _error_body(response: Any) -> dict[str, Any]:
    assert response.headers.get("content-type", [""])[0].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and "detail" in body
    return body


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_request_from_the_schema_gets_a_5xx_and_every_4xx_is_a_json_error(
    app: LiveApp, schemas: tuple[Any, Any], method: str, path: str
) -> None:
    served, narrowed = (schema[path][method] for schema in schemas)
    strategy = (
        served.as_strategy(GenerationMode.POSITIVE)
        | served.as_strategy(GenerationMode.NEGATIVE)
        | narrowed.as_strategy(GenerationMode.POSITIVE)
    )
    statuses: set[int] = set()
    session = requests.Session()

    @settings(
        max_examples=3 * EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        response = case.call(base_url=app.url, session=session, timeout=60)
        statuses.add(response.status_code)
        where = f"{case.as_curl_command()} -> {response.status_code} {response.content[:300]!r}"
        if path == "/healthz":  # 503 is its answer while a shard is not ready, with a body
            assert response.status_code in (200, 503), where
            return
        assert response.status_code < 500, where
        if 400 <= response.status_code < 500:
            assert _error_body(response), where

    try:
        fuzz()
    finally:
        session.close()
    print(f"{method} {path}: answered {sorted(statuses)}")
    # The fuzzer got past the refusals: some request was answered as asked.
    assert any(200 <= status < 300 for status in statuses), statuses


@pytest.mark.parametrize("query", ["\r", " \t\n"])
def test_a_blank_search_query_is_refused_with_a_json_422(app: LiveApp, query: str) -> None:
    # The fuzzer's find: a query of whitespace failed in the text encoder, answered 500 internal.
    response = requests.get(f"{app.url}/v1/search", params={"q": query}, timeout=60)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "unencodable_query"
