"""The served blend's parts beside the two-tower, as the artifact stores them (see
:mod:`raymm.models.artifact` for the directory and :mod:`raymm.recommend.blend` for the blend).

    collab.safetensors    the item-item part (raymm.recommend.collab): ``query`` and ``items``
                          (N, rank) per catalog row, ``content_map`` (embed_dim + 1, 2 rank): a
                          live item's two from its item vector
    content.safetensors   the content part (raymm.recommend.scorers.ContentScorer): ``items``
                          (N, dim) per catalog row, and what a live item's row is computed from its
                          raw features with: each modality's ``mean.<i>.<modality>`` and
                          ``scale.<i>.<modality>`` (i its place in the concatenation),
                          ``projection`` (sum of widths, dim) when projected

Each is written only when the blend weighs its part; each type checks its shapes against the item
table before it is written and after it is read, naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from raymm.data import io
from raymm.models.errors import ModelLoadError
from raymm.models.persist import as_uri, read_tensors

COLLAB = "collab.safetensors"
CONTENT = "content.safetensors"


@dataclass
class CollabVectors:
    """The item-item part's vectors (see :mod:`raymm.recommend.collab`): ``query`` and ``items``
    (N, rank) float32, row ``i`` for the item table's row ``i``; ``content_map`` (embed_dim + 1,
    2 * rank) maps a live item's vector (plus a bias) to its query and item vectors."""

    query: torch.Tensor
    items: torch.Tensor
    content_map: torch.Tensor

    def check(self, n_items: int, embed_dim: int, where: str) -> CollabVectors:
        """Self; :class:`ModelLoadError` naming ``where`` if a shape does not fit."""
        rank = self.query.shape[1] if self.query.ndim == 2 else -1
        if (
            tuple(self.query.shape) != (n_items, rank)
            or tuple(self.items.shape) != (n_items, rank)
            or tuple(self.content_map.shape) != (embed_dim + 1, 2 * rank)
        ):
            raise ModelLoadError(
                f"{where}: query {tuple(self.query.shape)}, items {tuple(self.items.shape)} and content_map "
                f"{tuple(self.content_map.shape)} do not fit {n_items} items of dimension {embed_dim}"
            )
        return self

    def write(self, directory: str) -> None:
        """Write :data:`COLLAB` into the artifact directory ``directory`` (a URI)."""
        tensors = {"query": self.query, "items": self.items, "content_map": self.content_map}
        io.write_tensors(tensors, io.join(directory, COLLAB), {"format": "raymm.collab"})


@dataclass
class ContentVectors:
    """The content part's vectors and statistics (see :class:`~raymm.recommend.scorers.ContentScorer`):
    ``items`` (N, dim) float32, row ``i`` for the item table's row ``i``; ``mean`` and ``scale``
    modality -> (D,) in the order the modalities are concatenated; ``projection`` (sum of D, dim)
    or None (dim is the full width)."""

    items: torch.Tensor
    mean: dict[str, torch.Tensor]
    scale: dict[str, torch.Tensor]
    projection: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The file's tensors (see the module docstring)."""
        out = {"items": self.items.contiguous()}
        for place, modality in enumerate(self.mean):
            out[f"mean.{place}.{modality}"] = self.mean[modality].contiguous()
            out[f"scale.{place}.{modality}"] = self.scale[modality].contiguous()
        if self.projection is not None:
            out["projection"] = self.projection.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], where: str) -> ContentVectors:
        """What :meth:`tensors` wrote; :class:`ModelLoadError` naming ``where`` for anything missing."""
        named = sorted(
            (int(name.split(".")[1]), name.split(".", 2)[2]) for name in tensors if name.startswith("mean.")
        )
        modalities = [modality for _, modality in named]
        needed = {"items"} | {f"scale.{p}.{m}" for p, m in named}
        missing = needed - set(tensors)
        if missing or not modalities:
            raise ModelLoadError(f"{where}: lacks {sorted(missing) or ['mean.<i>.<modality>']}")
        return cls(
            tensors["items"],
            {m: tensors[f"mean.{p}.{m}"] for p, m in named},
            {m: tensors[f"scale.{p}.{m}"] for p, m in named},
            tensors.get("projection"),
        )

    def check(self, n_items: int, where: str) -> ContentVectors:
        """Self; :class:`ModelLoadError` naming ``where`` if a shape does not fit."""
        width = sum(int(v.shape[0]) for v in self.mean.values())
        dim = self.items.shape[1] if self.items.ndim == 2 else -1
        problems = []
        if tuple(self.items.shape) != (n_items, dim):
            problems.append(f"items {tuple(self.items.shape)} for {n_items} items")
        for modality, mean in self.mean.items():
            if mean.ndim != 1 or self.scale[modality].shape != mean.shape:
                problems.append(
                    f"{modality} mean {tuple(mean.shape)} and scale {tuple(self.scale[modality].shape)}"
                )
        expected = (width, dim) if self.projection is not None else None
        if self.projection is not None and tuple(self.projection.shape) != expected:
            problems.append(f"projection {tuple(self.projection.shape)} where {expected} fits")
        if self.projection is None and dim != width:
            problems.append(f"items {dim} wide without a projection from the {width}-wide features")
        if problems:
            raise ModelLoadError(f"{where}: " + "; ".join(problems))
        return self

    def write(self, directory: str) -> None:
        """Write :data:`CONTENT` into the artifact directory ``directory`` (a URI)."""
        io.write_tensors(self.tensors(), io.join(directory, CONTENT), {"format": "raymm.content"})


def read_content_vectors(directory: str, n_items: int) -> ContentVectors | None:
    """The content part's vectors of the artifact at ``directory`` (``n_items`` rows), or None when
    it has none; :class:`ModelLoadError` for a file that does not fit."""
    uri = io.join(as_uri(directory), CONTENT)
    if not io.exists(uri):
        return None
    return ContentVectors.from_tensors(read_tensors(uri, "content vectors"), uri).check(n_items, uri)


def read_collab_vectors(directory: str, n_items: int, embed_dim: int) -> CollabVectors | None:
    """The item-item part's vectors of the artifact at ``directory``, or None when it has none;
    :class:`ModelLoadError` for a file that lacks a tensor or does not fit."""
    uri = io.join(as_uri(directory), COLLAB)
    if not io.exists(uri):
        return None
    tensors = read_tensors(uri, "item-item vectors")
    missing = {"query", "items", "content_map"} - set(tensors)
    if missing:
        raise ModelLoadError(f"{uri}: lacks {sorted(missing)}")
    collab = CollabVectors(tensors["query"], tensors["items"], tensors["content_map"])
    return collab.check(n_items, embed_dim, uri)
