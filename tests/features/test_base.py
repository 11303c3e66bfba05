"""The shared batching and pooling helpers, on a fake encoder (no model)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from raymm.errors import ConfigError
from raymm.features.base import (
    BatchEncoder,
    Encoder,
    InputDecodeError,
    TorchRuntime,
    first_token,
    last_token,
    masked_mean,
    read_media,
    revision_hash,
)


class Doubler(BatchEncoder):
    """Encodes a number x as (x, 2x); 'bad' fails decoding, 13 makes the model raise, inf overflows."""

    modality, dim, encoder_id, revision, pooling = "test", 2, "doubler", "0", "none"

    def __init__(self, batch_size: int = 3) -> None:
        self.batch_size = batch_size
        self.calls: list[int] = []

    def decode(self, value: Any) -> float:
        if value == "bad":
            raise InputDecodeError("test: value 'bad' is bad")
        return float(value)

    def embed(self, decoded: list[float]) -> np.ndarray:
        self.calls.append(len(decoded))
        if 13.0 in decoded:
            raise RuntimeError("the model cannot take 13")
        return np.array([[x, 2 * x] for x in decoded], dtype=np.float32)


def test_rows_are_decoded_alone_and_embedded_in_chunks_of_batch_size() -> None:
    encoder = Doubler(batch_size=3)
    assert isinstance(encoder, Encoder)
    batch = encoder.encode([1, None, "bad", 2, 3, 4, 5])
    assert encoder.calls == [3, 2]
    assert batch.present.tolist() == [True, False, False, True, True, True, True]
    assert batch.errors == [None, None, "test: value 'bad' is bad", None, None, None, None]
    np.testing.assert_array_equal(batch.vectors[:, 0], [1, 0, 0, 2, 3, 4, 5])
    assert (len(batch), batch.n_failed, batch.n_missing) == (7, 1, 1)


def test_a_row_the_model_rejects_fails_alone_after_a_row_by_row_retry() -> None:
    encoder = Doubler(batch_size=4)
    batch = encoder.encode([1, 13, 2, float("inf")])
    assert encoder.calls == [4, 1, 1, 1, 1]
    assert batch.present.tolist() == [True, False, True, False]
    assert "the model cannot take 13" in str(batch.errors[1])
    assert "non-finite" in str(batch.errors[3])
    assert np.isfinite(batch.vectors).all() and not batch.vectors[[1, 3]].any()


def test_a_model_failing_on_every_row_raises_instead_of_failing_rows() -> None:
    with pytest.raises(RuntimeError, match="cannot take 13"):
        Doubler(batch_size=4).encode([13, 13, 13])


def test_empty_and_all_missing_batches() -> None:
    assert Doubler().encode([]).vectors.shape == (0, 2)
    batch = Doubler().encode([None, None])
    assert batch.vectors.shape == (2, 2) and not batch.present.any() and batch.errors == [None, None]


def test_pooling_respects_the_mask_for_left_and_right_padding() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # row 0: 0..3, row 1: 4..7
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert masked_mean(hidden, right).flatten().tolist() == [1.0, 4.5]
    assert last_token(hidden, right).flatten().tolist() == [2.0, 5.0]
    assert last_token(hidden, left).flatten().tolist() == [3.0, 7.0]
    assert first_token(hidden, left).flatten().tolist() == [1.0, 6.0]
    assert first_token(hidden, right).flatten().tolist() == [0.0, 4.0]


def test_runtime_refuses_unknown_or_absent_devices() -> None:
    with pytest.raises(ConfigError, match="device must be"):
        TorchRuntime("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            TorchRuntime("cuda", "bf16")
    runtime = TorchRuntime("cpu", "fp16")  # precision applies on CUDA only
    assert runtime.autocast_dtype is None and runtime.to_device(torch.ones(2)).device.type == "cpu"


def test_read_media_accepts_bytes_and_names_what_is_wrong() -> None:
    assert read_media(memoryview(b"abc"), "image") == b"abc"
    with pytest.raises(InputDecodeError, match="image: expected encoded bytes or a URI string, got list"):
        read_media([1], "image")
    with pytest.raises(InputDecodeError, match="audio: empty URI"):
        read_media(" ", "audio")


def test_revision_hash_changes_with_any_input(tmp_path: Any) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\x00" * 10)
    base = revision_hash(files=[weights], settings={"size": 1})
    assert base == revision_hash(files=[weights], settings={"size": 1}) and len(base) == 12
    assert base != revision_hash(files=[weights], settings={"size": 2})
    weights.write_bytes(b"\x01" * 10)
    assert base != revision_hash(files=[weights], settings={"size": 1})


class Bucketed(Doubler):
    """A Doubler whose rows group by their integer part's parity and whose calls are all full."""

    fixed_rows = True

    def group_key(self, decoded: float) -> int:
        return int(decoded) % 2


def test_rows_of_other_groups_never_share_a_call_and_fixed_rows_tops_up_every_call() -> None:
    encoder = Bucketed(batch_size=3)
    batch = encoder.encode([1, 2, 3, None, 4, 5, 7])
    # odd: 1, 3, 5 (full) then 7 (+2 filler); even: 2, 4 (+1 filler); every call 3 rows.
    assert encoder.calls == [3, 3, 3]
    np.testing.assert_array_equal(batch.vectors[:, 0], [1, 2, 3, 0, 4, 5, 7])
    assert batch.present.tolist() == [True, True, True, False, True, True, True]


def test_a_fixed_rows_retry_runs_each_row_in_a_full_call() -> None:
    encoder = Bucketed(batch_size=2)
    batch = encoder.encode([13, 15])
    assert encoder.calls == [2, 2, 2] and batch.present.tolist() == [False, True]
    assert "cannot take 13" in str(batch.errors[0])
