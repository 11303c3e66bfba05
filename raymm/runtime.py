"""Starting or joining Ray, the one place the rest of raymm asks for a cluster."""

from __future__ import annotations

import logging
import os

from raymm.config import RayConfig


def init_ray(config: RayConfig) -> None:
    """Join the cluster at ``config.address`` or start a local instance; no-op if Ray is up.

    A local instance gets ``num_cpus``/``num_gpus`` from the config (None: what the machine has).
    The dashboard process starts with a local instance: Ray Train's controller watches its workers
    through the state API it serves, and its Prometheus exporter serves raymm's metrics.
    """
    import ray

    if ray.is_initialized():
        return
    # Token auth prints a notice on every local start; it protects nothing on a private instance.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict[str, object] = {"logging_level": logging.WARNING, "log_to_driver": config.log_to_driver}
    if config.address:
        ray.init(address=config.address, **kwargs)  # type: ignore[arg-type]
        return
    ray.init(
        num_cpus=config.num_cpus,
        num_gpus=config.num_gpus,
        **kwargs,  # type: ignore[arg-type]
    )
