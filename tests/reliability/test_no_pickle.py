"""Model weights are read only from safetensors, never unpickled.

A pickle runs code when it is read, so whoever can write a model directory (or the training
storage) could run code in every serving replica. Two checks: a model directory with a pickle
planted as its weights, or next to them, is refused or ignored by :func:`load_artifact` and the
pickle's code never runs; and no module of ``raymm/`` calls a loader that unpickles (``torch.load``
without ``weights_only=True``, ``pickle``/``dill``/``joblib``/``cloudpickle`` loads,
``np.load(allow_pickle=True)``, ``pandas.read_pickle``, ``marshal``, ``shelve``).
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

import raymm
from raymm.errors import RaymmError
from raymm.models.artifact import load_artifact
from raymm.models.towers import WEIGHTS_FILE
from tests.models.test_artifact import _write

PACKAGE = Path(raymm.__file__).parent


class _Payload:
    """Unpickling it opens ``marker`` for writing: the file exists if and only if it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path, kind: str) -> None:
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"weight": _Payload(marker)}))
    else:  # torch.save's zip format, what a .pt / .bin checkpoint is
        torch.save({"weight": _Payload(marker)}, path)


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_a_pickle_planted_as_the_weights_is_refused_and_never_runs(tmp_path: Path, kind: str) -> None:
    model_dir, marker = tmp_path / "model", tmp_path / "ran"
    _write(model_dir)
    load_artifact(model_dir)  # the artifact as written loads
    _plant(model_dir / WEIGHTS_FILE, marker, kind)
    with pytest.raises(RaymmError, match="safetensors"):
        load_artifact(model_dir)
    assert not marker.exists(), "the planted pickle ran"


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_pickles_beside_the_weights_are_ignored(tmp_path: Path, kind: str) -> None:
    model_dir, marker = tmp_path / "model", tmp_path / "ran"
    model, _, _ = _write(model_dir)
    for name in ("pytorch_model.bin", "model.pt", "weights.pt", "weights.pkl", "model.safetensors.pkl"):
        _plant(model_dir / name, marker, kind)
    loaded = load_artifact(model_dir)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert not marker.exists(), "a planted pickle ran"


# -- the static check ------------------------------------------------------------------------------

#: Calls that unpickle whatever they are given, by their full dotted name.
UNPICKLERS = {
    f"{module}.{function}"
    for module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib")
    for function in ("load", "loads", "Unpickler")
} | {"pandas.read_pickle", "marshal.load", "marshal.loads", "shelve.open", "numpy.lib.format.read_array"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> full dotted name, from the module's imports (``np`` -> ``numpy``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords
    )


def unpickling_calls(source: str, filename: str = "<source>") -> list[str]:
    """Each call in ``source`` that can unpickle, as ``file:line: call``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        unsafe = (
            name in UNPICKLERS
            or (name == "torch.load" and not _keyword_is(node, "weights_only", True))
            or (
                name == "numpy.load"
                and not _keyword_is(node, "allow_pickle", False)
                and any(k.arg == "allow_pickle" for k in node.keywords)
            )
        )
        if unsafe:
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_static_check_finds_every_kind_of_unpickling() -> None:
    source = """
import pickle
import numpy as np
import torch
from torch import load as tload
from joblib import load
torch.load(path)
torch.load(path, weights_only=False)
tload(path, map_location="cpu")
pickle.loads(data)
np.load(path, allow_pickle=True)
load(path)
torch.load(path, weights_only=True)
np.load(path)
np.load(path, allow_pickle=False)
"""
    found = unpickling_calls(source)
    assert [line.split(": ", 1)[1] for line in found] == [
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "tload(path, map_location='cpu')",
        "pickle.loads(data)",
        "np.load(path, allow_pickle=True)",
        "load(path)",
    ]


def test_no_module_of_raymm_unpickles() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    found = [
        call
        for path in files
        for call in unpickling_calls(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    ]
    assert not found, "calls that unpickle:\n" + "\n".join(found)
