from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from raymm.data import io
from raymm.errors import DataError


def test_parquet_round_trip_local_path_and_file_uri(tmp_path: Path, items: pa.Table) -> None:
    io.write_table(items, str(tmp_path / "a" / "items.parquet"))
    assert io.read_table(str(tmp_path / "a" / "items.parquet")).equals(items)
    uri = f"file://{tmp_path}/b/items.parquet"
    io.write_table(items, uri)
    assert io.exists(uri)
    assert io.read_table(uri).equals(items)


def test_writes_leave_no_temporary_files(tmp_path: Path, items: pa.Table) -> None:
    io.write_table(items, str(tmp_path / "items.parquet"))
    io.write_json({"b": 1, "a": [1, 2]}, str(tmp_path / "m.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.parquet", "m.json"]
    assert io.read_json(str(tmp_path / "m.json")) == {"a": [1, 2], "b": 1}


def test_missing_and_corrupt_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        io.read_table(str(tmp_path / "nope.parquet"), "items file")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet file"):
        io.read_table(str(tmp_path / "bad.parquet"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        io.read_json(str(tmp_path / "bad.json"))
