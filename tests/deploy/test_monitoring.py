"""Monitoring: the PodMonitor is valid against the Prometheus Operator's CRD (strictly: a
misspelled field fails), the dashboard has a panel per metric group and queries only the names
Ray's exporter serves, and a running app's exporter serves every series the dashboard queries,
under that name, with the labels it queries and raymm's cluster and app version tags."""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import requests
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from raymm.deploy.monitoring import (
    METRICS_PORT_NAME,
    dashboard_configmap,
    dashboard_queries,
    grafana_dashboard,
    pod_labels,
    pod_monitor,
    queried_metrics,
    queried_series,
)
from raymm.serve.metric_tags import metric_tags
from raymm.stream.events import EVENTS_TOPIC, ITEMS_TOPIC, UserEvent
from raymm.stream.ownership import partition_for
from tests.conftest import Trained
from tests.deploy.crds import problems
from tests.serve.live import LiveApp, live_app
from tests.serve.test_app import _until

PARTITIONS = 2
SHARDS = 1


# -- the PodMonitor, offline -----------------------------------------------------------------------


def test_the_pod_monitor_is_valid_and_selects_the_rayservice_ray_pods() -> None:
    monitor = pod_monitor("recs", rayservice="raymm", labels={"release": "prometheus"})
    assert problems(monitor) == []  # strictly valid against the Prometheus Operator's CRD
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    assert (
        monitor["metadata"]["namespace"] == "recs"
        and monitor["metadata"]["labels"]["release"] == "prometheus"
    )
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["recs"]}
    # KubeRay marks every Ray pod; the RayService's templates carry pod_labels
    assert spec["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes", **pod_labels("raymm")}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == METRICS_PORT_NAME == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["relabelings"][0]["targetLabel"] == "ray_io_cluster"
    # the schema is strict: a misspelled field fails
    misspelled = copy.deepcopy(monitor)
    misspelled["spec"]["podMetricEndpoints"] = misspelled["spec"].pop("podMetricsEndpoints")
    assert any("podMetricEndpoints" in problem for problem in problems(misspelled))
    bad_interval = copy.deepcopy(monitor)
    bad_interval["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    assert any("15 seconds" in problem for problem in problems(bad_interval))


# -- the dashboard, offline ------------------------------------------------------------------------


def test_the_dashboard_has_a_panel_per_metric_group_on_the_exported_names() -> None:
    dashboard = json.loads(json.dumps(grafana_dashboard()))  # plain JSON
    titles = [panel["title"] for panel in dashboard["panels"]]
    for group in (
        "Request latency",
        "Events applied",
        "Lag per partition",
        "Dead letters by reason",
        "Forwarded events",
        "Online hit rate",
        "Fallbacks",
    ):
        assert group in titles
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(titles)
    cells = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]}
    assert len(cells) == len(titles)  # no two panels on one spot
    for expr in dashboard_queries(dashboard):
        assert not re.search(r"\braymm_", expr), f"a name as declared, not as exported: {expr}"
        assert re.search(r"\bray_raymm_", expr), expr
    metrics = queried_metrics(dashboard)
    assert "ray_raymm_recommend_latency_ms_bucket" in metrics and "ray_raymm_stream_lag" in metrics
    assert queried_series(dashboard)["ray_raymm_stream_lag"] >= {"partition", "cluster", "app_version"}
    assert queried_series(dashboard)["ray_raymm_stream_dead_letters_by_reason"] >= {"reason"}
    configmap = dashboard_configmap("recs")
    assert configmap["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert [json.loads(body) for body in configmap["data"].values()] == [dashboard]


# -- the running app's exporter --------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """A running app (one state shard over two partitions) on a noida broker."""
    with live_app(
        trained, tmp_path_factory.mktemp("monitoring"), shards=SHARDS, partitions=PARTITIONS
    ) as running:
        yield running


def _get(url: str, path: str, **params: object) -> dict[str, Any]:
    try:
        response = requests.get(f"{url}{path}", params=params, timeout=30)  # type: ignore[arg-type]
    except requests.RequestException:
        return {}
    return response.json() if response.status_code in (200, 503) else {}


def _event(user: str, item: str) -> UserEvent:
    return UserEvent(
        event_id=uuid.uuid4().hex, user_id=user, item_id=item, event="like", ts=int(time.time() * 1000)
    )


Samples = list[tuple[str, dict[str, str], float]]


def _scrape() -> Samples:
    """Every sample the exporters of the session's Ray nodes serve: (name, labels, value)."""
    samples = []
    with requests.Session() as session:
        session.trust_env = False  # loopback and the node's own address: never a proxy
        for node in ray.nodes():
            if not node["Alive"]:
                continue
            url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            for family in text_string_to_metric_families(session.get(url, timeout=10).text):
                samples.extend((s.name, s.labels, s.value) for s in family.samples)
    return samples


def _grew(before: Samples, after: Samples, name: str, labels: dict[str, str]) -> bool:
    """Whether a series ``name`` with ``labels`` is new since ``before`` or has grown. Earlier
    apps of the session leave their series behind (counters for good, gauges for two report
    intervals), with the same tags: they never grow."""
    old = {frozenset(ls.items()): v for n, ls, v in before if n == name}
    return any(
        v > old.get(frozenset(ls.items()), 0.0)
        for n, ls, v in after
        if n == name and labels.items() <= ls.items()
    )


def test_every_series_the_dashboard_queries_is_exported(app: LiveApp) -> None:
    url = app.url
    known, hit, misrouted = (f"{role}-{uuid.uuid4().hex[:8]}" for role in ("known", "hit", "misrouted"))
    before = _scrape()
    # a request by an unknown user: a latency sample and an unknown_user fallback
    first = _get(url, f"/v1/recommendations/{known}", k=5)
    assert first["fallback"] == "unknown_user", first
    items = [item["item_id"] for item in first["items"]]
    producer = KafkaProducer(bootstrap_servers=app.bootstrap, acks="all")
    try:
        for user in (known, hit):  # on their owner partitions
            key, value = _event(user, items[0]).encode()
            producer.send(EVENTS_TOPIC, key=key, value=value, partition=partition_for(user, PARTITIONS))
        key, value = _event(misrouted, items[1]).encode()  # off its owner partition: forwarded
        off = (partition_for(misrouted, PARTITIONS) + 1) % PARTITIONS
        producer.send(EVENTS_TOPIC, key=key, value=value, partition=off)
        producer.send(EVENTS_TOPIC, key=b"poison", value=b"{not json", partition=0)  # a dead letter
        producer.send(ITEMS_TOPIC, key=b"poison", value=b"{not json")  # an item dead letter
        producer.flush()
        # the online hit rate: a user with state is served, then likes what was served
        served = _until(
            lambda: (b := _get(url, f"/v1/recommendations/{hit}", k=5)).get("fallback") is None and b
        )
        assert served, "the hit user's event never reached its state"
        time.sleep(0.5)  # the recommender tells the shard what it served every 0.1 s
        key, value = _event(hit, served["items"][0]["item_id"]).encode()
        producer.send(EVENTS_TOPIC, key=key, value=value, partition=partition_for(hit, PARTITIONS))
        producer.flush()
    finally:
        producer.close()

    tags = metric_tags()
    wanted = queried_series(grafana_dashboard())
    assert len(wanted) >= 10, wanted

    def problems() -> dict[str, str]:
        """Each queried series not (yet) served as the dashboard queries it, and why."""
        samples = _scrape()
        found: dict[str, str] = {}
        for metric, labels in wanted.items():
            label_sets = [ls for n, ls, _ in samples if n == metric]
            if not label_sets:
                found[metric] = "not exported"
            elif not any(labels <= ls.keys() and tags.items() <= ls.items() for ls in label_sets):
                found[metric] = f"no series with {sorted(labels)} and {tags}: {label_sets[:2]}"
        # and the traffic above is what they count
        for name, labels, why in (
            ("ray_raymm_recommend_latency_ms_count", {"endpoint": "user"}, "the requests"),
            ("ray_raymm_fallback_total", {"reason": "unknown_user"}, "the unknown user's fallback"),
            ("ray_raymm_stream_dead_letters_by_reason", {"reason": "bad_json"}, "the poison event"),
            ("ray_raymm_items_dead_letters_total", {"reason": "bad_json"}, "the poison item"),
            ("ray_raymm_stream_forwarded", {}, "the misrouted event"),
            ("ray_raymm_online_hit_rate", {}, "the like of a served item"),
        ):
            if not _grew(before, samples, name, {**labels, **tags}):
                found.setdefault(name, f"does not count {why} ({labels})")
        return found

    # Ray's agent serves what workers report every metrics_report_interval_ms (10 s by default),
    # and the shard sets its gauges every 2 s
    deadline = time.monotonic() + 60
    while (missing := problems()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not missing, missing
