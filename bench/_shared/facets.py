"""Facet features: noisy one-hots of the synthetic benchmark's true facets, made without an encoder.

The serving benchmarks train on them and ``eval_scale.py`` evaluates on them; they are the features
``tests/fixtures.py::facet_dataset`` writes (text 22-d, image 12-d, audio 13-d at ``tiny``), so a
model trains in seconds. Every caller passes its own generator: the draws, and so the features,
are the same as before these helpers were shared.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymm.config import load_config

#: The facets each modality shows (tests/fixtures.py).
SHOWN = {"text": ("genre", "style", "topic"), "image": ("style", "palette"), "audio": ("genre", "mood")}
#: The sd of the Gaussian noise added to every one-hot.
NOISE = 0.3


def facet_codes(facets: pa.Table) -> dict[str, np.ndarray]:
    """Each shown facet's integer codes, one per item (the rows of ``facets.parquet``)."""
    return {name: facets.column(name).to_numpy() for names in SHOWN.values() for name in names}


def cardinalities(facets: pa.Table) -> dict[str, int]:
    """Each shown facet's number of values (its largest code + 1), in :data:`SHOWN`'s order."""
    return {name: int(codes.max()) + 1 for name, codes in facet_codes(facets).items()}


def one_hots(codes: Mapping[str, np.ndarray], cardinality: Mapping[str, int], modality: str) -> np.ndarray:
    """(N, sum of the cardinalities) float32: the one-hots of the facets ``modality`` shows, side by side."""
    return np.concatenate(
        [np.eye(cardinality[name], dtype=np.float32)[codes[name]] for name in SHOWN[modality]], axis=1
    )


def add_noise(matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``matrix`` plus N(0, :data:`NOISE`) noise, in place (float32); returns it."""
    matrix += rng.normal(0, NOISE, matrix.shape).astype(np.float32)
    return matrix


def vector_column(matrix: np.ndarray, missing: pa.Array | None = None) -> pa.FixedSizeListArray:
    """A features column: one fixed-size list per row of ``matrix``, null where ``missing``."""
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1], mask=missing)


def tiny_facet_dataset(root: Path, seed: int, missing_image: float) -> tuple[Path, Path]:
    """(data directory, features file): the ``tiny`` benchmark and its facet features, as
    ``tests/fixtures.py::facet_dataset`` makes them; a modality an item lacks is null. What an
    earlier call wrote under ``root`` is replaced."""
    from raymm.data.synth import synthesize

    shutil.rmtree(root / "data", ignore_errors=True)

    config = load_config(None, ["synth.size=tiny", f"synth.missing.image={missing_image}"])
    synthesize(config.synth, str(root / "data"), seed=seed, progress=False)
    facets = pq.read_table(root / "data" / "facets.parquet")
    items = pq.read_table(root / "data" / "items.parquet")
    codes, cardinality = facet_codes(facets), cardinalities(facets)
    rng = np.random.default_rng(0)
    columns: dict[str, pa.Array] = {"item_id": facets.column("item_id").combine_chunks()}
    for modality in SHOWN:
        matrix = add_noise(one_hots(codes, cardinality, modality), rng)
        columns[modality] = vector_column(matrix, pa.array(np.asarray(items.column(modality).is_null())))
    pq.write_table(pa.table(columns), root / "features.parquet")
    return root / "data", root / "features.parquet"
