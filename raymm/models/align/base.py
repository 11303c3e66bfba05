"""The one interface every alignment method shares, and the parts they are built from.

An :class:`Aligner` maps each modality's features of a batch of items into one shared space:

* ``project(features, present)``: ``features`` maps modality -> (B, d_m) float32 (rows of absent
  modalities may hold anything, NaN included; they are cleared before any layer reads them), ``present`` maps modality -> (B,) bool. Returns
  modality -> (B, shared_dim), L2-normalised, with absent rows set to exactly zero.
* ``loss(projected, present, item_tags=None)``: the method's alignment loss on that output (a
  scalar tensor; zero for methods without one).
* ``fit(features, present)``: the closed-form parts (PCA of raw features, CCA, ridge maps) fitted
  on the training items (each once; training passes the warm items, never held-out cold ones).
  ``requires_fit`` says whether a method has such parts; using them unfitted
  raises :class:`~raymm.models.errors.NotFittedError`.

Each modality passes through an optional PCA (:class:`PCAReducer`, ``pca_dim``) and then a head:
an MLP (:class:`ProjectionHead`), a linear map fitted in closed form, or, for ``mel_stats``
audio with ``audio_encoder: conv``, the trainable :class:`MelAudioEncoder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raymm.errors import ConfigError
from raymm.models.config import AlignConfig
from raymm.models.errors import NotFittedError
from raymm.models.layers import clamped_temperature, linear, mlp, register_temperature

#: The modality name whose ``mel_stats`` vectors the conv audio encoder reads.
AUDIO = "audio"


def check_batch(
    features: Mapping[str, Tensor], present: Mapping[str, Tensor], input_dims: Mapping[str, int]
) -> int:
    """Check one batch against the modalities a module was built for; return the batch size B.

    Every modality of ``input_dims`` must be in both mappings, features (B, d_m) with d_m as built,
    present (B,) bool. Extra modalities in the mappings are ignored. Raises :class:`ValueError`
    naming the modality and the bad shape or dtype.
    """
    missing = [m for m in input_dims if m not in features or m not in present]
    if missing:
        raise ValueError(
            f"batch lacks modalities {missing}: features has {sorted(features)}, present has "
            f"{sorted(present)}, expected {list(input_dims)}"
        )
    batch = -1
    for modality, dim in input_dims.items():
        x, mask = features[modality], present[modality]
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"features[{modality!r}] has shape {tuple(x.shape)}, expected (B, {dim})")
        if mask.dtype != torch.bool or mask.shape != (x.shape[0],):
            raise ValueError(
                f"present[{modality!r}] must be a bool tensor of shape ({x.shape[0]},), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if batch >= 0 and x.shape[0] != batch:
            raise ValueError(f"features[{modality!r}] has {x.shape[0]} rows, other modalities have {batch}")
        batch = x.shape[0]
    return max(batch, 0)


def stack_modalities(values: Mapping[str, Tensor], modalities: Sequence[str]) -> Tensor:
    """modality -> (B, ...) as one (B, M, ...) tensor in the order of ``modalities``."""
    return torch.stack([values[m] for m in modalities], dim=1)


def sym_inverse_sqrt(matrix: Tensor, eps: float = 1e-12) -> Tensor:
    """``matrix^{-1/2}`` of a symmetric positive (semi)definite matrix via eigh; tiny eigenvalues floored."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(eps).rsqrt()) @ vectors.T


def fix_signs(columns: Tensor) -> Tensor:
    """Flip each column so its largest-magnitude entry is positive (a deterministic basis)."""
    pivot = columns.gather(0, columns.abs().argmax(dim=0, keepdim=True))
    return columns * torch.where(pivot < 0, -1.0, 1.0).to(columns.dtype)


class PCAReducer(nn.Module):
    """Principal components of one modality, fitted in closed form; ``(n, d) -> (n, out_dim)``.

    ``out_dim = min(pca_dim, d)``; if the fit sees fewer informative directions than that, the
    extra components are zero so the shape never depends on the data. Mean and components are
    buffers (saved with the model). Calling it before :meth:`fit` raises ``NotFittedError``.
    """

    def __init__(self, in_dim: int, pca_dim: int, name: str = "") -> None:
        super().__init__()
        self.name = name
        self.in_dim, self.out_dim = in_dim, min(pca_dim, in_dim)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("components", torch.zeros(in_dim, self.out_dim))
        self.register_buffer("fitted", torch.tensor(False))
        self.mean: Tensor
        self.components: Tensor
        self.fitted: Tensor

    @torch.no_grad()
    def fit(self, x: Tensor) -> PCAReducer:
        """Fit on the present rows ``x`` (n, d), n >= 2; :class:`ValueError` for fewer rows."""
        if x.shape[0] < 2:
            raise ValueError(
                f"PCA of {self.name or 'a modality'} needs at least 2 present rows, got {x.shape[0]}"
            )
        x64 = x.double()
        mean = x64.mean(dim=0)
        centred = x64 - mean
        covariance = centred.T @ centred / (x.shape[0] - 1)
        _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
        k = min(self.out_dim, x.shape[0] - 1)
        top = fix_signs(vectors[:, -k:].flip(dims=[1])) if k > 0 else vectors[:, :0]
        components = torch.zeros_like(self.components, dtype=torch.float64)
        components[:, :k] = top
        self.mean.copy_(mean.to(self.mean.dtype))
        self.components.copy_(components.to(self.components.dtype))
        self.fitted.fill_(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.fitted):
            raise NotFittedError(
                f"PCA of {self.name or 'a modality'} used before fit(); call Aligner.fit first"
            )
        return (x - self.mean) @ self.components


class ProjectionHead(nn.Module):
    """A modality's projection into the shared space: ``Linear -> GELU -> Dropout -> Linear``, or
    one ``Linear`` when ``hidden_dim`` is 0. ``(B, in_dim) -> (B, out_dim)``, not normalised."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.net: nn.Module = (
            mlp(in_dim, hidden_dim, out_dim, dropout) if hidden_dim > 0 else linear(in_dim, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MelAudioEncoder(nn.Module):
    """A small trainable encoder of ``mel_stats`` audio vectors, used instead of a projection head.

    Input (B, n_mels * frames), band-major (``x.view(B, n_mels, frames)[b, m, f]`` is band m in
    time segment f, as :func:`raymm.features.audio.mel_frames` lays it out). Each clip is
    standardised, then two 1-D convolutions over time (mel bands as channels, kernel 3) and a
    pool over time (``meanmax``: mean and max concatenated; ``gru``: the last state of a GRU)
    feed a linear layer to ``out_dim``. Output (B, out_dim), not normalised. The convolutional
    front end follows the audio-tagging CNNs of Hershey et al., "CNN architectures for
    large-scale audio classification" (ICASSP 2017), shrunk to a few pooled frames.
    """

    def __init__(
        self, n_mels: int, frames: int, out_dim: int, channels: int = 64, pool: str = "meanmax"
    ) -> None:
        super().__init__()
        if pool not in ("meanmax", "gru"):
            raise ConfigError(f"audio_pool must be 'meanmax' or 'gru', got {pool!r}")
        self.n_mels, self.frames, self.pool = n_mels, frames, pool
        self.convs = nn.Sequential(
            nn.Conv1d(n_mels, channels, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv1d(channels, channels, kernel_size=3, padding=1),
            nn.GELU(),
        )
        self.gru = nn.GRU(channels, channels, batch_first=True) if pool == "gru" else None
        self.out = nn.Linear(channels if pool == "gru" else 2 * channels, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.n_mels * self.frames:
            raise ValueError(
                f"MelAudioEncoder expects (B, {self.n_mels}*{self.frames}={self.n_mels * self.frames}), "
                f"got {tuple(x.shape)}"
            )
        spectrogram = x.view(x.shape[0], self.n_mels, self.frames)
        mean = spectrogram.mean(dim=(1, 2), keepdim=True)
        std = spectrogram.std(dim=(1, 2), keepdim=True, unbiased=False)
        hidden = self.convs((spectrogram - mean) / (std + 1e-5))  # (B, C, frames)
        if self.gru is not None:
            _, last = self.gru(hidden.transpose(1, 2))
            return self.out(last[-1])
        return self.out(torch.cat([hidden.mean(dim=2), hidden.amax(dim=2)], dim=1))


def info_nce(a: Tensor, b: Tensor, temperature: Tensor | float) -> Tensor:
    """Symmetric InfoNCE (CLIP): row i of ``a`` should match row i of ``b`` among all rows.

    ``a``, ``b``: (n, D) L2-normalised, n >= 1. Returns the mean of the a->b and b->a
    cross-entropies of ``a @ b.T / temperature`` with the diagonal as targets.
    """
    logits = a @ b.T / temperature
    targets = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


class Aligner(nn.Module):
    """Base of every alignment method; see the module docstring for the contract.

    Subclasses set ``name`` (the config key), may override :meth:`_build_head`, :meth:`loss`
    and :meth:`_fit_heads`, and set ``closed_form = True`` when their heads are fitted by
    :meth:`fit`. Modalities keep the order of ``input_dims``.
    """

    log_temperature: Tensor  # registered by register_temperature: a parameter or a buffer

    name: ClassVar[str] = ""
    closed_form: ClassVar[bool] = False
    #: Whether :meth:`loss` uses the temperature (a learnable one is only a parameter if so).
    uses_temperature: ClassVar[bool] = True
    #: Whether the method aligns modalities with each other, so that with one modality it has
    #: nothing to align (loss 0, or a closed-form fit of that modality alone): see
    #: :func:`~raymm.models.align.registry.inactive_alignment`.
    aligns_modalities: ClassVar[bool] = True

    def __init__(
        self, config: AlignConfig, input_dims: Mapping[str, int], audio_bands: int | None = None
    ) -> None:
        super().__init__()
        if not input_dims:
            raise ConfigError("an aligner needs at least one modality, got input_dims={}")
        bad = {m: d for m, d in input_dims.items() if int(d) <= 0}
        if bad:
            raise ConfigError(f"input dimensions must be positive, got {bad}")
        self.config = config
        self.input_dims: dict[str, int] = {m: int(d) for m, d in input_dims.items()}
        self.modalities: list[str] = list(self.input_dims)
        self.anchor = config.anchor if config.anchor in self.input_dims else self.modalities[0]
        self.shared_dim = config.shared_dim
        self.conv_audio = config.audio_encoder == "conv" and AUDIO in self.input_dims
        self.audio_bands = audio_bands
        if self.conv_audio and (audio_bands is None or self.input_dims[AUDIO] % audio_bands):
            raise ConfigError(
                f"audio_encoder='conv' reads mel_stats spectrograms of n_mels bands x frames, but the "
                f"audio features ({self.input_dims[AUDIO]} values) record mel bands {audio_bands!r}; "
                "extract audio with kind: mel_stats (its manifest records the bands)"
            )
        self.reducers = nn.ModuleDict()
        head_dims: dict[str, int] = {}
        for modality, dim in self.input_dims.items():
            keeps_layout = self.conv_audio and modality == AUDIO
            if config.pca_dim is not None and dim > config.pca_dim and not keeps_layout:
                self.reducers[modality] = PCAReducer(dim, config.pca_dim, name=modality)
                head_dims[modality] = config.pca_dim
            else:
                head_dims[modality] = dim
        self.head_dims = head_dims
        self.heads = nn.ModuleDict({m: self._build_head(m, d) for m, d in head_dims.items()})
        register_temperature(self, config.temperature, learn=self._learns_temperature())

    # -- construction -------------------------------------------------------------------------
    def _learns_temperature(self) -> bool:
        """Whether the temperature is a parameter (learned) rather than a fixed buffer."""
        return self.uses_temperature

    def _build_head(self, modality: str, in_dim: int) -> nn.Module:
        """The head of one modality: the conv audio encoder for mel_stats audio, else an MLP."""
        if self.conv_audio and modality == AUDIO:
            cfg, bands = self.config, int(self.audio_bands or 1)
            frames = self.input_dims[AUDIO] // bands
            return MelAudioEncoder(bands, frames, cfg.shared_dim, cfg.audio_channels, cfg.audio_pool)
        return ProjectionHead(in_dim, self.shared_dim, self.config.hidden_dim, self.config.dropout)

    # -- closed-form fitting ------------------------------------------------------------------
    @property
    def requires_fit(self) -> bool:
        """Whether :meth:`fit` must run before :meth:`project` (PCA or closed-form heads)."""
        return bool(self.reducers) or self.closed_form

    @property
    def is_fitted(self) -> bool:
        """Whether every closed-form part has been fitted (always True for methods without any)."""
        return all(bool(r.fitted) for r in self.reducers.values()) and self._heads_fitted()

    def _heads_fitted(self) -> bool:
        return True

    @torch.no_grad()
    def fit(self, features: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Aligner:
        """Fit the closed-form parts on the items given (each once); returns ``self``.

        Shapes as in :meth:`project`. To fit on a subset of the catalog (training fits on its warm
        items) clear ``present`` outside it. PCA uses each modality's present rows; CCA/ridge maps use
        rows where the modalities they relate are both present. Raises :class:`ValueError` when
        a modality has fewer than 2 present rows to fit on. A no-op for methods without such parts.
        """
        check_batch(features, present, self.input_dims)
        for modality, reducer in self.reducers.items():
            assert isinstance(reducer, PCAReducer)
            reducer.fit(features[modality][present[modality]])
        if self.closed_form:
            self._fit_heads(self.reduce(features), present)
        return self

    def _fit_heads(self, reduced: dict[str, Tensor], present: Mapping[str, Tensor]) -> None:
        raise NotImplementedError

    # -- forward ------------------------------------------------------------------------------
    def reduce(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Raw features -> head inputs (PCA where configured); (B, d_m) -> (B, head_dims[m])."""
        return {
            m: self.reducers[m](features[m]) if m in self.reducers else features[m] for m in self.modalities
        }

    def project(
        self, features: Mapping[str, Tensor], present: Mapping[str, Tensor], normalize: bool = True
    ) -> dict[str, Tensor]:
        """Each modality -> (B, shared_dim) in the shared space; absent rows exactly zero.

        ``normalize=False`` returns the raw head outputs (for diagnostics such as the ridge
        error in the anchor space). Raises :class:`ValueError` for a malformed batch and
        ``NotFittedError`` when closed-form parts are not fitted.
        """
        check_batch(features, present, self.input_dims)
        if self.closed_form and not self._heads_fitted():
            raise NotFittedError(
                f"the {self.name!r} aligner is used before fit(); call fit on the training items first"
            )
        # Absent rows may hold anything (NaN included): clear them before any layer reads them.
        cleared = {m: torch.where(present[m].unsqueeze(1), features[m], 0.0) for m in self.modalities}
        reduced = self.reduce(cleared)
        projected = {}
        for modality in self.modalities:
            z = self.heads[modality](reduced[modality])
            if normalize:
                z = F.normalize(z, dim=-1)
            projected[modality] = torch.where(present[modality].unsqueeze(1), z, 0.0)
        return projected

    def forward(self, features: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.project(features, present)

    # -- losses -------------------------------------------------------------------------------
    @property
    def temperature(self) -> Tensor:
        """The current temperature, clamped to [``temperature.min``, ``temperature.max``]."""
        return clamped_temperature(self.log_temperature, self.config.temperature)

    def pairs(self) -> list[tuple[str, str]]:
        """Modality pairs the loss ties together: all pairs, or each modality with the anchor."""
        if self.config.mode == "anchor":
            return [(self.anchor, m) for m in self.modalities if m != self.anchor]
        return [(a, b) for i, a in enumerate(self.modalities) for b in self.modalities[i + 1 :]]

    def loss(
        self, projected: Mapping[str, Tensor], present: Mapping[str, Tensor], item_tags: Tensor | None = None
    ) -> Tensor:
        """Mean symmetric InfoNCE over :meth:`pairs`, each on the rows where both are present.

        Pairs with fewer than 2 such rows are skipped; with none left the loss is 0 (still
        attached to the temperature, so every parameter takes part in the graph). ``item_tags``
        is ignored here (see the ``kg`` method).
        """
        temperature = self.temperature
        terms = []
        for a, b in self.pairs():
            both = present[a] & present[b]
            if int(both.sum()) >= 2:
                terms.append(info_nce(projected[a][both], projected[b][both], temperature))
        if not terms:
            return temperature * 0.0
        return torch.stack(terms).mean()
