"""The encoder interface every modality shares, and the helpers the encoders are built from.

An encoder turns a batch of raw values (strings, encoded media bytes, URIs, or None) into an
:class:`EncodedBatch`: one float32 row per input plus a presence mask and a per-row error. The
contract, the same for text, image and audio:

* ``None`` is *missing*: ``present`` False, ``errors`` None, a zero row.
* A value that cannot be read or decoded is *failed*: ``present`` False, ``errors`` says why,
  a zero row. One bad row never fails the batch.
* Everything else is *present*: the model's vector.

Encoders subclass :class:`BatchEncoder`, which owns the batching (decode each row on its own,
then run the model once per ``batch_size`` chunk of the good rows) so no modality re-implements
it. The batching is *canonical*: a row's vector is a function of the row alone, bitwise, not of
the rows that arrived with it (design.md invariant 6; Ray Data's block splits change with load).
Float kernels pick their blocking and algorithm by input shape, so the same row gave vectors
up to 4e-7 apart in batches of other sizes or padded lengths (MiniLM, EfficientNet-Lite0 on CPU,
measured). Two hooks pin the shape a row is computed in: :meth:`BatchEncoder.group_key` (rows
of different keys never share a model call; text: its padded length) and
:attr:`BatchEncoder.fixed_rows` (every model call gets exactly ``batch_size`` rows, the last chunk
topped up with copies of its first row whose outputs are dropped). :class:`TorchRuntime` owns device placement, autocast and host-to-device copies; the pooling
functions (:func:`masked_mean`, :func:`last_token`, :func:`first_token`, :func:`l2_normalize`)
are shared by the ``transformers``-backed encoders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import torch

from raymm.errors import ConfigError, DataError, RaymmError
from raymm.settings_base import Precision

#: Seconds an http(s) media fetch may take before the row fails.
HTTP_TIMEOUT_S = 10.0
#: Files of a model directory that do not change what the model computes.
_NOT_MODEL_FILES = ("README", "LICENSE", ".")


class EncoderLoadError(RaymmError):
    """A model could not be loaded: the path or package is missing, or its files do not fit."""


class InputDecodeError(DataError):
    """One input value could not be read or decoded; the batch helper turns it into a failed row."""


class NotFittedError(RaymmError):
    """An encoder that needs fitting (TF-IDF) was used before ``fit`` or ``load``."""


@dataclass
class EncodedBatch:
    """What an encoder returns for ``n`` inputs.

    ``vectors``: (n, dim) float32; rows that are not present are all zeros (never NaN).
    ``present``: (n,) bool, True where a vector was produced.
    ``errors``: per row, None if encoded or missing (null input), else why the row failed.
    """

    vectors: np.ndarray
    present: np.ndarray
    errors: list[str | None]

    def __len__(self) -> int:
        return len(self.errors)

    @property
    def n_failed(self) -> int:
        """Rows that had a value but could not be encoded."""
        return sum(error is not None for error in self.errors)

    @property
    def n_missing(self) -> int:
        """Rows whose input was null."""
        return len(self.errors) - int(self.present.sum()) - self.n_failed


@runtime_checkable
class Encoder(Protocol):
    """One modality's encoder, as the extraction pipeline sees it.

    ``dim`` is the vector width, ``encoder_id`` names the model (config kind and model name),
    ``revision`` is a short hash of its weights and output-affecting settings, ``pooling`` how
    token/frame/patch outputs became one vector. All three go into the features' schema metadata.
    """

    modality: str
    dim: int
    encoder_id: str
    revision: str
    pooling: str

    def encode(self, values: Sequence[Any]) -> EncodedBatch:
        """Encode ``values`` (None = missing); never raises for one bad value."""
        ...


class BatchEncoder(ABC):
    """Base of raymm's encoders: per-row :meth:`decode`, batched :meth:`embed`.

    Subclasses set ``modality``, ``dim``, ``encoder_id``, ``revision``, ``pooling`` and
    ``batch_size`` in their constructor (which loads the model, once).
    """

    modality: str
    dim: int
    encoder_id: str
    revision: str
    pooling: str
    batch_size: int = 32
    #: Run the model on exactly ``batch_size`` rows every time (see the module docstring). For
    #: models whose kernels choose their algorithm by batch size (convolutions via oneDNN on CPU,
    #: cuBLAS on GPU); an encoder whose rows are computed alone whatever the batch (pure per-row
    #: arithmetic) leaves it off and saves the filler rows.
    fixed_rows: bool = False

    def group_key(self, decoded: Any) -> int:
        """The shape class of one decoded row: rows of different keys never share a model call.

        Must depend on the row alone (text: the length it is padded to). Default: one class.
        """
        return 0

    @abstractmethod
    def decode(self, value: Any) -> Any:
        """Turn one non-null raw value into model input; :class:`InputDecodeError` if it is bad."""

    @abstractmethod
    def embed(self, decoded: list[Any]) -> np.ndarray:
        """Run the model on decoded rows (1 <= len <= batch_size); (len, dim) float32."""

    def encode(self, values: Sequence[Any]) -> EncodedBatch:
        """Encode ``values``; see the module docstring for missing and failed rows."""
        return encode_rows(
            values,
            self.decode,
            self.embed,
            dim=self.dim,
            batch_size=self.batch_size,
            group_key=self.group_key,
            fixed_rows=self.fixed_rows,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(modality={self.modality!r}, encoder_id={self.encoder_id!r}, "
            f"dim={self.dim}, pooling={self.pooling!r}, revision={self.revision!r})"
        )


def encode_rows(
    values: Sequence[Any],
    decode: Callable[[Any], Any],
    embed: Callable[[list[Any]], np.ndarray],
    *,
    dim: int,
    batch_size: int,
    group_key: Callable[[Any], int] | None = None,
    fixed_rows: bool = False,
) -> EncodedBatch:
    """The batching every encoder shares: decode per row, embed the good rows in chunks.

    ``decode`` raises :class:`InputDecodeError` for a bad value; that row fails with the message.
    Rows are decoded as they are reached and gathered per ``group_key`` (rows of different keys
    never share a chunk), so at most ``batch_size`` decoded rows per key are held at once. With
    ``fixed_rows`` every call of ``embed`` gets exactly ``batch_size`` rows: a short chunk is
    topped up with copies of its first row, whose outputs are dropped.
    If ``embed`` raises on a chunk, the chunk is retried row by row so that one input the model
    cannot take (or a batch too large for the device) fails only its own row; if every row of
    the chunk fails alone as well, the encoder itself is broken and the first error is raised.
    A row the model turns into NaN/inf fails with ``non-finite output``.
    """
    n = len(values)
    vectors = np.zeros((n, dim), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    errors: list[str | None] = [None] * n
    pending: dict[int, tuple[list[int], list[Any]]] = {}

    def run(chunk: list[Any]) -> np.ndarray:
        size = len(chunk)
        if fixed_rows and size < batch_size:
            return _checked(embed(chunk + [chunk[0]] * (batch_size - size)), batch_size, dim)[:size]
        return _checked(embed(chunk), size, dim)

    def flush(rows: list[int], chunk: list[Any]) -> None:
        try:
            out = run(chunk)
        except (RuntimeError, ValueError) as exc:
            out = _embed_one_by_one(chunk, rows, run, dim, errors, exc)
        finite = np.isfinite(out).all(axis=1)
        for row, ok in zip(rows, finite, strict=True):
            if not ok and errors[row] is None:
                errors[row] = "non-finite output from the model (overflow in reduced precision?)"
        keep = np.asarray(rows)[finite]
        vectors[keep] = out[finite]
        present[keep] = True

    for row, value in enumerate(values):
        if value is None:
            continue
        try:
            decoded = decode(value)
        except InputDecodeError as exc:
            errors[row] = str(exc)
            continue
        rows, chunk = pending.setdefault(group_key(decoded) if group_key else 0, ([], []))
        rows.append(row)
        chunk.append(decoded)
        if len(chunk) == batch_size:
            flush(rows, chunk)
            rows.clear()
            chunk.clear()
    for key in sorted(pending):
        rows, chunk = pending[key]
        if chunk:
            flush(rows, chunk)
    return EncodedBatch(vectors=vectors, present=present, errors=errors)


def _checked(out: np.ndarray, n: int, dim: int) -> np.ndarray:
    if out.shape != (n, dim):
        raise AssertionError(f"encoder returned shape {out.shape}, expected {(n, dim)}")
    return out.astype(np.float32, copy=False)


def _embed_one_by_one(
    chunk: list[Any],
    rows: list[int],
    run: Callable[[list[Any]], np.ndarray],
    dim: int,
    errors: list[str | None],
    batch_error: Exception,
) -> np.ndarray:
    out = np.full((len(chunk), dim), np.nan, dtype=np.float32)
    failures = 0
    for k, (row, item) in enumerate(zip(rows, chunk, strict=True)):
        try:
            out[k] = run([item])[0]
        except (RuntimeError, ValueError) as exc:
            errors[row] = f"model failed on this input: {type(exc).__name__}: {exc}"
            failures += 1
    # Every row failing alone means the model, not the data, is at fault. (A one-row chunk
    # cannot tell the two apart; it fails its row, and the run's failure count shows it.)
    if failures == len(chunk) > 1:
        raise batch_error
    return out


# -- pooling ---------------------------------------------------------------------------------


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (n, t, d) over the t positions where ``mask`` (n, t) is 1; (n, d)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``hidden`` (n, t, d) at each row's last position where ``mask`` is 1; (n, d).

    Works for right padding (real tokens first) and left padding (pads first) alike.
    """
    positions = torch.arange(mask.shape[1], device=mask.device)
    index = (mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def first_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``hidden`` (n, t, d) at each row's first position where ``mask`` is 1 (CLS); (n, d)."""
    index = mask.long().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def l2_normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (no NaN)."""
    return torch.nn.functional.normalize(vectors, p=2.0, dim=-1, eps=1e-12)


# -- devices ---------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` (or ``cuda:N``) or ``auto`` (CUDA when present) as a torch device.

    Raises :class:`ConfigError` for an unknown name or CUDA asked for on a machine without it.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device here")
    return resolved


class TorchRuntime:
    """Where a model runs and how inputs get there.

    On CUDA: ``precision`` fp16/bf16 runs the forward pass under autocast (weights stay fp32,
    matmuls and convolutions run in the reduced type), and host tensors are copied through
    pinned memory with ``non_blocking=True``. On CPU the model runs in fp32 whatever
    ``precision`` says: reduced-precision CPU kernels are slower than fp32 on most hosts.
    """

    def __init__(self, device: str, precision: Precision = "fp32") -> None:
        self.device = resolve_device(device)
        self.precision = precision
        self.autocast_dtype: torch.dtype | None = None
        if self.device.type == "cuda" and precision != "fp32":
            if precision == "bf16" and not torch.cuda.is_bf16_supported():
                raise ConfigError(f"precision 'bf16' asked for, but {self.device} does not support it")
            self.autocast_dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move ``module`` to the device in eval mode with gradients off."""
        module.requires_grad_(False)
        return module.to(self.device).eval()

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Copy a host tensor to the device (pinned + non-blocking on CUDA)."""
        if not self.is_cuda:
            return tensor
        if tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def inputs_to_device(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`to_device` on every tensor of a tokenizer/processor output."""
        return {
            key: self.to_device(value) if isinstance(value, torch.Tensor) else value
            for key, value in inputs.items()
        }

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Context for a forward pass: no autograd, autocast when reduced precision is on."""
        with torch.inference_mode():
            if self.autocast_dtype is None:
                yield
            else:
                with torch.autocast(device_type="cuda", dtype=self.autocast_dtype):
                    yield


def to_numpy(vectors: torch.Tensor) -> np.ndarray:
    """A device tensor (n, d) of any float type as a host float32 array."""
    return vectors.detach().float().cpu().numpy()


# -- media -----------------------------------------------------------------------------------


def read_media(value: Any, what: str) -> bytes:
    """The bytes of one media value: encoded bytes as given, or the file a URI names.

    URIs are local paths, ``file://`` or any pyarrow filesystem URI (``s3://``, ``gs://``...),
    or ``http(s)://`` (fetched with a :data:`HTTP_TIMEOUT_S` timeout). Raises
    :class:`InputDecodeError` naming the URI for anything unreadable, empty or of the wrong type.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        data = _read_uri(value, what)
    else:
        raise InputDecodeError(f"{what}: expected encoded bytes or a URI string, got {type(value).__name__}")
    if not data:
        raise InputDecodeError(f"{what}: empty bytes" + (f" at {value}" if isinstance(value, str) else ""))
    return data


def describe_source(value: Any) -> str:
    """`` at <uri>`` for a URI value, empty for inline bytes: appended to decode errors."""
    return f" at {value}" if isinstance(value, str) else ""


def _read_uri(uri: str, what: str) -> bytes:
    if not uri.strip():
        raise InputDecodeError(f"{what}: empty URI")
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri, timeout=HTTP_TIMEOUT_S) as response:
                return bytes(response.read())
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            raise InputDecodeError(f"{what}: cannot fetch {uri}: {exc}") from exc
    from raymm.data import io

    try:
        return io.read_bytes(uri, what=f"{what} file")
    except DataError as exc:
        raise InputDecodeError(f"{what}: {exc}") from exc
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise InputDecodeError(f"{what}: cannot read {uri}: {exc}") from exc


# -- revisions -------------------------------------------------------------------------------


def revision_hash(
    files: Sequence[Path] = (),
    settings: Mapping[str, Any] | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
    blobs: Sequence[bytes] = (),
) -> str:
    """A 12-hex-digit SHA-256 over model files, tensors and the settings that shape the output.

    The same weights with the same settings give the same revision on any machine; any change
    to a file's bytes, a tensor or a setting gives another. ``settings`` must be JSON-able.
    """
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode())
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    for name, tensor in sorted((tensors or {}).items()):
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    for blob in blobs:
        digest.update(blob)
    digest.update(json.dumps(settings or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def model_files(directory: Path) -> list[Path]:
    """The files of a saved model directory that determine its output (weights, configs, vocab)."""
    return [
        path for path in directory.iterdir() if path.is_file() and not path.name.startswith(_NOT_MODEL_FILES)
    ]


def hf_revision(source: str, module: torch.nn.Module, settings: Mapping[str, Any]) -> str:
    """Revision of a ``transformers`` model: its files if ``source`` is a directory, else its weights."""
    directory = Path(source)
    if directory.is_dir():
        return revision_hash(files=model_files(directory), settings=settings)
    config = getattr(module, "config", None)
    blob = config.to_json_string().encode() if config is not None else b""
    return revision_hash(tensors=module.state_dict(), blobs=[blob], settings=settings)


def is_local_dir(source: str) -> bool:
    """True if ``source`` is a directory here (loaded with ``local_files_only``, never the hub)."""
    return Path(source).is_dir()


def load_pretrained(source: str, what: str, *auto_classes: Any) -> list[Any]:
    """``cls.from_pretrained(source)`` for each ``transformers`` auto class, in order.

    A local directory is loaded with ``local_files_only`` (never the hub); anything else is a hub
    id, fetched or read from the cache as ``transformers`` does. Raises :class:`EncoderLoadError`
    naming ``what`` (text/image/audio) and ``source`` when a file is missing or does not fit.
    """
    local = is_local_dir(source)
    if not local and source.startswith(("/", "./", "../", "~")):
        raise EncoderLoadError(f"{what} model directory {source} does not exist")
    try:
        return [cls.from_pretrained(source, local_files_only=local) for cls in auto_classes]
    except (OSError, ValueError, KeyError) as exc:
        raise EncoderLoadError(f"cannot load {what} model {source!r}: {exc}") from exc


def load_on_device(
    source: str, what: str, preprocessor_class: Any, device: str, precision: Precision
) -> tuple[Any, torch.nn.Module, TorchRuntime]:
    """Load a ``transformers`` preprocessor + ``AutoModel`` and place the model on ``device``.

    Returns (preprocessor, placed model, runtime); raises :class:`EncoderLoadError` like
    :func:`load_pretrained`. Shared by the text, image and audio ``hf`` encoders.
    """
    from transformers import AutoModel

    preprocessor, model = load_pretrained(source, what, preprocessor_class, AutoModel)
    runtime = TorchRuntime(device, precision)
    return preprocessor, runtime.place(model), runtime
