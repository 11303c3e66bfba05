from __future__ import annotations

import pyarrow as pa
import pytest

from raymm.data.schema import ITEMS_SCHEMA, conform_interactions, conform_items
from raymm.errors import DataError


def test_items_missing_optional_columns_become_nulls() -> None:
    table = conform_items(pa.table({"item_id": ["a", "b"], "text": ["x", None]}))
    assert table.schema.names[: len(ITEMS_SCHEMA)] == ITEMS_SCHEMA.names
    assert table.column("image").null_count == 2
    assert table.column("tags").type == pa.list_(pa.string())


def test_media_may_be_bytes_or_uris() -> None:
    table = conform_items(pa.table({"item_id": ["a"], "image": ["s3://bucket/a.png"], "audio": [b"RIFF"]}))
    assert table.schema.field("image").type == pa.string()
    assert table.schema.field("audio").type == pa.binary()


def test_media_of_another_type_is_refused() -> None:
    with pytest.raises(DataError, match="column 'image' has type int64"):
        conform_items(pa.table({"item_id": ["a"], "image": [3]}))


def test_missing_required_column_is_named() -> None:
    with pytest.raises(DataError, match=r"missing required column\(s\) \['item_id'\]"):
        conform_items(pa.table({"text": ["x"]}))
    with pytest.raises(DataError, match="'event', 'ts'"):
        conform_interactions(pa.table({"user_id": ["u"], "item_id": ["i"]}))


def test_extra_columns_are_kept(items: pa.Table) -> None:
    table = conform_items(items.append_column("price", pa.array([1.0] * items.num_rows)))
    assert table.column_names[-1] == "price"


def test_interaction_timestamps_become_ms_utc() -> None:
    raw = pa.table(
        {
            "user_id": ["u"],
            "item_id": ["i"],
            "event": ["click"],
            "ts": pa.array([1_700_000_000_000_000], pa.timestamp("us")),
        }
    )
    table = conform_interactions(raw)
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert table.column("ts").cast(pa.int64()).to_pylist() == [1_700_000_000_000]


def test_numeric_timestamps_are_refused_with_advice() -> None:
    raw = pa.table({"user_id": ["u"], "item_id": ["i"], "event": ["click"], "ts": [1_700_000_000]})
    with pytest.raises(DataError, match="holds numbers"):
        conform_interactions(raw)
