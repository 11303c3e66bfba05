"""MMRec (enoche/MMRec) layout: ``<name>.inter`` with its own split, features, id mappings.

* ``<name>.inter``: tab-separated with a header naming ``userID``, ``itemID``, ``x_label``
  (0 train, 1 validation, 2 test; the split is kept, never recomputed) and optionally
  ``rating`` (rating >= ``like_threshold`` -> ``like``, otherwise ``view``; without it every row
  is a ``view``) and ``timestamp`` (epoch seconds, fractions kept to the millisecond; without it
  rows get synthetic file-order timestamps, and the import warns that file order is recency).
* ``u_id_mapping.csv`` / ``i_id_mapping.csv`` (optional, tab-separated with a header: the
  ``userID``/``itemID`` column and one column of original ids, e.g. MMRec's ``user_id``/``asin``)
  map the integer ids back to the originals; without them the integers become the ids.
* ``text_feat.npy`` / ``image_feat.npy`` / ``audio_feat.npy`` (optional): float matrices, row i =
  itemID i. They become the dataset's ``features`` table (features contract of design.md), encoder
  recorded as ``precomputed:mmrec``; an all-zero row, which is what MMRec pipelines and our
  exporter write for a missing vector, becomes null. Any other ``*_feat.npy`` is not imported and
  the import warns, naming it. Without any of the three the import warns first thing, naming the
  files it looked for and where: MMRec ships no raw media, so nothing could make features later.

Items are the itemIDs in the interactions plus those in ``i_id_mapping.csv``; they have no text.
"""

from __future__ import annotations

import io as pyio
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymm.data import io
from raymm.data.dataset import SPLITS
from raymm.data.importers._parsing import (
    TSV,
    TextTable,
    list_files,
    locate_named_file,
    optional_file,
    read_text_table,
)
from raymm.data.importers._tables import ImportedTables, interactions_table, optional_rating_and_time
from raymm.data.settings import ImportConfig
from raymm.errors import DataError, ImportFormatError

USER_FIELD, ITEM_FIELD, LABEL_FIELD = "userID", "itemID", "x_label"
USER_MAPPING, ITEM_MAPPING = "u_id_mapping.csv", "i_id_mapping.csv"
#: Modality -> MMRec's file for it; the exporter writes the same names.
FEATURE_FILES: dict[str, str] = {
    "text": "text_feat.npy",
    "image": "image_feat.npy",
    "audio": "audio_feat.npy",
}
FEATURE_SUFFIX = "_feat.npy"
ENCODER_ID = "precomputed:mmrec"


def read(config: ImportConfig, progress: bool = False) -> ImportedTables:
    """Read an MMRec dataset directory, keeping its x_label split and precomputed features."""
    assert config.source is not None
    directory, inter_uri, name = locate_named_file(config.source, ".inter", config.name, "mmrec")
    inter = read_text_table(inter_uri, TSV, header=True)
    inter.require_columns(USER_FIELD, ITEM_FIELD, LABEL_FIELD)
    user_ints = _non_negative(inter, USER_FIELD)
    item_ints = _non_negative(inter, ITEM_FIELD)
    labels = inter.ints(LABEL_FIELD)
    bad = np.flatnonzero(~np.isin(labels.to_numpy(), [0, 1, 2]))
    if len(bad):
        row = int(bad[0])
        raise inter.error(
            row, f"{LABEL_FIELD} is {labels[row].as_py()}; expected 0 (train), 1 (validation) or 2 (test)"
        )

    # x_label is the split, so without timestamps file order only decides recency.
    events = optional_rating_and_time(inter, config.like_threshold, split_by_time=False)
    details: dict[str, Any] = dict(events.notes)

    user_mapping = _read_mapping(directory, USER_MAPPING, USER_FIELD)
    item_mapping = _read_mapping(directory, ITEM_MAPPING, ITEM_FIELD)
    user_ids = _original_ids(inter, USER_FIELD, user_ints, user_mapping, USER_MAPPING)
    item_ids = _original_ids(inter, ITEM_FIELD, item_ints, item_mapping, ITEM_MAPPING)
    details["id_mappings"] = [
        file for file, found in ((USER_MAPPING, user_mapping), (ITEM_MAPPING, item_mapping)) if found
    ]

    # The item universe: every itemID rated or mapped, in integer order, with its original id.
    universe_ints = pc.unique(item_ints)
    if item_mapping is not None:
        mapped_ints, mapped_ids = item_mapping
        universe_ints = pc.unique(pa.concat_arrays([universe_ints, mapped_ints]))
        universe_ids = mapped_ids.take(pc.index_in(universe_ints, value_set=mapped_ints))
    else:
        universe_ids = universe_ints.cast(pa.string())
    order = pc.sort_indices(universe_ints)
    universe_ints, universe_ids = universe_ints.take(order), universe_ids.take(order)
    items = pa.table({"item_id": universe_ids})

    interactions = interactions_table(user_ids, item_ids, events.events, events.ts)
    labels_np = labels.to_numpy()
    splits = {
        split: interactions.filter(pa.array(labels_np == label)).sort_by(
            [("ts", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")]
        )
        for label, split in enumerate(SPLITS)
    }
    extra: dict[str, pa.Table] = {}
    warnings = events.warnings + unknown_feature_files(directory)
    features = _features(directory, universe_ints, universe_ids)
    if features is not None:
        extra["features"] = features
        details["features"] = [m for m in FEATURE_FILES if m in features.column_names]
    else:
        warnings.insert(0, no_features_warning(directory, inter_uri))
    return ImportedTables(
        name=name,
        items=items,
        splits=splits,
        split_column=LABEL_FIELD,
        extra_tables=extra,
        details=details,
        warnings=warnings,
    )


def _non_negative(table: TextTable, field: str) -> pa.Array:
    values = table.ints(field)
    bad = np.flatnonzero(values.to_numpy() < 0)
    if len(bad):
        row = int(bad[0])
        raise table.error(row, f"{field} is {values[row].as_py()}; expected a non-negative integer id")
    return values


def _read_mapping(directory: str, file: str, id_field: str) -> tuple[pa.Array, pa.Array] | None:
    """(integer ids, original ids) of an MMRec id mapping file, None if absent; errors name file and line."""
    uri = optional_file(directory, file)
    if uri is None:
        return None
    mapping = read_text_table(uri, TSV, header=True)
    mapping.require_columns(id_field)
    others = [c for c in mapping.table.column_names if c != id_field]
    if len(others) != 1:
        raise ImportFormatError(
            f"{uri}, line 1: expected two columns, {id_field} and the original id; "
            f"found {mapping.table.column_names}"
        )
    ints = _non_negative(mapping, id_field)
    counts = pc.value_counts(ints)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        value = repeated.field("values")[0]
        row = int(pc.index(ints, value).as_py())
        raise mapping.error(row, f"{id_field} {value.as_py()} appears more than once")
    return ints, mapping.strings(others[0])


def _original_ids(
    inter: TextTable, field: str, ints: pa.Array, mapping: tuple[pa.Array, pa.Array] | None, file: str
) -> pa.Array:
    """The original ids of ``ints`` via ``mapping``, or the integers as strings without one."""
    if mapping is None:
        return ints.cast(pa.string())
    mapped_ints, originals = mapping
    positions = pc.index_in(ints, value_set=mapped_ints)
    if positions.null_count:
        row = int(np.flatnonzero(~positions.is_valid().to_numpy(zero_copy_only=False))[0])
        raise inter.error(row, f"{field} {ints[row].as_py()} is not in {file}")
    return originals.take(positions)


def unknown_feature_files(directory: str) -> list[str]:
    """A warning for each ``*_feat.npy`` in ``directory`` that is no modality of :data:`FEATURE_FILES`.

    MMRec pipelines name a modality's matrix ``<modality>_feat.npy``; one we do not know would
    otherwise be left behind without a word.
    """
    known = sorted(FEATURE_FILES.values())
    return [
        f"{file} in {directory} is not a feature file raymm knows ({', '.join(known)}); it was not "
        "imported (rename it to one of these if it holds that modality)"
        for file in list_files(directory)
        if file.endswith(FEATURE_SUFFIX) and file not in known
    ]


def no_features_warning(directory: str, inter_uri: str) -> str:
    """The warning for an MMRec directory without any of :data:`FEATURE_FILES`: the dataset it makes is a
    dead end (no media for ``raymm extract`` to encode, so no features to train or evaluate on)."""
    inter = inter_uri.rstrip("/").rsplit("/", 1)[-1]
    return (
        f"no feature files in {directory}: looked for {', '.join(FEATURE_FILES.values())} (one float "
        f"matrix per modality, row i = itemID i) next to {inter} and found none. MMRec datasets ship "
        "their item features as these files and no raw media, so `raymm extract` has nothing to "
        "encode and `raymm train` and `raymm evaluate` have no features: put the dataset's feature "
        f"files in {directory} (named as above) and import again, or give train and evaluate "
        "--features, a features directory for these item ids"
    )


def _features(directory: str, item_ints: pa.Array, item_ids: pa.Array) -> pa.Table | None:
    """The features table from the ``*_feat.npy`` files present, or None when there are none."""
    columns: dict[str, pa.Array] = {}
    for modality, file in FEATURE_FILES.items():
        uri = optional_file(directory, file)
        if uri is not None:
            columns[modality] = _feature_column(uri, item_ints.to_numpy())
    if not columns:
        return None
    metadata = {f"encoder.{m}": ENCODER_ID for m in columns}
    table = pa.table({"item_id": item_ids, **columns})
    return table.replace_schema_metadata(metadata)


def _feature_column(uri: str, item_ints: np.ndarray) -> pa.Array:
    """Rows ``item_ints`` of the matrix in ``uri`` as fixed_size_list<float32>; all-zero rows are null."""
    try:
        matrix = np.load(pyio.BytesIO(io.read_bytes(uri, "feature matrix")), allow_pickle=False)
    except ValueError as exc:
        raise ImportFormatError(f"{uri}: not a readable .npy array ({exc})") from exc
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise ImportFormatError(
            f"{uri}: expected a 2-D numeric matrix, got shape {matrix.shape} {matrix.dtype}"
        )
    needed = int(item_ints.max()) + 1 if len(item_ints) else 0
    if matrix.shape[0] < needed:
        raise DataError(
            f"{uri}: {matrix.shape[0]} rows do not cover itemID {needed - 1} "
            f"(row i is itemID i, so at least {needed} rows are needed)"
        )
    rows = np.ascontiguousarray(matrix[item_ints], dtype=np.float32)
    missing = ~rows.any(axis=1)
    return pa.FixedSizeListArray.from_arrays(
        pa.array(rows.reshape(-1)), matrix.shape[1], mask=pa.array(missing)
    )
