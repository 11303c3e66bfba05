"""raymm's Serve config: the ``ServeDeploySchema`` document that ``serve deploy`` takes and a
RayService carries as ``serveConfigV2``.

The application names :func:`raymm.serve.app.app_builder` in ``import_path`` and passes it
``args``: the part of the configuration the app reads (``out``, ``kafka``, ``stream``, ``serve``;
only what differs from the defaults, never a password), the Kafka bootstrap servers and the model.
The Recommender's options (replicas or autoscaling, actor resources, ``user_config`` with the
model) come from :func:`raymm.serve.app.recommender_options`, the function ``build_app`` deploys
with, so the file and the code cannot drift. Serve ignores keys it does not know;
:func:`check_serve_config` does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from pydantic import BaseModel

from raymm.config import RaymmConfig
from raymm.errors import ConfigError
from raymm.serve.app import APP_BUILDER, RECOMMENDER, recommender_options, serve_logging

if TYPE_CHECKING:
    from ray.serve.schema import ServeDeploySchema

__all__ = ["SERVING_SECTIONS", "app_document", "check_serve_config", "model_uri", "serve_config"]

#: The sections of the configuration the Serve app reads (``app_builder`` -> ``build_app``).
SERVING_SECTIONS = ("out", "kafka", "stream", "serve")


def app_document(config: RaymmConfig) -> dict[str, Any]:
    """The :data:`SERVING_SECTIONS` of ``config`` that differ from the defaults, as plain data.

    The secrets are left out, always: ``kafka.sasl_plain_password`` and ``serve.api_key`` reach the
    app from the environment (``RAYMM__KAFKA__SASL_PLAIN_PASSWORD``, ``RAYMM__SERVE__API_KEY``,
    from Kubernetes Secrets), never from a file.
    """
    dumped = config.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    document = {section: dumped[section] for section in SERVING_SECTIONS if section in dumped}
    for section, key in (("kafka", "sasl_plain_password"), ("serve", "api_key")):
        values = document.get(section, {})
        values.pop(key, None)
        if section in document and not values:
            del document[section]
    return document


def model_uri(config: RaymmConfig) -> str:
    """The artifact the app serves (``serve.model``, else ``<out>/model``), which every node of a
    cluster must reach: a URI or an absolute path; :class:`ConfigError` for a relative one."""
    uri = config.serve.model or config.stage_dir("model")
    if "://" not in uri and not uri.startswith("/"):
        raise ConfigError(
            f"the served model {uri!r} is a relative path, which means nothing on a cluster's nodes: "
            "set serve.model (or deploy.storage) to a URI such as s3://bucket/model, or an absolute path"
        )
    return uri


def serve_config(
    config: RaymmConfig,
    *,
    bootstrap_servers: str,
    max_replicas: int | None = None,
    target_ongoing_requests: float = 8.0,
) -> dict[str, Any]:
    """The Serve config (a ``ServeDeploySchema`` document) deploying raymm as ``config`` says.

    HTTP listens on ``serve.host``:``serve.port``; the application is ``serve.app_name`` at
    ``serve.route_prefix``. ``max_replicas`` turns on Serve's autoscaling for the Recommender
    (``num_replicas: auto``, from ``serve.recommender_replicas`` up to it at
    ``target_ongoing_requests`` per replica); None keeps ``serve.recommender_replicas`` replicas.
    The ``user_config`` version is ``deploy.model_tag``. Checked by :func:`check_serve_config`.
    """
    model = model_uri(config)
    options = recommender_options(config, model, config.deploy.model_tag)
    if max_replicas is not None:
        options["num_replicas"] = "auto"
        options["autoscaling_config"] = {
            "min_replicas": config.serve.recommender_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
        }
    document = {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.serve.host, "port": config.serve.port},
        "logging_config": serve_logging(config),
        "applications": [
            {
                "name": config.serve.app_name,
                "route_prefix": config.serve.route_prefix,
                "import_path": APP_BUILDER,
                "args": {
                    "config": app_document(config),
                    "bootstrap_servers": bootstrap_servers,
                    "model": model,
                },
                "deployments": [{"name": RECOMMENDER, **options}],
            }
        ],
    }
    check_serve_config(document)
    return document


def check_serve_config(document: Any, where: str = "serve config") -> ServeDeploySchema:
    """``document`` parsed as Ray Serve's ``ServeDeploySchema``, which ``serve deploy`` and
    KubeRay's ``serveConfigV2`` take; raises :class:`ConfigError` naming what is wrong.

    Stricter than Serve: a key the schema does not declare is an error (Serve ignores such keys,
    so a misspelled option would do nothing), except inside free-form mappings (``args``,
    ``user_config``, ``runtime_env``).
    """
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(document, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(document).__name__}")
    unknown = _unknown_keys(ServeDeploySchema, document, "")
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)} (not in Ray Serve's ServeDeploySchema)"
        )
    try:
        return ServeDeploySchema.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"{where} is not a valid ServeDeploySchema: {exc}") from None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds directly, in a list, or in a union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (list, Union) or type(annotation).__name__ == "UnionType":
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    return []


def _unknown_keys(model: type[BaseModel], data: dict[str, Any], path: str) -> list[str]:
    fields = {
        alias: field for name, field in model.model_fields.items() for alias in (name, field.alias) if alias
    }
    unknown = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        field = fields.get(key)
        if field is None:
            unknown.append(f"{where!r}")
            continue
        models = _models_in(field.annotation)
        if not models:
            continue
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if isinstance(item, dict):
                item_path = f"{where}[{index}]" if isinstance(value, list) else where
                unknown += _unknown_keys(models[0], item, item_path)
    return unknown
