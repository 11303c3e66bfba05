"""Amazon Reviews 2023 (McAuley lab): ``<Category>.jsonl`` reviews and ``meta_<Category>.jsonl``.

Both files may be gzip-compressed (``.jsonl.gz``) and are streamed line by line, so multi-GB
categories fit in memory as columns, never as Python objects per row.

* Reviews -> interactions: ``user_id``, item = ``parent_asin`` (``asin`` when absent), ts from
  ``timestamp`` (epoch ms). A review implies a purchase, so rating >= ``like_threshold`` ->
  ``like``, otherwise ``purchase``.
* Metadata -> items keyed by ``parent_asin`` (first record wins): text = title, features and
  description, one per line; image = the first image's ``large`` URL (``hi_res`` if no ``large``),
  kept as a URI string; tags = categories, store and main_category, lower-cased; ``created_at``
  = ``details["Date First Available"]`` when it parses as e.g. ``March 5, 2016``.
  Reviewed items without metadata are still items, with null text.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from typing import Any

import pyarrow as pa

from raymm.data import io
from raymm.data.importers._parsing import (
    epoch_to_timestamp,
    first_row_per_key,
    iter_json_lines,
    list_files,
    source_location,
)
from raymm.data.importers._tables import ImportedTables, collect_tags, interactions_table, rating_events
from raymm.data.schema import TIMESTAMP
from raymm.data.settings import ImportConfig
from raymm.errors import DataError, ImportFormatError

SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.gz")
META_PREFIX = "meta_"
DATE_FIELD = "Date First Available"
# Rows gathered as Python lists before they become pyarrow arrays; bounds per-row object memory.
CHUNK_ROWS = 65_536


def read(config: ImportConfig, progress: bool = False) -> ImportedTables:
    """Read one Amazon Reviews 2023 category (reviews + metadata) into items and interactions."""
    assert config.source is not None
    reviews_uri, meta_uri, category = locate_files(config.source, config.name)
    user_ids, item_ids, ratings, ts = _read_reviews(reviews_uri, progress)
    events = rating_events(ratings, config.like_threshold, below="purchase")
    interactions = interactions_table(user_ids, item_ids, events, epoch_to_timestamp(ts, "ms"))
    return ImportedTables(
        name=category,
        items=_read_meta(meta_uri, progress),
        interactions=interactions,
        details={
            "category": category,
            "files": [posixpath.basename(reviews_uri), posixpath.basename(meta_uri)],
            "events": f"rating >= {config.like_threshold} -> like, otherwise purchase",
        },
    )


def locate_files(source: str, name: str | None) -> tuple[str, str, str]:
    """(reviews uri, metadata uri, category) for a source directory or a reviews/metadata file.

    Raises :class:`DataError` naming the directory when either file is missing or more than one
    category is present without ``import.name``.
    """
    directory, file = source_location(source)
    files = list_files(directory)
    if file is not None:
        stem = _strip_suffix(file)
        if stem is None:
            raise DataError(f"amazon2023: source file must end in {SUFFIXES}, got {source}")
        category = stem.removeprefix(META_PREFIX)
    elif name is not None:
        category = name
    else:
        categories = sorted(
            {s for f in files if (s := _strip_suffix(f)) is not None and not f.startswith(META_PREFIX)}
        )
        if len(categories) != 1:
            raise DataError(
                f"amazon2023: expected one <Category>.jsonl[.gz] reviews file in {directory}, found "
                f"{categories or 'none'}; set import.name to choose the category"
            )
        category = categories[0]
    reviews = _find(files, category)
    meta = _find(files, META_PREFIX + category)
    for found, what in ((reviews, category), (meta, META_PREFIX + category)):
        if found is None:
            raise DataError(f"amazon2023: {what}.jsonl (or .jsonl.gz) not found in {directory}")
    assert reviews is not None and meta is not None
    return io.join(directory, reviews), io.join(directory, meta), category


def _strip_suffix(file: str) -> str | None:
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if file.endswith(suffix):
            return file[: -len(suffix)]
    return None


def _find(files: list[str], stem: str) -> str | None:
    return next((stem + s for s in SUFFIXES if stem + s in files), None)


class _ColumnBuffer:
    """Rows appended as Python values, turned into pyarrow chunks every :data:`CHUNK_ROWS` rows."""

    def __init__(self, types: dict[str, pa.DataType]) -> None:
        self.types = types
        self.rows: dict[str, list[Any]] = {name: [] for name in types}
        self.chunks: dict[str, list[pa.Array]] = {name: [] for name in types}

    def maybe_flush(self) -> None:
        """Convert the gathered rows once there are enough of them."""
        if len(next(iter(self.rows.values()))) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        """Convert every gathered row to pyarrow now."""
        for name, values in self.rows.items():
            self.chunks[name].append(pa.array(values, self.types[name]))
            values.clear()

    def arrays(self) -> dict[str, pa.Array]:
        """All rows so far, one array per column."""
        self.flush()
        return {name: pa.concat_arrays(chunks) for name, chunks in self.chunks.items()}


def _bad_field(uri: str, line: int, key: str, value: Any, expected: str) -> ImportFormatError:
    return ImportFormatError(f"{uri}, line {line}: field {key!r} is {value!r}; expected {expected}")


def _string(document: dict[str, Any], key: str, uri: str, line: int) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value:
        raise _bad_field(uri, line, key, value, "a non-empty string")
    return value


def _number(document: dict[str, Any], key: str, uri: str, line: int) -> float | int:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_field(uri, line, key, value, "a number")
    return value


def _read_reviews(uri: str, progress: bool) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    columns = _ColumnBuffer(
        {"user_id": pa.string(), "item_id": pa.string(), "rating": pa.float64(), "ts": pa.int64()}
    )
    rows = columns.rows
    for line, review in iter_json_lines(uri, progress):
        rows["user_id"].append(_string(review, "user_id", uri, line))
        key = "parent_asin" if review.get("parent_asin") else "asin"
        rows["item_id"].append(_string(review, key, uri, line))
        rows["rating"].append(_number(review, "rating", uri, line))
        rows["ts"].append(int(_number(review, "timestamp", uri, line)))
        columns.maybe_flush()
    arrays = columns.arrays()
    return arrays["user_id"], arrays["item_id"], arrays["rating"], arrays["ts"]


def _strings(value: Any) -> list[str]:
    """A metadata field that should be a list of strings (a lone string is accepted)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [v.strip() for v in value if isinstance(v, str) and v.strip()]


def _first_image(images: Any) -> str | None:
    for image in images if isinstance(images, list) else []:
        if isinstance(image, dict):
            url = image.get("large") or image.get("hi_res")
            if isinstance(url, str) and url:
                return url
    return None


def _first_available(details: Any) -> int | None:
    """Epoch ms of ``details["Date First Available"]`` (``March 5, 2016``), None if absent/unparsable."""
    value = details.get(DATE_FIELD) if isinstance(details, dict) else None
    if not isinstance(value, str):
        return None
    try:
        day = dt.datetime.strptime(value.strip(), "%B %d, %Y").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return int(day.timestamp() * 1000)


def _read_meta(uri: str, progress: bool) -> pa.Table:
    columns = _ColumnBuffer(
        {"item_id": pa.string(), "text": pa.string(), "image": pa.string(), "created_at": pa.int64()}
    )
    tag_columns = _ColumnBuffer({"item_id": pa.string(), "tag": pa.string()})
    rows, tag_rows = columns.rows, tag_columns.rows
    for line, meta in iter_json_lines(uri, progress):
        item_id = _string(meta, "parent_asin", uri, line)
        pieces = [
            *_strings(meta.get("title")),
            *_strings(meta.get("features")),
            *_strings(meta.get("description")),
        ]
        rows["item_id"].append(item_id)
        rows["text"].append("\n".join(pieces) or None)
        rows["image"].append(_first_image(meta.get("images")))
        rows["created_at"].append(_first_available(meta.get("details")))
        tags = [
            *_strings(meta.get("categories")),
            *_strings(meta.get("store")),
            *_strings(meta.get("main_category")),
        ]
        tag_rows["item_id"].extend([item_id] * len(tags))
        tag_rows["tag"].extend(tags)
        columns.maybe_flush()
        tag_columns.maybe_flush()
    arrays = columns.arrays()
    arrays["created_at"] = arrays["created_at"].cast(TIMESTAMP)
    items = first_row_per_key(pa.table(arrays), "item_id")
    tagged = tag_columns.arrays()
    ids = items.column("item_id").combine_chunks()
    return items.append_column("tags", collect_tags(ids, tagged["item_id"], tagged["tag"]))
