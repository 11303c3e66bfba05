"""Hostile configuration (hypothesis): any override string, environment variable, YAML file or
document gives a :class:`RaymmConfig` or a :class:`ConfigError` that names what was wrong, never a
traceback from inside YAML or pydantic.

The ``@example`` rows are the inputs these tests found, each fixed in ``raymm/config.py``.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from raymm.config import RaymmConfig, config_from_dict, load_config, load_document
from raymm.errors import ConfigError


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of ``model`` that holds a value (sections walked, aliases used)."""
    keys = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _leaf_keys(annotation, key + ".")
        else:
            keys.append(key)
    return keys


KEYS = _leaf_keys(RaymmConfig)
DEFAULTS: dict[str, Any] = RaymmConfig().model_dump(mode="json", by_alias=True)

# YAML texts a hand-written test would not think of: unclosed brackets, tags (a python/ tag is
# refused by safe_load), aliases, a self-referencing anchor, NaN, huge numbers, impossible dates,
# deep nesting, binary, sets and merge keys.
_YAML = st.sampled_from(
    [
        "",
        "~",
        "[1, 2",
        "{a: 1}",
        "'unterminated",
        "!!python/object/apply:os.system ['true']",
        "&a [*a]",
        "*a",
        ".nan",
        "-.inf",
        "1e999",
        "0x1F",
        "0o17",
        "1_000",
        "9" * 5000,
        "2026-13-45",
        "2026-01-01",
        "!!timestamp 2026-13-45",
        "!!int abc",
        "!!float abc",
        "!!binary aGVsbG8=",
        "!!binary ***",
        "!!set {a, b}",
        "{<<: {a: 1}}",
        "{<<: 1}",
        "[" * 600 + "]" * 600,
        "{a: " * 600 + "1" + "}" * 600,
        "yes",
        "\x00",
        "\t",
        "- a\n- b",
        "a: b\n c",
        "? [a]\n: b",
    ]
)
_VALUES = _YAML | st.text(max_size=30) | st.integers().map(str) | st.floats().map(repr)


def _refused_clearly(error: ConfigError, *names: str) -> None:
    message = str(error)
    assert message.strip(), "a ConfigError without a message"
    for name in names:
        assert name in message, (name, message)


def _load(*args: Any, names: tuple[str, ...] = (), **kwargs: Any) -> RaymmConfig | None:
    """``load_config(*args, **kwargs)``: the config, or None for a clear :class:`ConfigError`; any
    other exception fails the test."""
    try:
        config = load_config(*args, **kwargs)
    except ConfigError as error:
        _refused_clearly(error, *names)
        return None
    assert isinstance(config, RaymmConfig)
    return config


@settings(max_examples=300, deadline=None)
@given(overrides=st.lists(st.text(max_size=40), max_size=3))
def test_arbitrary_override_strings_load_or_are_refused_clearly(overrides: list[str]) -> None:
    _load(None, overrides, environ={})


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS), value=_VALUES)
@example(key="seed", value="[" * 600 + "]" * 600)  # safe_load raised RecursionError
@example(key="seed", value="2026-13-45")  # safe_load raised the date constructor's ValueError
@example(key="seed", value="!!int abc")  # ValueError
@example(key="seed", value="9" * 5000)  # ValueError: more than 4300 digits
def test_an_override_of_a_real_key_loads_or_names_the_key(key: str, value: str) -> None:
    config = _load(None, [f"{key}={value}"], names=(key,), environ={})
    if config is not None:
        assert config.to_yaml()  # what it accepts, it can also print (--dry-run)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(KEYS), value=_VALUES)
@example(key="seed", value="!!timestamp 2026-13-45")  # safe_load raised ValueError
def test_an_environment_variable_loads_or_names_the_variable(key: str, value: str) -> None:
    variable = "RAYMM__" + key.upper().replace(".", "__")
    _load(None, environ={variable: value}, names=(variable,))


@settings(max_examples=100, deadline=None)
@given(variable=st.text("ABCXYZ_", max_size=20), value=st.text(max_size=10))
def test_an_unknown_environment_variable_is_named(variable: str, value: str) -> None:
    _load(None, environ={"RAYMM__" + variable: value}, names=("RAYMM__" + variable,))


_JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def _mutated(draw: st.DrawFn, sparse: bool) -> dict[str, Any]:
    """The default configuration with a few keys set to hostile values, removed or added; with
    ``sparse``, only those keys, as a config file names them (and YAML reads and writes it fast)."""
    document = {} if sparse else copy.deepcopy(DEFAULTS)
    for _ in range(draw(st.integers(1, 4))):
        parts = draw(st.sampled_from(KEYS)).split(".")
        if draw(st.integers(0, 4)) == 0:
            parts[-1] = draw(st.text(max_size=8))  # an unknown key, or a key that is no identifier
        node = document
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            if draw(st.integers(0, 5)) == 0:
                node.pop(parts[-1], None)
            else:
                node[parts[-1]] = draw(_JSON_LIKE)
    if draw(st.integers(0, 5)) == 0:
        document[draw(st.sampled_from([*DEFAULTS]))] = draw(_JSON_LIKE)  # a section that is a value
    return document


@settings(max_examples=300, deadline=None)
@given(
    document=_mutated(sparse=False)
    | _mutated(sparse=True)
    | st.dictionaries(st.text(max_size=8), _JSON_LIKE, max_size=4)
)
def test_a_hostile_document_validates_or_is_refused_clearly(document: dict[str, Any]) -> None:
    # load_document copies the document through YAML (~0.1 s for a whole one): sparse ones only.
    small = len(str(document)) < 1000
    for load in (config_from_dict, load_document) if small else (config_from_dict,):
        try:
            config = load(document, source="hostile")
        except ConfigError as error:
            _refused_clearly(error, "hostile")
        else:
            assert isinstance(config, RaymmConfig)


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(max_size=200) | _YAML | _mutated(sparse=True).map(yaml.safe_dump),
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
)
# read_text raised UnicodeDecodeError on both; YAML reads UTF-16 when it starts with its byte-order mark.
@example(text="seed: 1\n", encoding="utf-16")
@example(text="seed: 1\nout: \udc80\n", encoding="utf-8")
def test_a_hostile_yaml_file_loads_or_names_the_file(text: str, encoding: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "hostile.yaml"
        path.write_bytes(text.encode(encoding, "surrogateescape" if encoding == "utf-8" else "replace"))
        config = _load(path, names=(str(path),), environ={})
        if text == "seed: 1\n":
            assert config is not None and config.seed == 1
