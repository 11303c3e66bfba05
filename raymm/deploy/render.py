"""``raymm deploy render``: ``deploy/serve.yaml`` and ``k8s/<variant>/*.yaml`` from one configuration.

:func:`render` returns every file as text, keyed by its path under the repository root;
:func:`write` writes them and :func:`stale` says which differ from what is on disk (a test fails
on a stale committed file). The source is the configuration (``--config``/``--set``/``RAYMM__*``),
its ``deploy:`` section included; each target runs it as a cluster does:

- ``out`` is ``deploy.storage`` (a URI every node reaches), HTTP listens on ``0.0.0.0``, and the
  jobs join the cluster they run on (``ray.address: auto``);
- ``deploy/serve.yaml`` is for a Ray cluster of your own (``serve deploy deploy/serve.yaml``):
  Kafka at ``kafka.bootstrap_servers``, else ``deploy.bootstrap_servers``;
- ``k8s/<variant>/`` applies the variant's ``overrides`` and sizes, and its RayService carries
  the same Serve config (:func:`raymm.deploy.serve_config.serve_config`) pointed at the variant's
  Strimzi Kafka; its PodMonitor and Grafana dashboard come from :mod:`raymm.deploy.monitoring`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raymm.config import RaymmConfig, apply_overrides, config_from_dict
from raymm.console import Plan, StageResult
from raymm.deploy import kubernetes as k8s
from raymm.deploy import monitoring
from raymm.deploy.serve_config import SERVING_SECTIONS, serve_config
from raymm.deploy.settings import Variant

__all__ = [
    "HEADER",
    "SERVE_CONFIG",
    "cluster_config",
    "dump_yaml",
    "job_overrides",
    "render",
    "stale",
    "write",
]

#: The first line of every rendered file.
HEADER = "# Rendered by `raymm deploy render` from raymm's configuration (raymm/deploy/): do not edit.\n"
#: Where the Serve config for a Ray cluster of your own goes.
SERVE_CONFIG = "deploy/serve.yaml"
#: Sections a job's command line leaves out: the jobs (extract, train) read neither Kafka nor
#: the serving settings, and ``deploy`` is this renderer's own.
_NOT_FOR_JOBS = (*(s for s in SERVING_SECTIONS if s != "out"), "deploy")


def cluster_config(config: RaymmConfig, variant: Variant | None = None) -> RaymmConfig:
    """``config`` as it runs on a cluster: ``out`` = ``deploy.storage``, HTTP on ``0.0.0.0``, jobs
    joining the cluster they run on, then ``variant``'s overrides."""
    document = config.model_dump(mode="json", by_alias=True)
    password = config.kafka.sasl_plain_password
    if password is not None:  # dumped as "**********": keep the real one for validation
        document["kafka"]["sasl_plain_password"] = password.get_secret_value()
    overrides = [f"out={config.deploy.storage}", "serve.host=0.0.0.0", "ray.address=auto"]
    overrides += variant.overrides if variant else []
    return config_from_dict(apply_overrides(document, overrides), "raymm deploy render")


def _scalar(value: Any) -> str:
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)  # JSON is YAML: lists, numbers, booleans, and strings YAML would retype


def _leaves(document: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for key, value in document.items():
        if isinstance(value, Mapping) and value:
            found += _leaves(value, f"{prefix}{key}.")
        else:
            found.append((f"{prefix}{key}", value))
    return found


def job_overrides(config: RaymmConfig) -> list[str]:
    """``config``'s keys that differ from the defaults, as ``--set key=value`` arguments for a job's
    command line (shell-quoted), leaving out the sections jobs do not read."""
    dumped = config.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    document = {k: v for k, v in dumped.items() if k not in _NOT_FOR_JOBS}
    return [f"--set {shlex.quote(f'{key}={_scalar(value)}')}" for key, value in _leaves(document)]


class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line text (``serveConfigV2``, the dashboard JSON)."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def dump_yaml(*documents: Any) -> str:
    """``documents`` as one YAML stream (``---`` between them), keys in the order given."""
    return "---\n".join(
        yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1_000_000) for document in documents
    )


def _file(*documents: Any) -> str:
    return HEADER + dump_yaml(*documents)


def _variant_files(config: RaymmConfig, name: str, variant: Variant) -> dict[str, str]:
    settings = config.deploy
    cluster = cluster_config(config, variant)
    connection = k8s.kafka_connection(settings, variant.kafka)
    serving = serve_config(
        cluster,
        bootstrap_servers=connection.bootstrap_servers,
        max_replicas=variant.recommender_max_replicas,
        target_ongoing_requests=variant.target_ongoing_requests,
    )
    sets = " ".join(job_overrides(cluster))
    stages = {
        "extract": f"raymm extract --verbose {sets}",
        # The two-tower model, then the ranker added to the same artifact.
        "train": f"raymm train --verbose {sets} && raymm train --stage rank --verbose {sets}",
    }
    files = {
        "namespace.yaml": _file(k8s.namespace(settings)),
        "kafka.yaml": _file(*k8s.kafka_cluster(settings, variant.kafka)),
        "kafka-topics.yaml": _file(*k8s.kafka_topics(settings, cluster, variant.kafka)),
        "kafka-user.yaml": _file(k8s.kafka_user(settings, cluster)),
        **{
            f"rayjob-{stage}.yaml": _file(k8s.ray_job(settings, variant, stage, entrypoint))
            for stage, entrypoint in stages.items()
        },
        "rayservice.yaml": _file(
            k8s.ray_service(settings, variant, dump_yaml(serving), monitoring.pod_labels(settings.rayservice))
        ),
        "podmonitor.yaml": _file(monitoring.pod_monitor(settings.namespace, rayservice=settings.rayservice)),
        "grafana-dashboard.yaml": _file(monitoring.dashboard_configmap(settings.namespace)),
    }
    return {f"k8s/{name}/{file}": text for file, text in files.items()}


def render(config: RaymmConfig) -> dict[str, str]:
    """Every rendered file's text by its path relative to the repository root: ``deploy/serve.yaml``
    and ``k8s/<variant>/*.yaml`` for each of ``deploy``'s variants. Raises
    :class:`~raymm.errors.ConfigError` when the configuration cannot run on a cluster."""
    cluster = cluster_config(config)
    bootstrap = cluster.kafka.bootstrap_servers or config.deploy.bootstrap_servers
    files = {SERVE_CONFIG: _file(serve_config(cluster, bootstrap_servers=bootstrap))}
    for name, variant in config.deploy.variants().items():
        files.update(_variant_files(config, name, variant))
    return files


def write(files: Mapping[str, str], root: str | Path) -> list[Path]:
    """Write ``files`` under ``root``; returns the paths that changed."""
    changed = []
    for relative, text in files.items():
        path = Path(root) / relative
        if path.is_file() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changed.append(path)
    return changed


def stale(files: Mapping[str, str], root: str | Path) -> list[str]:
    """The paths among ``files`` whose file under ``root`` is missing or differs, and the rendered
    files under ``root`` that ``files`` no longer has (``k8s/*/*.yaml`` with the header)."""
    differ = [
        p
        for p, text in files.items()
        if not (Path(root) / p).is_file() or (Path(root) / p).read_text() != text
    ]
    extra = [
        str(path.relative_to(root))
        for path in sorted(Path(root).glob("k8s/*/*.yaml"))
        if str(path.relative_to(root)) not in files and path.read_text().startswith(HEADER)
    ]
    return differ + extra


@dataclass
class Rendered(StageResult):
    """What ``raymm deploy render`` did under ``root``: the files it wrote (``changed``), or with
    ``check`` the files that differ from what the configuration renders (``outdated``)."""

    root: str
    files: dict[str, str]
    changed: list[Path] = field(default_factory=list)
    outdated: list[str] | None = None
    title = "deploy render"

    def summary_rows(self) -> list[tuple[str, Any]]:
        if self.outdated is not None:
            return []
        return [("files", f"{len(self.files)} under {self.root}, {len(self.changed)} changed")]

    def warnings(self) -> list[str]:
        return [
            f"{path} differs from what this configuration renders: run `raymm deploy render`"
            for path in self.outdated or []
        ]

    @property
    def ok(self) -> bool:
        return not self.outdated


def plan_render(config: RaymmConfig, *, root: str = ".") -> Plan:
    """The files :func:`render_deploy` writes under ``root``; raises as :func:`render` does."""
    plan = Plan("deploy render")
    for path in render(config):
        plan.add("render", f"{root}/{path}")
    return plan


def render_deploy(config: RaymmConfig, *, root: str = ".", check: bool = False) -> Rendered:
    """Write ``deploy/serve.yaml`` and ``k8s/<variant>/*.yaml`` under ``root``; with ``check``, write
    nothing and list the files that differ. Raises as :func:`render` does."""
    files = render(config)
    if check:
        return Rendered(root, files, outdated=stale(files, root))
    return Rendered(root, files, changed=write(files, root))
