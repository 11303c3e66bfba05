"""The Serve application end to end: a real Ray Serve app over the session's trained model, a real
noida broker, HTTP requests. An event changes the user's next answer, seen items never come back,
guests get recommendations, bad input gets 4xx JSON, a killed state shard recovers into the state
of one clean pass, and a model roll-out under load fails no request. And the builder that every
way of deploying goes through: it refuses a topic whose partition count is not the config's."""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray
import requests
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from ray import serve

from raymm.config import load_config
from raymm.data import io
from raymm.errors import ConfigError, RaymmError
from raymm.serve.app import RECOMMENDER, RecommenderDeployment, app_builder, build_app
from raymm.serve.runner import recommender_handle
from raymm.serve.shard import shard_name
from raymm.stream.broker import EmbeddedBroker, TopicMismatchError, ensure_topics
from raymm.stream.consumer import EventConsumer
from raymm.stream.events import DEAD_LETTER_TOPIC, EVENTS_TOPIC, ITEMS_TOPIC, UserEvent
from raymm.stream.ownership import owner_rank
from raymm.stream.state import StateSpec, UserStateStore
from tests.conftest import Trained
from tests.fixtures import free_port

PARTITIONS = 4
SHARDS = 2


@dataclass
class Live:
    url: str
    broker: EmbeddedBroker
    trained: Trained
    items: list[str]
    handle: serve.handle.DeploymentHandle
    spec: StateSpec
    state_dir: Path

    def get(self, path: str, **params: object) -> requests.Response:
        return requests.get(f"{self.url}{path}", params=params, timeout=30)  # type: ignore[arg-type]

    def post(self, path: str, body: object) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(
            f"{self.url}{path}", data=data, headers={"content-type": "application/json"}, timeout=30
        )


# -- the builder (no deployment) --------------------------------------------------------------------


@pytest.fixture
def bootstrap() -> Iterator[str]:
    """A fresh noida broker with no topics (it starts in ~0.1 s)."""
    with EmbeddedBroker("noida") as broker:
        yield broker.bootstrap_servers


def _graph(app: serve.Application) -> dict[str, Any]:
    """What deploying ``app`` starts: the ingress deployment's class, arguments and options, and
    each state shard's name, class, arguments and options (``user_config``'s version is fresh
    per build, so it is left out)."""
    deployment = app._bound_deployment
    options = deployment._deployment_config
    return {
        "name": deployment.name,
        "class": deployment.func_or_class,
        "args": deployment.init_args,
        "kwargs": deployment.init_kwargs,
        "num_replicas": deployment.num_replicas,
        "ray_actor_options": deployment.ray_actor_options,
        "user_config": {**deployment.user_config, "version": None},
        "max_ongoing_requests": deployment.max_ongoing_requests,
        "max_surge_percent": options.max_surge_percent,
        "shards": [
            (shard.name, shard.actor_class, shard.init_kwargs, shard.actor_options)
            for shard in options.deployment_actors
        ],
    }


def test_serve_run_builds_the_same_graph_and_creates_the_topics(trained: Trained, bootstrap: str) -> None:
    app = app_builder(
        {
            "model": str(trained.ranked),
            "bootstrap_servers": bootstrap,
            "set": "serve.state_shards=2,kafka.partitions=4",
        }
    )
    # serve run's builder deploys what build_app (raymm serve's path) builds from the same settings
    config = load_config(None, ["serve.state_shards=2", "kafka.partitions=4"])
    graph = _graph(app)
    assert graph == _graph(build_app(config, bootstrap_servers=bootstrap, model=str(trained.ranked)))
    # ... and that graph is wired as the arguments say: the artifact, the broker, 4 partitions, 2 shards
    assert graph["name"] == RECOMMENDER and graph["class"] is RecommenderDeployment
    assert graph["user_config"]["model"] == io.absolute(str(trained.ranked))
    (serve_args,) = graph["args"]
    assert (serve_args.bootstrap_servers, serve_args.partitions, serve_args.world_size) == (bootstrap, 4, 2)
    spec = StateSpec.from_artifact(trained.ranked, config.stream.dedupe_window, config.stream.max_seen)
    assert [shard[:2] for shard in graph["shards"]] == [
        (shard_name(rank), "raymm.serve.shard:StateShard") for rank in range(2)
    ]
    for rank, (_, _, kwargs, _) in enumerate(graph["shards"]):
        wiring = {
            key: kwargs[key] for key in ("rank", "world_size", "bootstrap_servers", "partitions", "spec")
        }
        assert wiring == {
            "rank": rank,
            "world_size": 2,
            "bootstrap_servers": bootstrap,
            "partitions": 4,
            "spec": spec.to_json(),
        }
    # the builder created the missing topics with the configured counts (this call only reads them)
    counts = ensure_topics(bootstrap, {EVENTS_TOPIC: 4, ITEMS_TOPIC: 1, DEAD_LETTER_TOPIC: 1})
    assert counts == {EVENTS_TOPIC: 4, ITEMS_TOPIC: 1, DEAD_LETTER_TOPIC: 1}
    with pytest.raises(RaymmError, match="serve run needs Kafka"):
        app_builder({"model": str(trained.ranked)})
    with pytest.raises(ConfigError, match=r"exceeds kafka\.partitions"):
        app_builder({"model": str(trained.ranked), "bootstrap_servers": "x:1", "set": "serve.state_shards=9"})


def test_serve_run_refuses_a_topic_with_another_partition_count(trained: Trained, bootstrap: str) -> None:
    ensure_topics(bootstrap, {EVENTS_TOPIC: 3})
    with pytest.raises(TopicMismatchError) as raised:
        app_builder(
            {"model": str(trained.ranked), "bootstrap_servers": bootstrap, "set": "kafka.partitions=4"}
        )
    message = str(raised.value)
    print(message)
    assert f"{EVENTS_TOPIC!r} has 3 partitions, expected 4" in message
    assert bootstrap in message and "kafka.partitions" in message


# -- the deployed app ---------------------------------------------------------------------------------


def _deploy(
    trained: Trained, bootstrap: str, state_dir: Path, model: Path, version: str
) -> serve.handle.DeploymentHandle:
    config = trained.config.model_copy(deep=True)
    config.kafka = config.kafka.model_copy(update={"bootstrap_servers": bootstrap, "partitions": PARTITIONS})
    config.stream = config.stream.model_copy(
        update={"snapshot_uri": str(state_dir), "snapshot_every_events": 200, "snapshot_interval_s": 1.0}
    )
    config.serve = config.serve.model_copy(update={"state_shards": SHARDS, "state_timeout_s": 2.0})
    app = build_app(config, bootstrap_servers=bootstrap, model=str(model), version=version)
    return serve.run(app, name="raymm", route_prefix="/")


@pytest.fixture(scope="module")
def live(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    with EmbeddedBroker("noida") as broker:
        ensure_topics(broker.bootstrap_servers, {"raymm.events": PARTITIONS, "raymm.events.dlq": 1})
        handle = _deploy(trained, broker.bootstrap_servers, root / "state", trained.ranked, "v1")
        items = (
            pq.read_table(trained.data / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
        )
        live = Live(
            f"http://127.0.0.1:{port}",
            broker,
            trained,
            items,
            handle,
            StateSpec.from_artifact(trained.ranked),
            root / "state",
        )
        _wait_healthy(live)
        try:
            yield live
        finally:
            serve.delete("raymm")
            serve.shutdown()


def _wait_healthy(live: Live, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = live.get("/healthz")
            if response.status_code == 200:
                return response.json()
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the app did not become healthy: {response.status_code} {response.text}")
        time.sleep(0.5)


def _event(user: str, item: str, kind: str = "like") -> dict:
    return {
        "event_id": uuid.uuid4().hex,
        "user_id": user,
        "item_id": item,
        "event": kind,
        "ts": int(time.time() * 1000),
    }


def _until(check, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def _settled(read, key: str, quiet_s: float = 0.5, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    """``read()`` once ``read()[key]`` has not changed for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last = read()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = read()
        if now[key] == last[key]:
            return now
        last = now
    raise AssertionError(f"{key} kept changing for {timeout_s} s")


def test_the_app_is_healthy_and_documents_itself(live: Live) -> None:
    health = _wait_healthy(live)
    assert health["status"] == "ok" and len(health["shards"]) == SHARDS
    assert sorted(p for shard in health["shards"] for p in shard["partitions"]) == list(range(PARTITIONS))
    paths = live.get("/openapi.json").json()["paths"]
    assert {"/v1/recommendations/{user_id}", "/v1/recommendations", "/v1/events", "/healthz"} <= set(paths)
    assert live.get("/docs").status_code == 200
    # The docs' assets come from the app itself (raymm.serve.docs), through Serve's copy of it too;
    # tests/serve/test_docs_offline.py renders the pages in a browser with no network.
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        assert live.get(f"/docs/assets/{asset}").status_code == 200, asset
    assert live.get("/redoc").status_code == 200


def test_an_unknown_user_gets_the_fallback_with_the_flag(live: Live) -> None:
    body = live.get("/v1/recommendations/nobody-" + uuid.uuid4().hex, k=5).json()
    assert body["fallback"] == "unknown_user" and len(body["items"]) == 5 and body["model_version"]


def test_an_event_changes_the_next_recommendation_and_seen_items_stay_out(live: Live) -> None:
    user = "live-" + uuid.uuid4().hex[:8]
    rng = random.Random(0)
    liked = rng.sample(live.items, 3)
    before = live.get(f"/v1/recommendations/{user}", k=10).json()
    for item in liked:
        accepted = live.post("/v1/events", _event(user, item))
        assert accepted.status_code == 202, accepted.text
    after = _until(
        lambda: (b := live.get(f"/v1/recommendations/{user}", k=10).json())["fallback"] is None and b
    )
    assert after, "the events never reached the user's state"
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
    assert not set(liked) & {i["item_id"] for i in after["items"]}
    # a skip still marks the item seen
    skipped = after["items"][0]["item_id"]
    assert live.post("/v1/events", _event(user, skipped, "skip")).status_code == 202
    assert _until(
        lambda: (
            skipped
            not in {i["item_id"] for i in live.get(f"/v1/recommendations/{user}", k=10).json()["items"]}
        )
    )
    # The online hit rate: the skip and the next like hit items served to the user just before.
    recommender = recommender_handle("raymm")
    rank = owner_rank(user, PARTITIONS, SHARDS)
    # The recommender reports answers to the shard every ~0.1 s: the like must follow the report of
    # the answer it picks from, as a person's click follows the page, or it is judged against the
    # answers before it. So: let the reports of the answers above land, then wait for this one's.
    before_hits = _settled(lambda: recommender.shard_call.remote(rank, "metrics").result(), "served_answers")
    served = live.get(f"/v1/recommendations/{user}", k=10).json()["items"][0]["item_id"]
    assert _until(
        lambda: (
            recommender.shard_call.remote(rank, "metrics").result()["served_answers"]
            > before_hits["served_answers"]
        )
    )
    # ... and every report in flight with it (a late one from above could have made the count move)
    _settled(lambda: recommender.shard_call.remote(rank, "metrics").result(), "served_answers")
    live.post("/v1/events", _event(user, served, "like"))
    after_hits = _until(
        lambda: (
            (m := recommender.shard_call.remote(rank, "metrics").result())["hits"] > before_hits["hits"] and m
        )
    )
    assert (
        after_hits and after_hits["hit_checked"] > before_hits["hit_checked"] and after_hits["hit_rate"] > 0
    )


def test_a_guest_session_gets_recommendations_without_its_items(live: Live) -> None:
    recent = live.items[:3]
    body = live.post("/v1/recommendations", {"item_ids": recent, "k": 7}).json()
    assert body["user_id"] is None and len(body["items"]) == 7 and body["fallback"] is None
    assert not set(recent) & {i["item_id"] for i in body["items"]}
    similar = live.get(f"/v1/items/{live.items[0]}/similar", k=4).json()
    assert len(similar["items"]) == 4 and live.items[0] not in {i["item_id"] for i in similar["items"]}


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "error"),
    [
        ("get", "/v1/recommendations/u1", {"k": 0}, 422, "k_out_of_range"),
        ("get", "/v1/recommendations/u1", {"k": 100_000}, 422, "k_out_of_range"),
        ("get", "/v1/recommendations/u1", {"k": "ten"}, 422, "invalid_request"),
        ("post", "/v1/recommendations", b'{"item_ids": [', 400, "malformed_json"),
        ("post", "/v1/recommendations", {"item_ids": []}, 422, "invalid_request"),
        ("post", "/v1/recommendations", {"item_ids": ["no-such-item"]}, 422, "unknown_items"),
        ("post", "/v1/recommendations", {"item_ids": ["x" * 70_000]}, 413, "body_too_large"),
        (
            "post",
            "/v1/events",
            {"event_id": "e", "user_id": "u", "item_id": "i", "event": "teleport", "ts": 1},
            422,
            "unknown_event",
        ),
        ("post", "/v1/events", {"user_id": "u"}, 422, "invalid_request"),
        ("get", "/v1/items/no-such-item/similar", {}, 404, "unknown_item"),
        ("get", "/v1/nothing-here", {}, 404, "not_found"),
    ],
)
def test_bad_input_gets_a_4xx_json_error(
    live: Live, method: str, path: str, payload: object, status: int, error: str
) -> None:
    response = live.get(path, **payload) if method == "get" else live.post(path, payload)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and response.json()["detail"]


def _named_shard(rank: int) -> ray.actor.ActorHandle:
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if (
            entry["name"].endswith(f"state-{rank}")
            or f"state-{rank}::" in entry["name"]
            or entry["name"].endswith(f"::state-{rank}")
        ):
            return ray.get_actor(entry["name"], namespace=entry["namespace"])
    raise AssertionError(f"no state-{rank} actor among {ray.util.list_named_actors(all_namespaces=True)}")


def _clean_pass(live: Live) -> dict:
    store = UserStateStore(live.spec)
    consumer = EventConsumer(live.broker.bootstrap_servers, store, None)
    consumer.open()
    try:
        consumer.drain()
        return store.export()
    finally:
        consumer.close()


def _end_offsets(live: Live) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=live.broker.bootstrap_servers)
    try:
        tps = [TopicPartition("raymm.events", p) for p in range(PARTITIONS)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def test_a_killed_state_shard_recovers_into_the_clean_pass_state(live: Live) -> None:
    rng = random.Random(1)
    users = [f"kill-{i}" for i in range(40)]
    producer = KafkaProducer(bootstrap_servers=live.broker.bootstrap_servers, linger_ms=2)
    t0 = dt.datetime.now(dt.UTC)

    def produce(n: int, offset: int) -> None:
        for i in range(n):
            event = UserEvent(
                event_id=f"k{offset + i}",
                user_id=rng.choice(users),
                item_id=rng.choice(live.items),
                event=rng.choice(["view", "click", "like", "skip"]),
                ts=t0,
            )
            key, value = event.encode()
            producer.send("raymm.events", key=key, value=value)
            if i % 50 == 0:
                time.sleep(0.01)
        producer.flush()

    writer = threading.Thread(target=produce, args=(3000, 0))
    writer.start()
    time.sleep(0.5)
    victim = _named_shard(0)
    ray.kill(victim)  # mid-stream: no final snapshot
    # While the shard is away, its users still get answers (the fallback flag says why).
    during = live.get(f"/v1/recommendations/{users[0]}", k=5)
    assert during.status_code == 200 and len(during.json()["items"]) == 5
    writer.join()
    produce(500, 3000)
    producer.close()

    recommender = recommender_handle("raymm")
    ends = _end_offsets(live)

    def caught_up() -> bool:
        offsets: dict[int, int] = {}
        for rank in range(SHARDS):
            try:
                offsets.update(recommender.shard_call.remote(rank, "offsets").result())
            except Exception:  # the shard is still being recreated
                return False
        return offsets == {p: end - 1 for p, end in ends.items()}

    assert _until(caught_up, 90), live.get("/healthz").text
    assert live.get("/healthz").json()["status"] == "ok"
    clean = _clean_pass(live)
    live_state: dict = {}
    for rank in range(SHARDS):
        live_state.update(recommender.shard_call.remote(rank, "export").result())
    assert sorted(live_state) == list(range(PARTITIONS))
    assert live_state == clean


def test_a_model_roll_out_under_load_fails_no_request(live: Live, tmp_path: Path) -> None:
    rolled = tmp_path / "rolled"
    shutil.copytree(live.trained.model, rolled)
    manifest = json.loads((rolled / "manifest.json").read_text())
    manifest["model_version"] = "rolled-" + uuid.uuid4().hex[:6]
    (rolled / "manifest.json").write_text(json.dumps(manifest))

    failures: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                response = live.get("/v1/recommendations/roll-user", k=5)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    versions.add(response.json()["model_version"])
            except requests.RequestException as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        _deploy(live.trained, live.broker.bootstrap_servers, live.state_dir, rolled, "v2")
        assert _until(lambda: manifest["model_version"] in versions, 60)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:5]
    assert manifest["model_version"] in versions and len(versions) == 2
