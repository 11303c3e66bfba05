from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raymm.data.dataset import (
    CATALOG_ITEM_COLUMNS,
    held_out_users,
    imported_features,
    load_dataset,
    split_by_time,
    write_dataset,
)
from raymm.errors import DataError
from tests.conftest import make_interactions


def test_split_by_time_is_ordered_and_complete(interactions: pa.Table) -> None:
    parts, bounds = split_by_time(interactions, (0.5, 0.25, 0.25))
    assert [parts[s].num_rows for s in ("train", "validation", "test")] == [20, 10, 10]
    assert pc.max(parts["train"].column("ts")).value < pc.min(parts["validation"].column("ts")).value
    assert pc.max(parts["validation"].column("ts")).value < pc.min(parts["test"].column("ts")).value
    assert bounds["validation_from"].startswith("2026-01-01T20:00")


def test_equal_timestamps_never_straddle_splits() -> None:
    table = make_interactions(10)
    table = table.set_column(
        3, "ts", pa.array([table.column("ts")[0].value] * 10, pa.timestamp("ms", tz="UTC"))
    )
    parts, _ = split_by_time(table, (0.8, 0.1, 0.1))
    assert parts["train"].num_rows == 10 and parts["test"].num_rows == 0


def test_bad_fractions_are_refused(interactions: pa.Table) -> None:
    with pytest.raises(DataError, match="summing to 1"):
        split_by_time(interactions, (0.9, 0.2, 0.1))


def test_write_and_load_round_trip(tmp_path: Path, items: pa.Table, interactions: pa.Table) -> None:
    parts, bounds = split_by_time(interactions)
    manifest = write_dataset(str(tmp_path / "d"), items, parts, {"name": "t", **bounds})
    assert manifest["counts"] == {"items": 6, "train": 32, "validation": 4, "test": 4}
    dataset = load_dataset(str(tmp_path / "d"))
    assert dataset.manifest["name"] == "t"
    assert dataset.interactions("train").to_pylist() == parts["train"].to_pylist()
    with pytest.raises(DataError, match="no 'stream' table"):
        dataset.interactions("stream")


def test_the_catalog_columns_leave_the_media_on_disk(
    tmp_path: Path, items: pa.Table, interactions: pa.Table
) -> None:
    parts, bounds = split_by_time(interactions)
    write_dataset(str(tmp_path / "d"), items.drop_columns(["tags"]), parts, {"name": "t", **bounds})
    full = load_dataset(str(tmp_path / "d"))
    lean = load_dataset(str(tmp_path / "d"), item_columns=CATALOG_ITEM_COLUMNS)
    assert lean.items.column("item_id").equals(full.items.column("item_id"))
    assert full.items.column("text").null_count < full.items.num_rows  # the file has media...
    for media in ("text", "image", "audio", "tags"):  # ...not read; tags absent from the file
        assert lean.items.column(media).null_count == lean.items.num_rows
    assert lean.items.schema.names[:6] == full.items.schema.names[:6]  # the items contract either way


def test_loading_something_that_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"dataset\.json is missing"):
        load_dataset(str(tmp_path))


def test_held_out_users_counts_what_evaluation_counts() -> None:
    def log(*rows: tuple[str, str, str]) -> pa.Table:
        columns = list(zip(*rows, strict=True)) if rows else [(), (), ()]
        return pa.table(
            {
                name: pa.array(c, pa.string())
                for name, c in zip(("user_id", "item_id", "event"), columns, strict=True)
            }
        )

    splits = {
        "train": log(("a", "i1", "like"), ("b", "i1", "skip"), ("e", "i1", "like")),
        "validation": log(("b", "i2", "like"), ("c", "i1", "view"), ("f", "i3", "like")),
        "test": log(
            ("a", "i2", "like"),  # history from train
            ("b", "i3", "like"),  # history from validation (a skip does not count)
            ("c", "i2", "like"),  # no train event, a validation one
            ("d", "i1", "like"),  # nothing before: an empty history
            ("d", "i2", "skip"),
            ("e", "i1", "like"),  # a repeat of a train item only: no truth, not scored
            ("g", "i1", "skip"),  # a skip only: not scored
        ),
    }
    assert held_out_users(splits) == {
        # b's train skip is a train event but no history.
        "validation": {"users": 3, "without_history": 3, "without_train": 2},
        "test": {"users": 4, "without_history": 1, "without_train": 2},
    }
    # With only likes counting, c's view is no history.
    assert held_out_users(splits, ["like"])["test"] == {"users": 4, "without_history": 2, "without_train": 2}
    empty = log()
    assert held_out_users({"train": empty, "validation": empty, "test": log(("a", "i", "view"))})["test"] == {
        "users": 1,
        "without_history": 1,
        "without_train": 1,
    }


def test_imported_features_is_the_features_table_a_dataset_lists(
    tmp_path: Path, items: pa.Table, interactions: pa.Table
) -> None:
    parts, _ = split_by_time(interactions)
    features = pa.table({"item_id": ["a"], "text": pa.array([[1.0]], pa.list_(pa.float32(), 1))})
    write_dataset(str(tmp_path / "with"), items, {**parts, "features": features}, {"name": "t"})
    write_dataset(str(tmp_path / "without"), items, parts, {"name": "t"})

    assert imported_features(str(tmp_path / "with")) == str(tmp_path / "with" / "features.parquet")
    assert imported_features(str(tmp_path / "without")) is None
    assert imported_features(str(tmp_path / "nothing")) is None
