"""The two-tower model: item tower (align -> fuse -> MLP) and user tower (pooling over item vectors).

Item tower: an item's modality features are aligned (:mod:`raymm.models.align`), fused
(:mod:`raymm.models.fusion`) and mapped by an MLP to ``embed_dim``; an optional item-id
embedding is added through a learned gate for warm items (index > 0), while cold items (index 0,
reserved for "unknown") are carried by content alone. Vectors are L2-normalised.

User tower: the vectors of a user's recent items (as the item tower computes them) are pooled
under a padding mask (mean, attention with a learned query and recency embeddings, or one
transformer layer then that attention), as ``model.user_state`` says. Because it reads
item *vectors*, serving can build a user from live history with no retraining.

Scores are dot products of the two (cosine similarity); the recommendation loss divides them by a
temperature learned from ``loss.temperature`` (see :class:`~raymm.models.config.LossConfig`). Linear
layers start with zero biases (:mod:`raymm.models.layers`). :meth:`TwoTower.save_pretrained` and
:meth:`TwoTower.from_pretrained` round-trip the model through a directory holding
``config.json`` and ``weights.safetensors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

import raymm
from raymm.data import io
from raymm.models.align import Aligner, build_aligner
from raymm.models.config import ModelConfig, TowersConfig, UserStateConfig
from raymm.models.errors import ModelLoadError
from raymm.models.fusion import Fusion, build_fusion
from raymm.models.layers import clamped_temperature, linear, mlp, register_temperature
from raymm.models.losses import bpr_loss, sampled_softmax_loss
from raymm.models.persist import Directory, as_uri, load_weights, read_document, write_weights

#: What ``config.json`` calls this model, and the layout version this code reads and writes.
MODEL_FORMAT = "raymm.two_tower"
#: 2: learned loss temperature (log_temperature) joined the weights; 3: n_item_ids and audio_bands
#: beside the config (data-derived, no longer config keys), model.user_state, TemperatureConfig.
FORMAT_VERSION = 3
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


@dataclass
class ItemEncoding:
    """What the item tower computes for a batch of B items.

    ``vectors`` (B, embed_dim) L2-normalised; ``projected`` modality -> (B, shared_dim) aligned
    vectors (absent rows zero; input of the alignment loss); ``present`` modality -> (B,) bool as
    given; ``fusion_weights`` (B, M) or None (see :class:`~raymm.models.fusion.Fusion`).
    """

    vectors: Tensor
    projected: dict[str, Tensor]
    present: dict[str, Tensor]
    fusion_weights: Tensor | None

    def select(self, index: Tensor) -> ItemEncoding:
        """The rows ``index`` (long (K,) or bool (B,)) of every field, e.g. a batch's positives
        out of an encoding of the whole catalog."""
        return ItemEncoding(
            self.vectors[index],
            {m: v[index] for m, v in self.projected.items()},
            {m: v[index] for m, v in self.present.items()},
            None if self.fusion_weights is None else self.fusion_weights[index],
        )


@dataclass
class LossBreakdown:
    """``total = rec + align_weight * align``; all scalar tensors (``total`` carries the graph)."""

    total: Tensor
    rec: Tensor
    align: Tensor


def _check_index(index: Tensor, batch: int, n_ids: int, what: str) -> Tensor:
    if index.shape != (batch,):
        raise ValueError(f"{what} must have shape ({batch},), got {tuple(index.shape)}")
    if index.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{what} must be an integer tensor, got {index.dtype}")
    if batch and (int(index.min()) < 0 or int(index.max()) > n_ids):
        raise ValueError(
            f"{what} must lie in [0, {n_ids}] (0 = unknown), got min {int(index.min())} max {int(index.max())}"
        )
    return index.long()


class ItemTower(nn.Module):
    """Aligner + fusion + MLP (+ gated item-id embedding) -> (B, embed_dim), L2-normalised."""

    def __init__(
        self,
        config: ModelConfig,
        input_dims: Mapping[str, int],
        n_item_ids: int = 0,
        audio_bands: int | None = None,
    ) -> None:
        super().__init__()
        towers = config.towers
        self.aligner: Aligner = build_aligner(config.align, input_dims, audio_bands)
        self.standardize = config.align.standardize
        # Per-dimension centring and scaling of the raw features, fitted on the training items: pretrained
        # encoders' vectors share a large common direction (mean cosine ~0.6-0.96) that would
        # otherwise make every item, and so every user, look alike at the start of training.
        for modality, dim in input_dims.items():
            self.register_buffer(f"input_mean_{modality}", torch.zeros(dim))
            self.register_buffer(f"input_scale_{modality}", torch.ones(dim))
        self.fusion: Fusion = build_fusion(config.fusion, self.aligner.modalities, config.align.shared_dim)
        self.mlp = mlp(self.fusion.out_dim, towers.item_hidden_dim, towers.embed_dim, towers.dropout)
        self.n_item_ids = n_item_ids
        self.item_id_dropout = towers.item_id_dropout
        if n_item_ids:
            self.item_ids = nn.Embedding(n_item_ids + 1, towers.embed_dim, padding_idx=0)
            nn.init.normal_(self.item_ids.weight, std=0.02)
            with torch.no_grad():
                self.item_ids.weight[0].zero_()
            self.id_gate = linear(2 * towers.embed_dim, 1)

    def forward(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor], item_index: Tensor | None = None
    ) -> ItemEncoding:
        projected = self.aligner.project(self.standardized(features, present), present)
        mask = {m: present[m] for m in self.aligner.modalities}
        fused, weights = self.fusion(projected, mask)
        vectors = self.mlp(fused)
        if self.n_item_ids and item_index is not None:
            index = _check_index(item_index, vectors.shape[0], self.n_item_ids, "item_index")
            known = index > 0
            if self.training and self.item_id_dropout > 0:
                known &= torch.rand(index.shape, device=index.device) >= self.item_id_dropout
            id_vectors = self.item_ids(index * known)
            gate = torch.sigmoid(self.id_gate(torch.cat([vectors, id_vectors], dim=1)))
            vectors = vectors + gate * known.unsqueeze(1).to(gate.dtype) * id_vectors
        return ItemEncoding(F.normalize(vectors, dim=-1), projected, mask, weights)

    def standardized(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Features centred and scaled by the fitted statistics; absent rows stay zero."""
        if not self.standardize:
            return dict(features)
        out = {}
        for modality in self.aligner.modalities:
            mean = getattr(self, f"input_mean_{modality}")
            scale = getattr(self, f"input_scale_{modality}")
            keep = present[modality].unsqueeze(-1).to(features[modality].dtype)
            out[modality] = torch.nan_to_num((features[modality] - mean) * scale) * keep
        return out

    @torch.no_grad()
    def fit_input_stats(self, features: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> None:
        """Fit each modality's per-dimension mean and 1/std on its present rows."""
        for modality in self.aligner.modalities:
            rows = features[modality][present[modality]]
            if rows.shape[0] < 2:
                continue
            getattr(self, f"input_mean_{modality}").copy_(rows.mean(dim=0))
            getattr(self, f"input_scale_{modality}").copy_(1.0 / (rows.std(dim=0) + 1e-4))


class UserTower(nn.Module):
    """Pooling over a user's recent item vectors -> (B, embed_dim), normalised.

    History is ordered oldest to newest along L; ``mask`` marks real entries (padding may sit
    anywhere). The recency position of an entry is the number of real entries after it (0 =
    most recent), clamped to ``max_history - 1``. Pooling, by ``user_state.pooling``:

    * ``mean``: masked mean (the YouTube DNN average of watch vectors; Covington et al., "Deep
      Neural Networks for YouTube Recommendations", RecSys 2016);
    * ``attention``: multi-head attention of a learned query over vector + recency embedding;
    * ``transformer``: one transformer encoder layer over those tokens first (SASRec-like;
      Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), then the attention.

    A user with no history gets a learned ``empty`` vector before the output layer; the
    recommendation core answers such users with its popularity fallback instead.
    """

    def __init__(self, config: TowersConfig, user_state: UserStateConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.pooling = user_state.pooling
        self.max_history = user_state.max_history
        self.empty = nn.Parameter(torch.randn(dim) * 0.02)
        self.out = linear(dim, dim)
        if self.pooling != "mean":
            self.positions = nn.Embedding(user_state.max_history, dim)
            nn.init.normal_(self.positions.weight, std=0.02)
            self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.attention = nn.MultiheadAttention(
                dim, config.user_heads, dropout=config.dropout, batch_first=True
            )
        if self.pooling == "transformer":
            self.encoder = nn.TransformerEncoderLayer(
                dim, config.user_heads, dim_feedforward=2 * dim, dropout=config.dropout, batch_first=True
            )

    def forward(self, history_vectors: Tensor, history_mask: Tensor) -> Tensor:
        if history_vectors.ndim != 3 or history_mask.shape != history_vectors.shape[:2]:
            raise ValueError(
                f"history_vectors must be (B, L, E) with history_mask (B, L); got "
                f"{tuple(history_vectors.shape)} and {tuple(history_mask.shape)}"
            )
        if history_mask.dtype != torch.bool:
            raise ValueError(f"history_mask must be bool, got {history_mask.dtype}")
        mask = history_mask
        weight = mask.unsqueeze(2).to(history_vectors.dtype)
        has_history = mask.any(dim=1, keepdim=True)
        if self.pooling == "mean":
            pooled = (history_vectors * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)
        else:
            recency = (mask.flip(1).cumsum(dim=1).flip(1) - 1).clamp(0, self.max_history - 1)
            tokens = history_vectors * weight + self.positions(recency)
            # Empty histories would be all padding (NaN in attention): unmask them, replace below.
            padding = ~mask & has_history
            if self.pooling == "transformer":
                tokens = self.encoder(tokens, src_key_padding_mask=padding)
            query = self.query.expand(tokens.shape[0], 1, -1)
            pooled = self.attention(query, tokens, tokens, key_padding_mask=padding, need_weights=False)[0][
                :, 0
            ]
        pooled = torch.where(has_history, pooled, self.empty.expand_as(pooled))
        return F.normalize(self.out(pooled), dim=-1)


class TwoTower(nn.Module):
    """Item tower + user tower with their losses and a ``save_pretrained``/``from_pretrained`` pair.

    ``input_dims`` maps each modality to its feature width (the order fixes the fusion weights'
    columns); ``n_item_ids`` warm items get an id embedding (rows 1..n; 0 = unknown/cold; 0
    disables it); ``audio_bands`` the mel bands of ``mel_stats`` audio features (their manifest
    records them; the conv audio encoder needs them). These come from the data, not the config,
    and ``config.json`` records them. If the model has closed-form parts (``requires_fit``), call
    :meth:`fit_alignment` on the training items before training. Raises :class:`~raymm.errors.ConfigError` for settings the
    input cannot take (e.g. the conv audio encoder on audio of the wrong width).
    """

    log_temperature: Tensor  # registered by register_temperature: a parameter or a buffer

    def __init__(
        self,
        config: ModelConfig,
        input_dims: Mapping[str, int],
        n_item_ids: int = 0,
        audio_bands: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.input_dims: dict[str, int] = {m: int(d) for m, d in input_dims.items()}
        self.n_item_ids = int(n_item_ids)
        self.audio_bands = audio_bands
        self.item_tower = ItemTower(config, self.input_dims, self.n_item_ids, audio_bands)
        self.user_tower = UserTower(config.towers, config.user_state)
        register_temperature(self, config.loss.temperature)

    @property
    def modalities(self) -> list[str]:
        """Modalities in the order of ``input_dims``."""
        return list(self.input_dims)

    @property
    def aligner(self) -> Aligner:
        """The item tower's aligner."""
        return self.item_tower.aligner

    @property
    def temperature(self) -> Tensor:
        """The recommendation loss's current temperature, clamped to ``loss.temperature``'s [min, max]."""
        return clamped_temperature(self.log_temperature, self.config.loss.temperature)

    @property
    def requires_fit(self) -> bool:
        """Whether :meth:`fit_alignment` must run before the model is used."""
        return self.aligner.requires_fit or self.item_tower.standardize

    def fit_alignment(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor], rows: Tensor | None = None
    ) -> TwoTower:
        """Fit input standardisation, then the aligner's closed-form parts (PCA, CCA, ridge maps);
        returns self.

        ``features`` modality -> (N, d_m), ``present`` modality -> (N,) bool, ``rows`` (N,) bool:
        the items to fit on, None for all. Training passes its warm items (those in the training
        split's interactions), so held-out cold items, whose distribution may differ, never shape
        the statistics the model is judged on them with. Raises :class:`ValueError` when a
        closed-form part has fewer than 2 present rows among ``rows`` to fit on.
        """
        if rows is not None:
            n_items = next(iter(present.values())).shape[0]
            if rows.dtype != torch.bool or rows.shape != (n_items,):
                raise ValueError(
                    f"rows must be a bool tensor of shape ({n_items},), got {rows.dtype} {tuple(rows.shape)}"
                )
            present = {m: mask & rows for m, mask in present.items()}
        if self.item_tower.standardize:
            self.item_tower.fit_input_stats(features, present)
        if self.aligner.requires_fit:
            self.aligner.fit(self.item_tower.standardized(features, present), present)
        return self

    def encode_items(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor], item_index: Tensor | None = None
    ) -> ItemEncoding:
        """The item tower's full output for B items (vectors plus what the losses and reports need).

        ``features`` modality -> (B, d_m) float32, ``present`` modality -> (B,) bool,
        ``item_index`` (B,) int in [0, n_item_ids], 0 for unknown/cold items (None: all cold).
        Raises :class:`ValueError` for a malformed batch or an index out of range.
        """
        return self.item_tower(features, present, item_index)

    def item_vectors(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor], item_index: Tensor | None = None
    ) -> Tensor:
        """(B, embed_dim) L2-normalised item vectors; arguments as in :meth:`encode_items`."""
        return self.encode_items(features, present, item_index).vectors

    def user_vector(self, history_vectors: Tensor, history_mask: Tensor) -> Tensor:
        """(B, embed_dim) L2-normalised user vectors from their recent items' vectors.

        ``history_vectors`` (B, L, embed_dim) from :meth:`item_vectors`, oldest first;
        ``history_mask`` (B, L) bool, True for real entries. Raises :class:`ValueError` for
        mismatched shapes.
        """
        return self.user_tower(history_vectors, history_mask)

    @staticmethod
    def score(user_vectors: Tensor, item_vectors: Tensor) -> Tensor:
        """(U, N) scores: dot products of (U, E) users and (N, E) items."""
        return user_vectors @ item_vectors.T

    def loss(
        self,
        user_vectors: Tensor,
        positive: ItemEncoding,
        *,
        item_ids: Tensor | None = None,
        log_q: Tensor | None = None,
        negatives: ItemEncoding | None = None,
        negative_ids: Tensor | None = None,
        negative_log_q: Tensor | None = None,
        item_tags: Tensor | None = None,
    ) -> LossBreakdown:
        """Recommendation loss (``loss.kind``) + ``align_weight`` x the aligner's loss on the positives.

        ``user_vectors`` (B, E); ``positive`` the encoding of each row's positive item;
        ``item_ids`` (B,) catalog indices of the positives (collisions are masked); ``log_q`` (B,)
        their log sampling probabilities, required when ``loss.logq_correction`` is on (used by
        the softmax loss only; BPR has no correction);
        ``negatives`` K extra items (mixed negatives) with ``negative_ids`` and
        ``negative_log_q``; ``item_tags`` (B, T) tags of the positives for the ``kg`` aligner.
        See :mod:`raymm.models.losses`. Raises :class:`ValueError` if ``log_q`` is missing
        while the correction is on.
        """
        cfg = self.config.loss
        negative_vectors = negatives.vectors if negatives is not None else None
        if cfg.kind == "softmax":
            weight = cfg.logq_correction
            if weight and log_q is None:
                raise ValueError("loss.logq_correction is on but no log_q was given; pass it or set it to 0")
            rec = sampled_softmax_loss(
                user_vectors,
                positive.vectors,
                temperature=self.temperature,
                item_ids=item_ids,
                log_q=log_q * weight if weight and log_q is not None else None,
                negative_vectors=negative_vectors,
                negative_ids=negative_ids,
                negative_log_q=negative_log_q * weight if weight and negative_log_q is not None else None,
            )
        else:
            rec = bpr_loss(
                user_vectors,
                positive.vectors,
                temperature=self.temperature,
                item_ids=item_ids,
                negative_vectors=negative_vectors,
                negative_ids=negative_ids,
            )
        align = self.aligner.loss(positive.projected, positive.present, item_tags)
        return LossBreakdown(total=rec + cfg.align_weight * align, rec=rec, align=align)

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, directory: Directory) -> Directory:
        """Write ``config.json`` (format, version, input dims in modality order, config) and
        ``weights.safetensors`` into ``directory`` (a local path or any :mod:`raymm.data.io` URI).

        Returns ``directory`` as given.
        """
        uri = as_uri(directory)
        document = {
            "format": MODEL_FORMAT,
            "format_version": FORMAT_VERSION,
            "raymm_version": raymm.__version__,
            "input_dims": self.input_dims,
            "n_item_ids": self.n_item_ids,
            "audio_bands": self.audio_bands,
            "config": self.config.model_dump(mode="json"),
        }
        # Unsorted: the order of input_dims is the order of the fusion's modality slots.
        io.write_json(document, io.join(uri, CONFIG_FILE), sort_keys=False)
        metadata = {"format": MODEL_FORMAT, "format_version": str(FORMAT_VERSION)}
        write_weights(self, io.join(uri, WEIGHTS_FILE), metadata)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        expected_dims: Mapping[str, int] | None = None,
        device: str | torch.device = "cpu",
    ) -> TwoTower:
        """Load a model written by :meth:`save_pretrained`, in eval mode, on ``device``.

        ``expected_dims`` (modality -> width of the features it will read) is checked against the
        saved input dimensions. Raises :class:`ModelLoadError` for a missing or unreadable file,
        another format or format version, an invalid config, a modality set or dimension that
        differs from ``expected_dims`` (naming both), or weights that do not fit the config (among
        them ``align.method: none`` models saved when that method had linear heads).
        """
        uri = as_uri(directory)
        config_uri = io.join(uri, CONFIG_FILE)
        document = read_document(
            config_uri,
            expected_format=MODEL_FORMAT,
            versions=range(FORMAT_VERSION, FORMAT_VERSION + 1),
            what="two-tower",
            missing="not a directory written by TwoTower.save_pretrained",
        )
        input_dims = _saved_dims(document, config_uri)
        if expected_dims is not None:
            _compare_dims(input_dims, expected_dims, uri)
        n_item_ids = document.get("n_item_ids", 0)
        if not isinstance(n_item_ids, int) or n_item_ids < 0:
            raise ModelLoadError(f"{config_uri}: n_item_ids must be an integer >= 0, got {n_item_ids!r}")
        saved = document.get("config")
        if isinstance(saved, dict) and "item_id_embeddings" not in saved:
            # Written while the switch was train.item_id_embeddings: the weights say what it was.
            saved = {**saved, "item_id_embeddings": n_item_ids > 0}
        try:
            config = ModelConfig.model_validate(saved)
        except ValidationError as exc:
            raise ModelLoadError(f"{config_uri}: the saved model config is invalid: {exc}") from None
        audio_bands = document.get("audio_bands")
        if audio_bands is not None and (not isinstance(audio_bands, int) or audio_bands <= 0):
            raise ModelLoadError(
                f"{config_uri}: audio_bands must be a positive integer or null, got {audio_bands!r}"
            )
        model = cls(config, input_dims, n_item_ids, audio_bands)
        try:
            load_weights(model, io.join(uri, WEIGHTS_FILE), "two-tower weights")
        except ModelLoadError as exc:
            if config.align.method == "none" and config.align.hidden_dim > 0:
                raise ModelLoadError(
                    f"{exc}\n(align.method='none' models written before it took the heads of "
                    "'contrastive' have one linear head per modality whatever align.hidden_dim says; "
                    "re-train this model)"
                ) from None
            raise
        return model.to(device).eval()


def _saved_dims(document: dict[str, Any], config_uri: str) -> dict[str, int]:
    dims = document.get("input_dims")
    if (
        not isinstance(dims, dict)
        or not dims
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims.values())
    ):
        raise ModelLoadError(f"{config_uri}: input_dims must map modalities to positive ints, got {dims!r}")
    return {str(m): int(d) for m, d in dims.items()}


def _compare_dims(saved: Mapping[str, int], expected: Mapping[str, int], path: str) -> None:
    if set(saved) != set(expected):
        raise ModelLoadError(
            f"{path}: the saved model reads modalities {sorted(saved)}, the features have {sorted(expected)}"
        )
    wrong = [
        f"{m}: saved model expects {saved[m]}-dim input, features have {int(expected[m])}"
        for m in saved
        if saved[m] != int(expected[m])
    ]
    if wrong:
        raise ModelLoadError(f"{path}: input dimension mismatch ({'; '.join(wrong)})")
