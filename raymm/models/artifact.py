"""The model artifact of design.md: one directory that serving and evaluation load.

    manifest.json         :class:`Manifest`: format, raymm version, model version, created_at, data
                          fingerprint, input dims, embedding dim, item count, config, metrics,
                          ``encoders`` (the feature encoders the model reads, as ``features.json``
                          records them) and ``stages``: one entry per trained stage (``retrieval``,
                          then ``rank`` once a ranker is added)
    config.json           the TwoTower's own config (written by TwoTower.save_pretrained)
    weights.safetensors   its weights
    item_vectors.parquet  item_id, vector (fixed_size_list<float32>[embed_dim]) for every item,
                          cold-start items included
    ranker/               optional, the ranking stage (raymm.models.ranker): config.json,
                          weights.safetensors, items.safetensors

The directory is a local path or any URI :mod:`raymm.data.io` opens (``s3://bucket/model``); pass
URIs as ``str`` (``pathlib.Path`` turns ``s3://`` into ``s3:/``). Every file is written under a
temporary name and moved into place, and ``manifest.json`` is removed first and written last, so a
reader never finds a manifest beside half of a model. :func:`load_artifact` validates the manifest
before anything else is read and refuses another format, a newer format version, features whose
dimensions differ from the model's inputs, or encoders other than the ones the model was trained on.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

import raymm
from raymm.data import io
from raymm.errors import DataError
from raymm.models.errors import ModelLoadError
from raymm.models.persist import as_uri, read_document
from raymm.models.towers import TwoTower

ARTIFACT_FORMAT = "raymm.model"
ARTIFACT_VERSION = 1
MANIFEST = "manifest.json"
ITEM_VECTORS = "item_vectors.parquet"
#: The ranking stage's sub-directory (written by :mod:`raymm.models.ranker`); see :func:`ranker_dir`.
RANKER_DIR = "ranker"


class EncoderRecord(BaseModel):
    """One modality's feature encoder, as ``features.json`` records it (``encoder_description``).

    Serving must encode new items and queries with the same encoder: same ``encoder_id``,
    ``revision`` (a hash of its weights and output-affecting settings), ``pooling`` and ``dim``.
    Other keys a newer features stage may add are kept.
    """

    model_config = ConfigDict(extra="allow")

    encoder_id: str
    revision: str
    pooling: str
    dim: PositiveInt


class Manifest(BaseModel):
    """``manifest.json``: what the artifact is and how it was made.

    Keys this raymm does not know (written by a newer one of the same format version) are kept
    and written back by :func:`record_stage`. ``encoders`` is empty for artifacts written before
    it was recorded.
    """

    model_config = ConfigDict(extra="allow")

    format: str = ARTIFACT_FORMAT
    format_version: int = ARTIFACT_VERSION
    raymm_version: str
    model_version: str
    created_at: dt.datetime
    data_fingerprint: str
    input_dims: dict[str, PositiveInt]
    embed_dim: PositiveInt
    n_items: int = Field(ge=0)
    config: dict[str, Any]
    metrics: dict[str, Any]
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    encoders: dict[str, EncoderRecord] = Field(default_factory=dict)


@dataclass
class Artifact:
    """A loaded artifact: the model (eval mode), its manifest and the item vectors table."""

    model: TwoTower
    manifest: Manifest
    item_vectors: pa.Table

    @property
    def version(self) -> str:
        """The model version serving reports with each recommendation."""
        return self.manifest.model_version


def ranker_dir(directory: str | Path) -> str:
    """The URI of the artifact's ranking stage (``<directory>/ranker``), for local paths and URIs alike."""
    return io.join(as_uri(directory), RANKER_DIR)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()  # np.int64 stays an int, np.float32 becomes a float
    raise TypeError(f"{type(value).__name__} is not JSON serializable: {value!r}")


def _json_safe(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` with NumPy scalars made plain numbers (training metrics often hold them).

    Raises :class:`TypeError` naming any other value JSON cannot hold.
    """
    return dict(json.loads(json.dumps(document, default=_plain)))


def write_artifact(
    directory: str | Path,
    model: TwoTower,
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
    *,
    config: dict[str, Any],
    metrics: dict[str, Any],
    data_fingerprint: str,
    encoders: Mapping[str, Mapping[str, Any]] | None = None,
    popularity: np.ndarray | None = None,
) -> Manifest:
    """Write the artifact directory (local path or URI); returns its manifest.

    ``item_ids`` (N,) and ``item_vectors`` (N, E) float32 are every catalog row. ``encoders`` is
    the ``encoders`` section of the ``features.json`` the model was trained on (modality ->
    encoder_id, revision, pooling, dim); ``None`` records none. ``popularity`` (N,) counts of each
    item's positive training events join the item table (serving's popularity fallback reads
    them). A ranker left in ``directory`` by
    an earlier model is removed: it was fitted on that model's vectors and would not fit these.
    Raises :class:`ValueError` if the ids and vectors differ in length, or an encoder record lacks
    a field.
    """
    uri = as_uri(directory)
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(item_ids) != vectors.shape[0]:
        raise ValueError(f"item_vectors must be (N, E) for N={len(item_ids)} item ids, got {vectors.shape}")
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    metrics = _json_safe(metrics)
    try:
        manifest = Manifest(
            raymm_version=raymm.__version__,
            model_version=f"{created:%Y%m%dT%H%M%SZ}-{data_fingerprint[:8]}",
            created_at=created,
            data_fingerprint=data_fingerprint,
            input_dims=dict(model.input_dims),
            embed_dim=int(vectors.shape[1]),
            n_items=len(item_ids),
            config=_json_safe(config),
            metrics=metrics,
            stages={
                "retrieval": {"created_at": created.isoformat(), "best_epoch": metrics.get("best_epoch")}
            },
            encoders={m: EncoderRecord.model_validate(dict(e)) for m, e in (encoders or {}).items()},
        )
    except ValidationError as exc:
        raise ValueError(f"the manifest of {uri} does not validate: {exc}") from None
    # The old manifest goes first: until the new one is written the directory is no artifact.
    io.remove(io.join(uri, MANIFEST))
    io.remove(ranker_dir(uri))
    model.save_pretrained(uri)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    table = pa.table({"item_id": pa.array(np.asarray(item_ids).astype(str), pa.string()), "vector": column})
    if popularity is not None:
        counts = np.asarray(popularity)
        if counts.shape != (len(item_ids),):
            raise ValueError(f"popularity must be ({len(item_ids)},) counts, got shape {counts.shape}")
        table = table.append_column("popularity", pa.array(counts.astype(np.int64)))
    io.write_table(table, io.join(uri, ITEM_VECTORS))
    _write_manifest(uri, manifest)
    return manifest


def _write_manifest(uri: str, manifest: Manifest) -> None:
    io.write_json(manifest.model_dump(mode="json"), io.join(uri, MANIFEST))


def record_stage(directory: str | Path, stage: str, entry: dict[str, Any]) -> Manifest:
    """Add (or replace) ``stages[stage]`` in the artifact's manifest, rewriting it atomically.

    ``entry`` gets a ``created_at`` stamp. Returns the new manifest; raises
    :class:`ModelLoadError` if ``directory`` holds no valid manifest.
    """
    uri = as_uri(directory)
    manifest = read_manifest(uri)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    stages = dict(manifest.stages)
    stages.setdefault("retrieval", {"created_at": manifest.created_at.isoformat()})
    stages[stage] = {"created_at": created, **_json_safe(entry)}
    manifest = manifest.model_copy(update={"stages": stages})
    _write_manifest(uri, manifest)
    return manifest


def read_manifest(directory: str | Path) -> Manifest:
    """The validated manifest of the artifact at ``directory``.

    Raises :class:`ModelLoadError` naming the file if it is missing, malformed, of another
    format, of a newer format version, or lacks a field.
    """
    uri = io.join(as_uri(directory), MANIFEST)
    document = read_document(
        uri,
        expected_format=ARTIFACT_FORMAT,
        versions=range(1, ARTIFACT_VERSION + 1),
        what="artifact manifest",
        missing="not a raymm model artifact",
    )
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        raise ModelLoadError(f"{uri}: the manifest is invalid: {exc}") from None


def check_encoders(manifest: Manifest, encoders: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """Refuse features made by other encoders than the ones the model was trained on.

    ``encoders`` is a ``features.json`` ``encoders`` section (modality -> encoder_id, revision,
    pooling, dim). Only modalities both sides record are compared (an artifact written before
    encoders were recorded has none). Raises :class:`ModelLoadError` naming each differing field,
    with the model's value and the features'.
    """
    wrong = []
    for modality, record in manifest.encoders.items():
        if modality not in encoders:
            continue
        saved = record.model_dump()
        for key in ("encoder_id", "revision", "pooling", "dim"):
            if saved[key] != encoders[modality].get(key):
                wrong.append(
                    f"{modality}.{key}: model has {saved[key]!r}, features have {encoders[modality].get(key)!r}"
                )
    if wrong:
        raise ModelLoadError(
            f"{where}: the features were made by other encoders than the model's ({'; '.join(wrong)}); "
            f"re-extract with the model's encoders or re-train"
        )


def load_artifact(
    directory: str | Path,
    expected_dims: dict[str, int] | None = None,
    device: str = "cpu",
    *,
    expected_encoders: Mapping[str, Mapping[str, Any]] | None = None,
) -> Artifact:
    """Load and validate an artifact (local path or URI), the model in eval mode on ``device``.

    ``expected_dims`` are the widths of the features it will read, ``expected_encoders`` the
    ``encoders`` section of their ``features.json`` (see :func:`check_encoders`). Raises
    :class:`ModelLoadError` naming the file for a missing or invalid manifest, a dimension or
    encoder that differs, or item vectors that disagree with the manifest.
    """
    uri = as_uri(directory)
    manifest = read_manifest(uri)
    saved = manifest.input_dims
    if expected_dims is not None:
        for modality, dim in expected_dims.items():
            if modality in saved and saved[modality] != dim:
                raise ModelLoadError(
                    f"{uri}: the model reads {modality} vectors of dimension {saved[modality]} but the "
                    f"features have {dim}; re-train on these features or extract with the model's encoders"
                )
    if expected_encoders is not None:
        check_encoders(manifest, expected_encoders, uri)
    model = TwoTower.from_pretrained(uri, expected_dims=saved, device=device)
    vectors_uri = io.join(uri, ITEM_VECTORS)
    try:
        table = io.read_table(vectors_uri, "item vectors")
    except DataError as exc:
        raise ModelLoadError(f"{uri}: {exc}") from None
    vector_type = table.schema.field("vector").type if "vector" in table.schema.names else None
    width = getattr(vector_type, "list_size", None)  # None unless fixed_size_list
    if width != manifest.embed_dim:
        raise ModelLoadError(
            f"{vectors_uri}: vectors have dimension {width}, manifest says {manifest.embed_dim}"
        )
    if table.num_rows != manifest.n_items:
        raise ModelLoadError(f"{vectors_uri}: holds {table.num_rows} items, manifest says {manifest.n_items}")
    return Artifact(model, manifest, table)
