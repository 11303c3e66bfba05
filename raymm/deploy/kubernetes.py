"""raymm's Kubernetes resources as plain data: KubeRay ``RayJob``s and a ``RayService``, and a
Strimzi Kafka (KRaft, node pools) with raymm's topics and a SCRAM-SHA-512 user.

Each function returns one resource (or a list) as a dict; :mod:`raymm.deploy.render` writes them.
Nothing here reads a cluster. Where credentials come from:

- **Kafka**: the Strimzi User Operator writes the ``KafkaUser``'s password into a Secret named
  after the user (key ``password``); the serving pods get it as
  ``RAYMM__KAFKA__SASL_PLAIN_PASSWORD`` (``secretKeyRef``), which raymm's config loader reads. The
  rest of the connection is set beside it as ``RAYMM__KAFKA__*``: the bootstrap service, SCRAM-
  SHA-512, and ``SASL_SSL`` on the ``tls`` listener (9093, the cluster CA mounted from the
  ``<cluster>-cluster-ca-cert`` Secret) or ``SASL_PLAINTEXT`` on the ``plain`` one (9092), as the
  variant's ``kafka.tls`` says. So ``raymm produce`` run in a serving pod reaches Kafka too.
- **The API key**: the serving pods get ``RAYMM__SERVE__API_KEY`` from the key ``api-key`` of
  the Secret ``<deploy.rayservice>-api-key`` (:func:`api_key_secret`), marked optional: create
  the Secret and every route but ``/healthz`` requires the key (:mod:`raymm.serve.auth`);
  without it the API is open. A new key reaches the pods when they restart.
- **S3**: every Ray pod loads the Secret ``deploy.s3_secret`` as environment variables
  (``envFrom``): ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` and, for a store
  other than AWS, ``AWS_ENDPOINT_URL``, which pyarrow's S3 filesystem reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version as installed_version
from typing import Any

from raymm import __version__
from raymm.config import RaymmConfig
from raymm.deploy.settings import DeploySettings, KafkaCluster, PodResources, Variant, WorkerGroup

__all__ = [
    "SUBMISSION_MODE",
    "UPGRADE_STRATEGY",
    "KafkaConnection",
    "api_key_secret",
    "image",
    "kafka_cluster",
    "kafka_connection",
    "kafka_topics",
    "kafka_user",
    "namespace",
    "ray_job",
    "ray_service",
]

#: How the RayJobs submit: a Kubernetes Job runs ``ray job submit`` and follows the job's logs
#: (``kubectl logs job/<rayjob>``), KubeRay's default.
SUBMISSION_MODE = "K8sJobMode"
#: How a RayService upgrade replaces its cluster: a new one beside the old, traffic switched when
#: its Serve app is healthy, the old one deleted ``rayClusterDeletionDelaySeconds`` later.
UPGRADE_STRATEGY = "NewCluster"
#: Labels on every resource rendered here.
PART_OF = {"app.kubernetes.io/part-of": "raymm"}
#: Where a serving pod finds the Kafka cluster CA (prod's ``SASL_SSL``).
KAFKA_CA_DIR = "/etc/raymm/kafka-ca"


def image(settings: DeploySettings, gpu: bool) -> str:
    """The raymm image a pod runs: ``<deploy.image>:<version>-gpu`` on GPU pods, ``-cpu`` elsewhere."""
    return f"{settings.image}:{settings.version or __version__}-{'gpu' if gpu else 'cpu'}"


def namespace(settings: DeploySettings) -> dict[str, Any]:
    """The namespace everything is rendered into."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": settings.namespace, "labels": PART_OF},
    }


# -- Kafka (Strimzi) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaConnection:
    """How raymm's pods reach the variant's Strimzi Kafka."""

    bootstrap_servers: str
    security_protocol: str
    listener: str
    ca_secret: str | None


def kafka_connection(settings: DeploySettings, kafka: KafkaCluster) -> KafkaConnection:
    """The bootstrap service, listener and security protocol for ``kafka`` (see the module doc)."""
    port, listener = (9093, "tls") if kafka.tls else (9092, "plain")
    host = f"{settings.kafka_cluster}-kafka-bootstrap.{settings.namespace}.svc"
    return KafkaConnection(
        bootstrap_servers=f"{host}:{port}",
        security_protocol="SASL_SSL" if kafka.tls else "SASL_PLAINTEXT",
        listener=listener,
        ca_secret=f"{settings.kafka_cluster}-cluster-ca-cert" if kafka.tls else None,
    )


def _meta(settings: DeploySettings, name: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": settings.namespace, "labels": {**PART_OF, **labels}}


def _storage(kafka: KafkaCluster) -> dict[str, Any]:
    if kafka.storage == "ephemeral":
        return {"type": "ephemeral"}
    storage: dict[str, Any] = {"type": "persistent-claim", "size": kafka.storage, "deleteClaim": False}
    if kafka.storage_class:
        storage["class"] = kafka.storage_class
    return storage


def kafka_cluster(settings: DeploySettings, kafka: KafkaCluster) -> list[dict[str, Any]]:
    """The node pools and the ``Kafka`` (KRaft; Strimzi picks its newest Kafka version).

    Two internal listeners, both SCRAM-SHA-512: ``plain`` (9092) and ``tls`` (9093); simple
    authorization, so the ``KafkaUser``'s ACLs apply; topics are created only by the Topic
    Operator from ``KafkaTopic``s (``auto.create.topics.enable: false``).
    """
    pool_labels = {"strimzi.io/cluster": settings.kafka_cluster}
    if kafka.controllers:
        pools = [("controller", kafka.controllers, ["controller"]), ("broker", kafka.brokers, ["broker"])]
    else:
        pools = [("dual-role", kafka.brokers, ["controller", "broker"])]
    resources: list[dict[str, Any]] = [
        {
            "apiVersion": "kafka.strimzi.io/v1",
            "kind": "KafkaNodePool",
            "metadata": _meta(settings, f"{settings.kafka_cluster}-{name}", **pool_labels),
            "spec": {"replicas": replicas, "roles": roles, "storage": _storage(kafka)},
        }
        for name, replicas, roles in pools
    ]
    replication, min_insync = kafka.replication, max(1, kafka.replication - 1)
    resources.append(
        {
            "apiVersion": "kafka.strimzi.io/v1",
            "kind": "Kafka",
            "metadata": _meta(settings, settings.kafka_cluster),
            "spec": {
                "kafka": {
                    "listeners": [
                        {
                            "name": name,
                            "port": port,
                            "type": "internal",
                            "tls": tls,
                            "authentication": {"type": "scram-sha-512"},
                        }
                        for name, port, tls in (("plain", 9092, False), ("tls", 9093, True))
                    ],
                    "authorization": {"type": "simple"},
                    "config": {
                        "auto.create.topics.enable": False,
                        "default.replication.factor": replication,
                        "min.insync.replicas": min_insync,
                        "offsets.topic.replication.factor": replication,
                        "transaction.state.log.replication.factor": replication,
                        "transaction.state.log.min.isr": min_insync,
                    },
                },
                "entityOperator": {"topicOperator": {}, "userOperator": {}},
            },
        }
    )
    return resources


def kafka_topics(settings: DeploySettings, config: RaymmConfig, kafka: KafkaCluster) -> list[dict[str, Any]]:
    """A ``KafkaTopic`` per raymm topic, with the partition counts the configuration pins
    (``kafka.partitions`` for ``raymm.events``: the owner rule is computed on it, and raymm refuses
    to start on another count) and the settings raymm creates them with (the dead letters'
    compaction: :meth:`~raymm.stream.settings.KafkaSettings.topic_configs`)."""
    settings_by_topic = config.kafka.topic_configs()
    return [
        {
            "apiVersion": "kafka.strimzi.io/v1",
            "kind": "KafkaTopic",
            "metadata": _meta(settings, topic, **{"strimzi.io/cluster": settings.kafka_cluster}),
            "spec": {
                "partitions": partitions,
                "replicas": kafka.replication,
                "config": {
                    "min.insync.replicas": max(1, kafka.replication - 1),
                    **settings_by_topic.get(topic, {}),
                },
            },
        }
        for topic, partitions in config.kafka.topics().items()
    ]


def kafka_user(settings: DeploySettings, config: RaymmConfig) -> dict[str, Any]:
    """The SCRAM-SHA-512 ``KafkaUser`` raymm connects as; its Secret (same name, key ``password``)
    feeds ``RAYMM__KAFKA__SASL_PLAIN_PASSWORD``. ACLs: read, write and describe raymm's topics.
    The topics exist already (``KafkaTopic``s), so no ``Create``; Kafka >= 3.0 lets a user with
    ``Write`` on a topic produce idempotently (KIP-679), so no cluster ``IdempotentWrite``."""
    return {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaUser",
        "metadata": _meta(settings, settings.kafka_user, **{"strimzi.io/cluster": settings.kafka_cluster}),
        "spec": {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {
                "type": "simple",
                "acls": [
                    {
                        "type": "allow",
                        "resource": {"type": "topic", "name": topic, "patternType": "literal"},
                        "operations": ["Describe", "DescribeConfigs", "Read", "Write"],
                    }
                    for topic in config.kafka.topics()
                ],
            },
        },
    }


def _kafka_env(settings: DeploySettings, variant: Variant) -> list[dict[str, Any]]:
    connection = kafka_connection(settings, variant.kafka)
    env: list[dict[str, Any]] = [
        {"name": "RAYMM__KAFKA__BOOTSTRAP_SERVERS", "value": connection.bootstrap_servers},
        {"name": "RAYMM__KAFKA__SECURITY_PROTOCOL", "value": connection.security_protocol},
        {"name": "RAYMM__KAFKA__SASL_MECHANISM", "value": "SCRAM-SHA-512"},
        {"name": "RAYMM__KAFKA__SASL_PLAIN_USERNAME", "value": settings.kafka_user},
        {
            "name": "RAYMM__KAFKA__SASL_PLAIN_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": settings.kafka_user, "key": "password"}},
        },
    ]
    if connection.ca_secret:
        env.append({"name": "RAYMM__KAFKA__SSL_CAFILE", "value": f"{KAFKA_CA_DIR}/ca.crt"})
    return env


def api_key_secret(settings: DeploySettings) -> str:
    """The Secret whose key ``api-key`` holds the HTTP API's key (see the module docstring)."""
    return f"{settings.rayservice}-api-key"


def _api_key_env(settings: DeploySettings) -> dict[str, Any]:
    return {
        "name": "RAYMM__SERVE__API_KEY",
        "valueFrom": {"secretKeyRef": {"name": api_key_secret(settings), "key": "api-key", "optional": True}},
    }


# -- Ray (KubeRay) ----------------------------------------------------------------------------------


def _quantity(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{round(cpus * 1000)}m"


def _pod_template(
    settings: DeploySettings,
    variant: Variant,
    container: str,
    resources: PodResources,
    *,
    kafka: bool,
    labels: dict[str, str],
) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": _quantity(resources.cpus), "memory": resources.memory}
    if resources.gpus:
        amounts["nvidia.com/gpu"] = resources.gpus
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": container,
                "image": image(settings, resources.gpus > 0),
                "resources": {"limits": amounts, "requests": dict(amounts)},
                "envFrom": [{"secretRef": {"name": settings.s3_secret}}],
            }
        ]
    }
    connection = kafka_connection(settings, variant.kafka)
    if kafka:
        spec["containers"][0]["env"] = [*_kafka_env(settings, variant), _api_key_env(settings)]
        if connection.ca_secret:
            spec["containers"][0]["volumeMounts"] = [
                {"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True}
            ]
            spec["volumes"] = [
                {
                    "name": "kafka-ca",
                    "secret": {
                        "secretName": connection.ca_secret,
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    },
                }
            ]
    if resources.gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": {**PART_OF, **labels}}, "spec": spec}


def _cluster_spec(
    settings: DeploySettings,
    variant: Variant,
    workers: WorkerGroup,
    *,
    kafka: bool,
    labels: dict[str, str],
) -> dict[str, Any]:
    """A RayCluster spec: the head, one worker group, the Ray autoscaler on."""
    head_params = {"dashboard-host": "0.0.0.0"}
    if not variant.head_runs_work:
        head_params["num-cpus"] = "0"
    return {
        "rayVersion": installed_version("ray"),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 60},
        "headGroupSpec": {
            "rayStartParams": head_params,
            "template": _pod_template(
                settings, variant, "ray-head", variant.head, kafka=kafka, labels=labels
            ),
        },
        "workerGroupSpecs": [
            {
                "groupName": workers.name,
                "replicas": workers.replicas,
                "minReplicas": workers.min_replicas,
                "maxReplicas": workers.max_replicas,
                "rayStartParams": {},
                "template": _pod_template(
                    settings, variant, "ray-worker", workers, kafka=kafka, labels=labels
                ),
            }
        ],
    }


def ray_job(settings: DeploySettings, variant: Variant, stage: str, entrypoint: str) -> dict[str, Any]:
    """A ``RayJob`` running ``entrypoint`` (a raymm command) on a cluster of its own, on the
    variant's job workers (prod: a GPU group), deleted ``job_ttl_s`` after it finishes and stopped
    after ``job_deadline_s``. Jobs read and write S3 only: no Kafka credentials."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _meta(settings, f"raymm-{stage}", **{"app.kubernetes.io/component": stage}),
        "spec": {
            "entrypoint": entrypoint,
            "submissionMode": SUBMISSION_MODE,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": variant.job_ttl_s,
            "activeDeadlineSeconds": variant.job_deadline_s,
            "backoffLimit": 0,
            "rayClusterSpec": _cluster_spec(
                settings,
                variant,
                variant.job_workers,
                kafka=False,
                labels={"app.kubernetes.io/component": stage},
            ),
        },
    }


def ray_service(
    settings: DeploySettings, variant: Variant, serve_config_yaml: str, pod_labels: dict[str, str]
) -> dict[str, Any]:
    """The ``RayService``: ``serve_config_yaml`` as ``serveConfigV2``, the Ray autoscaler on, the
    serving worker group, Kafka credentials and the API key on every pod, and ``pod_labels``
    (what the PodMonitor selects) on its pod templates. Upgrades use :data:`UPGRADE_STRATEGY`."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _meta(settings, settings.rayservice, **{"app.kubernetes.io/component": "serve"}),
        "spec": {
            "upgradeStrategy": {"type": UPGRADE_STRATEGY},
            "rayClusterDeletionDelaySeconds": variant.cluster_deletion_delay_s,
            "serveConfigV2": serve_config_yaml,
            "rayClusterConfig": _cluster_spec(
                settings, variant, variant.serve_workers, kafka=True, labels=pod_labels
            ),
        },
    }
