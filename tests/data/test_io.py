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


def test_list_remove_and_tensors_on_a_local_directory(tmp_path: Path) -> None:
    import torch

    root = str(tmp_path / "run")
    io.write_json({"b": 1, "a": 2}, io.join(root, "ordered.json"), sort_keys=False)
    assert (tmp_path / "run" / "ordered.json").read_text().index('"b"') < (
        tmp_path / "run" / "ordered.json"
    ).read_text().index('"a"')
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "mask": torch.tensor([True, False])}
    io.write_tensors(tensors, io.join(root, "sub", "t.safetensors"), {"format": "x"})
    assert io.list_dir(root) == ["ordered.json", "sub"]
    loaded = io.read_tensors(io.join(root, "sub", "t.safetensors"))
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert io.remove(io.join(root, "sub")) and not (tmp_path / "run" / "sub").exists()
    assert not io.remove(io.join(root, "sub"))  # nothing left: no error
    assert io.remove(io.join(root, "ordered.json")) and io.list_dir(root) == []
    with pytest.raises(DataError, match="directory not found"):
        io.list_dir(io.join(root, "nope"))
    (tmp_path / "bad.safetensors").write_bytes(b"not tensors")
    with pytest.raises(DataError, match="not a readable safetensors file"):
        io.read_tensors(str(tmp_path / "bad.safetensors"))


def test_a_uri_mangled_by_pathlib_is_refused_not_written_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    mangled = str(Path("s3://bucket/model/manifest.json"))  # "s3:/bucket/...": one slash lost
    with pytest.raises(DataError, match="pass URIs as str"):
        io.write_json({}, mangled)
    assert list(tmp_path.iterdir()) == []  # no local "s3:" folder


def test_json_tensors_list_and_remove_on_s3(
    s3_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    io.write_json({"a": 1}, io.join(s3_dir, "m.json"))
    io.write_tensors({"w": torch.ones(3)}, io.join(s3_dir, "sub", "t.safetensors"))
    assert io.list_dir(s3_dir) == ["m.json", "sub"]  # no temporary names left behind
    assert io.read_json(io.join(s3_dir, "m.json")) == {"a": 1}
    assert torch.equal(io.read_tensors(io.join(s3_dir, "sub", "t.safetensors"))["w"], torch.ones(3))
    assert io.remove(io.join(s3_dir, "sub")) and not io.exists(io.join(s3_dir, "sub", "t.safetensors"))
    assert io.list_dir(s3_dir) == ["m.json"]
    assert list(tmp_path.iterdir()) == []
