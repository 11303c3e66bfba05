"""A tiny synthetic dataset with features made from its true facets, for Ray Train and eval tests.

Features are noisy one-hots of the facets each modality shows, so training and evaluation run in
seconds without loading encoders. Widths: text 22, image 12, audio 13.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymm.config import RaymmConfig, load_config
from raymm.data.synth import synthesize

SHOWN = {"text": ("genre", "style", "topic"), "image": ("style", "palette"), "audio": ("genre", "mood")}
DIMS = {"text": 22, "image": 12, "audio": 13}


def facet_dataset(root: Path, seed: int = 5, missing_image: float = 0.3) -> tuple[Path, Path]:
    """Synthesize the ``tiny`` benchmark into ``root/data`` and write ``root/features.parquet``.

    Returns (data directory, features file). A modality missing from an item is null in its features.
    """
    config = load_config(None, ["synth.size=tiny", f"synth.missing.image={missing_image}"])
    synthesize(config.synth, str(root / "data"), seed=seed, progress=False)
    facets = pq.read_table(root / "data" / "facets.parquet")
    items = pq.read_table(root / "data" / "items.parquet")
    rng = np.random.default_rng(0)
    columns: dict[str, pa.Array] = {"item_id": facets.column("item_id").combine_chunks()}
    for modality, names in SHOWN.items():
        parts = [
            np.eye(int(facets.column(n).to_numpy().max()) + 1)[facets.column(n).to_numpy()] for n in names
        ]
        matrix = np.concatenate(parts, axis=1).astype(np.float32)
        matrix += rng.normal(0, 0.3, matrix.shape).astype(np.float32)
        missing = pa.array(np.asarray(items.column(modality).is_null()))
        values = pa.array(matrix.reshape(-1))
        columns[modality] = pa.FixedSizeListArray.from_arrays(values, matrix.shape[1], mask=missing)
    pq.write_table(pa.table(columns), root / "features.parquet")
    return root / "data", root / "features.parquet"


def small_model_config(out: Path, *overrides: str) -> RaymmConfig:
    """A config for fast real training runs on the facet dataset: 32-d model, batches of 128."""
    return load_config(
        None,
        [
            f"out={out}",
            "ray.num_cpus=2",
            "train.batch_size=128",
            "model.align.shared_dim=32",
            "model.towers.embed_dim=32",
            *overrides,
        ],
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
