"""Parquet and JSON I/O on local paths or any pyarrow filesystem URI (``s3://``, ``gs://``, ...).

Writes go to a temporary name first and are renamed into place where the filesystem allows, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymm.errors import DataError


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Split ``uri`` into a pyarrow filesystem and a path on it; plain paths are local."""
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):
        import os

        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return filesystem, path


def absolute(uri: str) -> str:
    """``uri`` with a local relative path made absolute (Ray workers run in other directories)."""
    if "://" in uri:
        return uri
    import os

    return os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    """Join path segments onto a path or URI (keeps the scheme)."""
    return posixpath.join(base.rstrip("/") if base != "/" else base, *parts)


def exists(uri: str) -> bool:
    """True if ``uri`` names an existing file or directory."""
    filesystem, path = resolve(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    """Create directory ``uri`` and its parents if needed."""
    filesystem, path = resolve(uri)
    filesystem.create_dir(path, recursive=True)


def _require_file(uri: str, what: str) -> tuple[pafs.FileSystem, str]:
    filesystem, path = resolve(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{what} not found: {uri}")
    if info.type == pafs.FileType.Directory and not path.endswith(".parquet"):
        raise DataError(f"{what} is a directory, expected a file: {uri}")
    return filesystem, path


def read_table(uri: str, what: str = "parquet file", columns: list[str] | None = None) -> pa.Table:
    """Read one parquet file; :class:`DataError` if it is missing or not parquet."""
    filesystem, path = _require_file(uri, what)
    try:
        return pq.read_table(path, filesystem=filesystem, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{what} {uri} is not a readable parquet file: {exc}") from exc


def write_table(table: pa.Table, uri: str, row_group_size: int | None = None) -> None:
    """Write ``table`` to ``uri`` as parquet, atomically where the filesystem supports rename.

    Output is deterministic for the same table and pyarrow version (no timestamps written).
    """
    filesystem, path = resolve(uri)
    parent = posixpath.dirname(path)
    if parent:
        filesystem.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    pq.write_table(table, tmp, filesystem=filesystem, row_group_size=row_group_size, compression="zstd")
    filesystem.move(tmp, path)


def read_json(uri: str, what: str = "JSON file") -> Any:
    """Read a JSON document; :class:`DataError` if missing or malformed."""
    filesystem, path = _require_file(uri, what)
    with filesystem.open_input_stream(path) as stream:
        raw = stream.read()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {uri} is not valid JSON: {exc}") from exc


def write_bytes(data: bytes, uri: str) -> None:
    """Write ``data`` to ``uri`` via a temporary name and a rename (no half-written file)."""
    filesystem, path = resolve(uri)
    parent = posixpath.dirname(path)
    if parent:
        filesystem.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with filesystem.open_output_stream(tmp) as stream:
        stream.write(data)
    filesystem.move(tmp, path)


def write_json(document: Any, uri: str) -> None:
    """Write ``document`` as indented, key-sorted JSON (stable bytes for stable input)."""
    write_bytes((json.dumps(document, indent=2, sort_keys=True) + "\n").encode(), uri)


def read_bytes(uri: str, what: str = "file") -> bytes:
    """Read a whole file's bytes (media referenced by URI, source files of importers)."""
    filesystem, path = _require_file(uri, what)
    with filesystem.open_input_stream(path) as stream:
        return bytes(stream.read())
