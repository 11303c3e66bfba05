"""New content through the artifact's own encoders and item tower: live items and text queries.

Serving meets two kinds of content the catalog did not hold when the model was trained: items
published while it runs, and search queries. :class:`ContentEncoder` turns both into the model's
vectors the way the catalog's were made:

1. raw values (text; image and audio as encoded bytes or a URI) go through **the encoders the
   artifact records** (``manifest.encoders``: id, revision, pooling, dim per modality), rebuilt
   from the artifact's ``extract`` config with :func:`raymm.features.build_encoder`; decoding,
   batching, missing and failed rows are the features package's (:mod:`raymm.features.base`).
   An encoder whose record differs (another model file, other settings) is refused by name and
   field, because its vectors would not be the ones the model was trained on;
2. the features go through the item tower (:func:`raymm.recommend.vectors.encode_catalog`, the
   same chunked pass that wrote the artifact's item vectors) as cold items, without an item-id
   embedding: ``vectors`` (N, embed_dim) for the two-tower index and, per modality, the aligned
   vectors (N, shared_dim) that cross-media search compares (:mod:`raymm.recommend.search`).

A modality an item lacks, or whose value cannot be decoded, is absent (``present`` False, a zero
row, the reason in ``errors``): never a placeholder. A text query is an item with only text, so
its aligned text vector lies in the space the image and audio vectors were aligned to, and its
fused vector is what the item tower gives a text-only item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import ValidationError

from raymm.data import io
from raymm.features.base import Encoder
from raymm.features.registry import CONFIG_TYPES, build_encoder
from raymm.features.settings import upgrade_encoder_section
from raymm.features.store import encoder_description
from raymm.features.text import TfidfTextEncoder
from raymm.models.artifact import (
    Artifact,
    EncoderRecord,
    encoder_differences,
    encoder_state_uri,
    load_artifact,
)
from raymm.models.errors import ModelLoadError
from raymm.models.persist import as_uri
from raymm.models.towers import TwoTower
from raymm.recommend.catalog import Catalog
from raymm.recommend.vectors import encode_catalog


class QueryEncodeError(ValueError):
    """A text query the text encoder cannot encode: blank, or no word a TF-IDF encoder knows."""


class EncoderMismatchError(ModelLoadError):
    """The encoder serving would build (or was given) is not the one the artifact records, or the
    artifact records none for a modality, so new content would not be encoded as the catalog was."""


class MediaSource(Protocol):
    """A media reference that yields a URI or encoded bytes (``raymm.stream.events.Media``)."""

    def content(self) -> str | bytes: ...


#: An image or audio value: encoded bytes, a URI (local path, pyarrow filesystem URI, http(s)),
#: or an object whose ``content()`` returns one of those.
MediaValue = bytes | str | MediaSource


class ItemContent(Protocol):
    """What :meth:`ContentEncoder.encode_items` reads of an item: :class:`RawItem`, or any object
    with these fields (``raymm.stream.events.ItemMessage``)."""

    @property
    def item_id(self) -> str: ...

    @property
    def text(self) -> str | None: ...

    @property
    def image(self) -> MediaValue | None: ...

    @property
    def audio(self) -> MediaValue | None: ...


@dataclass(frozen=True)
class RawItem:
    """One item as the items contract has it: ``None`` for a missing modality.

    ``tags`` are carried for callers; the item tower does not read them (the ``kg`` aligner uses
    tags only in its training loss).
    """

    item_id: str
    text: str | None = None
    image: MediaValue | None = None
    audio: MediaValue | None = None
    tags: tuple[str, ...] = ()


@dataclass
class EncodedItems:
    """The item tower's output for N items, in the order given.

    ``vectors`` (N, embed_dim) float32 L2-normalised content vectors (no item-id embedding: the
    vector a cold item gets), for the two-tower index; ``aligned`` modality -> (N, shared_dim)
    float32 L2-normalised aligned vectors, zero rows where absent; ``present`` modality -> (N,)
    bool; ``errors`` modality -> per item why a value given could not be encoded (None: encoded,
    or no value). Modalities are the model's.
    """

    item_ids: list[str]
    vectors: np.ndarray
    aligned: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    errors: dict[str, list[str | None]] = field(default_factory=dict)
    #: modality -> (N, D) float32 the encoders' raw features (zero rows where absent): what the
    #: served blend's content part scores (:meth:`~raymm.recommend.scorers.ContentScorer.encode`).
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def has_content(self) -> np.ndarray:
        """(N,) bool: items with at least one modality encoded. An item without any has only the
        tower's learned ``empty`` vector, which says nothing about it; search refuses to index it."""
        found = np.zeros(len(self.item_ids), dtype=bool)
        for present in self.present.values():
            found |= present
        return found

    def select(self, rows: np.ndarray) -> EncodedItems:
        """The items at ``rows`` ((K,) int or (N,) bool), e.g. ``items.select(items.has_content)``."""
        index = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)
        return EncodedItems(
            [self.item_ids[i] for i in index],
            self.vectors[index],
            {m: v[index] for m, v in self.aligned.items()},
            {m: p[index] for m, p in self.present.items()},
            {m: [e[i] for i in index] for m, e in self.errors.items()},
            {m: f[index] for m, f in self.features.items()},
        )


@dataclass
class QueryVectors:
    """A text query in the model's spaces: ``aligned`` (shared_dim,) its aligned text vector,
    ``fused`` (embed_dim,) the item tower's vector of a text-only item; both L2-normalised."""

    aligned: np.ndarray
    fused: np.ndarray


class ContentEncoder:
    """The artifact's encoders and item tower, for new items and text queries.

    Build it with :meth:`from_artifact`, which checks every encoder against the artifact's
    records. ``model`` is the two-tower model (eval mode), ``encoders`` modality -> encoder for
    the modalities to encode (a subset of the model's; content of another modality is refused).
    Raises :class:`EncoderMismatchError` for an encoder of a modality the model does not read or of
    another width than the model's input.
    """

    def __init__(self, model: TwoTower, encoders: Mapping[str, Encoder]) -> None:
        self.model = model.eval()
        for modality, encoder in encoders.items():
            if modality not in model.input_dims:
                raise EncoderMismatchError(
                    f"the model reads {model.modalities}; it has no use for a {modality} encoder"
                )
            if encoder.dim != model.input_dims[modality]:
                raise EncoderMismatchError(
                    f"the {modality} encoder {encoder.encoder_id!r} gives {encoder.dim}-d vectors, the model "
                    f"reads {model.input_dims[modality]}-d {modality} features"
                )
        self.encoders: dict[str, Encoder] = dict(encoders)

    @classmethod
    def from_artifact(
        cls,
        directory: str | Path,
        artifact: Artifact | None = None,
        device: str = "cpu",
        *,
        modalities: Sequence[str] | None = None,
        encoders: Mapping[str, Encoder] | None = None,
    ) -> ContentEncoder:
        """The content encoder of the artifact at ``directory`` (local path or URI).

        ``artifact`` is that directory's artifact if the caller has loaded it (its model is used
        where it is; otherwise the model loads on ``device``). Encoders are built on ``device``
        (``cpu``, ``cuda``, ``auto``) for ``modalities`` (default: every modality the model
        reads; ``["text"]`` is enough for queries) from the artifact's ``extract`` config;
        ``encoders`` supplies some ready-made instead (checked the same way). A TF-IDF text
        encoder reads the IDF the artifact carries (``encoders/text.json``).

        Raises :class:`EncoderMismatchError` naming the modality, the encoder and each differing
        field (encoder_id, revision, pooling, dim) when an encoder does not match the artifact's
        record, when the artifact records no encoder for a modality and none is given (its
        features were not made by ``raymm extract``), or when a TF-IDF encoder's IDF is missing;
        :class:`ModelLoadError` for an invalid artifact; ``EncoderLoadError`` if a model file
        cannot be loaded; ValueError for a modality the model does not read.
        """
        uri = as_uri(directory)
        artifact = artifact or load_artifact(uri, device=device)
        model = artifact.model
        wanted = list(model.modalities if modalities is None else modalities)
        unknown = [m for m in wanted if m not in model.input_dims]
        if unknown:
            raise ValueError(f"the model reads {model.modalities}; it cannot encode {unknown}")
        given = dict(encoders or {})
        built: dict[str, Encoder] = {}
        for modality in wanted:
            record = artifact.manifest.encoders.get(modality)
            if modality in given:
                encoder = given[modality]
            elif record is None:
                raise EncoderMismatchError(
                    f"{uri}: the artifact records no {modality} encoder (its features were not made by "
                    f"`raymm extract`), so new {modality} content cannot be encoded as the catalog's was; "
                    f"pass the encoder that made them as encoders={{{modality!r}: ...}}"
                )
            else:
                encoder = _build_encoder(modality, artifact, uri, device)
            if record is not None:
                _check_encoder(modality, encoder, record, uri)
            built[modality] = encoder
        return cls(model, built)

    @property
    def modalities(self) -> list[str]:
        """The modalities this encoder turns raw content into features for."""
        return list(self.encoders)

    def encode_items(self, items: Sequence[ItemContent]) -> EncodedItems:
        """Encode ``items`` (raw content) through the encoders and the item tower; see
        :class:`EncodedItems`. One bad value fails only its own modality of its own item.

        Raises ValueError if an item has content for a modality the model reads but this encoder
        was not built for (its vector would silently differ from the catalog's).
        """
        item_ids = [str(item.item_id) for item in items]
        n = len(item_ids)
        if n == 0:
            model, shared = self.model, self.model.config.align.shared_dim
            return EncodedItems(
                [],
                np.zeros((0, model.config.towers.embed_dim), np.float32),
                {m: np.zeros((0, shared), np.float32) for m in model.modalities},
                {m: np.zeros(0, dtype=bool) for m in model.modalities},
                {m: [] for m in model.modalities},
                {m: np.zeros((0, model.input_dims[m]), np.float32) for m in model.modalities},
            )
        features: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        errors: dict[str, list[str | None]] = {}
        for modality in self.model.modalities:
            values, errors[modality] = _raw_values(items, modality)
            encoder = self.encoders.get(modality)
            if encoder is None:
                given = [item_ids[i] for i, value in enumerate(values) if value is not None]
                if given:
                    raise ValueError(
                        f"items {given[:5]} have {modality} content, but this ContentEncoder was built for "
                        f"{self.modalities} only; build it with {modality} too"
                    )
                features[modality] = torch.zeros(n, self.model.input_dims[modality])
                present[modality] = torch.zeros(n, dtype=torch.bool)
                continue
            batch = encoder.encode(values)
            features[modality] = torch.from_numpy(np.ascontiguousarray(batch.vectors, dtype=np.float32))
            present[modality] = torch.from_numpy(np.asarray(batch.present, dtype=bool))
            errors[modality] = [own or err for own, err in zip(errors[modality], batch.errors, strict=True)]
        catalog = Catalog(
            np.asarray(item_ids, dtype=object),
            features,
            present,
            torch.zeros(n, dtype=torch.long),
            [[] for _ in range(n)],
            [],
        )
        encoding = encode_catalog(self.model, catalog, with_ids=False)
        return EncodedItems(
            item_ids,
            encoding.vectors.cpu().numpy(),
            {m: v.cpu().numpy() for m, v in encoding.projected.items()},
            {m: p.cpu().numpy() for m, p in encoding.present.items()},
            errors,
            {m: f.numpy() for m, f in features.items()},
        )

    def encode_query(self, text: str) -> QueryVectors:
        """A text query in the aligned space and in the item tower's space (a text-only item).

        Raises ValueError if the model reads no text or this encoder has no text encoder, and
        :class:`QueryEncodeError` (a ValueError) if the text cannot be encoded (blank, or no word
        the TF-IDF encoder knows how to tokenise): the query's fault, not the server's.
        """
        if "text" not in self.encoders:
            raise ValueError(
                f"a text query needs a text encoder; the model reads {self.model.modalities} and this "
                f"ContentEncoder encodes {self.modalities}"
            )
        encoded = self.encode_items([RawItem("query", text=text)])
        if not encoded.present["text"][0]:
            raise QueryEncodeError(f"cannot encode the query {text[:80]!r}: {encoded.errors['text'][0]}")
        return QueryVectors(encoded.aligned["text"][0], encoded.vectors[0])


def _raw_values(items: Sequence[ItemContent], modality: str) -> tuple[list[Any], list[str | None]]:
    """Each item's raw value of ``modality`` (None if missing) and why a media reference could not
    be resolved (e.g. base64 that is not), in which case the value is None."""
    values: list[Any] = []
    errors: list[str | None] = []
    for item in items:
        value = getattr(item, modality, None)
        error = None
        if value is not None and not isinstance(value, str | bytes) and hasattr(value, "content"):
            try:
                value = value.content()
            except ValueError as exc:
                value, error = None, f"{modality}: cannot read the media reference: {exc}"
        values.append(value)
        errors.append(error)
    return values, errors


def _build_encoder(modality: str, artifact: Artifact, uri: str, device: str) -> Encoder:
    """The encoder the artifact's ``extract`` config names for ``modality`` (defaults when the
    config has no ``extract`` section: the revision check still decides), fitted state loaded."""
    section = upgrade_encoder_section(artifact.manifest.config.get("extract", {}).get(modality, {}))
    try:
        config: Any = CONFIG_TYPES[modality].model_validate(section)
    except ValidationError as exc:
        raise ModelLoadError(f"{uri}: the manifest's extract.{modality} config is invalid: {exc}") from None
    encoder = build_encoder(modality, config, device)
    if isinstance(encoder, TfidfTextEncoder):
        state = encoder_state_uri(uri, modality)
        if not io.exists(state):
            raise EncoderMismatchError(
                f"{uri}: the artifact records a TF-IDF {modality} encoder but carries no fitted IDF at "
                f"{state} (it was written before raymm copied it there); copy the features' "
                f"tfidf_idf.json there, or re-train"
            )
        encoder.load(state)
    return encoder


def _check_encoder(modality: str, encoder: Encoder, record: EncoderRecord, uri: str) -> None:
    description = encoder_description(encoder)
    differences = encoder_differences(record, description)
    if differences:
        details = "; ".join(
            f"{key}: artifact has {saved!r}, this encoder {given!r}"
            for key, (saved, given) in differences.items()
        )
        raise EncoderMismatchError(
            f"{uri}: the {modality} encoder {description['encoder_id']!r} is not the one the catalog's "
            f"{modality} features were made with ({record.encoder_id!r}): {details}; serve it with that "
            f"encoder, or re-extract and re-train with this one"
        )
