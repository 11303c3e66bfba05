from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pyarrow as pa
import pytest

from raymm.config import ImportConfig
from raymm.data.importers import import_dataset
from raymm.errors import DataError, ImportFormatError

INTER = (
    "userID\titemID\trating\ttimestamp\tx_label\n"
    "0\t0\t5.0\t1000\t0\n"
    "1\t0\t4.0\t1001\t0\n"
    "0\t1\t2.0\t1002\t0\n"
    "1\t2\t5.0\t1003\t1\n"
    "0\t2\t1.0\t1004.5\t2\n"
)
U_MAP = "user_id\tuserID\nA1\t0\nA2\t1\n"
I_MAP = "asin\titemID\nX0\t0\nX1\t1\nX2\t2\nX3\t3\n"


def _npy(matrix: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, matrix)
    return buffer.getvalue()


TEXT = np.arange(12, dtype=np.float32).reshape(4, 3)
TEXT[1] = 0.0  # MMRec's zero row: no text vector for itemID 1
IMAGE = np.arange(8, dtype=np.float64).reshape(4, 2) + 1
AUDIO = np.eye(4, 5, dtype=np.float32)
AUDIO[3] = 0.0  # no audio vector for itemID 3


def _import(source, tmp_path):
    return import_dataset(
        ImportConfig(format="mmrec", source=str(source)), str(tmp_path / "out"), progress=False
    )


def test_keeps_x_label_split_ids_and_features(write_source, run_import):
    source = write_source(
        {
            "baby.inter": INTER,
            "u_id_mapping.csv": U_MAP,
            "i_id_mapping.csv": I_MAP,
            "text_feat.npy": _npy(TEXT),
            "image_feat.npy": _npy(IMAGE),
        }
    )
    manifest, data = run_import(source, format="mmrec")

    assert manifest["name"] == "baby"
    assert manifest["split"] == {"method": "source", "column": "x_label"}
    assert manifest["source"]["features"] == ["text", "image"]
    assert data.items.column("item_id").to_pylist() == ["X0", "X1", "X2", "X3"]  # X3: mapped, never rated
    assert data.items.column("text").null_count == 4
    splits = {s: data.interactions(s).to_pylist() for s in ("train", "validation", "test")}
    assert [(r["user_id"], r["item_id"], r["event"]) for r in splits["train"]] == [
        ("A1", "X0", "like"),
        ("A2", "X0", "like"),
        ("A1", "X1", "view"),
    ]
    assert splits["validation"][0]["item_id"] == "X2"
    assert splits["test"][0]["ts"] == dt.datetime(1970, 1, 1, 0, 16, 44, 500_000, tzinfo=dt.UTC)

    features = data.tables["features"]
    assert features.schema.metadata == {
        b"encoder.text": b"precomputed:mmrec",
        b"encoder.image": b"precomputed:mmrec",
    }
    assert features.schema.field("text").type == pa.list_(pa.float32(), 3)
    assert features.column("item_id").to_pylist() == ["X0", "X1", "X2", "X3"]
    text = features.column("text").to_pylist()
    assert text[0] == [0.0, 1.0, 2.0] and text[1] is None and text[3] == [9.0, 10.0, 11.0]
    assert features.column("image").to_pylist()[2] == [5.0, 6.0]


def test_imports_every_modality_text_image_and_audio(write_source, run_import):
    source = write_source(
        {
            "baby.inter": INTER,
            "i_id_mapping.csv": I_MAP,
            "text_feat.npy": _npy(TEXT),
            "image_feat.npy": _npy(IMAGE),
            "audio_feat.npy": _npy(AUDIO),
        }
    )
    manifest, data = run_import(source, format="mmrec")

    assert manifest["source"]["features"] == ["text", "image", "audio"]
    assert not [w for w in manifest["warnings"] if "_feat.npy" in w]
    features = data.tables["features"]
    assert features.schema.metadata[b"encoder.audio"] == b"precomputed:mmrec"
    assert features.schema.field("audio").type == pa.list_(pa.float32(), 5)
    audio = features.column("audio").to_pylist()
    assert audio[1] == [0.0, 1.0, 0.0, 0.0, 0.0] and audio[3] is None
    assert features.column("text").to_pylist()[0] == [0.0, 1.0, 2.0]
    assert features.column("image").to_pylist()[2] == [5.0, 6.0]


def test_an_unknown_feature_file_is_named_in_a_warning(write_source, run_import):
    source = write_source({"baby.inter": INTER, "text_feat.npy": _npy(TEXT), "video_feat.npy": _npy(IMAGE)})
    manifest, data = run_import(source, format="mmrec")

    assert data.tables["features"].column_names == ["item_id", "text"]
    [warning] = [w for w in manifest["warnings"] if "_feat.npy" in w]
    assert warning.startswith("video_feat.npy in ") and "not imported" in warning
    assert "audio_feat.npy, image_feat.npy, text_feat.npy" in warning


def test_without_mappings_or_features_ids_are_the_integers(write_source, run_import):
    source = write_source({"plain.inter": "userID\titemID\tx_label\n3\t7\t0\n4\t7\t1\n3\t8\t2\n"})
    manifest, data = run_import(source, format="mmrec")
    assert sorted(data.items.column("item_id").to_pylist()) == ["7", "8"]
    assert "features" not in data.tables
    assert data.interactions("test").to_pylist()[0]["user_id"] == "3"
    assert data.interactions("train").to_pylist()[0]["event"] == "view"
    assert "synthetic" in manifest["source"]["timestamps"]
    # x_label is the split, so file order only stands for recency.
    assert (
        f"no timestamp column in {source / 'plain.inter'}: file order is used as time, so recency follows "
        "file order"
    ) in manifest["warnings"]


@pytest.mark.parametrize(
    ("line", "replacement", "message"),
    [
        (4, "0\t1\t2.0\t1002\t3\n", r"x_label is 3; expected 0 \(train\), 1 \(validation\) or 2 \(test\)"),
        (3, "1\tb0\t4.0\t1001\t0\n", r"itemID is 'b0'; expected an integer"),
        (5, "1\t2\t5.0\t1003\n", r"expected 5 fields"),
    ],
)
def test_malformed_row_names_file_and_line(write_source, tmp_path, line, replacement, message):
    lines = INTER.splitlines(keepends=True)
    lines[line - 1] = replacement
    source = write_source({"baby.inter": "".join(lines)})
    with pytest.raises(ImportFormatError, match=rf"baby\.inter, line {line}: {message}"):
        _import(source, tmp_path)
    assert not (tmp_path / "out").exists()


def test_feature_matrix_too_short_is_a_clear_error(write_source, tmp_path):
    source = write_source({"baby.inter": INTER, "image_feat.npy": _npy(IMAGE[:2])})
    with pytest.raises(DataError, match=r"image_feat\.npy: 2 rows do not cover itemID 2"):
        _import(source, tmp_path)


def test_unmapped_id_names_inter_line(write_source, tmp_path):
    source = write_source({"baby.inter": INTER, "u_id_mapping.csv": "user_id\tuserID\nA1\t0\n"})
    with pytest.raises(ImportFormatError, match=r"baby\.inter, line 3: userID 1 is not in u_id_mapping\.csv"):
        _import(source, tmp_path)


def test_without_feature_files_the_import_says_first_that_nothing_can_make_features(write_source, run_import):
    # MMRec ships features, not media: without the files, extract has nothing to encode and train
    # nothing to train on, so the import says so at once, naming the files and where it looked.
    source = write_source({"plain.inter": "userID\titemID\tx_label\n3\t7\t0\n4\t7\t1\n3\t8\t2\n"})
    manifest, data = run_import(source, format="mmrec")
    assert "features" not in data.tables
    missing = manifest["warnings"][0]
    assert missing.startswith(
        f"no feature files in {source}: looked for text_feat.npy, image_feat.npy, audio_feat.npy"
    )
    assert "next to plain.inter and found none" in missing
    assert "`raymm extract` has nothing to encode" in missing
    assert f"put the dataset's feature files in {source}" in missing and "--features" in missing


def test_an_unknown_feature_file_alone_gives_both_warnings(write_source, run_import):
    source = write_source({"baby.inter": INTER, "video_feat.npy": _npy(IMAGE)})
    manifest, _ = run_import(source, format="mmrec")
    assert manifest["warnings"][0].startswith(f"no feature files in {source}: looked for")
    assert [w for w in manifest["warnings"] if w.startswith("video_feat.npy in ")]


def test_one_feature_file_is_enough_to_give_no_missing_warning(write_source, run_import):
    manifest, _ = run_import(
        write_source({"baby.inter": INTER, "image_feat.npy": _npy(IMAGE)}), format="mmrec"
    )
    assert not [w for w in manifest["warnings"] if "feature files" in w]
