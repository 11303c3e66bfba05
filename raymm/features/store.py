"""Reading extracted features, without Ray: what training, evaluation and serving load.

``raymm extract`` (:mod:`raymm.features.pipeline`, on Ray Data) writes a features directory:
``features.json`` (the encoders that made each modality's vectors, counts) and parquet parts.
This module only reads it, so the recommendation core can load features without importing Ray;
it also names what the pipeline records about an encoder (:func:`encoder_description`), which
serving compares with the encoders it builds for new items.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow.fs import FileSelector

from raymm.data import io
from raymm.errors import DataError

FEATURES_MANIFEST = "features.json"
#: The fitted IDF of a TF-IDF text encoder, beside the parts (reused by incremental runs and copied
#: into the model artifact so serving encodes new text with the same IDF).
TFIDF_STATE = "tfidf_idf.json"


def feature_files(out: str) -> list[str]:
    """The parquet parts directly under the features directory ``out``, sorted ([] if absent)."""
    if not io.exists(out):
        return []
    filesystem, path = io.resolve(out)
    infos = filesystem.get_file_info(FileSelector(path, recursive=False))
    return sorted(info.path for info in infos if info.path.endswith(".parquet"))


def load_features(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a features directory (or one features parquet file) into one table, sorted by item_id."""
    filesystem, resolved = io.resolve(path)
    if not io.exists(path):
        raise DataError(f"features not found: {path} (run `raymm extract` first)")
    if resolved.endswith(".parquet"):
        table = pq.read_table(resolved, filesystem=filesystem, columns=columns)
    else:
        files = feature_files(path)
        if not files:
            raise DataError(f"features directory {path} holds no parquet parts")
        table = pads.dataset(files, filesystem=filesystem, format="parquet").to_table(columns=columns)
    return table.sort_by("item_id")


def read_encoders(path: str) -> dict[str, Any]:
    """The encoders recorded in the features manifest (modality -> id, revision, pooling, dim, ...).

    {} for a features file or directory without a manifest (e.g. imported precomputed features).
    """
    manifest = io.join(path, FEATURES_MANIFEST)
    if path.endswith(".parquet") or not io.exists(manifest):
        return {}
    document = io.read_json(manifest, "features manifest")
    encoders = document.get("encoders", {}) if isinstance(document, dict) else {}
    return dict(encoders) if isinstance(encoders, dict) else {}


def encoder_description(encoder: Any) -> dict[str, Any]:
    """What the features record about an encoder: id, revision, pooling and dim, and for
    ``mel_stats`` audio its mel bands (``mel_bands``: the vector is bands x time segments).

    The model artifact keeps these records; serving compares them with the encoders it builds.
    """
    description: dict[str, Any] = {
        "encoder_id": encoder.encoder_id,
        "revision": encoder.revision,
        "pooling": encoder.pooling,
        "dim": int(encoder.dim),
    }
    if isinstance(getattr(encoder, "n_mels", None), int):
        description["mel_bands"] = int(encoder.n_mels)
    return description
