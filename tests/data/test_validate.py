from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa

from raymm.data import io
from raymm.data.dataset import split_by_time, write_dataset
from raymm.data.validate import validate_dataset
from tests.conftest import make_interactions, make_items


def _write(path: Path, items: pa.Table, interactions: pa.Table) -> str:
    parts, _ = split_by_time(interactions)
    write_dataset(str(path), items, parts, {"name": "t"})
    return str(path)


def _checks(report) -> dict[str, tuple[int, ...]]:  # type: ignore[no-untyped-def]
    return {p.check: p.rows for p in report.problems}


def test_a_clean_dataset_has_no_problems(tmp_path: Path) -> None:
    report = validate_dataset(_write(tmp_path, make_items(), make_interactions()), progress=False)
    assert report.ok, [str(p) for p in report.problems]
    assert report.counts["items"] == 6 and report.counts["train"] == 32


def test_every_problem_is_reported_with_rows(tmp_path: Path) -> None:
    items = pa.concat_tables([make_items(6), make_items(1)]).to_pydict()  # row 6 repeats i0
    items["image"][3] = b"\x89PNG broken"  # undecodable
    items["audio"][5] = b"RIFF....WAVEfmt "  # undecodable
    items["text"][1] = "   "  # empty placeholder instead of null
    interactions = make_interactions(40).to_pydict()
    interactions["item_id"][2] = "ghost"
    interactions["event"][3] = "teleport"
    interactions["ts"][1] = dt.datetime(1970, 1, 2, tzinfo=dt.UTC)
    interactions["event_id"][7] = interactions["event_id"][6]
    path = tmp_path / "d"
    io.makedirs(str(path))
    io.write_table(pa.table(items), str(path / "items.parquet"))
    io.write_table(pa.table(interactions), str(path / "train.parquet"))
    for split in ("validation", "test"):
        io.write_table(pa.table(interactions).slice(0, 0), str(path / f"{split}.parquet"))

    report = validate_dataset(str(path), progress=False)
    checks = _checks(report)
    assert checks["duplicate_item_id"] == (6,)
    assert checks["image_decode"] == (3,)
    assert checks["audio_decode"] == (5,)
    assert checks["empty_text"] == (1,)
    assert checks["unknown_item"] == (2,)
    assert checks["unknown_event"] == (3,)
    assert checks["ts_range"] == (1,)
    assert checks["duplicate_event_id"] == (6, 7)
    assert checks["manifest"] == ()
    text = "\n".join(str(p) for p in report.problems)
    assert "items.parquet: duplicate item_id (e.g. ['i0']) at row 6" in text
    assert "train.parquet: unknown event kind(s) ['teleport']" in text


def test_missing_required_column_and_missing_split(tmp_path: Path) -> None:
    path = tmp_path / "d"
    io.makedirs(str(path))
    io.write_table(make_items(), str(path / "items.parquet"))
    io.write_table(make_interactions().drop(["ts"]), str(path / "train.parquet"))
    report = validate_dataset(str(path), progress=False)
    messages = [str(p) for p in report.problems]
    assert any("train.parquet: missing required column(s) ['ts']" in m for m in messages)
    assert any("validation.parquet: required split file is missing" in m for m in messages)


def test_cold_items_leaking_into_training_are_found(tmp_path: Path) -> None:
    path = _write(tmp_path / "d", make_items(), make_interactions())
    io.write_table(pa.table({"item_id": ["i1"]}), f"{path}/cold_items.parquet")
    report = validate_dataset(path, progress=False)
    assert "cold_leak" in _checks(report)


def test_media_checks_can_be_skipped(tmp_path: Path) -> None:
    from raymm.config import ValidateConfig

    items = make_items().to_pydict()
    items["image"][0] = b"garbage"
    path = _write(tmp_path / "d", pa.table(items), make_interactions())
    assert not validate_dataset(path, progress=False).ok
    assert validate_dataset(path, ValidateConfig(decode_media=False), progress=False).ok
