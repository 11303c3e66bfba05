from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from raymm.config import ImportConfig
from raymm.data.dataset import load_dataset, write_dataset
from raymm.data.export import export_mmrec
from raymm.data.importers import import_dataset
from raymm.errors import DataError

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _events(rows: list[tuple[str, str, str, int]]) -> pa.Table:
    """(user, item, event, ms after T0) rows as an interactions table."""
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event": [r[2] for r in rows],
            "ts": pa.array(
                [T0 + dt.timedelta(milliseconds=r[3]) for r in rows], pa.timestamp("ms", tz="UTC")
            ),
        }
    )


def _vectors(values: list[list[float] | None], dim: int) -> pa.Array:
    return pa.array(values, pa.list_(pa.float32(), dim))


@pytest.fixture
def dataset_dir(tmp_path):
    items = pa.table({"item_id": ["i1", "i2", "i3", "i4"], "text": ["a", "b", "c", "cold"]})
    splits = {
        "train": _events(
            [("u10", "i1", "like", 123), ("u2", "i2", "view", 1000), ("u10", "i2", "purchase", 2000),
             ("u3", "i3", "click", 2500)]
        ),
        "validation": _events([("u2", "i1", "like", 3000)]),
        "test": _events([("u3", "i2", "view", 4001), ("u10", "i3", "like", 5000)]),
    }  # fmt: skip
    features = pa.table(
        {
            "item_id": ["i3", "i1", "i4", "i2"],
            "text": _vectors([[3, 3, 3], [1, 1, 1], None, [2, 2.5, 2]], 3),
            "image": _vectors([[0.3, 0.3], [0.1, 0.1], [0.4, 0.4], None], 2),
            "audio": _vectors([None, [1, 0, 0, 1], [0.5, 0.5, 0.5, 0.5], [2, 2, 2, 2]], 4),
        }
    )
    cold = _events([("u2", "i4", "like", 6000)])
    out = tmp_path / "raymm"
    write_dataset(str(out), items, {**splits, "features": features, "cold_start": cold}, {"name": "tiny"})
    return out


def test_export_writes_mmrec_layout(dataset_dir, tmp_path):
    out = tmp_path / "mmrec"
    summary = export_mmrec(str(dataset_dir), str(out), name="tiny")

    assert summary["users"] == 3 and summary["items"] == 4
    assert summary["interactions"] == {"train": 4, "validation": 1, "test": 2}
    assert summary["features"] == ["text", "image", "audio"]
    assert summary["not_exported"] == ["cold_start"]
    assert sorted(p.name for p in out.iterdir()) == [
        "audio_feat.npy", "i_id_mapping.csv", "image_feat.npy", "text_feat.npy", "tiny.inter",
        "u_id_mapping.csv",
    ]  # fmt: skip
    inter = (out / "tiny.inter").read_text().splitlines()
    assert inter[0] == "userID\titemID\trating\ttimestamp\tx_label"
    # users sorted by original id as strings: u10 -> 0, u2 -> 1, u3 -> 2
    assert inter[1] == f"0\t0\t5.0\t{int(T0.timestamp())}.123\t0"
    assert inter[2] == f"1\t1\t1.0\t{int(T0.timestamp()) + 1}\t0"
    assert inter[-1].endswith("\t2")
    assert (out / "u_id_mapping.csv").read_text() == "user_id\tuserID\nu10\t0\nu2\t1\nu3\t2\n"
    assert (out / "i_id_mapping.csv").read_text().splitlines()[-1] == "i4\t3"
    text = np.load(out / "text_feat.npy")
    assert text.dtype == np.float32 and text.shape == (4, 3)
    np.testing.assert_array_equal(text[3], 0.0)  # i4 has no text vector
    np.testing.assert_array_equal(text[1], [2, 2.5, 2])
    audio = np.load(out / "audio_feat.npy")
    assert audio.shape == (4, 4)
    np.testing.assert_array_equal(audio[2], 0.0)  # i3 has no audio vector


def test_round_trip_through_mmrec_importer(dataset_dir, tmp_path):
    export_mmrec(str(dataset_dir), str(tmp_path / "mmrec"), name="tiny")
    import_dataset(
        ImportConfig(format="mmrec", source=str(tmp_path / "mmrec")), str(tmp_path / "back"), progress=False
    )
    original, back = load_dataset(str(dataset_dir)), load_dataset(str(tmp_path / "back"))

    collapse = {"like": "like", "purchase": "like"}
    for split in ("train", "validation", "test"):
        expected = [
            (r["user_id"], r["item_id"], collapse.get(r["event"], "view"), r["ts"])
            for r in original.interactions(split).to_pylist()
        ]
        got = [
            (r["user_id"], r["item_id"], r["event"], r["ts"]) for r in back.interactions(split).to_pylist()
        ]
        assert got == expected, split
    assert sorted(back.items.column("item_id").to_pylist()) == ["i1", "i2", "i3", "i4"]

    def by_item(table: pa.Table) -> dict[str, tuple]:
        return {
            r["item_id"]: (r["text"], r["image"], r["audio"])
            for r in table.select(["item_id", "text", "image", "audio"]).to_pylist()
        }

    assert by_item(back.tables["features"]) == by_item(original.tables["features"])
    assert back.manifest["source"]["features"] == ["text", "image", "audio"]


def test_missing_dataset_is_named(tmp_path):
    with pytest.raises(DataError, match=r"dataset directory not found: .*nothing"):
        export_mmrec(str(tmp_path / "nothing"), str(tmp_path / "out"))
