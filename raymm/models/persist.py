"""The one persistence layer of the model stage, on :mod:`raymm.data.io` (local paths or any URI).

Every saved model part is a JSON document naming its ``format`` and ``format_version`` (checked
by :func:`read_document` before anything else is read) beside weights in safetensors
(:func:`write_weights` / :func:`load_weights`). :mod:`raymm.models.artifact`,
:class:`~raymm.models.towers.TwoTower` and :class:`~raymm.models.ranker.Ranker` read and write
through these functions only, so a directory given as ``s3://bucket/model`` works like a local one.
Errors are :class:`ModelLoadError` naming the file.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor, nn

import raymm
from raymm.data import io
from raymm.errors import DataError
from raymm.models.errors import ModelLoadError

#: A directory as callers pass it: a URI ``str`` or a local :class:`~pathlib.Path`, returned as given.
Directory = TypeVar("Directory", str, Path)


def as_uri(directory: str | os.PathLike[str]) -> str:
    """``directory`` as the ``str`` :mod:`raymm.data.io` takes (a ``Path`` is only for local paths)."""
    return os.fspath(directory)


def _versions(versions: range) -> str:
    if len(versions) == 1:
        return f"version {versions[0]}"
    return f"versions {versions[0]} to {versions[-1]}"


def read_document(
    uri: str, *, expected_format: str, versions: range, what: str, missing: str
) -> dict[str, Any]:
    """Read the JSON object at ``uri`` and check its ``format`` and ``format_version``.

    ``versions`` are the format versions this code reads; ``what`` names the document in errors
    (``"ranker"``) and ``missing`` says what a missing file means. Raises :class:`ModelLoadError`
    naming ``uri`` if the file is missing, not JSON, not an object, of another format (found and
    expected named) or of a version outside ``versions`` (found and readable named). Other keys
    are returned unchecked: validating them is the caller's job.
    """
    if not io.exists(uri):
        raise ModelLoadError(f"{posixpath.dirname(uri)}: no {posixpath.basename(uri)}; {missing}")
    try:
        document = io.read_json(uri, what)
    except DataError as exc:
        raise ModelLoadError(f"{uri}: cannot read it as JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ModelLoadError(f"{uri}: expected a JSON object, got {type(document).__name__}")
    found = document.get("format")
    if found != expected_format:
        raise ModelLoadError(f"{uri}: format {found!r}, expected {expected_format!r} ({what})")
    version = document.get("format_version")
    if isinstance(version, bool) or version not in versions:
        raise ModelLoadError(
            f"{uri}: {what} format version {version!r} is not supported by raymm {raymm.__version__}, "
            f"which reads {expected_format!r} {_versions(versions)}"
        )
    return document


def write_weights(module: nn.Module, uri: str, metadata: dict[str, str]) -> None:
    """Write ``module``'s state dict (parameters and buffers) to ``uri`` as safetensors."""
    io.write_tensors(module.state_dict(), uri, metadata)


def read_tensors(uri: str, what: str) -> dict[str, Tensor]:
    """CPU tensors of the safetensors file ``uri``; :class:`ModelLoadError` if missing or unreadable."""
    if not io.exists(uri):
        raise ModelLoadError(f"{posixpath.dirname(uri)}: no {posixpath.basename(uri)} ({what})")
    try:
        return io.read_tensors(uri, what)
    except DataError as exc:
        raise ModelLoadError(f"{uri}: cannot read the tensors: {exc}") from None


def load_weights(module: nn.Module, uri: str, what: str) -> None:
    """Load the safetensors file ``uri`` into ``module`` (strict: every name and shape must match).

    Raises :class:`ModelLoadError` naming ``uri`` if the file is missing or unreadable, or its
    tensors do not fit ``module`` (the saved config and weights disagree).
    """
    state = read_tensors(uri, what)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{uri}: weights do not fit the saved config: {exc}") from None
