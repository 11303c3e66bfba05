"""Parquet, JSON, bytes and tensor I/O on local paths or any pyarrow filesystem URI (``s3://``, ...).

Writes go to a temporary name first and are renamed into place where the filesystem allows, so a
crash never leaves a half-written file under the final name. On object stores (S3) the "rename" is
a copy and a delete, but a reader still never sees a partly uploaded object under the final name.

URIs are plain ``str``: ``pathlib.Path("s3://bucket/x")`` collapses the ``//`` into ``s3:/bucket/x``,
which :func:`resolve` refuses instead of treating it as a local folder named ``s3:``.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymm.errors import DataError

if TYPE_CHECKING:
    from torch import Tensor

# A scheme followed by a single slash ("s3:/bucket/key"): a URI that went through pathlib.Path.
_MANGLED_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Split ``uri`` into a pyarrow filesystem and a path on it; plain paths are local.

    S3 URIs follow the AWS environment (``AWS_ENDPOINT_URL``, ``AWS_REGION``, credentials).
    Raises :class:`DataError` for a scheme pyarrow cannot open, or a URI with one slash after its
    scheme (``s3:/bucket``, what ``pathlib.Path`` makes of ``s3://bucket``): writing that as a local
    path would silently put the data in a folder named ``s3:``.
    """
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError) as exc:
        if _MANGLED_URI.match(uri):
            raise DataError(
                f"{uri!r} looks like a URI but cannot be opened ({exc}); a URI passed through "
                f"pathlib.Path loses a slash (s3:/ for s3://), pass URIs as str"
            ) from None
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return filesystem, path


def absolute(uri: str) -> str:
    """``uri`` with a local relative path made absolute (Ray workers run in other directories)."""
    if "://" in uri:
        return uri
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


def read_schema(uri: str, what: str = "parquet file") -> pa.Schema:
    """The Arrow schema of one parquet file, from its footer; :class:`DataError` as :func:`read_table`."""
    filesystem, path = _require_file(uri, what)
    try:
        with filesystem.open_input_file(path) as handle:
            return pq.read_schema(handle)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{what} {uri} is not a readable parquet file: {exc}") from exc


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


def write_json(document: Any, uri: str, sort_keys: bool = True) -> None:
    """Write ``document`` as indented JSON, keys sorted unless ``sort_keys`` is False (when the
    order of a mapping means something); stable bytes for stable input."""
    write_bytes((json.dumps(document, indent=2, sort_keys=sort_keys) + "\n").encode(), uri)


def read_bytes(uri: str, what: str = "file") -> bytes:
    """Read a whole file's bytes (media referenced by URI, source files of importers)."""
    filesystem, path = _require_file(uri, what)
    with filesystem.open_input_stream(path) as stream:
        return bytes(stream.read())


def list_dir(uri: str) -> list[str]:
    """Sorted names (not paths) of the files and directories directly under directory ``uri``.

    Raises :class:`DataError` if ``uri`` does not exist or is a file.
    """
    filesystem, path = resolve(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"directory not found: {uri}")
    if info.type != pafs.FileType.Directory:
        raise DataError(f"{uri} is a file, expected a directory")
    entries = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(posixpath.basename(entry.path.rstrip("/")) for entry in entries)


def remove(uri: str) -> bool:
    """Delete the file or the whole directory tree at ``uri``; False if there was nothing there.

    On S3 a "directory" is a key prefix: every object under it is deleted.
    """
    filesystem, path = resolve(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return False
    if info.type == pafs.FileType.Directory:
        filesystem.delete_dir(path)
    else:
        filesystem.delete_file(path)
    return True


def write_tensors(tensors: Mapping[str, Tensor], uri: str, metadata: Mapping[str, str] | None = None) -> None:
    """Write named tensors as one safetensors file (atomically, see :func:`write_bytes`).

    Tensors are moved to the CPU and made contiguous; ``metadata`` goes into the file's header.
    Tensors that share memory (tied weights) must be passed once: safetensors refuses aliases.
    """
    from safetensors.torch import save

    plain = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    write_bytes(save(plain, metadata=dict(metadata) if metadata is not None else None), uri)


def read_tensors(uri: str, what: str = "safetensors file") -> dict[str, Tensor]:
    """Read a safetensors file written by :func:`write_tensors` into CPU tensors.

    The whole file is read into memory (object stores have no mmap). Raises :class:`DataError`
    naming ``what`` and ``uri`` if the file is missing or not safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = read_bytes(uri, what)
    try:
        return load(data)
    except SafetensorError as exc:
        raise DataError(f"{what} {uri} is not a readable safetensors file: {exc}") from None
