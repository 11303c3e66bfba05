"""raymm's typed configuration: one pydantic model, loaded from YAML, with dotted overrides.

``load_config("configs/quickstart.yaml", ["synth.size=tiny"])`` returns a validated
:class:`RaymmConfig`. Unknown keys and wrong types raise :class:`ConfigError` naming the key and
what was expected.

Each stage defines its own section types next to its code (``raymm/data/settings.py``,
``raymm/features/settings.py``, ``raymm/models/config.py``, ``raymm/training/settings.py``,
``raymm/eval/settings.py``, ``raymm/stream/settings.py``, ``raymm/serve/settings.py``,
``raymm/deploy/settings.py``, ``raymm/workflows/settings.py``, :class:`raymm.runtime.RayConfig`) on
:class:`raymm.settings_base.StrictModel`; this module only assembles them into
:class:`RaymmConfig`, checks what spans sections, and loads it. Only the stages that take the
whole configuration (training, evaluation, serving, deployment, workflows, the CLI) import this
hub; ``tests/test_layers.py`` keeps it so.

Environment variables ``RAYMM__<SECTION>__<KEY>`` override keys after the file and before the
dotted overrides (``RAYMM__KAFKA__SASL_PLAIN_PASSWORD`` sets ``kafka.sasl_plain_password``): how a
Kubernetes Secret reaches the configuration without being written into a manifest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from raymm.data.settings import (
    ImportConfig,
    ImportFormat,
    MissingRates,
    SizeName,
    SplitFractions,
    SynthConfig,
    ValidateConfig,
)
from raymm.deploy.settings import DeploySettings
from raymm.errors import ConfigError
from raymm.eval.settings import EvaluateConfig
from raymm.features.settings import (
    AudioEncoderConfig,
    EncoderResources,
    EncoderSection,
    ExtractConfig,
    ImageEncoderConfig,
    SharedPoolConfig,
    TextEncoderConfig,
)
from raymm.models.config import ModelConfig, RankerConfig
from raymm.runtime import RayConfig
from raymm.serve.settings import ServeConfig
from raymm.settings_base import MODALITIES, Precision, StrictModel
from raymm.stream.settings import MASK, KafkaSettings, StreamSettings
from raymm.training.settings import VALIDATION_METRICS, TrainConfig, TrainRunConfig
from raymm.workflows.settings import AblationConfig

# Each stage defines its sections next to its code; they are re-exported here, so
# ``from raymm.config import SynthConfig`` keeps working for callers outside raymm/.
__all__ = [
    "ENV_PREFIX",
    "MOVED_KEYS",
    "SECRET_KEYS",
    "VALIDATION_METRICS",
    "AblationConfig",
    "AudioEncoderConfig",
    "ConfigError",
    "DeploySettings",
    "EncoderResources",
    "EncoderSection",
    "EvaluateConfig",
    "ExtractConfig",
    "ImageEncoderConfig",
    "ImportConfig",
    "ImportFormat",
    "KafkaSettings",
    "MissingRates",
    "ModelConfig",
    "Precision",
    "RankerConfig",
    "RayConfig",
    "RaymmConfig",
    "ServeConfig",
    "SharedPoolConfig",
    "SizeName",
    "SplitFractions",
    "StreamSettings",
    "StrictModel",
    "SynthConfig",
    "TextEncoderConfig",
    "TrainConfig",
    "TrainRunConfig",
    "ValidateConfig",
    "apply_overrides",
    "config_from_dict",
    "env_overrides",
    "load_config",
    "load_document",
]


class RaymmConfig(StrictModel):
    """The whole configuration. ``out`` is the root under which stages write (data/, features/...)."""

    #: Seeds every random choice (synthesis, splits, sampling, initialisation, shuffles): same data,
    #: config and seed give the same metrics.
    seed: int = 0
    out: str = "out"
    synth: SynthConfig = Field(default_factory=SynthConfig)
    import_: ImportConfig = Field(default_factory=ImportConfig, alias="import")
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    rank: RankerConfig = Field(default_factory=RankerConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    ablation: AblationConfig = Field(default_factory=AblationConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    deploy: DeploySettings = Field(default_factory=DeploySettings)

    @model_validator(mode="after")
    def _cross_section_checks(self) -> RaymmConfig:
        name, _, k = self.train.val_metric.partition("@")
        if name not in VALIDATION_METRICS or not k.isdigit() or int(k) not in self.evaluate.ks:
            raise ValueError(
                f"train.val_metric {self.train.val_metric!r} must be <metric>@<K> with metric in "
                f"{'|'.join(VALIDATION_METRICS)} and K in evaluate.ks {self.evaluate.ks}"
            )
        events = set(self.model.user_state.events)
        unknown = sorted(set(self.rank.event_weights) - events - set(self.rank.negative_events))
        if unknown:
            raise ValueError(
                f"rank.event_weights names {unknown}, which are neither model.user_state.events nor "
                "rank.negative_events"
            )
        if self.serve.state_shards > self.kafka.partitions:
            raise ValueError(
                f"serve.state_shards={self.serve.state_shards} exceeds kafka.partitions={self.kafka.partitions}: "
                "a shard owns whole partitions, so some shards would own none"
            )
        both = sorted(events & set(self.rank.negative_events))
        if both:
            raise ValueError(f"events {both} are both model.user_state.events and rank.negative_events")
        return self

    def train_window(self) -> int:
        """The history window of a two-tower training example: ``train.history_window`` capped at
        ``model.user_state.max_history``, the window evaluation and serving use (unset: that one)."""
        window = self.model.user_state.max_history
        return min(window, self.train.history_window or window)

    def snapshot_uri(self) -> str:
        """Where user-state snapshots go: ``stream.snapshot_uri``, else ``<out>/state``."""
        return self.stream.snapshot_uri or self.stage_dir("state")

    def stage_dir(self, stage: str) -> str:
        """Where ``stage`` (data, features, model, ...) reads and writes under ``out``."""
        return f"{self.out.rstrip('/')}/{stage}"

    def to_yaml(self) -> str:
        """The resolved configuration as YAML (what ``--dry-run`` prints)."""
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


#: Keys that moved to where they belong, old dotted key -> new dotted key. A configuration that
#: still uses one (in a YAML file, a ``RAYMM__*`` variable or ``--set``) is refused with a message
#: naming the new place: silently dropping or remapping it would hide a stale deployment.
MOVED_KEYS: dict[str, str] = {
    # what the model reads is the model's
    "train.modalities": "model.modalities",
    "train.item_id_embeddings": "model.item_id_embeddings",
    # the ablation configures an experiment, not evaluation
    "evaluate.ablation": "ablation.variants",
    **{
        f"evaluate.{key}": f"ablation.{key}"
        for key in ("missing_modality", "missing_rate", "missing_retrain")
    },
    # how the Ray Train run executes, apart from what it optimises
    **{f"train.{key}": f"train.run.{key}" for key in TrainRunConfig.model_fields},
    # each encoder's Ray resources, apart from what it computes
    **{
        f"extract.{modality}.{key}": f"extract.{modality}.resources.{key}"
        for modality in MODALITIES
        for key in EncoderResources.model_fields
    },
}


_ABSENT = object()


def _moved_keys(document: Mapping[str, Any]) -> list[str]:
    """``<old> moved to <new>`` for each key of ``document`` that :data:`MOVED_KEYS` names."""
    found = []
    for old, new in MOVED_KEYS.items():
        node: Any = document
        for part in old.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, Mapping) else _ABSENT
        if node is not _ABSENT:
            found.append(f"{old} moved to {new}")
    return found


#: What ``yaml.safe_load`` raises for text it cannot load: a YAML error, a ValueError from a tag's
#: constructor (``2026-13-45``, ``!!int abc``, more than 4300 digits), or deep nesting.
_YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


#: Keys whose values an error message never shows.
SECRET_KEYS = frozenset({"sasl_plain_password", "api_key"})


def _shown_override(text: str) -> str:
    """``text`` as an error may show it: a secret key's value masked."""
    key, equals, _ = text.partition("=")
    return f"{key}={MASK}" if equals and key.strip().split(".")[-1] in SECRET_KEYS else text


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. --set synth.size=tiny)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except _YAML_ERRORS as exc:
        if parts[-1] in SECRET_KEYS:  # neither the value nor YAML's excerpt of it
            raise ConfigError(f"override {key}: the value is not valid YAML (quote it)") from None
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(document: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b.c=value`` in a copy of ``document``; values are parsed as YAML scalars."""
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(document)) or {}
    for text in overrides:
        parts, value = _parse_override(text)
        _set_key(result, parts, value, f"override {text!r}")
    return result


def _set_key(document: dict[str, Any], parts: list[str], value: Any, what: str) -> None:
    node = document
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"{what}: {prefix} is a value, not a section")
        node = child
    node[parts[-1]] = value


#: Environment variables ``RAYMM__<SECTION>__<KEY>`` override configuration keys.
ENV_PREFIX = "RAYMM__"


def env_overrides(environ: Mapping[str, str] | None = None) -> list[tuple[str, list[str], Any]]:
    """``(variable, key parts, value)`` for each ``RAYMM__SECTION__KEY`` in ``environ`` (default:
    the process environment), sorted by variable.

    Segments are lower-cased (``RAYMM__EXTRACT__TEXT__RESOURCES__NUM_GPUS`` -> ``extract.text.resources.num_gpus``).
    Values are parsed as YAML scalars, as ``--set`` parses them, except for keys that hold text
    (``kafka.sasl_plain_password``, paths, names), which take the value as it is: a generated
    password such as ``0123`` or ``yes`` stays a string. Raises :class:`ConfigError` naming the
    variable when it names no configuration key, or a section instead of a key.
    """
    environ = os.environ if environ is None else environ
    found = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        moved = MOVED_KEYS.get(".".join(parts))
        if moved is not None:
            renamed = ENV_PREFIX + "__".join(moved.upper().split("."))
            raise ConfigError(
                f"environment variable {name}: {'.'.join(parts)} moved to {moved} (set {renamed})"
            )
        annotation, problem = _key_type(parts)
        if problem:
            raise ConfigError(f"environment variable {name}: {problem}")
        raw = environ[name]
        if _holds_text(annotation):
            value: Any = raw
        else:
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except _YAML_ERRORS as exc:
                raise ConfigError(f"environment variable {name}: {raw!r} is not valid YAML ({exc})") from None
        found.append((name, parts, value))
    return found


def _key_type(parts: list[str]) -> tuple[Any, str | None]:
    """The type of the key ``parts`` names, or why it names none. Checking stops at the first key
    that is not a section (a mapping such as ``rank.event_weights`` takes any key below it)."""
    model: type[BaseModel] = RaymmConfig
    for depth, part in enumerate(parts):
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            allowed = sorted(f.alias or name for name, f in model.model_fields.items())
            return None, f"unknown key {'.'.join(parts[: depth + 1])!r}; allowed here: {', '.join(allowed)}"
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return (annotation if depth == len(parts) - 1 else None), None
        model = annotation
    return None, f"{'.'.join(parts)!r} is a section, not a key (name one of its keys)"


def _holds_text(annotation: Any) -> bool:
    """Whether a key of this type holds text (``str``, a secret, optionally None)."""
    options = (
        [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) else [annotation]
    )
    return bool(options) and all(a in (str, SecretStr) for a in options)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = RaymmConfig
    for part in loc[:-1]:
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _redacted(value: Any, key: Any = None) -> Any:
    """``value`` with every secret key's value masked (an error shows a section's whole input)."""
    if key in SECRET_KEYS:
        return MASK
    if isinstance(value, Mapping):
        return {k: _redacted(v, k) for k, v in value.items()}
    return value


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(root)"
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(tuple(item["loc"]))
            lines.append(f"unknown key {key!r}; allowed here: {', '.join(allowed)}")
        else:
            got = _redacted(item.get("input"), next((p for p in item["loc"] if p in SECRET_KEYS), None))
            lines.append(f"{key}: {item['msg']} (got {got!r})")
    return f"invalid configuration ({source}):\n  " + "\n  ".join(lines)


def config_from_dict(document: dict[str, Any], source: str = "<dict>") -> RaymmConfig:
    """Validate a plain mapping into a :class:`RaymmConfig`; :class:`ConfigError` if invalid,
    naming each key that moved (:data:`MOVED_KEYS`) and where it is now."""
    moved = _moved_keys(document)
    if moved:
        raise ConfigError(f"invalid configuration ({source}):\n  " + "\n  ".join(moved))
    try:
        return RaymmConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> RaymmConfig:
    """Load ``path`` (YAML; None for defaults), apply the ``RAYMM__*`` environment variables
    (:func:`env_overrides`; ``environ`` defaults to the process environment), then ``overrides``,
    and validate.

    Raises :class:`ConfigError` for a missing or unreadable file, bad YAML, unknown keys or wrong
    types, naming the key (or the environment variable) and what was expected.
    """
    document: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(file.read_bytes())  # UTF-8, or UTF-16 with a byte-order mark
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None
        except _YAML_ERRORS as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping at the top, got {type(loaded).__name__}"
            )
        document = loaded
    source = "defaults" if path is None else str(path)
    return load_document(document, overrides, source=source, environ=environ)


def load_document(
    document: Mapping[str, Any],
    overrides: list[str] | None = None,
    *,
    source: str = "<document>",
    environ: Mapping[str, str] | None = None,
) -> RaymmConfig:
    """:func:`load_config` for a configuration already read into a mapping (a Serve config's
    inline ``config``): the environment variables, then ``overrides``, then validation."""
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(dict(document))) or {}
    from_env = env_overrides(environ)
    for name, parts, value in from_env:
        _set_key(result, parts, value, f"environment variable {name}")
    if from_env:
        source += " + environment " + " ".join(name for name, _, _ in from_env)
    if overrides:
        result = apply_overrides(result, overrides)
        source += " + --set " + " ".join(map(_shown_override, overrides))
    return config_from_dict(result, source)
