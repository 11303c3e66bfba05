"""Monitoring raymm on Kubernetes: a Prometheus Operator ``PodMonitor`` for the RayService's pods,
and a Grafana dashboard of raymm's own metrics.

**Names as exported.** raymm's code declares its metrics as ``raymm_*`` (``ray.util.metrics``);
Ray's exporter serves each with the prefix ``ray_``, so ``raymm_stream_lag`` is scraped as
``ray_raymm_stream_lag``. A histogram is served as ``_bucket``/``_sum``/``_count`` series, a
counter under its declared name (``raymm_fallback_total`` -> ``ray_raymm_fallback_total``), a
gauge as is. Every series carries ``cluster`` and ``app_version`` (:mod:`raymm.serve.metric_tags`)
and Ray's own labels (``SessionName``, ``WorkerId``, ``NodeAddress``, ...); the dashboard groups
by the ones people read. ``tests/deploy/test_monitoring.py`` scrapes a running app and checks
that every series the dashboard queries is there, with the labels it queries.

**Where Ray serves them.** Each Ray node's metrics agent serves ``/metrics`` on the node's
``--metrics-export-port``; KubeRay adds it to every Ray container as the port named ``metrics``
(8080) unless the pod template declares one. The PodMonitor scrapes that port on the pods that
carry :func:`pod_labels` (the renderer puts them on the RayService's head and worker templates)
and copies the pod's ``ray.io/cluster`` label to ``ray_io_cluster``, as Ray's own dashboards expect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DASHBOARD_FILE",
    "EXPORT_PREFIX",
    "METRICS_PORT_NAME",
    "dashboard_configmap",
    "dashboard_queries",
    "exported",
    "grafana_dashboard",
    "pod_labels",
    "pod_monitor",
    "queried_metrics",
    "queried_series",
]

#: What Ray's exporter puts before every application metric's name.
EXPORT_PREFIX = "ray_"
#: The container port KubeRay adds to every Ray container for Prometheus (8080 by default).
METRICS_PORT_NAME = "metrics"
#: The dashboard's file name in a ConfigMap (and beside the manifests).
DASHBOARD_FILE = "raymm-dashboard.json"

#: A series' own labels that the dashboard filters on (raymm.serve.metric_tags.TAG_KEYS).
_FILTER = '{cluster=~"$cluster", app_version=~"$app_version"}'
_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def exported(name: str) -> str:
    """The name Ray's exporter serves the raymm metric ``name`` under."""
    return EXPORT_PREFIX + name


# -- the PodMonitor -------------------------------------------------------------------------------


def pod_labels(rayservice: str) -> dict[str, str]:
    """The labels the RayService named ``rayservice`` puts on its head and worker pod templates,
    and the PodMonitor selects (KubeRay keeps template labels on the pods it creates, beside its
    own ``ray.io/*`` ones; a RayService's clusters change names on every upgrade, so the
    selector cannot use ``ray.io/cluster``)."""
    return {"app.kubernetes.io/part-of": "raymm", "app.kubernetes.io/instance": rayservice}


def pod_monitor(
    namespace: str,
    *,
    rayservice: str = "raymm",
    interval: str = "15s",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ``monitoring.coreos.com/v1`` PodMonitor in ``namespace`` that scrapes every Ray pod of
    ``rayservice`` (head and workers, both clusters during an upgrade) every ``interval``.

    ``labels`` go on the PodMonitor itself: a Prometheus selects the PodMonitors it reads by label
    (kube-prometheus-stack's default wants ``release: <its Helm release>``).
    """
    cluster_label = {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
        "targetLabel": "ray_io_cluster",
    }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {
            "name": f"{rayservice}-ray",
            "namespace": namespace,
            "labels": {**pod_labels(rayservice), **(labels or {})},
        },
        "spec": {
            "namespaceSelector": {"matchNames": [namespace]},
            "selector": {"matchLabels": {"ray.io/is-ray-node": "yes", **pod_labels(rayservice)}},
            "podMetricsEndpoints": [
                {
                    "port": METRICS_PORT_NAME,
                    "path": "/metrics",
                    "interval": interval,
                    "relabelings": [cluster_label],
                }
            ],
        },
    }


# -- the Grafana dashboard --------------------------------------------------------------------------


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": _DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def _panel(title: str, description: str, unit: str, *targets: tuple[str, str]) -> dict[str, Any]:
    """A time-series panel of ``targets`` (PromQL, legend); placed by :func:`grafana_dashboard`."""
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": _DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
    }


def _quantile(q: float) -> str:
    bucket = exported("raymm_recommend_latency_ms_bucket")
    return (
        f"histogram_quantile({q}, sum by (le, cluster, endpoint) (rate({bucket}{_FILTER}[$__rate_interval])))"
    )


def _panels() -> list[dict[str, Any]]:
    by_rank = "sum by (cluster, rank)"
    return [
        _panel(
            "Request latency",
            "Time to answer a recommendation, by endpoint: p50 and p99 over the recommender replicas.",
            "ms",
            (_quantile(0.5), "p50 {{endpoint}} ({{cluster}})"),
            (_quantile(0.99), "p99 {{endpoint}} ({{cluster}})"),
        ),
        _panel(
            "Requests",
            "Answers per second, by endpoint.",
            "reqps",
            (
                f"sum by (cluster, endpoint) (rate({exported('raymm_recommend_latency_ms_count')}{_FILTER}[$__rate_interval]))",
                "{{endpoint}} ({{cluster}})",
            ),
        ),
        _panel(
            "Events applied",
            "Events applied to user state per second, by state shard.",
            "ops",
            (f"{by_rank} ({exported('raymm_stream_events_per_s')}{_FILTER})", "shard {{rank}} ({{cluster}})"),
        ),
        _panel(
            "Lag per partition",
            "Messages behind the end of raymm.events, by partition (the most any owner is behind).",
            "short",
            (
                f"max by (cluster, partition) ({exported('raymm_stream_lag')}{_FILTER})",
                "partition {{partition}} ({{cluster}})",
            ),
        ),
        _panel(
            "Event to state",
            "From an event's Kafka timestamp to its user's state, p50 and p99 over each shard's recent events.",
            "ms",
            (
                f"max by (cluster, quantile) ({exported('raymm_stream_event_to_state_ms')}{_FILTER})",
                "q{{quantile}} ({{cluster}})",
            ),
        ),
        _panel(
            "Dead letters by reason",
            "Messages sent to raymm.events.dlq in the last 5 minutes, by reason: events, and new items.",
            "short",
            (
                f"sum by (cluster, reason) (increase({exported('raymm_stream_dead_letters_by_reason')}{_FILTER}[5m]))",
                "events: {{reason}} ({{cluster}})",
            ),
            (
                f"sum by (cluster, reason) (increase({exported('raymm_items_dead_letters_total')}{_FILTER}[5m]))",
                "items: {{reason}} ({{cluster}})",
            ),
        ),
        _panel(
            "Forwarded events",
            "Events found off their user's owner partition and forwarded there, and forwards skipped "
            "because their source offset was already applied, per second.",
            "ops",
            (
                f"{by_rank} (rate({exported('raymm_stream_forwarded')}{_FILTER}[$__rate_interval]))",
                "forwarded by shard {{rank}} ({{cluster}})",
            ),
            (
                f"{by_rank} (rate({exported('raymm_stream_forwarded_again')}{_FILTER}[$__rate_interval]))",
                "skipped as repeats by shard {{rank}} ({{cluster}})",
            ),
        ),
        _panel(
            "Online hit rate",
            "Of the events by users served within the hit window before them, the share on an item served.",
            "percentunit",
            (
                f"avg by (cluster, app_version) ({exported('raymm_online_hit_rate')}{_FILTER})",
                "{{cluster}} {{app_version}}",
            ),
        ),
        _panel(
            "Fallbacks",
            "Answers given by the fallback per second, by reason (unknown user, state shard unavailable, ...).",
            "reqps",
            (
                f"sum by (cluster, reason) (rate({exported('raymm_fallback_total')}{_FILTER}[$__rate_interval]))",
                "{{reason}} ({{cluster}})",
            ),
        ),
    ]


def _variable(name: str, label: str) -> dict[str, Any]:
    """A multi-value dashboard variable over the values of ``name`` on the shards' events gauge
    (every shard exports it from its start, before any request)."""
    query = f"label_values({exported('raymm_stream_events_per_s')}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": _DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def grafana_dashboard(*, title: str = "raymm", uid: str = "raymm") -> dict[str, Any]:
    """The Grafana dashboard (JSON model) of raymm's metrics: one time-series panel per group,
    two a row, filtered by the ``cluster`` and ``app_version`` variables. Its queries use the names
    Ray's exporter serves (``ray_raymm_*``); :func:`queried_metrics` lists them."""
    panels = _panels()
    for i, panel in enumerate(panels):
        panel["id"] = i + 1
        panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)}
    return {
        "uid": uid,
        "title": title,
        "description": "raymm's own metrics as Ray's exporter serves them (ray_raymm_*).",
        "tags": ["raymm", "ray"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "refresh": 1,
                },
                _variable("cluster", "Cluster"),
                _variable("app_version", "App version"),
            ]
        },
        "panels": panels,
    }


def dashboard_configmap(
    namespace: str, dashboard: Mapping[str, Any] | None = None, *, name: str = "raymm-dashboard"
) -> dict[str, Any]:
    """A ConfigMap holding ``dashboard`` (default :func:`grafana_dashboard`), labelled
    ``grafana_dashboard: "1"``, which Grafana's dashboard sidecar (kube-prometheus-stack) loads."""
    body = dict(dashboard) if dashboard is not None else grafana_dashboard()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"grafana_dashboard": "1"}},
        "data": {DASHBOARD_FILE: json.dumps(body, indent=2, sort_keys=True) + "\n"},
    }


# -- what the dashboard queries -------------------------------------------------------------------

_METRIC = re.compile(rf"\b{EXPORT_PREFIX}raymm_[A-Za-z0-9_]+")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_LABEL_VALUES = re.compile(r"label_values\(\s*[A-Za-z0-9_:]+\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[str]:
    """Every PromQL expression of ``dashboard``: its panels' targets, then its query variables."""
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, Mapping) else query)
    return exprs


def queried_series(dashboard: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Each metric name ``dashboard`` queries -> the labels its queries match, group by or read
    (``label_values``), parsed from the expressions. An expression's labels are counted for
    every metric in it, so each expression of the dashboard queries one metric."""
    series: dict[str, set[str]] = {}
    for expr in dashboard_queries(dashboard):
        labels = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")}
        labels |= set(_MATCHER.findall(expr)) | set(_LABEL_VALUES.findall(expr))
        for metric in _METRIC.findall(expr):
            series.setdefault(metric, set()).update(label for label in labels if label)
    return {metric: frozenset(labels) for metric, labels in sorted(series.items())}


def queried_metrics(dashboard: Mapping[str, Any] | None = None) -> list[str]:
    """The metric names ``dashboard`` (default :func:`grafana_dashboard`) queries, sorted."""
    return list(queried_series(dashboard if dashboard is not None else grafana_dashboard()))
