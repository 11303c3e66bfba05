"""Building raymm's items and interactions from what an importer read: events, text, tags.

Everything here is vectorised over pyarrow/numpy arrays; importers hand over whole columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymm.data.importers._parsing import TextTable, epoch_to_timestamp, file_order_timestamps
from raymm.data.schema import TIMESTAMP


@dataclass
class ImportedTables:
    """What one importer read, before the shared split-and-write step.

    ``interactions`` is split by time unless the source carries its own split in ``splits``
    (train/validation/test), named by ``split_column``. ``extra_tables`` go to the dataset as optional tables (``features``);
    ``details`` are recorded under ``source`` in the manifest. ``warnings`` name what the importer
    read but could not take as given (a file it does not know, a missing column it made up for);
    they go to the manifest's ``warnings`` and the console.
    """

    name: str
    items: pa.Table
    interactions: pa.Table | None = None
    splits: dict[str, pa.Table] | None = None
    split_column: str | None = None
    extra_tables: dict[str, pa.Table] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def rating_events(ratings: pa.Array, like_threshold: float, below: str) -> pa.Array:
    """``"like"`` where rating >= ``like_threshold``, else ``below`` (a missing rating counts as below)."""
    liked = pc.fill_null(pc.greater_equal(ratings, like_threshold), False)
    return pc.if_else(liked, pa.scalar("like"), pa.scalar(below))


@dataclass
class EventsAndTime:
    """What :func:`optional_rating_and_time` made of a table: the event and ts columns, how, and warnings."""

    events: pa.Array | str
    ts: pa.Array
    notes: dict[str, str]
    warnings: list[str]


def optional_rating_and_time(
    table: TextTable,
    like_threshold: float,
    rating: str = "rating",
    timestamp: str = "timestamp",
    split_by_time: bool = True,
) -> EventsAndTime:
    """Events, ts, manifest notes and warnings from optional rating and epoch-seconds timestamp columns.

    Without ratings every row is a ``view``; without timestamps rows keep file order through
    synthetic timestamps 1 ms apart from the epoch. The notes say which applied, and a missing
    timestamp column is also a warning naming the file: file order then decides each user's
    recency and, with ``split_by_time`` (the source has no split of its own), the split.
    """
    columns = table.table.column_names
    warnings: list[str] = []
    if timestamp in columns:
        ts = epoch_to_timestamp(table.floats(timestamp), "s")
        notes = {"timestamps": "source (epoch seconds)"}
    else:
        ts = file_order_timestamps(table.num_rows)
        notes = {"timestamps": f"synthetic: file order, 1 ms apart from the epoch (no {timestamp} column)"}
        follows = "the temporal split and recency follow" if split_by_time else "recency follows"
        warnings.append(
            f"no {timestamp} column in {table.uri}: file order is used as time, so {follows} file order"
        )
    events: pa.Array | str
    if rating in columns:
        events = rating_events(table.floats(rating), like_threshold, below="view")
        notes["events"] = f"{rating} >= {like_threshold} -> like, otherwise view"
    else:
        events = "view"
        notes["events"] = f"view (no {rating} column)"
    return EventsAndTime(events, ts, notes, warnings)


def interactions_table(
    user_ids: pa.Array, item_ids: pa.Array, events: pa.Array | str, ts: pa.Array
) -> pa.Table:
    """An interactions table (ids cast to strings); ``events`` may be one kind for every row."""
    event_column = pa.repeat(pa.scalar(events), len(user_ids)) if isinstance(events, str) else events
    return pa.table(
        {
            "user_id": user_ids.cast(pa.string()),
            "item_id": item_ids.cast(pa.string()),
            "event": event_column,
            "ts": ts.cast(TIMESTAMP),
        }
    )


def blank_to_null(values: pa.Array) -> pa.Array:
    """Strings that are empty or whitespace only become null."""
    values = pc.utf8_trim_whitespace(values)
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def join_pieces(pieces: Sequence[pa.Array], separator: str = "\n") -> pa.Array:
    """Row-wise join of the non-blank strings of ``pieces`` (equal-length arrays); null if none.

    (pyarrow's ``binary_join_element_wise`` with ``null_handling="skip"`` drops rows whose pieces
    are all null, so the join goes through a list array instead.)
    """
    n = len(pieces[0])
    k = len(pieces)
    stacked = pa.concat_arrays([blank_to_null(p.cast(pa.string())) for p in pieces])
    row_major = (np.arange(k)[None, :] * n + np.arange(n)[:, None]).ravel()
    values = stacked.take(pa.array(row_major))
    rows = np.repeat(np.arange(n), k)
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    lists = group_into_lists(rows[valid], values.filter(pa.array(valid)), n)
    return pc.binary_join(lists, separator)


def group_into_lists(rows: np.ndarray, values: pa.Array, n_rows: int) -> pa.Array:
    """A list array of ``n_rows`` rows from (row, value) pairs sorted by row; null for rows without values."""
    counts = np.bincount(rows, minlength=n_rows) if len(rows) else np.zeros(n_rows, dtype=np.int64)
    offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    mask = pa.array(counts == 0)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)


def collect_tags(item_ids: pa.Array, tag_item_ids: pa.Array, tags: pa.Array, lower: bool = True) -> pa.Array:
    """Per item of ``item_ids``, the sorted, de-duplicated tags given as (tag_item_ids, tags) pairs.

    Tags are stripped of surrounding whitespace and, with ``lower``, lower-cased; blank tags and
    tags of items not in ``item_ids`` are dropped. Items without tags get null (never ``[]``).
    """
    tags = blank_to_null(tags.cast(pa.string()))
    if lower:
        tags = pc.utf8_lower(tags)
    rows = pc.index_in(tag_item_ids.cast(pa.string()), value_set=item_ids.cast(pa.string()))
    pairs = pa.table({"row": rows, "tag": tags}).filter(pc.and_(pc.is_valid(rows), pc.is_valid(tags)))
    pairs = pairs.sort_by([("row", "ascending"), ("tag", "ascending")])
    row = pairs.column("row").combine_chunks()
    tag = pairs.column("tag").combine_chunks()
    if len(row) > 1:
        repeated = pc.and_(
            pc.equal(row.slice(1), row.slice(0, len(row) - 1)),
            pc.equal(tag.slice(1), tag.slice(0, len(tag) - 1)),
        )
        keep = np.concatenate([[True], ~repeated.to_numpy(zero_copy_only=False)])
        row, tag = row.filter(pa.array(keep)), tag.filter(pa.array(keep))
    return group_into_lists(row.to_numpy(zero_copy_only=False), tag, len(item_ids))


def add_missing_items(items: pa.Table, interactions: Sequence[pa.Table]) -> pa.Table:
    """``items`` plus a bare row (item_id only) for every item id that only interactions mention."""
    known = items.column("item_id").combine_chunks().cast(pa.string())
    mentioned = [t.column("item_id").combine_chunks().cast(pa.string()) for t in interactions if t.num_rows]
    if not mentioned:
        return items
    ids = pc.unique(pa.concat_arrays(mentioned))
    missing = ids.filter(pc.invert(pc.is_in(ids, value_set=known)))
    if len(missing) == 0:
        return items
    extra = pa.table({"item_id": missing})
    return pa.concat_tables([items, extra], promote_options="default")
