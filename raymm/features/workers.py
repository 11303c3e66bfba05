"""What Ray Data runs in its workers for ``raymm extract``: the batch encoders.

:class:`ModalityEncoderActor` (``extract.pool: per_modality``) and :class:`SharedEncoderActor`
(``pool: shared``) load their encoders once per actor; :func:`encode_in_task` is the
``compute: tasks`` form, building each encoder once per worker process. Each replaces a batch's
raw modality column by a ``fixed_size_list<float32>`` vector column plus ``<modality>_error`` and
stamps the encoder's description on the schema metadata. :mod:`raymm.features.pipeline` plans
the job and chains these stages.
"""

from __future__ import annotations

import json
from typing import Any

# First, as in raymm.features.pipeline: the encoders' native libraries load before pyarrow (a
# worker process unpickling these classes imports this module first).
import raymm.features.registry  # noqa: F401  isort: skip
import numpy as np
import pyarrow as pa

from raymm.errors import ConfigError
from raymm.features.store import encoder_description

#: Schema metadata key prefix naming each modality's encoder in the written parts.
METADATA_PREFIX = "raymm.encoder."


class _LoadedEncoder:
    """One modality's encoder with the schema metadata it stamps on every batch it encodes."""

    def __init__(self, modality: str, section: dict[str, Any], device: str, tfidf_uri: str | None) -> None:
        from raymm.features.registry import CONFIG_TYPES, build_encoder
        from raymm.features.text import TfidfTextEncoder

        parsed: Any = CONFIG_TYPES[modality].model_validate(section)
        self.modality = modality
        self.encoder = build_encoder(modality, parsed, device)
        if isinstance(self.encoder, TfidfTextEncoder):
            if tfidf_uri is None:
                raise ConfigError("TF-IDF text encoder needs a fitted IDF state")
            self.encoder.load(tfidf_uri)
        self.metadata = {
            f"{METADATA_PREFIX}{modality}".encode(): json.dumps(encoder_description(self.encoder)).encode()
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        """``batch`` with the raw ``modality`` column replaced by vectors, plus ``<modality>_error``."""
        encoded = self.encoder.encode(batch.column(self.modality).to_pylist())
        dim = self.encoder.dim
        values = pa.array(np.ascontiguousarray(encoded.vectors, dtype=np.float32).reshape(-1))
        vectors = pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(~encoded.present))
        errors = pa.array(encoded.errors, pa.string())
        index = batch.column_names.index(self.modality)
        batch = batch.set_column(index, pa.field(self.modality, pa.list_(pa.float32(), dim)), vectors)
        batch = batch.append_column(f"{self.modality}_error", errors)
        metadata = dict(batch.schema.metadata or {})
        metadata.update(self.metadata)
        return batch.replace_schema_metadata(metadata)


def _set_torch_threads(num_cpus: float) -> None:
    import torch

    # One intra-op thread per reserved CPU: workers sharing a node must not oversubscribe it.
    torch.set_num_threads(max(1, int(num_cpus)))


class ModalityEncoderActor:
    """A Ray Data callable class: one modality's encoder, loaded once per actor.

    ``__call__`` takes a pyarrow batch holding ``item_id`` and the raw ``modality`` column and
    returns it with the raw column replaced by the vector column and ``<modality>_error``.
    """

    def __init__(self, modality: str, section: dict[str, Any], device: str, tfidf_uri: str | None) -> None:
        _set_torch_threads(section["resources"]["num_cpus"])
        self.encode = _LoadedEncoder(modality, section, device, tfidf_uri)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.encode(batch)


class SharedEncoderActor:
    """A Ray Data callable class for ``extract.pool: shared``: every listed encoder in one actor.

    ``sections`` maps each modality to its config section (as a dict) and ``devices`` to its
    device; ``__call__`` encodes the same batch with each in turn, as the chained per-modality
    pools would, without handing the block from actor to actor.
    """

    def __init__(
        self,
        sections: dict[str, dict[str, Any]],
        devices: dict[str, str],
        num_cpus: float,
        tfidf_uri: str | None,
    ) -> None:
        _set_torch_threads(num_cpus)
        self.encoders = [
            _LoadedEncoder(m, section, devices[m], tfidf_uri if m == "text" else None)
            for m, section in sections.items()
        ]

    def __call__(self, batch: pa.Table) -> pa.Table:
        for encode in self.encoders:
            batch = encode(batch)
        return batch


#: The encoders a task worker process has built, by their settings: ``compute: tasks`` builds
#: each once per process (Ray reuses worker processes), not once per batch.
_TASK_ENCODERS: dict[str, _LoadedEncoder] = {}


def encode_in_task(
    batch: pa.Table, modality: str, section: dict[str, Any], device: str, tfidf_uri: str | None
) -> pa.Table:
    """The ``compute: tasks`` form of :class:`ModalityEncoderActor`, for encoders with no model."""
    key = json.dumps([modality, section, device, tfidf_uri], sort_keys=True)
    encode = _TASK_ENCODERS.get(key)
    if encode is None:
        _set_torch_threads(section["resources"]["num_cpus"])
        encode = _TASK_ENCODERS[key] = _LoadedEncoder(modality, section, device, tfidf_uri)
    return encode(batch)
