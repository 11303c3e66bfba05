"""The model artifact of design.md: one directory that serving and evaluation load.

    manifest.json         :class:`Manifest`: format, raymm version, model version, created_at, data
                          fingerprint, input dims, embedding dim, item count, config, metrics,
                          ``encoders`` (the feature encoders the model reads, as ``features.json``
                          records them) and ``stages``: one entry per trained stage (``retrieval``,
                          then ``rank`` once a ranker is added)
    config.json           the TwoTower's own config (written by TwoTower.save_pretrained)
    weights.safetensors   its weights
    item_vectors.parquet  item_id, vector (fixed_size_list<float32>[embed_dim]) for every item,
                          cold-start items included; popularity; and for cross-media search
                          ``aligned_<modality>`` (fixed_size_list<float32>[shared_dim], null where
                          the item lacks the modality) for every modality the model reads
    collab.safetensors    optional, the served blend's item-item part, and
    content.safetensors   optional, its content part (raymm.models.blend_parts)
    encoders/             optional, fitted state an encoder needs to encode new content the way
                          the features were made (``<modality>.json``: the TF-IDF IDF)
    ranker/               optional, the ranking stage (raymm.models.ranker): config.json,
                          weights.safetensors, items.safetensors

The directory is a local path or any URI :mod:`raymm.data.io` opens (``s3://bucket/model``); pass
URIs as ``str`` (``pathlib.Path`` turns ``s3://`` into ``s3:/``). Every file is written under a
temporary name and moved into place, and ``manifest.json`` is removed first and written last, so a
reader never finds a manifest beside half of a model. :func:`load_artifact` validates the manifest
before anything else is read and refuses another format, a newer format version, features whose
dimensions differ from the model's inputs, or encoders other than the ones the model was trained on.
An artifact written before the aligned columns existed still loads; only
:meth:`Artifact.aligned_vectors` (what search needs) refuses it, with :class:`NoAlignedVectorsError`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

import raymm
from raymm.data import io
from raymm.errors import DataError
from raymm.models.blend_parts import (
    COLLAB,
    CONTENT,
    CollabVectors,
    ContentVectors,
    read_collab_vectors,
    read_content_vectors,
)
from raymm.models.errors import ModelLoadError, NoAlignedVectorsError
from raymm.models.persist import as_uri, read_document
from raymm.models.towers import TwoTower

ARTIFACT_FORMAT = "raymm.model"
ARTIFACT_VERSION = 1
MANIFEST = "manifest.json"
ITEM_VECTORS = "item_vectors.parquet"
#: The ranking stage's sub-directory (written by :mod:`raymm.models.ranker`); see :func:`ranker_dir`.
RANKER_DIR = "ranker"
#: Column name prefix of the per-modality aligned vectors in ``item_vectors.parquet``.
ALIGNED_PREFIX = "aligned_"
#: Sub-directory of fitted encoder state (see :func:`encoder_state_uri`).
ENCODER_STATE_DIR = "encoders"
#: The fields of an encoder record that must agree for two encoders to give the same vectors.
ENCODER_FIELDS = ("encoder_id", "revision", "pooling", "dim")


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
    and written back by :func:`record_stage`. ``encoders`` and ``notes`` are empty for artifacts
    written before they were recorded.
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
    #: What a reader of the metrics must know about how the model was made, one sentence each
    #: (e.g. an alignment with a single modality, which aligns nothing).
    notes: list[str] = Field(default_factory=list)


@dataclass
class AlignedVectors:
    """Every catalog item's aligned vectors, row ``i`` for the item table's row ``i``.

    ``vectors`` modality -> (N, shared_dim) float32: the item tower's projection of that modality
    into the shared space (L2-normalised; zero rows where absent); ``present`` modality -> (N,)
    bool. Cross-media search compares a text query with these.
    """

    vectors: dict[str, np.ndarray]
    present: dict[str, np.ndarray]


@dataclass
class Artifact:
    """A loaded artifact: the model (eval mode), its manifest and the item vectors table.

    ``directory`` is where it was loaded from (None when built in memory).
    """

    model: TwoTower
    manifest: Manifest
    item_vectors: pa.Table
    directory: str | None = None

    @property
    def version(self) -> str:
        """The model version serving reports with each recommendation."""
        return self.manifest.model_version

    @property
    def item_ids(self) -> np.ndarray:
        """(N,) the item ids as str objects, in the item table's order."""
        return np.asarray(self.item_vectors.column("item_id").to_pylist(), dtype=object)

    def vectors(self) -> np.ndarray:
        """(N, embed_dim) float32 item vectors (the retrieval vectors, item-id embedding included)."""
        return vector_matrix(self.item_vectors.column("vector"))[0]

    def collab_vectors(self) -> CollabVectors | None:
        """The item-item part's vectors, or None for an artifact without one (its blend gives the
        item-item part weight 0, or it predates it). :class:`ModelLoadError` for a file that does
        not fit the item table."""
        if self.directory is None:
            return None
        return read_collab_vectors(self.directory, self.manifest.n_items, self.manifest.embed_dim)

    def content_vectors(self) -> ContentVectors | None:
        """The content part's vectors, or None for an artifact without one (its blend gives the
        content part weight 0, or it predates it). :class:`ModelLoadError` for a file that does not
        fit the item table."""
        return None if self.directory is None else read_content_vectors(self.directory, self.manifest.n_items)

    @property
    def has_aligned_vectors(self) -> bool:
        """Whether the item table holds the aligned vectors search needs."""
        return any(name.startswith(ALIGNED_PREFIX) for name in self.item_vectors.column_names)

    def aligned_vectors(self) -> AlignedVectors:
        """Each modality's aligned vectors of every item, as written by :func:`write_artifact`.

        Raises :class:`NoAlignedVectorsError` for an artifact written before they were recorded.
        """
        if not self.has_aligned_vectors:
            where = self.directory or "this artifact"
            raise NoAlignedVectorsError(
                f"{where} predates cross-media search: its {ITEM_VECTORS} has no {ALIGNED_PREFIX}<modality> "
                f"columns (per-modality aligned vectors); re-train with this raymm to write them "
                f"(recommendations from it still work)"
            )
        vectors, present = {}, {}
        for modality in self.model.modalities:
            vectors[modality], present[modality] = vector_matrix(
                self.item_vectors.column(ALIGNED_PREFIX + modality)
            )
        return AlignedVectors(vectors, present)


def vector_matrix(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A ``fixed_size_list<float32>[D]`` column as (N, D) float32 (zero rows where null) and its
    (N,) bool validity."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.list_size
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    flat = np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    matrix = np.zeros((len(array), width), dtype=np.float32)
    # flatten() may or may not drop the slots of null rows, depending on how the array was built.
    if flat.size == len(array) * width:
        matrix[valid] = flat.reshape(-1, width)[valid]
    else:
        matrix[valid] = flat.reshape(-1, width)
    return matrix, valid


def _vector_column(matrix: np.ndarray, present: np.ndarray | None = None) -> pa.FixedSizeListArray:
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    mask = None if present is None else pa.array(~present)
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1], mask=mask)


def _as_numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _aligned_columns(
    model: TwoTower,
    n_items: int,
    aligned: Mapping[str, np.ndarray | torch.Tensor],
    present: Mapping[str, np.ndarray | torch.Tensor] | None,
) -> dict[str, pa.FixedSizeListArray]:
    """``aligned_<modality>`` columns; ValueError unless they cover the model's modalities with
    (N, shared_dim) vectors and (N,) bool presence."""
    if present is None:
        raise ValueError("aligned vectors need aligned_present (modality -> (N,) bool) beside them")
    expected = set(model.modalities)
    if set(aligned) != expected or set(present) != expected:
        raise ValueError(
            f"aligned vectors must cover the model's modalities {sorted(expected)}, got "
            f"{sorted(aligned)} (vectors) and {sorted(present)} (presence)"
        )
    width = model.config.align.shared_dim
    columns = {}
    for modality in model.modalities:
        matrix = _as_numpy(aligned[modality]).astype(np.float32, copy=False)
        mask = _as_numpy(present[modality]).astype(bool, copy=False)
        if matrix.shape != (n_items, width) or mask.shape != (n_items,):
            raise ValueError(
                f"aligned {modality} vectors must be ({n_items}, {width}) with ({n_items},) presence, "
                f"got {matrix.shape} and {mask.shape}"
            )
        columns[ALIGNED_PREFIX + modality] = _vector_column(matrix, mask)
    return columns


def ranker_dir(directory: str | Path) -> str:
    """The URI of the artifact's ranking stage (``<directory>/ranker``), for local paths and URIs alike."""
    return io.join(as_uri(directory), RANKER_DIR)


def encoder_state_uri(directory: str | Path, modality: str) -> str:
    """Where the artifact keeps the fitted state of ``modality``'s encoder (``encoders/<modality>.json``).

    Only encoders that are fitted on the catalog (TF-IDF) have one; the file may not exist.
    """
    return io.join(as_uri(directory), ENCODER_STATE_DIR, f"{modality}.json")


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
    aligned: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    aligned_present: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    encoder_state: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    collab: CollabVectors | None = None,
    content: ContentVectors | None = None,
) -> Manifest:
    """Write the artifact directory (local path or URI); returns its manifest.

    ``item_ids`` (N,) and ``item_vectors`` (N, E) float32 are every catalog row. ``encoders`` is
    the ``encoders`` section of the ``features.json`` the model was trained on (modality ->
    encoder_id, revision, pooling, dim); ``None`` records none. ``popularity`` (N,) counts of each
    item's positive training events join the item table (serving's popularity fallback reads
    them). ``aligned`` modality -> (N, shared_dim) and ``aligned_present`` modality -> (N,) bool,
    for every modality the model reads, are the item tower's aligned vectors (``ItemEncoding
    .projected`` / ``.present`` of the same pass); they become the ``aligned_<modality>`` columns
    cross-media search reads (None: an artifact without search). ``encoder_state`` modality -> URI
    of a fitted encoder's state file (the features' TF-IDF IDF) is copied to
    :func:`encoder_state_uri`. ``notes`` become the manifest's ``notes``. ``collab`` (the item-item part's
    vectors) is written to :data:`COLLAB`, ``content`` (the content part's) to :data:`CONTENT`. A ranker or encoder state left in ``directory`` by an earlier model
    is removed: the ranker was fitted on that model's vectors and would not fit these.
    Raises :class:`ValueError` if the ids and vectors differ in length, the aligned vectors do not
    cover the model's modalities with (N, shared_dim) rows, or an encoder record lacks a field.
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
            notes=list(notes),
        )
    except ValidationError as exc:
        raise ValueError(f"the manifest of {uri} does not validate: {exc}") from None
    table = pa.table(
        {
            "item_id": pa.array(np.asarray(item_ids).astype(str), pa.string()),
            "vector": _vector_column(vectors),
        }
    )
    if popularity is not None:
        counts = np.asarray(popularity)
        if counts.shape != (len(item_ids),):
            raise ValueError(f"popularity must be ({len(item_ids)},) counts, got shape {counts.shape}")
        # Float: with a popularity half-life the counts are recency-weighted.
        table = table.append_column("popularity", pa.array(counts.astype(np.float64)))
    if aligned is not None:
        for name, column in _aligned_columns(model, len(item_ids), aligned, aligned_present).items():
            table = table.append_column(name, column)
    state = {
        m: io.read_bytes(source, what=f"{m} encoder state") for m, source in (encoder_state or {}).items()
    }
    # Checked before anything is removed: a part that does not fit leaves the old artifact whole.
    if collab is not None:
        collab.check(len(item_ids), int(vectors.shape[1]), "the item-item vectors")
    if content is not None:
        content.check(len(item_ids), "the content vectors")
    # The old manifest goes first: until the new one is written the directory is no artifact.
    io.remove(io.join(uri, MANIFEST))
    io.remove(ranker_dir(uri))
    io.remove(io.join(uri, ENCODER_STATE_DIR))
    io.remove(io.join(uri, COLLAB))
    io.remove(io.join(uri, CONTENT))
    model.save_pretrained(uri)
    if collab is not None:
        collab.write(uri)
    if content is not None:
        content.write(uri)
    for modality, data in state.items():
        io.write_bytes(data, encoder_state_uri(uri, modality))
    io.write_table(table, io.join(uri, ITEM_VECTORS))
    _write_manifest(uri, manifest)
    return manifest


def _write_manifest(uri: str, manifest: Manifest) -> None:
    io.write_json(manifest.model_dump(mode="json"), io.join(uri, MANIFEST))


def trained_top_n(manifest: Manifest) -> int:
    """How many of the retriever's candidates the ranker was trained on: the artifact's
    ``rank.retriever_top_n`` (200 by default), the most serving may hand it."""
    return int(manifest.config.get("rank", {}).get("retriever_top_n", 200))


def served_top_n(manifest: Manifest) -> int:
    """How many of the retriever's candidates serving hands the ranker for a request of at most
    that many items: the ``served_top_n`` the rank stage chose on validation, else
    :func:`trained_top_n`."""
    chosen = manifest.stages.get("rank", {}).get("metrics", {}).get("served_top_n")
    return trained_top_n(manifest) if chosen is None else int(chosen)


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


def encoder_differences(record: EncoderRecord, description: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Field -> (recorded value, ``description``'s value) for each of :data:`ENCODER_FIELDS` that
    differs; empty when the two encoders give the same vectors."""
    saved = record.model_dump()
    return {
        key: (saved[key], description.get(key))
        for key in ENCODER_FIELDS
        if saved[key] != description.get(key)
    }


def check_encoders(manifest: Manifest, encoders: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """Refuse features made by other encoders than the ones the model was trained on.

    ``encoders`` is a ``features.json`` ``encoders`` section (modality -> encoder_id, revision,
    pooling, dim). Only modalities both sides record are compared (an artifact written before
    encoders were recorded has none). Raises :class:`ModelLoadError` naming each differing field,
    with the model's value and the features'.
    """
    wrong = [
        f"{modality}.{key}: model has {saved!r}, features have {given!r}"
        for modality, record in manifest.encoders.items()
        if modality in encoders
        for key, (saved, given) in encoder_differences(record, encoders[modality]).items()
    ]
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
    _check_aligned_columns(table, model, vectors_uri)
    return Artifact(model, manifest, table, uri)


def _check_aligned_columns(table: pa.Table, model: TwoTower, vectors_uri: str) -> None:
    """Refuse aligned columns that do not match the model's modalities and shared width (none at all
    is an artifact that predates search, which loads)."""
    found = {n.removeprefix(ALIGNED_PREFIX) for n in table.column_names if n.startswith(ALIGNED_PREFIX)}
    if not found:
        return
    if found != set(model.modalities):
        raise ModelLoadError(
            f"{vectors_uri}: aligned vectors for {sorted(found)}, the model reads {sorted(model.modalities)}"
        )
    width = model.config.align.shared_dim
    for modality in model.modalities:
        column_type = table.schema.field(ALIGNED_PREFIX + modality).type
        if getattr(column_type, "list_size", None) != width:
            raise ModelLoadError(
                f"{vectors_uri}: {ALIGNED_PREFIX}{modality} has type {column_type}, expected "
                f"fixed_size_list<float32>[{width}] (the model's align.shared_dim)"
            )
