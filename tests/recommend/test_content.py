"""ContentEncoder: new content is encoded as the catalog was, with the artifact's recorded encoders.

The artifact here is made the way ``raymm extract`` + ``raymm train`` make one, minus the training
(which reproduction does not depend on): the default encoders (packaged MiniLM, EfficientNet-Lite0,
mel_stats) encode the facet dataset's real text, PNGs and WAVs, a seeded two-tower model is fitted
to those features, and :func:`write_artifact` stores its item and aligned vectors.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymm.config import RaymmConfig
from raymm.data.dataset import load_dataset
from raymm.data.schema import MODALITIES
from raymm.features.registry import build_encoder
from raymm.features.store import encoder_description
from raymm.features.text import TfidfTextEncoder
from raymm.models.artifact import MANIFEST, encoder_state_uri, load_artifact, write_artifact
from raymm.models.towers import TwoTower
from raymm.recommend.catalog import build_catalog
from raymm.recommend.content import ContentEncoder, EncoderMismatchError, RawItem
from raymm.recommend.vectors import encode_catalog
from raymm.stream.events import ItemMessage, Media
from tests.fixtures import small_model_config

N_ITEMS = 12
#: 1 - cosine allowed between a re-encoded vector and the stored one. The two runs differ only in
#: float32 summation order: the text encoder pads each batch to its longest text and the batches
#: differ here, and kernels may block a batch of another size differently. Observed: below 1e-6.
#: 1e-4 leaves room for other BLAS builds yet is far below the gap between two distinct items
#: (checked in the test, so a wrong encoder or tower cannot pass).
TOLERANCE = 1e-4


def _features(items: pa.Table, encoders: dict[str, Any]) -> pa.Table:
    """What an extraction run writes for ``items``: one vector column per modality, null where absent."""
    columns: dict[str, pa.Array] = {"item_id": items.column("item_id").combine_chunks()}
    for modality, encoder in encoders.items():
        batch = encoder.encode(items.column(modality).to_pylist())
        values = pa.array(batch.vectors.reshape(-1))
        columns[modality] = pa.FixedSizeListArray.from_arrays(
            values, encoder.dim, mask=pa.array(~batch.present)
        )
    return pa.table(columns)


def _write_model(
    directory: Path, items: pa.Table, encoders: dict[str, Any], config: RaymmConfig, **extra: Any
) -> None:
    """A seeded, untrained two-tower over ``encoders``' features, written as training writes it."""
    catalog = build_catalog(
        _features(items, encoders), items, pa.table({"item_id": pa.array([], pa.string())})
    )
    torch.manual_seed(0)
    model = TwoTower(config.model, catalog.dims).eval()
    model.fit_alignment(catalog.features, catalog.present)
    encoding = encode_catalog(model, catalog)
    write_artifact(
        directory,
        model,
        catalog.item_ids,
        encoding.vectors.numpy(),
        config=config.model_dump(mode="json", by_alias=True),
        metrics={},
        data_fingerprint="content-encoder-test",
        encoders={m: encoder_description(e) for m, e in encoders.items()},
        aligned=encoding.projected,
        aligned_present=encoding.present,
        **extra,
    )


@pytest.fixture(scope="module")
def real_items(facet_data: tuple[Path, Path]) -> pa.Table:
    """Items of the facet dataset with their real media: the first ones, and the first two that
    lack each modality."""
    items = load_dataset(str(facet_data[0]), tables=()).items
    rows = set(range(N_ITEMS - 6))
    for modality in MODALITIES:
        rows.update(np.flatnonzero(np.asarray(items.column(modality).is_null()))[:2].tolist())
    return items.take(sorted(rows))


@pytest.fixture(scope="module")
def real_artifact(real_items: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact whose features the default encoders made from the items' raw content."""
    directory = tmp_path_factory.mktemp("real-encoders") / "model"
    # The synthetic images are 64 px: EfficientNet-Lite0 at that size, 12x faster than at 224.
    config = small_model_config(directory.parent, "extract.device=cpu", "extract.image.image_size=64")
    encoders = {m: build_encoder(m, getattr(config.extract, m), "cpu") for m in MODALITIES}
    _write_model(directory, real_items, encoders, config)
    return directory


@pytest.fixture(scope="module")
def real_content(real_artifact: Path) -> ContentEncoder:
    """The artifact's content encoder, built from its manifest (the encoders load once)."""
    return ContentEncoder.from_artifact(real_artifact)


def _raw(items: pa.Table) -> list[Any]:
    """The items as serving receives them: half as ``ItemMessage`` (base64 media), half as ``RawItem``."""
    raw: list[Any] = []
    for k, row in enumerate(items.to_pylist()):
        if k % 2:
            media = {
                m: Media(base64=base64.b64encode(row[m]).decode()) if row[m] is not None else None
                for m in ("image", "audio")
            }
            raw.append(ItemMessage(item_id=row["item_id"], text=row["text"], **media))
        else:
            raw.append(RawItem(row["item_id"], text=row["text"], image=row["image"], audio=row["audio"]))
    return raw


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_re_encoding_catalog_items_from_raw_content_reproduces_their_stored_vectors(
    real_artifact: Path, real_items: pa.Table, real_content: ContentEncoder
) -> None:
    artifact = load_artifact(real_artifact)
    content = real_content
    assert content.modalities == ["text", "image", "audio"]
    row_of = {str(item_id): row for row, item_id in enumerate(artifact.item_ids)}
    stored, aligned = artifact.vectors(), artifact.aligned_vectors()
    # Another order and other batches than the extraction's (text padding differs).
    raw = _raw(real_items)[::-1]
    for part in (raw[:5], raw[5:]):
        encoded = content.encode_items(part)
        rows = np.array([row_of[i] for i in encoded.item_ids])
        assert 1 - _cosine(encoded.vectors, stored[rows]).min() < TOLERANCE
        for modality in content.modalities:
            present = aligned.present[modality][rows]
            np.testing.assert_array_equal(encoded.present[modality], present)
            assert not encoded.aligned[modality][~present].any(), "an absent modality is a zero row"
            found = encoded.aligned[modality][present]
            assert 1 - _cosine(found, aligned.vectors[modality][rows][present]).min() < TOLERANCE
            assert all(e is None for e in encoded.errors[modality])
    # The tolerance tells items apart: distinct items' stored vectors differ by far more.
    similarity = stored @ stored.T / np.outer(np.linalg.norm(stored, axis=1), np.linalg.norm(stored, axis=1))
    assert 1 - similarity[~np.eye(len(stored), dtype=bool)].max() > 100 * TOLERANCE


def test_a_text_query_is_standardized_and_projected_as_a_text_only_item(real_content: ContentEncoder) -> None:
    text = "A heavy metal track with angular shards on the cover."
    query = real_content.encode_query(text)
    model = real_content.model
    features = {m: torch.zeros(1, d) for m, d in model.input_dims.items()}
    features["text"] = torch.from_numpy(real_content.encoders["text"].encode([text]).vectors)
    present = {m: torch.tensor([m == "text"]) for m in model.modalities}
    with torch.no_grad():
        aligned = model.aligner.project(model.item_tower.standardized(features, present), present)["text"]
        fused = model.encode_items(features, present).vectors
    np.testing.assert_allclose(query.aligned, aligned[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(query.fused, fused[0].numpy(), atol=1e-6)
    assert np.linalg.norm(query.aligned) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="cannot encode the query"):
        real_content.encode_query("   ")
    text_only = ContentEncoder(model, {"text": real_content.encoders["text"]})
    with pytest.raises(ValueError, match=r"image content.*built for \['text'\] only"):
        text_only.encode_items([RawItem("x", image=b"\x89PNG")])


def test_bad_media_fails_only_its_own_modality(real_content: ContentEncoder, real_items: pa.Table) -> None:
    row = real_items.to_pylist()[0]
    encoded = real_content.encode_items(
        [
            RawItem("broken", text=row["text"], audio=b"not a wav file"),
            ItemMessage(item_id="bad-base64", image=Media(base64="!!!")),
        ]
    )
    assert encoded.present["text"][0] and not encoded.present["audio"][0]
    assert "unreadable audio" in (encoded.errors["audio"][0] or "")
    assert not encoded.aligned["audio"][0].any()
    assert "cannot read the media reference" in (encoded.errors["image"][1] or "")
    np.testing.assert_array_equal(encoded.has_content, [True, False])


def _edit_manifest(directory: Path, edit: Any) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    edit(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest))


def test_an_encoder_other_than_the_recorded_one_is_refused_by_name_and_field(
    real_artifact: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(real_artifact, copy)
    _edit_manifest(copy, lambda m: m["encoders"]["audio"].update(revision="0123456789ab"))
    with pytest.raises(EncoderMismatchError) as refused:
        ContentEncoder.from_artifact(copy, modalities=["audio"])
    message = str(refused.value)
    assert "audio encoder 'mel_stats:64x16'" in message
    assert "revision: artifact has '0123456789ab'" in message
    # The artifact's config builds another encoder than the record: every differing field is named.
    shutil.rmtree(copy)
    shutil.copytree(real_artifact, copy)
    _edit_manifest(copy, lambda m: m["config"]["extract"]["audio"].update(frames=8))
    with pytest.raises(
        EncoderMismatchError, match=r"encoder_id: artifact has 'mel_stats:64x16'.*dim: artifact"
    ):
        ContentEncoder.from_artifact(copy, modalities=["audio"])


def test_an_artifact_without_encoder_records_needs_the_encoder_given(
    real_artifact: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(real_artifact, copy)
    _edit_manifest(copy, lambda m: m.update(encoders={}))
    with pytest.raises(EncoderMismatchError, match="records no audio encoder"):
        ContentEncoder.from_artifact(copy, modalities=["audio"])
    config = small_model_config(tmp_path, "extract.device=cpu")
    given = build_encoder("audio", config.extract.audio, "cpu")
    assert ContentEncoder.from_artifact(copy, modalities=["audio"], encoders={"audio": given}).modalities == [
        "audio"
    ]
    narrow = build_encoder("audio", config.extract.audio.model_copy(update={"frames": 8}), "cpu")
    with pytest.raises(EncoderMismatchError, match="gives 512-d vectors, the model reads 1024-d"):
        ContentEncoder.from_artifact(copy, modalities=["audio"], encoders={"audio": narrow})


def test_tfidf_text_is_encoded_with_the_idf_the_artifact_carries(
    real_items: pa.Table, tmp_path: Path
) -> None:
    config = small_model_config(
        tmp_path, "extract.device=cpu", "extract.text.kind=tfidf", "extract.text.tfidf_dim=64"
    )
    encoder = build_encoder("text", config.extract.text, "cpu")
    assert isinstance(encoder, TfidfTextEncoder)
    encoder.fit(real_items.column("text").to_pylist())
    state = tmp_path / "tfidf_idf.json"
    encoder.save(str(state))
    directory = tmp_path / "model"
    _write_model(directory, real_items, {"text": encoder}, config, encoder_state={"text": str(state)})

    artifact = load_artifact(directory)
    content = ContentEncoder.from_artifact(directory, artifact)
    encoded = content.encode_items(
        [RawItem(row["item_id"], text=row["text"]) for row in real_items.to_pylist()][::-1]
    )
    rows = np.array([list(artifact.item_ids).index(i) for i in encoded.item_ids])
    assert 1 - _cosine(encoded.vectors, artifact.vectors()[rows]).min() < TOLERANCE

    Path(encoder_state_uri(directory, "text")).unlink()
    with pytest.raises(EncoderMismatchError, match="TF-IDF text encoder but carries no fitted IDF"):
        ContentEncoder.from_artifact(directory)


def test_no_items_encode_to_empty_arrays(real_content: ContentEncoder) -> None:
    encoded = real_content.encode_items([])
    assert len(encoded) == 0 and encoded.vectors.shape == (0, 32)
    assert {m: v.shape for m, v in encoded.aligned.items()} == dict.fromkeys(MODALITIES, (0, 32))


def test_an_artifact_written_before_the_encoder_resources_moved_still_builds_its_encoders(
    real_artifact: Path, tmp_path: Path
) -> None:
    """Manifests recorded ``extract.<modality>`` with the Ray resources beside the encoder's
    settings (``batch_size``, ``num_cpus``...) until they moved under ``resources``."""
    copy = tmp_path / "model"
    shutil.copytree(real_artifact, copy)

    def flatten(manifest: dict[str, Any]) -> None:
        for section in manifest["config"]["extract"].values():
            if isinstance(section, dict) and "resources" in section:
                section.update(section.pop("resources"), batch_size=7)

    _edit_manifest(copy, flatten)
    assert "batch_size" in json.loads((copy / MANIFEST).read_text())["config"]["extract"]["audio"]
    content = ContentEncoder.from_artifact(copy, modalities=["audio"])
    assert content.encoders["audio"].batch_size == 7
