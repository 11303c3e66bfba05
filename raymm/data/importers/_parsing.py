"""Reading importers' source files: locating them, delimited text, JSON lines, numbers, timestamps.

Delimited text is parsed by pyarrow's CSV reader (vectorised, every column as a string). When it
finds a problem (a row with the wrong number of fields, a value that is not a number, bytes that
are not valid text) a second, slow pass with Python's :mod:`csv` finds the exact 1-based line, so
every :class:`ImportFormatError` names the file and line while the happy path stays fast.
"""

from __future__ import annotations

import csv
import io as pyio
import json
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from raymm.console import progress as progress_bar
from raymm.data import io
from raymm.data.schema import TIMESTAMP
from raymm.errors import DataError, ImportFormatError

# A byte that never occurs in the text formats we read; multi-character delimiters (MovieLens'
# ``::``) are rewritten to it because pyarrow's CSV reader takes one-character delimiters only.
_UNIT_SEPARATOR = "\x1f"

_INTEGER = r"^[+-]?\d+$"
_FLOAT = r"(?i)^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$"


# --- locating source files ---------------------------------------------------------------------


def source_location(source: str) -> tuple[str, str | None]:
    """Split ``source`` into (directory, file name or None); :class:`DataError` if it is missing."""
    filesystem, path = io.resolve(source)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"import source not found: {source}")
    if info.type == pafs.FileType.Directory:
        return source, None
    return posixpath.dirname(source.rstrip("/")) or ".", posixpath.basename(path)


def list_files(directory: str) -> list[str]:
    """Names of the plain files directly inside ``directory``, sorted."""
    filesystem, path = io.resolve(directory)
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)


def list_dirs(directory: str) -> list[str]:
    """Names of the sub-directories directly inside ``directory``, sorted."""
    filesystem, path = io.resolve(directory)
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory)


def locate_named_file(source: str, suffix: str, name: str | None, what: str) -> tuple[str, str, str]:
    """(directory, uri, name) of the ``<name><suffix>`` file a source names.

    ``source`` is that file itself, or a directory holding ``<name><suffix>`` (``name`` given) or
    exactly one ``*<suffix>`` file. Raises :class:`DataError` naming the directory and the
    candidates when the file is missing, ambiguous (then set ``import.name``) or of another kind.
    """
    directory, file = source_location(source)
    if file is not None:
        if not file.endswith(suffix):
            raise DataError(f"{what}: source file must be a <name>{suffix} file, got {source}")
        name = file.removesuffix(suffix)
    files = list_files(directory)
    if name is not None:
        if f"{name}{suffix}" not in files:
            raise DataError(f"{what}: {name}{suffix} not found in {directory}")
        return directory, io.join(directory, f"{name}{suffix}"), name
    candidates = [f for f in files if f.endswith(suffix)]
    if len(candidates) != 1:
        found = ", ".join(candidates) or "none"
        raise DataError(
            f"{what}: expected exactly one *{suffix} file in {directory} (found: {found}); "
            "set import.name to choose one"
        )
    return directory, io.join(directory, candidates[0]), candidates[0].removesuffix(suffix)


def optional_file(directory: str, name: str) -> str | None:
    """The URI of ``directory/name`` if that file exists, else None."""
    uri = io.join(directory, name)
    return uri if io.exists(uri) else None


def require_file(directory: str, name: str, what: str) -> str:
    """The URI of ``directory/name``; :class:`DataError` naming it when it is missing."""
    uri = io.join(directory, name)
    if not io.exists(uri):
        raise DataError(f"{what}: {name} not found in {directory}")
    return uri


def _open_native(uri: str) -> pa.NativeFile:
    """A pyarrow input stream over ``uri``, decompressed when its name ends in .gz/.bz2/.zst."""
    filesystem, path = io.resolve(uri)
    try:
        return filesystem.open_input_stream(path)
    except FileNotFoundError as exc:
        raise DataError(f"file not found: {uri}") from exc


def _open_binary(uri: str) -> pyio.BufferedReader:
    """A buffered binary stream over ``uri`` (iterates lines), decompressed like :func:`_open_native`."""
    return pyio.BufferedReader(_open_native(uri))


# --- delimited text ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    """How a delimited text file is written: delimiter (may be several characters), quoting, encoding."""

    delimiter: str
    quoted: bool = False
    encoding: str = "utf-8"


TSV = Dialect("\t")
CSV = Dialect(",", quoted=True)


def _decoded_lines(stream: pyio.BufferedReader, uri: str, encoding: str) -> Iterator[str]:
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise ImportFormatError(
                f"{uri}, line {number}: not valid {encoding} text ({exc.reason})"
            ) from exc


def _records(uri: str, dialect: Dialect) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of every non-blank record, parsed the slow, exact way."""
    # Long free-text fields (item descriptions) exceed csv's default 128 KiB field limit; raising
    # the process-wide limit only ever accepts more.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    with _open_binary(uri) as stream:
        lines: Iterator[str] = _decoded_lines(stream, uri, dialect.encoding)
        delimiter = dialect.delimiter
        if len(delimiter) > 1:
            lines = (line.replace(delimiter, _UNIT_SEPARATOR) for line in lines)
            delimiter = _UNIT_SEPARATOR
        if dialect.quoted:
            reader = csv.reader(lines, delimiter=delimiter)
        else:
            reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        previous = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ImportFormatError(f"{uri}, line {reader.line_num}: {exc}") from exc
            start, previous = previous + 1, reader.line_num
            if fields:
                yield start, fields


def read_header(uri: str, dialect: Dialect) -> list[str]:
    """The fields of the first non-blank line; :class:`ImportFormatError` if the file is empty."""
    for _, fields in _records(uri, dialect):
        return [f.strip().lstrip("\ufeff") for f in fields]
    raise ImportFormatError(f"{uri}, line 1: file is empty; expected a header line")


class TextTable:
    """A delimited text file read into strings, able to name the line of any of its rows.

    ``table`` has one string column per field; empty fields are empty strings, never null.
    """

    def __init__(self, uri: str, table: pa.Table, dialect: Dialect, header: bool) -> None:
        self.uri = uri
        self.table = table
        self.dialect = dialect
        self.header = header

    @property
    def num_rows(self) -> int:
        """Number of data rows (header and blank lines excluded)."""
        return int(self.table.num_rows)

    def line_of(self, row: int) -> int | None:
        """The 1-based line on which data row ``row`` (0-based) starts."""
        records = _records(self.uri, self.dialect)
        if self.header:
            next(records, None)
        for index, (line, _) in enumerate(records):
            if index == row:
                return line
        return None

    def error(self, row: int, message: str) -> ImportFormatError:
        """An :class:`ImportFormatError` naming this file and the line of ``row``."""
        line = self.line_of(row)
        where = f"line {line}" if line is not None else f"data row {row + 1}"
        return ImportFormatError(f"{self.uri}, {where}: {message}")

    def require_columns(self, *names: str) -> None:
        """:class:`ImportFormatError` naming line 1 when the header lacks any of ``names``."""
        missing = [n for n in names if n not in self.table.column_names]
        if missing:
            raise ImportFormatError(
                f"{self.uri}, line 1: header lacks column(s) {missing}; found {self.table.column_names}"
            )

    def strings(self, name: str) -> pa.Array:
        """Column ``name`` as one string array (surrounding whitespace kept)."""
        return self.table.column(name).combine_chunks()

    def ints(self, name: str) -> pa.Array:
        """Column ``name`` parsed as int64; :class:`ImportFormatError` naming the first bad line."""
        return self._numbers(name, pa.int64(), _INTEGER, "an integer")

    def floats(self, name: str) -> pa.Array:
        """Column ``name`` parsed as finite float64; :class:`ImportFormatError` naming the first bad line."""
        values = self._numbers(name, pa.float64(), _FLOAT, "a number")
        finite = pc.is_finite(values).to_numpy(zero_copy_only=False)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise self.error(row, f"{name} is {self.strings(name)[row].as_py()!r}; expected a finite number")
        return values

    def _numbers(self, name: str, target: pa.DataType, pattern: str, expected: str) -> pa.Array:
        values = pc.utf8_trim_whitespace(self.strings(name))
        try:
            return values.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            bad = np.flatnonzero(~pc.match_substring_regex(values, pattern).to_numpy(zero_copy_only=False))
            if len(bad) == 0:  # every value looks like a number, so one overflows
                raise ImportFormatError(f"{self.uri}: column {name!r}: {exc}") from exc
            row = int(bad[0])
            raise self.error(row, f"{name} is {values[row].as_py()!r}; expected {expected}") from exc


def read_text_table(
    uri: str, dialect: Dialect, names: Sequence[str] | None = None, *, header: bool = False
) -> TextTable:
    """Read a delimited text file; every field a string column.

    ``names`` gives the column names (and so the expected number of fields per row); with
    ``header=True`` the first line is skipped, and it supplies the names when ``names`` is None.
    Blank lines are skipped. Raises :class:`ImportFormatError` naming the file and 1-based line
    of the first row with a wrong number of fields or bytes that are not valid text.
    """
    if names is None:
        if not header:
            raise ValueError("read_text_table needs column names or a header line")
        names = read_header(uri, dialect)
    names = list(names)
    invalid_rows: list[pacsv.InvalidRow] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        invalid_rows.append(row)
        return "skip"

    delimiter = dialect.delimiter
    source: Any
    if len(delimiter) > 1:
        # The whole file passes through memory once to rewrite the delimiter.
        with _open_binary(uri) as stream:
            raw = stream.read()
        encoded = delimiter.encode(dialect.encoding)
        source = pa.BufferReader(raw.replace(encoded, _UNIT_SEPARATOR.encode(dialect.encoding)))
        delimiter = _UNIT_SEPARATOR
    else:
        source = _open_native(uri)
    read_options = pacsv.ReadOptions(
        column_names=names, skip_rows=1 if header else 0, encoding=dialect.encoding
    )
    parse_options = pacsv.ParseOptions(
        delimiter=delimiter,
        quote_char='"' if dialect.quoted else False,
        newlines_in_values=dialect.quoted,
        ignore_empty_lines=True,
        invalid_row_handler=on_invalid_row,
    )
    convert_options = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pacsv.read_csv(
            source, read_options=read_options, parse_options=parse_options, convert_options=convert_options
        )
    except pa.ArrowInvalid as exc:
        _raise_first_problem(uri, dialect, len(names), header)
        raise ImportFormatError(f"{uri}: cannot be parsed as delimited text: {exc}") from exc
    finally:
        source.close()
    if invalid_rows:
        _raise_first_problem(uri, dialect, len(names), header)
        raise ImportFormatError(f"{uri}: a row has the wrong number of fields: {invalid_rows[0].text!r}")
    return TextTable(uri, table, dialect, header)


def _raise_first_problem(uri: str, dialect: Dialect, n_fields: int, header: bool) -> None:
    """Raise an :class:`ImportFormatError` for the first bad line of ``uri``, if the slow pass finds one."""
    records = _records(uri, dialect)
    if header:
        next(records, None)
    for line, fields in records:
        if len(fields) != n_fields:
            raise ImportFormatError(
                f"{uri}, line {line}: expected {n_fields} fields separated by {dialect.delimiter!r}, "
                f"found {len(fields)}"
            )


# --- JSON lines --------------------------------------------------------------------------------


def iter_json_lines(uri: str, progress: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream (1-based line number, object) from a JSON-lines file (optionally .gz), blank lines skipped.

    Raises :class:`ImportFormatError` naming the file and line of malformed JSON or a line that
    holds something other than an object.
    """
    name = posixpath.basename(uri)
    with _open_binary(uri) as stream:
        lines = progress_bar(stream, desc=name, unit=" lines", enabled=progress)
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                document = json.loads(raw)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                raise ImportFormatError(f"{uri}, line {number}: not valid JSON ({exc})") from exc
            if not isinstance(document, dict):
                raise ImportFormatError(
                    f"{uri}, line {number}: expected a JSON object, found {type(document).__name__}"
                )
            yield number, document


# --- numbers ------------------------------------------------------------------------------------


def epoch_to_timestamp(values: pa.Array, unit: str) -> pa.Array:
    """Epoch numbers in ``unit`` ("s" or "ms"; int or float) as timestamp[ms, UTC].

    Fractions of a millisecond are rounded to the nearest millisecond.
    """
    if unit not in ("s", "ms"):
        raise ValueError(f"unit must be 's' or 'ms', got {unit!r}")
    scale = 1000 if unit == "s" else 1
    if pa.types.is_integer(values.type):
        millis = pc.multiply_checked(values.cast(pa.int64()), scale)
    else:
        millis = pc.round(pc.multiply(values.cast(pa.float64()), float(scale))).cast(pa.int64())
    return millis.cast(TIMESTAMP)


def file_order_timestamps(n: int) -> pa.Array:
    """Synthetic, strictly increasing timestamps 1 ms apart from the epoch, for sources without time."""
    return pa.array(np.arange(n, dtype=np.int64)).cast(TIMESTAMP)


def first_row_per_key(table: pa.Table, key: str) -> pa.Table:
    """``table`` with only the first row of each distinct ``key``, in first-seen order."""
    if table.num_rows == 0:
        return table
    codes = pc.dictionary_encode(table.column(key).combine_chunks()).indices.to_numpy(zero_copy_only=False)
    _, first = np.unique(codes, return_index=True)
    if len(first) == table.num_rows:
        return table
    return table.take(pa.array(np.sort(first)))
