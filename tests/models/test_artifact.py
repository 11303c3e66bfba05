"""The model artifact: round trips on a local path and on S3, the typed manifest, refusals, the ranker."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymm.data import io
from raymm.models.artifact import (
    ARTIFACT_FORMAT,
    ITEM_VECTORS,
    MANIFEST,
    RANKER_DIR,
    Manifest,
    encoder_state_uri,
    load_artifact,
    ranker_dir,
    read_manifest,
    record_stage,
    write_artifact,
)
from raymm.models.blend_parts import CONTENT, ContentVectors
from raymm.models.config import FusionConfig, ModelConfig, RankerConfig
from raymm.models.errors import ModelLoadError, NoAlignedVectorsError
from raymm.models.ranker import Ranker, RankerInputs, read_item_inputs, write_item_inputs
from raymm.models.towers import TwoTower
from tests.conftest import Trained

from .conftest import random_batch

DIMS = {"text": 12, "image": 10, "audio": 6}
N_ITEMS = 7
ENCODERS: dict[str, dict[str, Any]] = {
    "text": {"encoder_id": "hf:bert-tiny", "revision": "a1b2c3d4", "pooling": "mean", "dim": 12},
    "image": {"encoder_id": "hf:vit-tiny", "revision": "e5f6a7b8", "pooling": "cls", "dim": 10},
    "audio": {"encoder_id": "hf:wav2vec2-tiny", "revision": "0badc0de", "pooling": "mean", "dim": 6},
}


def _model() -> TwoTower:
    torch.manual_seed(0)
    config = ModelConfig.model_validate(
        {
            "align": {"method": "contrastive", "shared_dim": 8, "hidden_dim": 16},
            "fusion": {"method": "gated", "hidden_dim": 16},
            "towers": {"embed_dim": 8, "item_hidden_dim": 16, "user_heads": 2},
        }
    )
    return TwoTower(config, DIMS).eval()


def _write(directory: str | Path, model: TwoTower | None = None) -> tuple[TwoTower, np.ndarray, Manifest]:
    model = model or _model()
    vectors = np.random.default_rng(0).standard_normal((N_ITEMS, 8)).astype(np.float32)
    manifest = write_artifact(
        directory,
        model,
        np.array([f"i{k}" for k in range(N_ITEMS)]),
        vectors,
        config={"seed": 0},
        metrics={"best_epoch": np.int64(2), "validation": {"val_recall@20": np.float32(0.25)}},
        data_fingerprint="0123456789abcdef",
        encoders=ENCODERS,
        notes=["the alignment is inactive"],
    )
    return model, vectors, manifest


def _ranker() -> Ranker:
    torch.manual_seed(1)
    config = RankerConfig(hidden_dims=[16], fusion=FusionConfig(method="gated", hidden_dim=16, heads=2))
    ranker = Ranker(config, list(DIMS), shared_dim=8, embed_dim=8, threshold=0.4, calibration=(0.8, -0.1))
    ranker.fit_context(torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]]))
    return ranker.eval()


def _inputs(vectors: np.ndarray) -> RankerInputs:
    generator = torch.Generator().manual_seed(2)
    return RankerInputs(
        {m: torch.randn(N_ITEMS, 8, generator=generator) for m in DIMS},
        {m: torch.rand(N_ITEMS, generator=generator) < 0.7 for m in DIMS},
        torch.randn(N_ITEMS, 8, generator=generator),
        torch.rand(N_ITEMS, generator=generator),
        torch.from_numpy(vectors),
    )


def _assert_same_model(loaded: TwoTower, model: TwoTower) -> None:
    saved, state = loaded.state_dict(), model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
    assert loaded.modalities == model.modalities and not loaded.training


def _assert_round_trip(directory: str | Path, model: TwoTower, vectors: np.ndarray) -> None:
    artifact = load_artifact(directory, expected_dims=DIMS)
    _assert_same_model(artifact.model, model)
    loaded_vectors = np.stack(artifact.item_vectors.column("vector").to_numpy(zero_copy_only=False))
    assert np.array_equal(loaded_vectors, vectors)
    assert artifact.item_vectors.column("item_id").to_pylist() == [f"i{k}" for k in range(N_ITEMS)]
    manifest = artifact.manifest
    assert (manifest.format, manifest.format_version) == (ARTIFACT_FORMAT, 1)
    assert (manifest.n_items, manifest.embed_dim, manifest.input_dims) == (N_ITEMS, 8, DIMS)
    assert {m: e.model_dump() for m, e in manifest.encoders.items()} == ENCODERS
    assert manifest.metrics == {"best_epoch": 2, "validation": {"val_recall@20": 0.25}}
    assert manifest.config == {"seed": 0} and manifest.data_fingerprint == "0123456789abcdef"
    assert manifest.stages["retrieval"]["best_epoch"] == 2
    assert artifact.version == manifest.model_version and manifest.model_version.endswith("-01234567")


def _edit_manifest(directory: Path, **changes: Any) -> None:
    document = json.loads((directory / MANIFEST).read_text())
    document.update(changes)
    (directory / MANIFEST).write_text(json.dumps(document))


def test_local_round_trip_keeps_weights_vectors_and_manifest(tmp_path: Path) -> None:
    model, vectors, written = _write(str(tmp_path / "model"))
    _assert_round_trip(str(tmp_path / "model"), model, vectors)
    _assert_round_trip(tmp_path / "model", model, vectors)  # a local Path works too
    assert read_manifest(tmp_path / "model") == written
    assert written.notes == ["the alignment is inactive"]
    files = io.list_dir(str(tmp_path / "model"))
    assert files == ["config.json", ITEM_VECTORS, MANIFEST, "weights.safetensors"]


def test_another_format_or_a_newer_version_is_refused_naming_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "model"
    _write(directory)
    manifest_file = str(directory / MANIFEST)
    _edit_manifest(directory, format_version=2)
    with pytest.raises(
        ModelLoadError, match=rf"{re.escape(manifest_file)}: artifact manifest format version 2 .*version 1"
    ):
        load_artifact(directory)
    _edit_manifest(directory, format="raymm.two_tower", format_version=1)
    with pytest.raises(
        ModelLoadError, match=rf"{re.escape(manifest_file)}: format 'raymm.two_tower', expected 'raymm.model'"
    ):
        read_manifest(directory)
    _edit_manifest(directory, format=ARTIFACT_FORMAT, embed_dim="wide")
    with pytest.raises(
        ModelLoadError, match=rf"(?s){re.escape(manifest_file)}: the manifest is invalid.*embed_dim"
    ):
        read_manifest(directory)
    with pytest.raises(ModelLoadError, match=r"no manifest\.json; not a raymm model artifact"):
        load_artifact(tmp_path / "nothing-here")


def test_an_older_manifest_without_encoders_and_with_unknown_keys_still_loads(tmp_path: Path) -> None:
    directory = tmp_path / "model"
    model, _, _ = _write(directory)
    document = json.loads((directory / MANIFEST).read_text())
    del document["encoders"], document["notes"]
    document["written_by_a_newer_raymm"] = {"x": 1}
    (directory / MANIFEST).write_text(json.dumps(document))
    artifact = load_artifact(directory, expected_dims=DIMS, expected_encoders=ENCODERS)
    assert artifact.manifest.encoders == {} and artifact.manifest.notes == []
    _assert_same_model(artifact.model, model)
    record_stage(directory, "rank", {"metrics": {"auc": 0.7}})
    kept = json.loads((directory / MANIFEST).read_text())
    assert kept["written_by_a_newer_raymm"] == {"x": 1} and kept["stages"]["rank"]["metrics"] == {"auc": 0.7}


def test_mismatched_dimensions_and_encoders_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "model"
    _write(directory)
    with pytest.raises(ModelLoadError, match="reads text vectors of dimension 12 but the features have 384"):
        load_artifact(directory, expected_dims={**DIMS, "text": 384})
    other = {**ENCODERS, "image": {**ENCODERS["image"], "revision": "ffffffff"}}
    with pytest.raises(
        ModelLoadError, match=r"image\.revision: model has 'e5f6a7b8', features have 'ffffffff'"
    ):
        load_artifact(directory, expected_encoders=other)
    _edit_manifest(directory, embed_dim=16)
    with pytest.raises(ModelLoadError, match=rf"{ITEM_VECTORS}: vectors have dimension 8, manifest says 16"):
        load_artifact(directory)


def test_aligned_vectors_round_trip_with_nulls_where_a_modality_is_absent(tmp_path: Path) -> None:
    model = _model()
    features, present = random_batch(N_ITEMS, DIMS, seed=3)
    with torch.no_grad():
        encoding = model.encode_items(features, present)
    directory = tmp_path / "model"
    write_artifact(
        directory,
        model,
        np.array([f"i{k}" for k in range(N_ITEMS)]),
        encoding.vectors.numpy(),
        config={},
        metrics={},
        data_fingerprint="0123456789abcdef",
        aligned=encoding.projected,
        aligned_present=encoding.present,
    )
    artifact = load_artifact(directory)
    assert artifact.has_aligned_vectors and artifact.directory == str(directory)
    aligned = artifact.aligned_vectors()
    for modality in DIMS:
        assert np.array_equal(aligned.present[modality], present[modality].numpy())
        assert np.array_equal(aligned.vectors[modality], encoding.projected[modality].numpy())
        column = artifact.item_vectors.column(f"aligned_{modality}")
        assert column.type == pa.list_(pa.float32(), 8)
        assert column.null_count == int((~present[modality]).sum()) > 0  # null, never a zero placeholder
    assert np.array_equal(artifact.vectors(), encoding.vectors.numpy())

    with pytest.raises(ValueError, match=r"must cover the model's modalities \['audio', 'image', 'text'\]"):
        write_artifact(
            directory,
            model,
            np.array([f"i{k}" for k in range(N_ITEMS)]),
            encoding.vectors.numpy(),
            config={},
            metrics={},
            data_fingerprint="0123456789abcdef",
            aligned={"text": encoding.projected["text"]},
            aligned_present={"text": encoding.present["text"]},
        )
    assert load_artifact(directory).has_aligned_vectors  # a refused write leaves the artifact as it was


def test_an_artifact_without_aligned_vectors_loads_and_says_it_predates_search(tmp_path: Path) -> None:
    directory = tmp_path / "model"
    model, vectors, _ = _write(directory)
    artifact = load_artifact(directory)
    _assert_same_model(artifact.model, model)
    assert np.array_equal(artifact.vectors(), vectors) and not artifact.has_aligned_vectors
    with pytest.raises(
        NoAlignedVectorsError, match=rf"{re.escape(str(directory))} predates cross-media search"
    ):
        artifact.aligned_vectors()


def test_encoder_state_is_copied_into_the_artifact_and_a_new_model_replaces_it(tmp_path: Path) -> None:
    state = tmp_path / "tfidf_idf.json"
    state.write_text('{"idf": [1.0]}')
    directory = str(tmp_path / "model")
    model = _model()
    arguments: dict[str, Any] = {
        "config": {},
        "metrics": {},
        "data_fingerprint": "0123456789abcdef",
    }
    ids, vectors = np.array(["a"]), np.zeros((1, 8), np.float32)
    write_artifact(directory, model, ids, vectors, encoder_state={"text": str(state)}, **arguments)
    assert Path(encoder_state_uri(directory, "text")).read_text() == '{"idf": [1.0]}'
    write_artifact(directory, model, ids, vectors, **arguments)
    assert not Path(encoder_state_uri(directory, "text")).exists()


def test_content_vectors_round_trip_in_modality_order_and_a_bad_file_is_refused_by_name(
    tmp_path: Path,
) -> None:
    directory = str(tmp_path / "model")
    generator = torch.Generator().manual_seed(3)
    # The concatenation order (image before text) is not the names' sorted order.
    widths = {"image": 10, "text": 12}
    content = ContentVectors(
        torch.randn(N_ITEMS, 4, generator=generator),
        {m: torch.randn(w, generator=generator) for m, w in widths.items()},
        {m: torch.rand(w, generator=generator) + 0.5 for m, w in widths.items()},
        torch.randn(22, 4, generator=generator),
    )
    model = _model()
    arguments: dict[str, Any] = {"config": {}, "metrics": {}, "data_fingerprint": "0123456789abcdef"}
    ids, vectors = np.array([f"i{k}" for k in range(N_ITEMS)]), np.zeros((N_ITEMS, 8), np.float32)
    write_artifact(directory, model, ids, vectors, content=content, **arguments)
    loaded = load_artifact(directory).content_vectors()
    assert loaded is not None and list(loaded.mean) == ["image", "text"]
    assert torch.equal(loaded.items, content.items) and loaded.projection is not None
    assert torch.equal(loaded.projection, content.projection)
    assert all(torch.equal(loaded.scale[m], content.scale[m]) for m in widths)
    # A projection that does not fit the features is refused, naming the shapes, before the
    # artifact already there is touched.
    broken = ContentVectors(content.items, content.mean, content.scale, torch.zeros(21, 4))
    with pytest.raises(ModelLoadError, match=r"projection \(21, 4\) where \(22, 4\) fits"):
        write_artifact(directory, model, ids, vectors, content=broken, **arguments)
    assert load_artifact(directory).content_vectors() is not None
    io.write_tensors({"items": content.items}, str(Path(directory) / CONTENT))
    with pytest.raises(ModelLoadError, match=rf"{CONTENT}: lacks"):
        load_artifact(directory).content_vectors()
    write_artifact(directory, model, ids, vectors, **arguments)  # a new model without one
    assert load_artifact(directory).content_vectors() is None


def test_ranker_round_trip_needs_only_the_path_and_a_new_model_removes_it(tmp_path: Path) -> None:
    directory = str(tmp_path / "model")
    model, vectors, _ = _write(directory)
    ranker, inputs = _ranker(), _inputs(vectors)
    ranker.save_pretrained(ranker_dir(directory))
    write_item_inputs(ranker_dir(directory), inputs)
    record_stage(directory, "rank", {"metrics": {"auc": 0.7}})

    loaded = Ranker.from_pretrained(ranker_dir(directory))
    assert (loaded.modalities, loaded.shared_dim, loaded.embed_dim) == (list(DIMS), 8, 8)
    assert (loaded.threshold, loaded.calibration) == (0.4, (0.8, -0.1))
    read = read_item_inputs(ranker_dir(directory), inputs.vectors, loaded.modalities)
    assert all(torch.equal(read.present[m], inputs.present[m]) for m in DIMS)
    projected, present = random_batch(4, dict.fromkeys(DIMS, 8))
    args = (torch.randn(4, 8), torch.randn(4, 8), torch.tensor([[2.0, 1.0]] * 4), torch.randn(4))
    assert torch.equal(loaded(projected, present, *args), ranker(projected, present, *args))
    assert set(read_manifest(directory).stages) == {"retrieval", "rank"}
    with pytest.raises(ModelLoadError, match="embed_dim: ranker has 8, expected 64"):
        Ranker.from_pretrained(ranker_dir(directory), embed_dim=64)

    manifest = _write(directory, model)[2]
    assert RANKER_DIR not in io.list_dir(directory)  # fitted on the old vectors: it would not fit these
    assert set(manifest.stages) == {"retrieval"}


def test_s3_round_trip_writes_nothing_locally(
    s3_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a URI taken for a local path would land here, as "s3:/..."
    directory = f"{s3_dir}/model"
    model, vectors, _ = _write(directory)
    ranker, inputs = _ranker(), _inputs(vectors)
    ranker.save_pretrained(ranker_dir(directory))
    write_item_inputs(ranker_dir(directory), inputs)
    record_stage(directory, "rank", {"metrics": {"auc": 0.7}})

    assert io.list_dir(directory) == ["config.json", ITEM_VECTORS, MANIFEST, "ranker", "weights.safetensors"]
    _assert_round_trip(directory, model, vectors)
    loaded = Ranker.from_pretrained(ranker_dir(directory), modalities=list(DIMS), shared_dim=8, embed_dim=8)
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), ranker.state_dict().values(), strict=True)
    )
    read = read_item_inputs(ranker_dir(directory), inputs.vectors, loaded.modalities)
    assert torch.equal(read.content_vectors, inputs.content_vectors)
    assert set(read_manifest(directory).stages) == {"retrieval", "rank"}

    _write(directory, model)  # a new model: the stale ranker goes, on S3 too
    assert not io.exists(ranker_dir(directory))
    assert list(tmp_path.iterdir()) == [] and not Path("s3:").exists()


def test_writing_a_new_two_tower_model_removes_the_old_ranker(trained: Trained, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(trained.ranked, copy)
    artifact = load_artifact(copy)
    assert (copy / RANKER_DIR).is_dir()
    vectors = np.stack(artifact.item_vectors.column("vector").to_numpy(zero_copy_only=False))
    manifest = write_artifact(
        copy,
        artifact.model,
        np.asarray(artifact.item_vectors.column("item_id").to_pylist()),
        vectors,
        config=artifact.manifest.config,
        metrics={},
        data_fingerprint=artifact.manifest.data_fingerprint,
    )
    assert not (copy / RANKER_DIR).exists()  # fitted on the old vectors: it would not fit these
    assert set(manifest.stages) == {"retrieval"}
