"""Item and user vectors of a two-tower model over the catalog, in bounded memory, in eval mode.

:func:`encode_catalog` is the one chunked pass of the item tower over the catalog (retrieval
vectors, content vectors without the id embedding, aligned modality vectors for the ranker,
fusion weights for reports); :func:`user_vectors` pools histories over precomputed item vectors,
as serving does for a live user.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from raymm.models.towers import ItemEncoding, TwoTower
from raymm.recommend.catalog import CHUNK, Catalog


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, its former mode restored after."""
    was_training = model.training
    if not was_training:  # already in eval mode (a served model): skip the walk over submodules
        yield model
        return
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def encode_catalog(
    model: TwoTower, catalog: Catalog, *, with_ids: bool = True, chunk: int = CHUNK
) -> ItemEncoding:
    """The item tower's output for every catalog row, computed ``chunk`` rows at a time.

    ``catalog`` may hold more modalities than the model reads; the model's own are used.
    ``with_ids`` False leaves the item-id embedding out (the content vector a cold item gets).
    Each chunk is moved to the model's device; the output stays there.
    """
    parts: list[ItemEncoding] = []
    device = next(model.parameters()).device
    with evaluating(model):
        for rows in catalog.chunks(chunk):
            features, present, id_index = catalog.rows(rows, model.modalities)
            parts.append(
                model.encode_items(
                    {m: v.to(device) for m, v in features.items()},
                    {m: v.to(device) for m, v in present.items()},
                    id_index.to(device) if with_ids else None,
                )
            )
    weights = [p.fusion_weights for p in parts if p.fusion_weights is not None]
    return ItemEncoding(
        torch.cat([p.vectors for p in parts]),
        {m: torch.cat([p.projected[m] for p in parts]) for m in model.modalities},
        {m: torch.cat([p.present[m] for p in parts]) for m in model.modalities},
        torch.cat(weights) if weights and len(weights) == len(parts) else None,
    )


@torch.no_grad()
def user_vectors(model: TwoTower, item_vectors: Tensor, history: np.ndarray | Tensor) -> Tensor:
    """(U, E) user vectors from (U, L) history rows (-1 padded) over precomputed (N, E) item vectors."""
    with evaluating(model):
        rows = torch.as_tensor(history, device=item_vectors.device).long()  # int32 rows index as int64
        valid = rows >= 0
        vectors = item_vectors[rows.clamp(min=0)] * valid.unsqueeze(-1)
        return model.user_vector(vectors, valid)
