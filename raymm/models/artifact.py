"""The model artifact of design.md: one directory that serving and evaluation load.

    manifest.json         format, raymm version, config, data fingerprint, metrics, created_at,
                          input dims, embedding dim, item counts, and ``stages``: one entry per
                          trained stage (``retrieval``, then ``rank`` once a ranker is added)
    config.json           the TwoTower's own config (written by TwoTower.save_pretrained)
    weights.safetensors   its weights
    item_vectors.parquet  item_id, vector (fixed_size_list<float32>[embed_dim]) for every item,
                          cold-start items included
    ranker/               optional, the ranking stage (raymm.models.ranker): config.json,
                          weights.safetensors, items.safetensors

:func:`load_artifact` validates the manifest before anything else is read and refuses another
format, a newer format version, or features whose dimensions differ from the model's inputs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import raymm
from raymm.models.errors import ModelLoadError
from raymm.models.towers import TwoTower

ARTIFACT_FORMAT = "raymm.model"
ARTIFACT_VERSION = 1
MANIFEST = "manifest.json"
ITEM_VECTORS = "item_vectors.parquet"
#: The ranking stage's sub-directory (written by :mod:`raymm.models.ranker`).
RANKER_DIR = "ranker"


@dataclass
class Artifact:
    """A loaded artifact: the model (eval mode), its manifest and the item vectors table."""

    model: TwoTower
    manifest: dict[str, Any]
    item_vectors: pa.Table

    @property
    def version(self) -> str:
        """The model version serving reports with each recommendation."""
        return str(self.manifest["model_version"])


def write_artifact(
    directory: str | Path,
    model: TwoTower,
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
    *,
    config: dict[str, Any],
    metrics: dict[str, Any],
    data_fingerprint: str,
) -> dict[str, Any]:
    """Write the artifact directory; returns the manifest. ``item_vectors`` (N, E) float32.

    A ranker left in ``directory`` by an earlier model is removed: it was fitted on that model's
    vectors and would not fit these.
    """
    path = Path(directory)
    shutil.rmtree(path / RANKER_DIR, ignore_errors=True)
    model.save_pretrained(path)
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    table = pa.table({"item_id": pa.array(item_ids.astype(str), pa.string()), "vector": column})
    pq.write_table(table, path / ITEM_VECTORS)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    manifest = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "raymm_version": raymm.__version__,
        "model_version": f"{created:%Y%m%dT%H%M%SZ}-{data_fingerprint[:8]}",
        "created_at": created.isoformat(),
        "data_fingerprint": data_fingerprint,
        "input_dims": dict(model.input_dims),
        "embed_dim": int(vectors.shape[1]),
        "n_items": len(item_ids),
        "config": config,
        "metrics": metrics,
        "stages": {"retrieval": {"created_at": created.isoformat(), "best_epoch": metrics.get("best_epoch")}},
    }
    _write_manifest(path, manifest)
    return manifest


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (a temporary file renamed over it): readers never see half."""
    temporary = path / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(temporary, path / MANIFEST)


def record_stage(directory: str | Path, stage: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Add (or replace) ``stages[stage]`` in the artifact's manifest, rewriting it atomically.

    ``entry`` gets a ``created_at`` stamp. Returns the new manifest; raises
    :class:`ModelLoadError` if ``directory`` holds no valid manifest.
    """
    path = Path(directory)
    manifest = read_manifest(path)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    stages = manifest.setdefault("stages", {})
    stages.setdefault("retrieval", {"created_at": manifest.get("created_at")})
    stages[stage] = {"created_at": created, **entry}
    _write_manifest(path, manifest)
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The validated manifest; :class:`ModelLoadError` if missing, malformed or of another format."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"{path.parent}: no {MANIFEST}; not a raymm model artifact")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ModelLoadError(f"{path}: format is {manifest.get('format')!r}, expected {ARTIFACT_FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > ARTIFACT_VERSION:
        raise ModelLoadError(
            f"{path}: format_version {version!r} is not supported by raymm {raymm.__version__} "
            f"(reads up to {ARTIFACT_VERSION})"
        )
    return manifest


def load_artifact(
    directory: str | Path, expected_dims: dict[str, int] | None = None, device: str = "cpu"
) -> Artifact:
    """Load and validate an artifact; ``expected_dims`` are the widths of the features it will read."""
    path = Path(directory)
    manifest = read_manifest(path)
    saved = manifest.get("input_dims", {})
    if expected_dims is not None:
        for modality, dim in expected_dims.items():
            if modality in saved and saved[modality] != dim:
                raise ModelLoadError(
                    f"{path}: the model reads {modality} vectors of dimension {saved[modality]} but the "
                    f"features have {dim}; re-train on these features or extract with the model's encoders"
                )
    model = TwoTower.from_pretrained(path, expected_dims=saved, device=device)
    vectors_path = path / ITEM_VECTORS
    if not vectors_path.is_file():
        raise ModelLoadError(f"{path}: no {ITEM_VECTORS}")
    table = pq.read_table(vectors_path)
    width = table.schema.field("vector").type.list_size
    if width != manifest.get("embed_dim"):
        raise ModelLoadError(
            f"{vectors_path}: vectors have dimension {width}, manifest says {manifest.get('embed_dim')}"
        )
    return Artifact(model, manifest, table)
