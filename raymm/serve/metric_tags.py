"""The tags every raymm metric carries: which cluster and which code exported it.

During a KubeRay ``NewCluster`` upgrade two Ray clusters consume the same partitions for minutes,
and during a Serve code roll-out two sets of shards do (design.md, "Two owners at once"). Each
series names its exporter, so a dashboard shows both and never adds one to the other:

* ``cluster``: ``$RAYMM_CLUSTER`` where set; else ``$RAY_CLUSTER_NAME``, which KubeRay sets on
  every Ray container from the pod's ``ray.io/cluster`` label (each RayCluster of an upgrade has
  its own name); else ``"local"``. Not Ray's cluster id: a random hex string, new on every start
  of a local instance, that people cannot read and that would start a new series each restart.
* ``app_version``: ``raymm.__version__``, the code that exported the series. The model version
  is not a tag: a roll-out swaps models inside a running replica, and the shards keep no model.

Ray's exporter prefixes every name with ``ray_`` (``raymm_stream_lag`` is served as
``ray_raymm_stream_lag``) and adds its own labels (``SessionName``, ``WorkerId``, ...).
"""

from __future__ import annotations

import os
from typing import Protocol, TypeVar, cast

import raymm

__all__ = ["CLUSTER_ENV", "TAG_KEYS", "metric_tags", "tag_keys", "tagged"]

#: The variable that names the cluster in metrics (wins over KubeRay's ``RAY_CLUSTER_NAME``).
CLUSTER_ENV = "RAYMM_CLUSTER"
#: Set by KubeRay on every Ray container: the RayCluster's name.
_KUBERAY_CLUSTER_ENV = "RAY_CLUSTER_NAME"

#: The tag keys every raymm metric declares besides its own.
TAG_KEYS = ("cluster", "app_version")


def metric_tags() -> dict[str, str]:
    """The values of :data:`TAG_KEYS` in this process (a fresh dict: Serve's metrics mutate it)."""
    cluster = os.environ.get(CLUSTER_ENV) or os.environ.get(_KUBERAY_CLUSTER_ENV) or "local"
    return {"cluster": cluster, "app_version": raymm.__version__}


def tag_keys(*own: str) -> tuple[str]:
    """A metric's ``own`` tag keys, then :data:`TAG_KEYS`. Typed as Ray's Serve metrics annotate
    ``tag_keys`` (``Tuple[str]``, though they take a tuple of any length)."""
    return cast("tuple[str]", (*own, *TAG_KEYS))


class _Metric(Protocol):
    def set_default_tags(self, default_tags: dict[str, str]) -> object: ...


Metric = TypeVar("Metric", bound=_Metric)


def tagged(metric: Metric) -> Metric:
    """``metric`` (declared with :func:`tag_keys`) with the values of :data:`TAG_KEYS` as its
    default tags; works for ``ray.util.metrics`` and ``ray.serve.metrics`` alike (the latter's
    ``set_default_tags`` returns None, so it cannot be chained)."""
    metric.set_default_tags(metric_tags())
    return metric
