"""Invariant 6 (design.md): an item's vector is a function of the item, not of its batch.

Ray Data hands an encoder actor whatever rows a block holds, and how blocks split changes with
load. Float kernels choose their algorithm by input shape, so before canonical batching the same
text came out up to 1.6e-7 apart in another batch (MiniLM, padded to the batch's longest text)
and the same image up to 4.6e-7 (EfficientNet-Lite0, batches under 16 images). These tests ask
for bitwise equality: the encoder call with other neighbours, other chunk sizes, other orders,
and the whole Ray job with other block sizes, pool layouts and actor counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from raymm.config import (
    AudioEncoderConfig,
    EncoderResources,
    ImageEncoderConfig,
    TextEncoderConfig,
    load_config,
)
from raymm.features.audio import HFAudioEncoder, MelStatsEncoder
from raymm.features.base import BatchEncoder
from raymm.features.image import EfficientNetLite0Encoder, HFImageEncoder
from raymm.features.pipeline import extract, load_features
from raymm.features.text import PAD_MULTIPLE, HFTextEncoder
from raymm.settings_base import MODALITIES

from .media import WORDS, image_bytes, synthetic_catalog, tone, wav_bytes

ROOT = Path(__file__).resolve().parents[2]


def in_chunks(
    encoder: BatchEncoder, values: Sequence[Any], sizes: Sequence[int], order: np.ndarray
) -> np.ndarray:
    """Vectors of ``values`` (in their own order) when they arrive permuted by ``order``, in
    chunks of ``sizes`` (cycled), as an actor would receive Ray Data batches."""
    out = np.zeros((len(values), encoder.dim), dtype=np.float32)
    start, k = 0, 0
    while start < len(order):
        rows = order[start : start + sizes[k % len(sizes)]]
        batch = encoder.encode([values[i] for i in rows])
        assert batch.present.all()
        out[rows] = batch.vectors
        start += len(rows)
        k += 1
    return out


def assert_batch_independent(encoder: BatchEncoder, values: Sequence[Any]) -> None:
    rng = np.random.default_rng(0)
    n = len(values)
    reference = in_chunks(encoder, values, [n], np.arange(n))
    for sizes in ([1], [3, 7, 2], [encoder.batch_size + 5]):
        again = in_chunks(encoder, values, sizes, rng.permutation(n))
        np.testing.assert_array_equal(again, reference, err_msg=f"arrival chunks {sizes}")


def texts(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    # Lengths from 2 to 60 words: several padded lengths, some truncated at max_length.
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 60)))) for _ in range(n)]


def test_minilm_vectors_do_not_depend_on_the_batch(minilm: HFTextEncoder) -> None:
    values = texts(40)
    assert len({minilm.decode(v)[1] for v in values}) >= 3  # rows of several padded lengths
    assert_batch_independent(minilm, values)


def test_text_is_padded_to_its_own_length_rounded_up(bert_dir: Path) -> None:
    encoder = HFTextEncoder(TextEncoderConfig(model=str(bert_dir), max_length=40), "cpu")
    assert encoder.decode("cat")[1] == PAD_MULTIPLE  # [CLS] cat [SEP]
    assert encoder.decode(" ".join(["cat"] * 20))[1] == 2 * PAD_MULTIPLE
    assert encoder.decode(" ".join(["cat"] * 500))[1] == 40  # truncated: max_length, not a multiple
    assert_batch_independent(encoder, texts(30))


def test_gpt2_last_token_vectors_do_not_depend_on_the_batch(gpt2_dir: Path) -> None:
    encoder = HFTextEncoder(TextEncoderConfig(model=str(gpt2_dir), pooling="last"), "cpu")
    encoder.tokenizer.padding_side = "left"
    assert_batch_independent(encoder, texts(20))


def images(n: int) -> list[bytes]:
    rng = np.random.default_rng(2)
    return [
        image_bytes(tuple(int(c) for c in rng.integers(0, 255, 3)), (40 + k % 5 * 7, 36), stripes=k % 2 == 0)
        for k in range(n)
    ]


def test_lite0_vectors_do_not_depend_on_the_batch() -> None:
    encoder = EfficientNetLite0Encoder(
        ImageEncoderConfig(image_size=64, resources=EncoderResources(batch_size=16)), "cpu"
    )
    assert encoder.fixed_rows
    assert_batch_independent(encoder, images(40))


def test_hf_image_vectors_do_not_depend_on_the_batch(vit_dir: Path) -> None:
    encoder = HFImageEncoder(
        ImageEncoderConfig(kind="hf", model=str(vit_dir), resources=EncoderResources(batch_size=8)), "cpu"
    )
    assert_batch_independent(encoder, images(20))


def clips(n: int) -> list[bytes]:
    return [wav_bytes(tone([110.0 * (k + 1), 55.0 * (k % 3 + 2)], 0.3 + 0.05 * (k % 4))) for k in range(n)]


def test_mel_vectors_do_not_depend_on_the_batch() -> None:
    encoder = MelStatsEncoder(
        AudioEncoderConfig(max_seconds=0.5, resources=EncoderResources(batch_size=8)), "cpu"
    )
    assert not encoder.fixed_rows  # per-clip arithmetic only: no filler rows needed
    assert_batch_independent(encoder, clips(20))


def test_hf_audio_vectors_do_not_depend_on_the_batch(wav2vec2_dir: Path) -> None:
    config = AudioEncoderConfig(
        kind="hf", model=str(wav2vec2_dir), max_seconds=0.5, resources=EncoderResources(batch_size=8)
    )
    assert_batch_independent(HFAudioEncoder(config, "cpu"), clips(16))


# --- the whole Ray job --------------------------------------------------------------------------

N_ITEMS = 120

#: Execution layouts that must not change a bit of any vector: block splits, pool layout, actor
#: counts and the text stage's batch size (what Ray Data hands each call). The image and audio
#: batch sizes stay the config's: a fixed-rows encoder computes in batches of exactly that size.
LAYOUTS = {
    "quickstart": [],
    "shared_small_blocks": [
        "extract.pool=shared",
        "extract.shared.min_actors=2",
        "extract.shared.max_actors=2",
        "extract.shared.num_cpus=0.5",
        "extract.block_rows=5",
    ],
    "odd_blocks_tasks": [
        "extract.block_rows=13",
        "extract.text.resources.batch_size=9",
        "extract.audio.resources.compute=tasks",
    ],
}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_catalog(tmp_path_factory.mktemp("repro") / "data", N_ITEMS, 10, seed=5)


def _vectors(table: pa.Table, modality: str) -> np.ndarray:
    column = table.column(modality)
    return np.stack(column.drop_null().to_numpy(zero_copy_only=False))


def test_extraction_gives_identical_vectors_whatever_the_block_split_and_pool_layout(
    catalog: Path, ray_session: None, tmp_path: Path
) -> None:
    tables = {}
    for name, overrides in LAYOUTS.items():
        config = load_config(
            ROOT / "configs" / "quickstart.yaml",
            ["extract.image.image_size=64", "extract.image.resources.batch_size=16", *overrides],
        )
        result = extract(config, str(catalog), str(tmp_path / name), progress=False)
        assert result.encoded_items == N_ITEMS
        tables[name] = load_features(str(tmp_path / name))
    reference = tables.pop("quickstart")
    for name, table in tables.items():
        assert table.column("item_id").equals(reference.column("item_id")), name
        for modality in MODALITIES:
            assert table.column(modality).is_null().equals(reference.column(modality).is_null())
            np.testing.assert_array_equal(
                _vectors(table, modality), _vectors(reference, modality), err_msg=f"{name}: {modality}"
            )
