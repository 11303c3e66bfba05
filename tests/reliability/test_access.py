"""Access (issue 25, point 4): the HTTP API's key, and Kafka's security settings on every client.

* The real app, deployed with a key (``serve.api_key_file``) on the session's Ray and model: every
  route of its own OpenAPI schema but ``/healthz`` answers 401 with the API's JSON error body and
  ``WWW-Authenticate: Bearer`` without the key or with a wrong one, and lets either way of sending
  the key in; ``/healthz`` and ``/docs`` stay open. What Ray shows of the deployment (Serve's
  application details, which carry the state shards' arguments, and the actors' state) holds no
  Kafka password.
* Against a real broker, every Kafka client raymm builds (the admin client, the replay producer, an
  event consumer with its dead-letter and forwarding producer, the items follower, a state shard,
  a serving replica's producer and items follower) carries the client id and security settings of
  :class:`~raymm.stream.settings.KafkaSettings`, observed on the kafka-python objects themselves;
  and no module of raymm builds a client but through :func:`raymm.stream.clients.kafka_client`.
"""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from pydantic import SecretStr, ValidationError

import raymm
from raymm.config import ServeConfig
from raymm.errors import ConfigError
from raymm.serve.auth import API_KEY_ENV, ApiKey, ApiKeySource
from raymm.serve.deployment import RecommenderDeployment, ServeArgs
from raymm.serve.shard import StateShard
from raymm.stream.broker import EmbeddedBroker, ensure_topics
from raymm.stream.clients import kafka_client
from raymm.stream.consumer import EventConsumer
from raymm.stream.events import ItemMessage, UserEvent
from raymm.stream.items import ItemsFollower
from raymm.stream.ownership import partition_for
from raymm.stream.producer import replay
from raymm.stream.settings import PASSWORD_ENV, KafkaSettings
from raymm.stream.state import StateSpec, UserStateStore
from tests.conftest import Trained, make_interactions
from tests.serve.live import LiveApp, live_app

API_KEY = f"api-key-{uuid.uuid4().hex}"
KAFKA_PASSWORD = f"kafka-password-{uuid.uuid4().hex}"
KAFKA_USER = f"access-user-{uuid.uuid4().hex[:6]}"
SPEC = StateSpec(max_history=5, events=frozenset({"like", "click"}))
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# -- the HTTP API's key, on the real app ---------------------------------------------------------


@pytest.fixture(scope="module")
def app(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """The app with an API key from a file (a mounted Secret) and a Kafka password in its config."""
    root = tmp_path_factory.mktemp("access")
    key_file = root / "api-key"
    key_file.write_text(f"{API_KEY}\n")  # as `echo` writes it: whitespace around the key is ignored
    with live_app(
        trained,
        root,
        shards=1,
        partitions=2,
        kafka={"sasl_plain_username": KAFKA_USER, "sasl_plain_password": SecretStr(KAFKA_PASSWORD)},
        serve_settings={"api_key_file": str(key_file)},
    ) as running:
        yield running


def _operations(app: LiveApp) -> list[tuple[str, str]]:
    """(method, URL) of every operation in the app's OpenAPI schema, path parameters filled."""
    schema = requests.get(f"{app.url}/openapi.json", timeout=30).json()
    return [
        (method.upper(), app.url + re.sub(r"\{[^}]+\}", "x", path))
        for path, operations in schema["paths"].items()
        for method in operations
    ]


def _refused(response: requests.Response, detail: str) -> None:
    assert response.status_code == 401, (response.request.method, response.url, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["error"] == "unauthorized" and detail in body["detail"], body


def test_every_route_but_healthz_needs_the_key(app: LiveApp) -> None:
    operations = _operations(app)
    assert len(operations) >= 7  # /healthz and the six /v1 routes
    wrong = f"not-{API_KEY}"
    for method, url in operations:
        if url.endswith("/healthz"):
            assert requests.request(method, url, timeout=30).status_code == 200
            continue
        # Refused before the route reads its body or query (POSTs here have none).
        _refused(requests.request(method, url, timeout=30), "needs a key")
        for headers in ({"Authorization": f"Bearer {wrong}"}, {"X-API-Key": wrong}):
            response = requests.request(method, url, headers=headers, timeout=30)
            _refused(response, "wrong")
            assert wrong not in response.text  # the answer never repeats what was sent
        # Another scheme is no bearer token.
        _refused(
            requests.request(method, url, headers={"Authorization": f"Basic {API_KEY}"}, timeout=30), "needs"
        )


def test_either_way_of_sending_the_key_is_let_in(app: LiveApp) -> None:
    for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY}):
        answer = requests.get(
            f"{app.url}/v1/recommendations/someone", params={"k": 3}, headers=headers, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["fallback"] == "unknown_user" and len(answer.json()["items"]) == 3
    event = {"event_id": uuid.uuid4().hex, "user_id": "u-access", "item_id": "x", "event": "like", "ts": 1}
    posted = requests.post(f"{app.url}/v1/events", json=event, headers={"X-API-Key": API_KEY}, timeout=30)
    assert posted.status_code == 202 and posted.json()["event_id"] == event["event_id"]
    # A valid key does not hide the route's own refusals.
    bad = requests.get(f"{app.url}/v1/search", headers={"X-API-Key": API_KEY}, timeout=30)
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"


def test_the_docs_stay_open_and_the_schema_names_both_ways_to_send_the_key(app: LiveApp) -> None:
    docs = requests.get(f"{app.url}/docs", timeout=30)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = requests.get(f"{app.url}/openapi.json", timeout=30).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["HTTPBearer"]["description"],
    }
    assert schemes["APIKeyHeader"]["in"] == "header" and schemes["APIKeyHeader"]["name"] == "X-API-Key"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            expected = None if path == "/healthz" else [{"HTTPBearer": []}, {"APIKeyHeader": []}]
            assert operation.get("security") == expected, (method, path)
            assert (path != "/healthz") == ("401" in operation["responses"]), (method, path)


def test_rays_view_of_the_app_holds_no_secret(app: LiveApp) -> None:
    import ray
    from ray.serve.context import _get_global_client
    from ray.util.state import list_actors

    details = json.dumps(_get_global_client().get_serve_details(), default=str)
    # The state shards' arguments are there for anyone with the dashboard: the check can fail.
    assert KAFKA_USER in details and "bootstrap_servers" in details
    # Other Ray instances may run on this machine: ask this session's.
    address = ray.get_runtime_context().gcs_address
    found = list_actors(address=address, detail=True, limit=10_000)
    assert any("StateShard" in a.class_name for a in found)
    actors = json.dumps([a.__dict__ for a in found], default=str)
    for secret in (KAFKA_PASSWORD, API_KEY):
        assert secret not in details and secret not in actors


# -- the API key's sources -------------------------------------------------------------------------


def test_the_key_comes_from_the_environment_or_a_file_and_a_required_one_is_never_skipped(
    tmp_path: Path,
) -> None:
    from_env = ApiKeySource(required=True).load(environ={API_KEY_ENV: API_KEY})
    assert from_env is not None and from_env.matches(API_KEY) and not from_env.matches(API_KEY[:-1])
    assert not from_env.matches(None) and API_KEY not in repr(from_env)
    assert ApiKeySource().load(environ={}) is None  # no key configured: the API stays open
    with pytest.raises(ConfigError, match=API_KEY_ENV):
        ApiKeySource(required=True).load(environ={})
    with pytest.raises(ConfigError, match=r"api_key_file .*missing"):
        ApiKeySource(required=True, file=str(tmp_path / "missing")).load(environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        ApiKeySource(required=True, file=str(tmp_path / "empty")).load(environ={})
    with pytest.raises(ConfigError, match="printable ASCII"):
        ApiKey("clé", "a test")
    # A replica runs in a directory of Ray's: a relative file is the driver's.
    relative = ApiKeySource.of(ServeConfig(api_key_file="secrets/key"))
    assert relative == ApiKeySource(required=True, file=os.path.abspath("secrets/key"))
    with pytest.raises(ValidationError, match="not both"):
        ServeConfig(api_key=API_KEY, api_key_file="secrets/key")


# -- Kafka's security settings on every client --------------------------------------------------


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    with EmbeddedBroker("noida") as broker:
        yield broker.bootstrap_servers


def _probe_settings(tmp_path: Path) -> KafkaSettings:
    """Plaintext (what the broker speaks), with every security setting set to something a client's
    ``config`` shows: kafka-python keeps SASL and TLS settings it does not use on plaintext."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not used on plaintext\n")
    return KafkaSettings(
        client_id=f"raymm-access-{uuid.uuid4().hex[:8]}",
        sasl_plain_username=KAFKA_USER,
        sasl_plain_password=KAFKA_PASSWORD,
        ssl_cafile=str(ca),
    )


def _secured(client: Any, settings: KafkaSettings) -> bool:
    config = client.config
    return bool(
        config["client_id"] == settings.client_id
        and config["security_protocol"] == settings.security_protocol
        and config["sasl_plain_username"] == KAFKA_USER
        and config["sasl_plain_password"] == KAFKA_PASSWORD
        and config["ssl_cafile"] == settings.ssl_cafile
    )


def _record_clients(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every kafka-python client constructed in this process from now on, by whatever code."""
    built: list[Any] = []
    for cls in (KafkaConsumer, KafkaProducer, KafkaAdminClient):

        def recording(
            self: Any, *args: Any, __init: Callable[..., None] = cls.__init__, **kwargs: Any
        ) -> None:
            __init(self, *args, **kwargs)
            built.append(self)

        monkeypatch.setattr(cls, "__init__", recording)
    return built


def _event(user_id: str, i: int) -> UserEvent:
    return UserEvent(event_id=f"access-{i}", user_id=user_id, item_id=f"i{i}", event="like", ts=EPOCH)


def test_every_kafka_client_raymm_builds_carries_the_security_settings(
    ray_session: None, bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _probe_settings(tmp_path)
    shared = settings.shared()
    assert "sasl_plain_password" not in shared  # what crosses to shards and replicas
    # Shards and replicas read the password from their environment, as on a Kubernetes pod.
    monkeypatch.setenv(PASSWORD_ENV, KAFKA_PASSWORD)
    name = f"access.{uuid.uuid4().hex[:8]}"
    events, items, dlq = f"{name}.events", f"{name}.items", f"{name}.dlq"
    built = _record_clients(monkeypatch)
    by_path: dict[str, list[Any]] = {}

    def path(what: str, action: Callable[[], object]) -> None:
        start = len(built)
        action()
        by_path[what] = built[start:]

    path("ensure_topics", lambda: ensure_topics(bootstrap, {events: 2, items: 1, dlq: 1}, kafka=settings))
    path("replay", lambda: replay(make_interactions(8), bootstrap, events, kafka=settings))

    # Rank 0 of 2 owns partition 0: an event there of a user owned by partition 1 is forwarded,
    # and a malformed message goes to the dead letters, both by the loop's producer.
    stranger = next(f"user-{i}" for i in range(100) if partition_for(f"user-{i}", 2) == 1)
    producer = kafka_client(KafkaProducer, bootstrap, settings, acks="all")
    producer.send(events, key=stranger.encode(), value=_event(stranger, 0).encode()[1], partition=0)
    producer.send(events, key=b"poison", value=b"{not json", partition=0)
    producer.flush()
    producer.close()

    def consume() -> None:
        state = UserStateStore(SPEC, topic=events)
        consumer = EventConsumer(
            bootstrap, state, None, rank=0, world_size=2, dead_letter_topic=dlq, kafka=settings
        ).open()
        try:
            consumer.drain()
            consumer.flush()
            metrics = consumer.metrics()
            assert metrics.forwarded >= 1 and metrics.dead_letters >= 1, metrics
        finally:
            consumer.close()
            state.close()

    path("event consumer (dead letters, forwards)", consume)

    def follow_items() -> None:
        follower = ItemsFollower(
            bootstrap, lambda found: None, topic=items, dead_letter_topic=dlq, kafka=settings
        )
        follower.open()
        follower.poll_once()
        follower.close()

    path("items follower", follow_items)

    def shard() -> None:
        state_shard = StateShard(
            rank=0,
            world_size=1,
            bootstrap_servers=bootstrap,
            spec=SPEC.to_json(),
            snapshot_uri=str(tmp_path / "state"),
            kafka=shared,
            topic=events,
        )
        state_shard.stop()

    path("state shard", shard)

    def replica() -> None:
        # The replica class itself (Serve's ingress wraps it in an ASGI class of the same name).
        cls = next(c for c in RecommenderDeployment.__mro__[1:] if c.__name__ == "RecommenderDeployment")
        args = ServeArgs(
            bootstrap_servers=bootstrap,
            kafka=shared,
            partitions=2,
            world_size=1,
            max_k=10,
            max_body_bytes=65_536,
            state_timeout_s=1.0,
            events_topic=events,
            items_topic=items,
            dead_letter_topic=dlq,
        )
        deployment = cls(args)
        deployment._start_items_follower()
        asyncio.run(deployment.publish_event(_event("u-replica", 1)))
        asyncio.run(deployment.publish_item(ItemMessage(item_id="new-item", text="a new item")))
        deployment.items.stop(timeout_s=10)
        deployment._producer.close()

    path("serving replica (HTTP producer, items follower)", replica)

    for what, clients in by_path.items():
        assert clients, f"{what} built no Kafka client"
        bare = [f"{type(c).__name__}({c.config['client_id']})" for c in clients if not _secured(c, settings)]
        assert not bare, f"{what} built Kafka clients without the security settings: {bare}"
    kinds = {type(c) for clients in by_path.values() for c in clients}
    assert kinds == {KafkaConsumer, KafkaProducer, KafkaAdminClient}


def test_a_process_handed_the_settings_needs_the_password_in_its_environment() -> None:
    scram = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=KAFKA_USER,
        sasl_plain_password=KAFKA_PASSWORD,
    )
    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        KafkaSettings.received(scram.shared(), environ={})
    received = KafkaSettings.received(scram.shared(), environ={PASSWORD_ENV: KAFKA_PASSWORD})
    assert received == scram


def test_no_caller_can_override_a_security_setting(bootstrap: str) -> None:
    for override in ({"security_protocol": "PLAINTEXT"}, {"sasl_plain_password": "x"}, {"ssl_cafile": "/x"}):
        with pytest.raises(ValueError, match="come from KafkaSettings only"):
            kafka_client(KafkaProducer, bootstrap, KafkaSettings(), **override)


def test_nothing_in_raymm_builds_a_kafka_client_but_kafka_client() -> None:
    """In addition to the test above: a new construction site elsewhere fails here first."""
    package = Path(raymm.__file__).parent
    names = {cls.__name__ for cls in (KafkaConsumer, KafkaProducer, KafkaAdminClient)}
    direct = []
    for module in sorted(package.rglob("*.py")):
        if module == package / "stream" / "clients.py":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call):
                called = node.func
                name = called.id if isinstance(called, ast.Name) else getattr(called, "attr", None)
                if name in names:
                    direct.append(f"{module.relative_to(package.parent)}:{node.lineno} {name}(...)")
    assert not direct, f"Kafka clients built without raymm.stream.clients.kafka_client: {direct}"
