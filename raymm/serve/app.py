"""The Ray Serve application: HTTP in, live recommendations out.

One graph, built by :func:`build_app` for ``serve run``, ``serve deploy`` (through
:func:`app_builder`, which a Serve config names in ``import_path``; ``raymm deploy render`` writes
one) and ``raymm serve`` alike::

    HTTP -> Recommender (one deployment: RecommenderDeployment, FastAPI via @serve.ingress,
                         OpenAPI at /docs; the artifact's model; batches; user_config rolls
                         models out)
              <-> state-0 .. state-{W-1}  (deployment-scoped actors: one EventConsumer each)
              -> Kafka (POST /v1/events, POST /v1/items)

The rooms: :mod:`raymm.serve.http` (routes, bodies, errors), :mod:`raymm.serve.deployment` (the
replica: model roll-out, batching, new items), :mod:`raymm.serve.served` (one artifact as
served), :mod:`raymm.serve.shard_client` (calling the state shards) and :mod:`raymm.serve.shard`
(a state shard). This module builds the graph and is the stable entry point
(``raymm.serve.app:app_builder``); it re-exports the names callers use.

**The topic's real partition count.** Requests are routed to the shard that owns the user's
partition (:class:`raymm.stream.ownership.Ownership`), which is only right on the partition count
the events were produced with. :func:`build_app` creates missing topics and reads the existing
ones' counts from Kafka; a count other than ``kafka.partitions`` refuses to build
(:class:`~raymm.stream.broker.TopicMismatchError`) rather than answer every user with the
``unknown_user`` fallback. So every way of deploying checks it, not only ``raymm serve``.

**Model roll-out.** ``user_config`` holds the artifact URI and a version; a redeploy with a new one
reaches :meth:`RecommenderDeployment.reconfigure <raymm.serve.deployment.RecommenderDeployment.reconfigure>`
on each running replica, which swaps the new model in without failing a request.
"""

from __future__ import annotations

import uuid
from typing import Any

import ray
from ray import serve
from ray.serve.config import DeploymentActorConfig

from raymm.config import RaymmConfig
from raymm.data import io
from raymm.errors import RaymmError
from raymm.recommend.index import IndexChoice
from raymm.serve.auth import ApiKeySource
from raymm.serve.deployment import RecommenderDeployment, ServeArgs
from raymm.serve.http import ERROR_KEY, ApiError, api
from raymm.serve.shard import StateShard, shard_name
from raymm.serve.shard_client import SERVED_FLUSH_S
from raymm.stream.broker import TopicMismatchError, ensure_topics
from raymm.stream.events import EVENTS_TOPIC, ITEMS_TOPIC
from raymm.stream.ownership import Ownership
from raymm.stream.state import StateSpec

__all__ = [
    "APP_BUILDER",
    "ERROR_KEY",
    "RECOMMENDER",
    "SERVED_FLUSH_S",
    "ApiError",
    "RecommenderDeployment",
    "ServeArgs",
    "api",
    "app_builder",
    "build_app",
    "recommender_options",
    "serve_logging",
]

#: The import path a Serve config names (``serve run``/``serve deploy``, a RayService).
APP_BUILDER = "raymm.serve.app:app_builder"
#: The one deployment: HTTP ingress and scoring; the state shards are its deployment actors.
RECOMMENDER = "Recommender"
#: The keys :func:`app_builder` takes.
APP_ARGS = ("config", "bootstrap_servers", "model", "set")


def _checked_ownership(config: RaymmConfig, bootstrap_servers: str) -> Ownership:
    """The owner rule on the events topic's actual partition count, read from Kafka.

    Creates the topics that are missing (:func:`raymm.stream.broker.ensure_topics`). Raises
    :class:`~raymm.stream.broker.TopicMismatchError` naming the topic, its count and
    ``kafka.partitions`` when they differ, and :class:`~raymm.errors.RaymmError` naming the
    servers when Kafka is unreachable or refuses.
    """
    from kafka.errors import KafkaError

    kafka = config.kafka
    try:
        counts = ensure_topics(bootstrap_servers, kafka.topics(), configs=kafka.topic_configs(), kafka=kafka)
    except KafkaError as exc:
        raise RaymmError(
            f"Kafka at {bootstrap_servers} could not create or check raymm's topics ({exc!r}): the app "
            "reads events from it, so it must be reachable when the app is built "
            "(bootstrap_servers=HOST:PORT or kafka.bootstrap_servers, and kafka.security_protocol)"
        ) from exc
    except TopicMismatchError as exc:
        raise TopicMismatchError(
            f"{exc}. Set kafka.partitions ({EVENTS_TOPIC}) or kafka.item_partitions ({ITEMS_TOPIC}) to "
            "the topic's count, or use other topics: raymm never adds partitions to a topic, since "
            "that would move users to other partitions"
        ) from None
    return Ownership(counts[EVENTS_TOPIC], config.serve.state_shards, kafka.partitioner)


def build_app(
    config: RaymmConfig, *, bootstrap_servers: str, model: str | None = None, version: str | None = None
) -> serve.Application:
    """The raymm Serve application for ``config``, reading events from ``bootstrap_servers``.

    ``model`` is the artifact (default ``serve.model``, else ``<out>/model``); its user-state spec
    is what the shards keep. ``version`` tags the ``user_config`` (default: a fresh one), so a
    redeploy with a new artifact URI rolls out through
    :meth:`~raymm.serve.deployment.RecommenderDeployment.reconfigure`. Kafka must be reachable:
    the topics are created or checked first (:func:`_checked_ownership` says what it raises).
    """
    settings = config.serve
    ownership = _checked_ownership(config, bootstrap_servers)
    uri = io.absolute(model or settings.model or config.stage_dir("model"))
    spec = StateSpec.from_artifact(uri, config.stream.dedupe_window, config.stream.max_seen)
    args = ServeArgs(
        bootstrap_servers=bootstrap_servers,
        kafka=config.kafka.shared(),
        partitions=ownership.n_partitions,
        world_size=ownership.world_size,
        partitioner=ownership.partitioner,
        max_k=settings.max_k,
        max_body_bytes=settings.max_body_bytes,
        state_timeout_s=settings.state_timeout_s,
        ready_timeout_s=settings.ready_timeout_s,
        index=IndexChoice(settings.index, settings.faiss_min_items, settings.nprobe),
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        api_key=ApiKeySource.of(settings),
    )
    shards: list[dict[Any, Any] | DeploymentActorConfig] = [
        DeploymentActorConfig(
            name=shard_name(rank),
            actor_class=ray.remote(StateShard),
            init_kwargs={
                "rank": rank,
                "world_size": settings.state_shards,
                "bootstrap_servers": bootstrap_servers,
                "spec": spec.to_json(),
                "snapshot_uri": io.absolute(config.snapshot_uri()),
                "stream": config.stream.model_dump(mode="json"),
                "kafka": config.kafka.shared(),
                "hit_window_s": settings.hit_window_s,
                "partitioner": ownership.partitioner,
                "partitions": ownership.n_partitions,
            },
            actor_options={"num_cpus": settings.shard_num_cpus, "max_concurrency": 32},
        )
        for rank in range(settings.state_shards)
    ]
    return serve.deployment(
        name=RECOMMENDER,
        deployment_actors=shards,
        **recommender_options(config, uri, version or uuid.uuid4().hex[:8]),
    )(RecommenderDeployment).bind(args)


def recommender_options(config: RaymmConfig, model: str, version: str) -> dict[str, Any]:
    """The Recommender's Serve options for ``config`` serving the artifact ``model``: what
    :func:`build_app` deploys with, and what ``raymm deploy render`` writes under the Serve
    config's ``deployments`` (one place, so the two cannot drift)."""
    settings = config.serve
    return {
        "num_replicas": settings.recommender_replicas,
        "ray_actor_options": {"num_cpus": settings.recommender_num_cpus},
        "user_config": {"model": model, "version": version},
        "max_ongoing_requests": 256,
        # A roll-out starts the new replicas (and their state shards) before it stops the old
        # ones: with Serve's default of 0, a one-replica app has none while the new one replays
        # the log, and requests wait or time out (tests/reliability/test_redeploy.py).
        "max_surge_percent": 100,
        "logging_config": serve_logging(config),
    }


def serve_logging(config: RaymmConfig) -> dict[str, Any]:
    """Serve's ``logging_config`` for the Recommender and for Serve's own proxy and controller
    (``serve.start``, the Serve config's top level): the access log as ``serve.access_log`` says."""
    return {"enable_access_log": config.serve.access_log}


def app_builder(args: dict[str, Any]) -> serve.Application:
    """The app for ``serve run`` and ``serve deploy`` (Serve's application-builder convention)::

        serve run raymm.serve.app:app_builder config=configs/quickstart.yaml \\
            bootstrap_servers=broker:9092 [model=s3://bucket/model] [set=serve.state_shards=2,...]

    ``config`` is a raymm YAML file, or (in a Serve config's ``args``) the configuration itself
    as a mapping; default: the embedded defaults. ``RAYMM__*`` environment variables apply to
    either (:func:`raymm.config.load_config`). ``set`` is overrides as ``--set`` takes them,
    comma-separated or a list. Kafka must be reachable (``bootstrap_servers`` or
    ``kafka.bootstrap_servers``): ``serve run`` starts no embedded broker (``raymm serve`` does),
    and the topics' partition counts are checked against the config (see :func:`build_app`).
    ``serve build`` cannot pass arguments to a builder: ``raymm deploy render`` writes the Serve
    config instead. Raises :class:`~raymm.errors.RaymmError` naming an unknown argument.
    """
    from raymm.config import load_config, load_document

    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise RaymmError(f"{APP_BUILDER} takes {', '.join(APP_ARGS)}; got unknown argument(s) {unknown}")
    given = args.get("set") or []
    overrides = [o for o in (given.split(",") if isinstance(given, str) else given) if o]
    source = args.get("config")
    if isinstance(source, dict):
        config = load_document(source, overrides, source=f"{APP_BUILDER} args.config")
    else:
        config = load_config(source, overrides)
    bootstrap = args.get("bootstrap_servers") or config.kafka.bootstrap_servers
    if not bootstrap:
        raise RaymmError(
            "serve run needs Kafka: pass bootstrap_servers=HOST:PORT or set kafka.bootstrap_servers"
        )
    return build_app(config, bootstrap_servers=bootstrap, model=args.get("model"))
