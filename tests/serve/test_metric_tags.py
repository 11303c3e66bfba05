"""The tags every raymm metric carries: the cluster from RAYMM_CLUSTER, else KubeRay's
RAY_CLUSTER_NAME, else "local"; the app version is raymm's."""

from __future__ import annotations

import pytest

import raymm
from raymm.serve.metric_tags import CLUSTER_ENV, TAG_KEYS, metric_tags, tag_keys, tagged


def test_the_cluster_comes_from_raymm_then_kuberay_then_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLUSTER_ENV, raising=False)
    monkeypatch.delenv("RAY_CLUSTER_NAME", raising=False)
    assert metric_tags() == {"cluster": "local", "app_version": raymm.__version__}
    monkeypatch.setenv("RAY_CLUSTER_NAME", "raymm-abcde")  # what KubeRay sets on a Ray container
    assert metric_tags()["cluster"] == "raymm-abcde"
    monkeypatch.setenv(CLUSTER_ENV, "eu-west")
    assert metric_tags()["cluster"] == "eu-west"
    assert metric_tags() is not metric_tags()  # Serve's metrics add their tags to the dict given


def test_a_tagged_metric_records_with_the_tags_by_default() -> None:
    from ray.util import metrics

    assert tag_keys("rank") == ("rank", *TAG_KEYS)
    gauge = tagged(metrics.Gauge("raymm_test_gauge", "a test gauge", tag_keys("rank")))
    assert gauge.info["default_tags"] == metric_tags()
    gauge.set(1.0, {"rank": "0"})  # every declared key has a value: no ValueError
