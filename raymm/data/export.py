"""Export a raymm dataset in the MMRec layout, so MMRec's models run on exactly our splits.

Files written under ``out`` (a local path or pyarrow URI)::

    <name>.inter       tab-separated: userID itemID rating timestamp x_label
    u_id_mapping.csv   tab-separated: user_id userID   (MMRec's header)
    i_id_mapping.csv   tab-separated: asin itemID      (MMRec's header; "asin" holds any item id)
    text_feat.npy      float32 [n_items, dim], row i = itemID i   (if the dataset has features)
    image_feat.npy     likewise
    audio_feat.npy     likewise

Ids are contiguous integers from 0, users and items each sorted by their original (string) id;
every item of ``items.parquet`` gets an id, cold ones included. ``x_label`` is 0/1/2 for our
train/validation/test. Events collapse to ratings: 5.0 for ``like`` and ``purchase``, 1.0 for
everything else (so the mmrec importer, at any ``like_threshold`` in (1, 5], reads them back as
``like`` and ``view``). ``timestamp`` is epoch seconds with the millisecond fraction kept
(``881250949`` or ``881250949.123``), so no precision is lost. A missing feature vector is
written as a zero row, which the mmrec importer reads back as null. Other tables
(``cold_start``, ``stream``, ``cold_items``, ``facets``) have no place in MMRec's layout; the
summary lists them under ``not_exported``.
"""

from __future__ import annotations

import io as pyio
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from raymm.data import io
from raymm.data.dataset import SPLITS, load_dataset
from raymm.data.importers.mmrec import FEATURE_FILES, ITEM_MAPPING, USER_MAPPING
from raymm.errors import DataError

POSITIVE_EVENTS: tuple[str, ...] = ("like", "purchase")
POSITIVE_RATING, OTHER_RATING = "5.0", "1.0"


def export_mmrec(data_dir: str, out: str, name: str = "raymm") -> dict[str, Any]:
    """Write a raymm dataset in the MMRec layout so peers run on exactly our splits; returns a summary dict.

    The summary holds the name, output path, counts of users, items and interactions per split,
    the files written and which tables were left out. Raises :class:`DataError` if the dataset is
    missing or an id contains a tab, newline or double quote (MMRec's readers would split it).
    """
    dataset = load_dataset(data_dir, tables=("features",))
    splits = [dataset.interactions(split) for split in SPLITS]
    user_ids = _sorted_unique([t.column("user_id") for t in splits])
    item_ids = _sorted_unique([dataset.items.column("item_id")] + [t.column("item_id") for t in splits])

    inter = pa.concat_tables(
        [_inter_rows(table, label, user_ids, item_ids) for label, table in enumerate(splits)]
    )
    files: dict[str, bytes] = {
        f"{name}.inter": _tsv(inter, what=f"{name}.inter"),
        USER_MAPPING: _tsv(
            pa.table({"user_id": user_ids, "userID": pa.array(np.arange(len(user_ids)))}), what=USER_MAPPING
        ),
        ITEM_MAPPING: _tsv(
            pa.table({"asin": item_ids, "itemID": pa.array(np.arange(len(item_ids)))}), what=ITEM_MAPPING
        ),
    }
    features = dataset.tables.get("features")
    exported_features = []
    for modality, file in FEATURE_FILES.items():
        if features is not None and modality in features.column_names:
            files[file] = _npy(_feature_matrix(features, modality, item_ids))
            exported_features.append(modality)
    # Everything is encoded before the first write, so bad input leaves no partial export.
    io.makedirs(out)
    for file, data in files.items():
        io.write_bytes(data, io.join(out, file))
    return {
        "name": name,
        "out": out,
        "users": len(user_ids),
        "items": len(item_ids),
        "interactions": {split: t.num_rows for split, t in zip(SPLITS, splits, strict=True)},
        "features": exported_features,
        "files": sorted(files),
        "not_exported": sorted(
            stem
            for stem in (f.removesuffix(".parquet") for f in dataset.manifest["files"])
            if stem not in ("items", *SPLITS, "features")
        ),
    }


def _sorted_unique(columns: list[pa.ChunkedArray]) -> pa.Array:
    values = pa.concat_arrays([c.combine_chunks().cast(pa.string()) for c in columns])
    unique = pc.unique(values.drop_null())
    return unique.take(pc.sort_indices(unique))


def _inter_rows(table: pa.Table, label: int, user_ids: pa.Array, item_ids: pa.Array) -> pa.Table:
    """One split's rows of ``<name>.inter`` (ratings and timestamps already as text)."""
    table = table.sort_by([("ts", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")])
    positive = pc.is_in(table.column("event"), value_set=pa.array(POSITIVE_EVENTS))
    seconds = pc.divide(table.column("ts").cast(pa.int64()).cast(pa.float64()), 1000.0)
    return pa.table(
        {
            "userID": pc.index_in(table.column("user_id"), value_set=user_ids),
            "itemID": pc.index_in(table.column("item_id"), value_set=item_ids),
            "rating": pc.if_else(positive, POSITIVE_RATING, OTHER_RATING),
            # Shortest round-trip decimal: whole seconds print without a fraction.
            "timestamp": seconds.cast(pa.string()),
            "x_label": pa.repeat(pa.scalar(label, pa.int64()), table.num_rows),
        }
    )


def _tsv(table: pa.Table, what: str) -> bytes:
    buffer = pyio.BytesIO()
    buffer.write(("\t".join(table.column_names) + "\n").encode())
    try:
        pacsv.write_csv(
            table, buffer, pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False)
        )
    except pa.ArrowInvalid as exc:
        raise DataError(
            f"{what}: an id contains a tab, newline or double quote, which MMRec cannot read ({exc})"
        ) from exc
    return buffer.getvalue()


def _feature_matrix(features: pa.Table, modality: str, item_ids: pa.Array) -> np.ndarray:
    """[len(item_ids), dim] float32, row i = vector of item_ids[i]; zeros where missing."""
    column = features.column(modality).combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise DataError(
            f"features: column {modality!r} has type {column.type}; expected fixed_size_list<float32>"
        )
    dim = column.type.list_size
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    rows = pc.fill_null(pc.index_in(features.column("item_id"), value_set=item_ids), -1).to_numpy()[valid]
    matrix = np.zeros((len(item_ids), dim), dtype=np.float32)
    known = rows >= 0
    matrix[rows[known]] = vectors[known]
    return matrix


def _npy(matrix: np.ndarray) -> bytes:
    buffer = pyio.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    return buffer.getvalue()
