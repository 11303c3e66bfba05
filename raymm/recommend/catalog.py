"""The item catalog as tensors: what every scorer, the trainer and the evaluator read.

:class:`Catalog` holds every item (warm and cold) in one fixed order (sorted item ids):
per-modality feature matrices with presence masks, item-id-embedding indices (0 for items never
seen in training, so cold items run on content alone) and tag lists for knowledge-graph
alignment. :meth:`Catalog.chunks` is the one way to walk it in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raymm.data.schema import MODALITIES
from raymm.errors import DataError

#: Catalog rows per chunk of a pass over the whole catalog (bounded memory at any size).
CHUNK = 4096


@dataclass
class Catalog:
    """Every item as tensors, row ``i`` being ``item_ids[i]``.

    ``features`` modality -> (N, d) float32 (zeros where absent); ``present`` modality -> (N,)
    bool; ``id_index`` (N,) long in [0, n_warm], 0 for items outside training; ``tags`` per item a
    list of tag indices into ``tag_names``.
    """

    item_ids: np.ndarray
    features: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    id_index: torch.Tensor
    tags: list[list[int]]
    tag_names: list[str]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def warm(self) -> torch.Tensor:
        """(N,) bool: the items of the training split's interactions (``id_index > 0``); the rest,
        cold-start items held out of training among them, are what training must not fit on."""
        return self.id_index > 0

    @property
    def dims(self) -> dict[str, int]:
        """Input width of each modality, in the order the model sees them."""
        return {m: int(v.shape[1]) for m, v in self.features.items()}

    def positions(self, item_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Row of each item id (-1 for ids not in the catalog), vectorised."""
        lookup = pa.array(self.item_ids, pa.string())
        return np.asarray(
            pc.fill_null(pc.index_in(item_ids, value_set=lookup), -1).to_numpy(zero_copy_only=False)
        )

    def rows(
        self, index: slice | torch.Tensor, modalities: Sequence[str] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """(features, present, id_index) of the catalog rows ``index``, for ``modalities`` (default all)."""
        names = list(self.features) if modalities is None else list(modalities)
        released = [m for m in names if self.features[m].shape[0] != self.n_items]
        if released:
            raise RuntimeError(f"the catalog's {released} features were released (without_features)")
        return (
            {m: self.features[m][index] for m in names},
            {m: self.present[m][index] for m in names},
            self.id_index[index],
        )

    def chunks(self, size: int = CHUNK) -> Iterator[slice]:
        """Row slices covering the catalog in order, ``size`` rows each (the last may be shorter)."""
        for start in range(0, self.n_items, size):
            yield slice(start, min(start + size, self.n_items))

    def without_features(self) -> Catalog:
        """The same catalog without its raw feature rows (``dims`` kept), for holders that need
        only ids, presence and the model's precomputed per-item outputs: at ``large`` the
        features are ~1 GiB per process. :meth:`rows` then raises."""
        return Catalog(
            self.item_ids,
            {m: v.new_empty((0, v.shape[1])) for m, v in self.features.items()},
            self.present,
            self.id_index,
            self.tags,
            self.tag_names,
        )

    def subset(self, modalities: Sequence[str]) -> Catalog:
        """The same catalog seeing only ``modalities`` (for single-modality ablations)."""
        missing = [m for m in modalities if m not in self.features]
        if missing:
            raise DataError(f"catalog has no {missing} features; it has {list(self.features)}")
        return Catalog(
            self.item_ids,
            {m: self.features[m] for m in modalities},
            {m: self.present[m] for m in modalities},
            self.id_index,
            self.tags,
            self.tag_names,
        )


def build_catalog(
    features: pa.Table, items: pa.Table, train: pa.Table, modalities: Sequence[str] | None = None
) -> Catalog:
    """Assemble the catalog from a features table (features contract), the items and training events.

    Items without a features row get every modality absent. ``modalities`` defaults to every
    modality column the features hold. Raises :class:`DataError` if none is there.
    """
    features = features.sort_by("item_id")
    available = [m for m in MODALITIES if m in features.column_names]
    chosen = list(modalities) if modalities is not None else available
    if not chosen or any(m not in available for m in chosen):
        raise DataError(f"features hold modalities {available}; asked for {chosen}")
    item_ids = np.asarray(items.column("item_id").to_pylist(), dtype=object)
    order = np.argsort(item_ids.astype(str), kind="stable")
    item_ids = item_ids[order]
    rows = np.asarray(
        pc.fill_null(pc.index_in(pa.array(item_ids, pa.string()), value_set=features.column("item_id")), -1)
    )
    feature_tensors: dict[str, torch.Tensor] = {}
    present: dict[str, torch.Tensor] = {}
    for modality in chosen:
        column = features.column(modality).combine_chunks()
        dim = column.type.list_size
        valid = np.asarray(column.is_valid())
        flat = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        # Row of each features row inside ``flat``: flatten() may or may not drop null entries.
        # Gathering straight into the catalog order keeps one (N, d) copy instead of two.
        in_flat = np.cumsum(valid) - 1 if flat.shape[0] == valid.sum() else np.arange(len(column))
        out = np.zeros((len(item_ids), dim), dtype=np.float32)
        mask = np.zeros(len(item_ids), dtype=bool)
        known = rows >= 0
        mask[known] = valid[rows[known]]
        out[mask] = flat[in_flat[rows[mask]]]
        feature_tensors[modality] = torch.from_numpy(out)
        present[modality] = torch.from_numpy(mask)
    # Interactions on items outside the catalog get no id embedding (-1, dropped), not an IndexError.
    warm = np.unique(
        np.asarray(
            pc.fill_null(pc.index_in(train.column("item_id"), value_set=pa.array(item_ids, pa.string())), -1)
        )
    )
    id_index = np.zeros(len(item_ids), dtype=np.int64)
    id_index[warm[warm >= 0]] = np.arange(1, int((warm >= 0).sum()) + 1)
    tag_lists, tag_names = _tag_lists(items, order)
    return Catalog(item_ids, feature_tensors, present, torch.from_numpy(id_index), tag_lists, tag_names)


def _tag_lists(items: pa.Table, order: np.ndarray) -> tuple[list[list[int]], list[str]]:
    if "tags" not in items.column_names:
        return [[] for _ in order], []
    raw = items.column("tags").to_pylist()
    names = sorted({tag for tags in raw if tags for tag in tags})
    position = {name: k for k, name in enumerate(names)}
    return [[position[t] for t in (raw[i] or [])] for i in order], names
