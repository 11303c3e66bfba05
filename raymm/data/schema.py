"""The pyarrow schemas of raymm's tables (design.md, section 2).

Items may carry media as encoded bytes (``binary``) or as a URI (``string``); both column types
are accepted on read, and :func:`conform_items` normalises everything else.
"""

from __future__ import annotations

import pyarrow as pa

from raymm.errors import DataError
from raymm.settings_base import MODALITIES as MODALITIES  # the items table's content columns

MEDIA_COLUMNS: tuple[str, ...] = ("image", "audio")
EVENT_KINDS: tuple[str, ...] = ("view", "click", "like", "purchase", "play", "skip")
#: Events that say the user wanted the item; ``skip`` (and anything else) is not a positive. The
#: model's default ``user_state.events``, and what the import counts when it is given none.
POSITIVE_EVENTS: tuple[str, ...] = ("click", "like", "purchase", "play", "view")
TIMESTAMP = pa.timestamp("ms", tz="UTC")

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("audio", pa.binary()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("created_at", TIMESTAMP),
    ]
)

INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("ts", TIMESTAMP, nullable=False),
        pa.field("event_id", pa.string()),
    ]
)

REQUIRED_ITEM_COLUMNS: tuple[str, ...] = ("item_id",)
REQUIRED_INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "event", "ts")

# Types a column may arrive in and still be cast losslessly to the contract type.


def _media_type(column: pa.ChunkedArray | pa.Array, name: str, table_name: str) -> pa.DataType:
    """Return ``binary`` or ``string`` for a media column, refusing anything else."""
    if column.type in (pa.binary(), pa.large_binary()):
        return pa.binary()
    if column.type in (pa.string(), pa.large_string()):
        return pa.string()
    if pa.types.is_null(column.type):
        return pa.binary()
    raise DataError(
        f"{table_name}: column {name!r} has type {column.type}; expected binary (encoded bytes) "
        "or string (a URI)"
    )


def _cast_column(
    table: pa.Table, name: str, target: pa.DataType, table_name: str
) -> pa.ChunkedArray | pa.Array:
    column = table.column(name)
    if column.type == target:
        return column
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(
            f"{table_name}: column {name!r} has type {column.type}; expected {target} ({exc})"
        ) from exc


def _conform(table: pa.Table, schema: pa.Schema, required: tuple[str, ...], table_name: str) -> pa.Table:
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise DataError(f"{table_name}: missing required column(s) {missing}; found {table.column_names}")
    arrays: list[pa.ChunkedArray | pa.Array] = []
    fields: list[pa.Field] = []
    for field in schema:
        if field.name in table.column_names:
            target = field.type
            if field.name in MEDIA_COLUMNS and table_name == "items":
                target = _media_type(table.column(field.name), field.name, table_name)
            arrays.append(_cast_column(table, field.name, target, table_name))
            fields.append(pa.field(field.name, target, nullable=field.nullable))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
            fields.append(field)
    # Extra columns (e.g. precomputed features) are kept after the contract columns.
    for name in table.column_names:
        if schema.get_field_index(name) == -1:
            arrays.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=table.schema.metadata))


def conform_items(table: pa.Table) -> pa.Table:
    """Cast an items table to :data:`ITEMS_SCHEMA`; absent optional columns become nulls.

    Raises :class:`DataError` naming the column when a required column is missing or a column
    cannot be cast. Media columns stay ``binary`` or ``string`` as given.
    """
    return _conform(table, ITEMS_SCHEMA, REQUIRED_ITEM_COLUMNS, "items")


def conform_interactions(table: pa.Table) -> pa.Table:
    """Cast an interactions table to :data:`INTERACTIONS_SCHEMA` (``ts`` to ms, UTC)."""
    if "ts" in table.column_names:
        ts = table.column("ts")
        if pa.types.is_timestamp(ts.type) and ts.type.tz is None:
            # Naive timestamps are taken as UTC, the contract's zone.
            table = table.set_column(
                table.column_names.index("ts"), "ts", ts.cast(pa.timestamp(ts.type.unit, tz="UTC"))
            )
        elif pa.types.is_integer(ts.type) or pa.types.is_floating(ts.type):
            raise DataError(
                "interactions: column 'ts' holds numbers; expected timestamp[ms, UTC] "
                "(convert epoch seconds or milliseconds explicitly before writing)"
            )
    return _conform(table, INTERACTIONS_SCHEMA, REQUIRED_INTERACTION_COLUMNS, "interactions")
