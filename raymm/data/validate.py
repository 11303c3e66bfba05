"""Validation of a dataset directory that reports every problem with its file and row.

Unlike the readers, which stop at the first contract violation, :func:`validate_dataset` keeps
going and returns a :class:`ValidationReport` listing each problem (duplicate item ids,
interactions naming unknown items, bad timestamps, undecodable media, ...). Rows are 0-based
positions in the parquet file.
"""

from __future__ import annotations

import io as _io
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymm.console import progress as progress_bar
from raymm.data import io
from raymm.data.dataset import INTERACTION_FILES, ITEMS, MANIFEST, SPLITS
from raymm.data.schema import (
    EVENT_KINDS,
    ITEMS_SCHEMA,
    REQUIRED_INTERACTION_COLUMNS,
    REQUIRED_ITEM_COLUMNS,
)
from raymm.data.settings import ValidateConfig
from raymm.errors import DataError

# Timestamps outside this window are almost surely unit mistakes (seconds read as ms, etc.).
_MIN_TS_MS = 631_152_000_000  # 1990-01-01
_MAX_TS_MS = 4_102_444_800_000  # 2100-01-01


@dataclass(frozen=True)
class Problem:
    """One finding: which file, which rows (0-based), what is wrong."""

    file: str
    check: str
    message: str
    rows: tuple[int, ...] = ()
    count: int = 0

    def __str__(self) -> str:
        where = ""
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows)
            more = f" (+{self.count - len(self.rows)} more)" if self.count > len(self.rows) else ""
            where = f" at row{'s' if self.count > 1 else ''} {shown}{more}"
        return f"{self.file}: {self.message}{where}"


@dataclass
class ValidationReport:
    """All problems found, plus counts of what was checked."""

    path: str
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


class _Collector:
    def __init__(self, report: ValidationReport, max_rows: int) -> None:
        self.report = report
        self.max_rows = max_rows

    def add(self, file: str, check: str, message: str, rows: Iterable[int] | np.ndarray = ()) -> None:
        row_list = [int(r) for r in rows]
        self.report.problems.append(
            Problem(file, check, message, tuple(row_list[: self.max_rows]), len(row_list))
        )

    def add_mask(self, file: str, check: str, message: str, mask: pa.Array | np.ndarray) -> None:
        rows = np.flatnonzero(np.asarray(mask, dtype=bool))
        if rows.size:
            self.add(file, check, message, rows)


def _mask(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean numpy mask from a pyarrow boolean array, nulls as False."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _decode_image(data: bytes) -> None:
    from PIL import Image

    with Image.open(_io.BytesIO(data)) as image:
        image.verify()


def _decode_audio(data: bytes) -> None:
    import soundfile

    info = soundfile.info(_io.BytesIO(data))
    if info.frames <= 0:
        raise ValueError("no audio frames")


_DECODERS = {"image": _decode_image, "audio": _decode_audio}


def _check_media(
    items: pa.Table, column: str, collect: _Collector, counts: dict[str, int], progress: bool
) -> None:
    values = items.column(column)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        counts[f"{column}_uris"] = values.length() - values.null_count
        return  # URIs are resolved by extraction; fetching them here would be slow and remote.
    decode = _DECODERS[column]
    failures: dict[str, list[int]] = {}
    for row, value in enumerate(progress_bar(values.to_pylist(), desc=f"decode {column}", enabled=progress)):
        if value is None:
            continue
        try:
            if not value:
                raise ValueError("empty bytes (a missing modality must be null)")
            decode(value)
        except Exception as exc:
            failures.setdefault(f"{type(exc).__name__}: {exc}"[:120], []).append(row)
    for reason, rows in failures.items():
        collect.add(ITEMS, f"{column}_decode", f"{column} does not decode ({reason})", rows)
    counts[f"{column}_failed"] = sum(len(r) for r in failures.values())


def _check_items(items: pa.Table, collect: _Collector, cfg: ValidateConfig, progress: bool) -> set[str]:
    counts = collect.report.counts
    counts["items"] = items.num_rows
    missing = [c for c in REQUIRED_ITEM_COLUMNS if c not in items.column_names]
    if missing:
        collect.add(ITEMS, "schema", f"missing required column(s) {missing}")
        return set()
    for name in items.column_names:
        index = ITEMS_SCHEMA.get_field_index(name)
        if index == -1:
            continue
        expected = ITEMS_SCHEMA.field(index).type
        actual = items.schema.field(name).type
        media_ok = name in _DECODERS and (pa.types.is_binary(actual) or pa.types.is_string(actual))
        if actual != expected and not media_ok and not pa.types.is_null(actual):
            collect.add(ITEMS, "schema", f"column {name!r} has type {actual}, expected {expected}")
    ids = items.column("item_id").cast(pa.string())
    collect.add_mask(ITEMS, "item_id_null", "item_id is null", _mask(pc.is_null(ids)))
    id_array = np.asarray(ids.to_pylist(), dtype=object)
    valid = np.flatnonzero(~_mask(pc.is_null(ids)))
    unique_ids, first_rows = np.unique(id_array[valid].astype(str), return_index=True)
    duplicate_rows = np.setdiff1d(valid, valid[first_rows])
    if duplicate_rows.size:
        examples = sorted({str(id_array[r]) for r in duplicate_rows[:50]})[:5]
        collect.add(ITEMS, "duplicate_item_id", f"duplicate item_id (e.g. {examples})", duplicate_rows)
    if "text" in items.column_names and pa.types.is_string(items.schema.field("text").type):
        blank = pc.equal(pc.utf8_trim_whitespace(items.column("text")), "")
        collect.add_mask(ITEMS, "empty_text", "text is empty (a missing modality must be null)", _mask(blank))
    if "created_at" in items.column_names and pa.types.is_timestamp(items.schema.field("created_at").type):
        _check_timestamps(ITEMS, items.column("created_at"), collect, allow_null=True)
    if cfg.decode_media:
        for column in _DECODERS:
            if column in items.column_names:
                _check_media(items, column, collect, counts, progress)
    return set(unique_ids.tolist())


def _check_timestamps(file: str, ts: pa.ChunkedArray, collect: _Collector, allow_null: bool) -> None:
    if not allow_null:
        collect.add_mask(file, "ts_null", "timestamp is null", _mask(pc.is_null(ts)))
    millis = ts.cast(pa.timestamp("ms", tz=getattr(ts.type, "tz", None))).cast(pa.int64())
    out_of_range = pc.or_(pc.less(millis, _MIN_TS_MS), pc.greater(millis, _MAX_TS_MS))
    collect.add_mask(file, "ts_range", "timestamp outside 1990..2100 (wrong unit?)", _mask(out_of_range))


def _check_interactions(
    file: str, table: pa.Table, known_items: set[str] | None, collect: _Collector
) -> None:
    collect.report.counts[file.removesuffix(".parquet")] = table.num_rows
    missing = [c for c in REQUIRED_INTERACTION_COLUMNS if c not in table.column_names]
    if missing:
        collect.add(file, "schema", f"missing required column(s) {missing}; found {table.column_names}")
        return
    for column in ("user_id", "item_id", "event"):
        collect.add_mask(file, f"{column}_null", f"{column} is null", _mask(pc.is_null(table.column(column))))
    events = table.column("event").cast(pa.string())
    unknown_event = pc.invert(pc.is_in(events, value_set=pa.array(EVENT_KINDS)))
    bad_kinds = sorted(set(pc.filter(events, pc.fill_null(unknown_event, False)).to_pylist()) - {None})
    collect.add_mask(
        file,
        "unknown_event",
        f"unknown event kind(s) {bad_kinds[:5]}; expected one of {list(EVENT_KINDS)}",
        _mask(pc.and_(unknown_event, pc.is_valid(events))),
    )
    ts = table.column("ts")
    if not pa.types.is_timestamp(ts.type):
        collect.add(file, "schema", f"column 'ts' has type {ts.type}, expected timestamp[ms, UTC]")
    else:
        _check_timestamps(file, ts, collect, allow_null=False)
    if known_items is not None:
        ids = table.column("item_id").cast(pa.string())
        unknown = pc.invert(pc.is_in(ids, value_set=pa.array(sorted(known_items), pa.string())))
        examples = sorted(set(pc.filter(ids, pc.fill_null(unknown, False)).to_pylist()) - {None})[:5]
        collect.add_mask(
            file,
            "unknown_item",
            f"item_id not in items.parquet (e.g. {examples})",
            _mask(pc.and_(unknown, pc.is_valid(ids))),
        )
    if "event_id" in table.column_names:
        event_ids = table.column("event_id").cast(pa.string())
        counts = pc.value_counts(pc.drop_null(event_ids))
        repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        if len(repeated):
            collect.add_mask(
                file,
                "duplicate_event_id",
                f"duplicate event_id (e.g. {repeated.to_pylist()[:5]})",
                _mask(pc.is_in(event_ids, value_set=repeated)),
            )


def _read_or_report(uri: str, file: str, collect: _Collector) -> pa.Table | None:
    try:
        return io.read_table(uri, file)
    except DataError as exc:
        collect.add(file, "unreadable", str(exc))
        return None


def _check_split_order(tables: dict[str, pa.Table], collect: _Collector) -> None:
    bounds = []
    for split in SPLITS:
        table = tables.get(split)
        if table is None or table.num_rows == 0 or "ts" not in table.column_names:
            continue
        if not pa.types.is_timestamp(table.schema.field("ts").type):
            continue
        bounds.append((split, pc.min(table.column("ts")).value, pc.max(table.column("ts")).value))
    for (a, _, a_max), (b, b_min, _) in itertools.pairwise(bounds):
        if a_max is not None and b_min is not None and a_max > b_min:
            collect.add(f"{b}.parquet", "split_order", f"{b} starts before {a} ends (not a time split)")


def validate_dataset(
    path: str, config: ValidateConfig | None = None, progress: bool = True
) -> ValidationReport:
    """Check every file of the dataset directory ``path`` and return all problems found.

    Never raises for bad data (that is what the report is for); raises :class:`DataError` only if
    ``path`` itself does not exist.
    """
    cfg = config or ValidateConfig()
    if not io.exists(path):
        raise DataError(f"dataset directory not found: {path}")
    report = ValidationReport(path=path)
    collect = _Collector(report, cfg.max_problems)
    files = [ITEMS, *(f"{name}.parquet" for name in SPLITS)]
    manifest_uri = io.join(path, MANIFEST)
    if io.exists(manifest_uri):
        try:
            manifest = io.read_json(manifest_uri, "dataset manifest")
            files = list(dict.fromkeys([*files, *manifest.get("files", [])]))
        except DataError as exc:
            collect.add(MANIFEST, "manifest", str(exc))
    else:
        collect.add(MANIFEST, "manifest", f"{MANIFEST} is missing (not written by raymm?)")
    known_items: set[str] | None = None
    items = _read_or_report(io.join(path, ITEMS), ITEMS, collect)
    if items is not None:
        known_items = _check_items(items, collect, cfg, progress)
    interaction_tables: dict[str, pa.Table] = {}
    for file in files:
        stem = file.removesuffix(".parquet")
        if stem not in INTERACTION_FILES:
            continue
        uri = io.join(path, file)
        if not io.exists(uri):
            if stem in SPLITS:
                collect.add(file, "missing_file", "required split file is missing")
            continue
        table = _read_or_report(uri, file, collect)
        if table is not None:
            _check_interactions(file, table, known_items, collect)
            interaction_tables[stem] = table
    _check_split_order(interaction_tables, collect)
    _check_cold_items(path, interaction_tables, collect)
    return report


def _check_cold_items(path: str, tables: dict[str, pa.Table], collect: _Collector) -> None:
    uri = io.join(path, "cold_items.parquet")
    if not io.exists(uri):
        return
    cold = _read_or_report(uri, "cold_items.parquet", collect)
    if cold is None or "item_id" not in cold.column_names:
        return
    train = tables.get("train")
    if train is None or "item_id" not in train.column_names:
        return
    cold_ids = cold.column("item_id").cast(pa.string()).combine_chunks()
    leaked = pc.is_in(train.column("item_id").cast(pa.string()), value_set=cold_ids)
    collect.add_mask("train.parquet", "cold_leak", "a cold-start item appears in training", _mask(leaked))
