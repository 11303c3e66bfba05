"""What ``raymm deploy render`` is configured with: the ``deploy:`` section of the configuration.

Plain pydantic (no Ray, no Kubernetes client), so :mod:`raymm.config` can hold this section.
Two variants are rendered, ``dev`` (CPU, small, ephemeral Kafka) and ``prod`` (GPU workers for the
jobs, autoscaled serving, replicated Kafka on volumes). A partial override changes that key of
the preset only: ``--set deploy.prod.job_workers.max_replicas=8`` keeps every other ``prod``
value (:meth:`DeploySettings._onto_presets`).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DeploySettings", "KafkaCluster", "PodResources", "Variant", "WorkerGroup"]


class _Section(BaseModel):
    # raymm.config.StrictModel's settings; not imported from there, which imports this module.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PodResources(_Section):
    """One Ray pod's container: CPUs, memory (a Kubernetes quantity) and NVIDIA GPUs; requests
    equal limits, as Ray reads its resources from the limits."""

    #: CPUs of each pod (a fraction is rendered in millicores, ``0.5`` as ``500m``).
    cpus: float = Field(2.0, gt=0)
    #: Memory of each pod, a Kubernetes quantity such as ``512Mi`` or ``16Gi``.
    memory: str = "8Gi"
    #: NVIDIA GPUs of each pod; more than 0 runs the ``-gpu`` image and tolerates the
    #: ``nvidia.com/gpu`` taint of GPU nodes.
    gpus: int = Field(0, ge=0)


class WorkerGroup(PodResources):
    """A Ray worker group: ``replicas`` at start, the Ray autoscaler moves it within
    ``min_replicas``..``max_replicas``. A group with ``gpus`` runs the ``-gpu`` image."""

    #: The group's ``groupName`` in the RayCluster.
    name: str = "cpu"
    replicas: int = Field(1, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> WorkerGroup:
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"worker group {self.name!r}: need min_replicas <= replicas <= max_replicas, got "
                f"{self.min_replicas} <= {self.replicas} <= {self.max_replicas}"
            )
        return self


class KafkaCluster(_Section):
    """The Strimzi Kafka of a variant (KRaft, node pools).

    ``controllers`` 0 makes one dual-role pool of ``brokers`` nodes; otherwise a controller pool
    and a broker pool. ``storage`` is ``ephemeral`` or a volume size (``100Gi``, a
    ``persistent-claim``). ``tls`` picks the listener raymm connects to: the ``tls`` listener
    (9093) with ``SASL_SSL``, or the ``plain`` one (9092) with ``SASL_PLAINTEXT``; both
    authenticate with SCRAM-SHA-512. ``replication`` is every topic's replica count, and
    ``min.insync.replicas`` is one less (at least 1).
    """

    controllers: int = Field(0, ge=0)
    brokers: int = Field(1, ge=1)
    storage: str = "ephemeral"
    #: The StorageClass of the volumes a ``storage`` size claims; None: the cluster's default
    #: (unused with ``ephemeral``).
    storage_class: str | None = None
    tls: bool = False
    replication: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _enough_brokers(self) -> KafkaCluster:
        if self.replication > self.brokers:
            raise ValueError(f"kafka replication {self.replication} exceeds brokers {self.brokers}")
        return self


class Variant(_Section):
    """One rendered environment (``k8s/<name>/``).

    ``overrides`` are raymm ``--set`` overrides applied for this variant on top of the
    configuration (e.g. ``train.run.use_gpu=true``). ``head_runs_work`` false gives the head no CPUs
    for tasks (``num-cpus: 0``), so work lands on the worker groups. ``recommender_max_replicas``
    turns Serve's autoscaling on for the Recommender, from ``serve.recommender_replicas`` up to
    it, at ``target_ongoing_requests`` per replica; None keeps ``serve.recommender_replicas``.
    ``job_deadline_s`` is each RayJob's ``activeDeadlineSeconds``, ``job_ttl_s`` how long its
    finished cluster stays (``ttlSecondsAfterFinished``). ``cluster_deletion_delay_s`` is how long
    the old cluster lives after a RayService ``NewCluster`` upgrade switched traffic
    (``rayClusterDeletionDelaySeconds``): both clusters consume every partition meanwhile, which
    raymm's state handles (design.md, "Two owners at once").
    """

    overrides: list[str] = []
    head: PodResources = Field(default_factory=PodResources)
    head_runs_work: bool = True
    job_workers: WorkerGroup = Field(default_factory=WorkerGroup)
    serve_workers: WorkerGroup = Field(default_factory=WorkerGroup)
    recommender_max_replicas: int | None = Field(None, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)
    kafka: KafkaCluster = Field(default_factory=KafkaCluster)
    job_deadline_s: int = Field(4 * 3600, gt=0)
    job_ttl_s: int = Field(600, ge=0)
    cluster_deletion_delay_s: int = Field(60, ge=0)


#: The presets a partial ``deploy.dev``/``deploy.prod`` override is merged onto.
PRESETS: dict[str, dict[str, Any]] = {
    "dev": {
        "head": {"cpus": 2, "memory": "8Gi"},
        "job_workers": {"name": "cpu", "cpus": 2, "memory": "8Gi", "replicas": 1, "max_replicas": 2},
        "serve_workers": {"name": "cpu", "cpus": 2, "memory": "4Gi", "replicas": 1, "max_replicas": 2},
        "kafka": {"brokers": 1, "storage": "ephemeral", "tls": False, "replication": 1},
        "job_deadline_s": 2 * 3600,
    },
    "prod": {
        # Encoders and the Ray Train workers take the GPUs; the state shards and the Recommender
        # score on CPU (a user-tower pass and one matrix product per batch).
        "overrides": [
            "train.run.use_gpu=true",
            "train.run.num_workers=2",
            "extract.text.resources.num_gpus=0.5",
            "extract.image.resources.num_gpus=0.5",
            "serve.recommender_replicas=2",
            "serve.state_shards=2",
        ],
        "head": {"cpus": 4, "memory": "16Gi"},
        "head_runs_work": False,
        "job_workers": {
            "name": "gpu",
            "cpus": 8,
            "memory": "32Gi",
            "gpus": 1,
            "replicas": 2,
            "min_replicas": 1,
            "max_replicas": 4,
        },
        "serve_workers": {
            "name": "cpu",
            "cpus": 4,
            "memory": "16Gi",
            "replicas": 2,
            "min_replicas": 2,
            "max_replicas": 8,
        },
        "recommender_max_replicas": 8,
        "kafka": {
            "controllers": 3,
            "brokers": 3,
            "storage": "100Gi",
            "tls": True,
            "replication": 3,
        },
        "job_deadline_s": 12 * 3600,
        "cluster_deletion_delay_s": 120,
    },
}


def _merged(preset: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(preset)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merged(result[key], value)
        else:
            result[key] = value
    return result


class DeploySettings(_Section):
    """``raymm deploy render``: the image, where the cluster keeps its data, and the variants.

    ``image`` is the repository that ``deploy/Dockerfile`` is pushed to; pods run
    ``<image>:<version>-cpu`` or ``-gpu`` (``version`` None: raymm's version). ``storage`` replaces
    ``out`` on a cluster (data, features, model, state under it): a URI every pod reaches, with
    S3 credentials from the Secret ``s3_secret`` (the standard ``AWS_*`` keys). ``model_tag`` is
    the ``user_config`` version: change it to roll out a new artifact written to the same
    ``serve.model`` URI (a new URI rolls out by itself). ``bootstrap_servers`` is the Kafka of
    ``deploy/serve.yaml`` (a Ray cluster of your own) when ``kafka.bootstrap_servers`` is unset;
    on Kubernetes it is the Strimzi cluster's bootstrap service.
    """

    image: str = "ghcr.io/raymm/raymm"
    version: str | None = None
    #: The Kubernetes namespace every rendered resource goes into.
    namespace: str = "raymm"
    storage: str = "s3://raymm"
    s3_secret: str = "raymm-s3"
    model_tag: str = "v1"
    bootstrap_servers: str = "localhost:9092"
    #: The RayService's name; it also names the API key Secret (``<rayservice>-api-key``) and
    #: labels the pods that the PodMonitor scrapes.
    rayservice: str = "raymm"
    #: The Strimzi Kafka's name (its bootstrap service is ``<kafka_cluster>-kafka-bootstrap``).
    kafka_cluster: str = "raymm"
    #: The Strimzi KafkaUser the serving pods authenticate as; its password is in the Secret of
    #: the same name.
    kafka_user: str = "raymm"
    dev: Variant = Field(default_factory=lambda: Variant.model_validate(PRESETS["dev"]))
    prod: Variant = Field(default_factory=lambda: Variant.model_validate(PRESETS["prod"]))

    @model_validator(mode="before")
    @classmethod
    def _onto_presets(cls, data: Any) -> Any:
        """A partial variant changes the keys it names and keeps the rest of its preset."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, preset in PRESETS.items():
            given = data.get(name)
            if isinstance(given, dict):
                data[name] = _merged(preset, given)
        return data

    def variants(self) -> dict[str, Variant]:
        """The rendered variants by name (``k8s/<name>/``)."""
        return {"dev": self.dev, "prod": self.prod}
