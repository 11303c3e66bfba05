"""The extract stage as ``raymm extract`` runs it, and which features train and evaluate read.

:func:`extract` encodes a dataset's items (:func:`raymm.features.pipeline.extract`), unless the
dataset is an MMRec import with vectors and no media: then there is nothing to encode, and the
result says where the imported features are. :func:`resolve_features` is the rule train and
evaluate follow when no features are named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raymm.config import RaymmConfig
from raymm.console import Plan, StageResult
from raymm.settings_base import MODALITIES

if TYPE_CHECKING:
    from raymm.features.pipeline import ExtractResult


def plan_extract(
    config: RaymmConfig, *, out: str | None = None, incremental: bool = False, plan: Plan | None = None
) -> Plan:
    """The encoding steps (one per modality, with its actor pool) into ``out``, added to ``plan``."""
    plan = plan or Plan("extract")
    out = out or config.stage_dir("features")
    shared = config.extract.shared
    for modality in config.extract.modalities:
        section = getattr(config.extract, modality)
        model = section.model or section.kind
        res = section.resources
        if res.compute == "tasks":
            pool = f"tasks, at most {res.max_actors} x {res.num_cpus} CPU/{res.num_gpus} GPU"
        elif config.extract.pool == "shared":
            pool = (
                f"the shared pool: {shared.min_actors}-{shared.max_actors} actors x "
                f"{shared.num_cpus} CPU/{shared.num_gpus} GPU"
            )
        else:
            pool = f"{res.min_actors}-{res.max_actors} actors x {res.num_cpus} CPU/{res.num_gpus} GPU"
        plan.add(f"encode {modality} with {model} ({pool})", out)
    if incremental:
        plan.add("only items without features (--incremental)", out)
    return plan


def extract_rows(result: ExtractResult) -> list[tuple[str, Any]]:
    """Summary rows of an extraction: items encoded, and per modality its encoder and counts."""
    rows: list[tuple[str, Any]] = [("items encoded this run", f"{result.encoded_items:,}")]
    for modality in result.manifest["modalities"]:
        encoder = result.manifest["encoders"][modality]
        counts = result.manifest["counts"][modality]
        rows.append(
            (
                f"{modality} ({encoder['encoder_id']}, {encoder['dim']}-d)",
                f"{counts['encoded']:,} encoded, {counts['missing']:,} missing, {counts['failed']:,} failed",
            )
        )
    rows += [(f"{modality} skipped", why) for modality, why in result.skipped.items()]
    return rows


@dataclass
class ExtractRun(StageResult):
    """An extraction (``result``) into ``features``; or, for a dataset whose items carry no media but
    which was imported with features (``imported``), no extraction (``result`` None)."""

    dataset: str
    features: str
    result: ExtractResult | None
    imported: str | None = None
    nothing_to_encode: tuple[str, ...] = ()
    elapsed_s: float | None = None
    title = "extract"

    def summary_rows(self) -> list[tuple[str, Any]]:
        if self.result is None:
            assert self.imported is not None
            return [
                ("dataset", self.dataset),
                ("features", f"already imported: {describe_features(self.imported)}"),
                ("nothing to encode", f"its items have no {' / '.join(self.nothing_to_encode)} to extract"),
                ("next", "`raymm train` and `raymm evaluate` use them when --features is not given"),
            ]
        rows: list[tuple[str, Any]] = [("dataset", self.dataset), ("features", self.features)]
        rows += extract_rows(self.result)
        if self.imported is not None:
            rows.append(
                (
                    "imported features",
                    f"{self.imported} too; pass --features {self.imported} to use those instead",
                )
            )
        return rows


def extract(
    config: RaymmConfig,
    *,
    data: str | None = None,
    out: str | None = None,
    incremental: bool = False,
    progress: bool = True,
) -> ExtractRun:
    """Encode the items of ``data`` (default ``<out>/data``) into ``out`` (default ``<out>/features``).

    With ``incremental``, only items without features in ``out``. A dataset imported with features
    whose items have no media to encode is left alone (the result's ``result`` is None). Raises what
    :func:`raymm.features.pipeline.extract` raises.
    """
    from raymm.data import io
    from raymm.data.dataset import ITEMS, imported_features
    from raymm.features import pipeline

    data = data or config.stage_dir("data")
    out = out or config.stage_dir("features")
    imported = imported_features(data)
    if imported is not None:
        presence = pipeline.catalog_presence(io.join(data, ITEMS), list(config.extract.modalities))
        if not any(presence.values()):
            return ExtractRun(data, imported, None, imported, tuple(presence))
    result = pipeline.extract(config, data, out, incremental=incremental, progress=progress)
    return ExtractRun(data, out, result, imported, elapsed_s=result.elapsed_s)


def resolve_features(features: str | None, default: str, data: str) -> tuple[str, bool]:
    """(features to use, whether they are the dataset's imported ones) for train and evaluate.

    ``features`` (``--features``) when given, else ``default`` (``<out>/features``, what
    ``raymm extract`` writes); when that does not exist and the dataset carries precomputed features
    (an MMRec import's ``features.parquet``), those.
    """
    from raymm.data import io
    from raymm.data.dataset import imported_features

    if features is not None:
        return features, False
    if io.exists(default):
        return default, False
    imported = imported_features(data)
    return (default, False) if imported is None else (imported, True)


def features_for(
    config: RaymmConfig, data: str, features: str | None, say: Callable[[str], None] | None = None
) -> str:
    """:func:`resolve_features` with the configuration's default; ``say`` is told when it falls back
    to the features imported with the dataset."""
    default = config.stage_dir("features")
    chosen, imported = resolve_features(features, default, data)
    if imported and say is not None:
        say(
            f"features: {default} does not exist, so using the features imported with the dataset: "
            f"{describe_features(chosen)}; --features chooses others"
        )
    return chosen


def describe_features(uri: str) -> str:
    """``<uri> (text, image: precomputed:mmrec)``: a features file and the modalities and encoders it holds."""
    import pyarrow.parquet as pq

    from raymm.data import io

    filesystem, path = io.resolve(uri)
    schema = pq.read_schema(path, filesystem=filesystem)
    metadata = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    modalities = [name for name in MODALITIES if name in schema.names]
    encoders = sorted({metadata[f"encoder.{m}"] for m in modalities if f"encoder.{m}" in metadata})
    return f"{uri} ({', '.join(modalities) or 'no modality'}" + (
        f": {', '.join(encoders)})" if encoders else ")"
    )
