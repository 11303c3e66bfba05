"""Alignment methods: each learns or fits what its paper promises on synthetic paired views."""

from __future__ import annotations

import re

import pytest
import torch

from raymm.errors import ConfigError
from raymm.models.align import (
    ALIGNERS,
    CCAAligner,
    LinearAligner,
    MelAudioEncoder,
    PCAReducer,
    ProjectionHead,
    build_aligner,
    inactive_alignment,
    shares_tag,
    tag_incidence,
)
from raymm.models.config import AlignConfig, TemperatureConfig
from raymm.models.errors import NotFittedError

from .conftest import paired_views, random_batch

DIMS = {"text": 24, "image": 16}


def _retrieval_accuracy(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of rows of a whose most similar row of b is the same item."""
    return float(((a @ b.T).argmax(dim=1) == torch.arange(a.shape[0])).float().mean())


def test_registry_holds_every_config_method() -> None:
    assert set(ALIGNERS) == {"contrastive", "cca", "linear", "kg", "none"}
    for name, method in ALIGNERS.items():
        assert method.name == name
        assert re.search(r"\b(19|20)\d\d\b", method.__doc__ or ""), f"{name} cites no paper"


def test_contrastive_alignment_learns_cross_modal_retrieval() -> None:
    torch.manual_seed(0)
    features, present = paired_views(1200, DIMS, latent=6, noise=0.1)
    train = {m: x[:1000] for m, x in features.items()}
    held_out = {m: x[1000:] for m, x in features.items()}
    aligner = build_aligner(AlignConfig(method="contrastive", shared_dim=16, hidden_dim=64), DIMS)
    optimizer = torch.optim.Adam(aligner.parameters(), lr=3e-3)
    for step in range(100):
        rows = torch.randint(0, 1000, (128,), generator=torch.Generator().manual_seed(step))
        batch = {m: x[rows] for m, x in train.items()}
        mask = {m: p[rows] for m, p in present.items()}
        loss = aligner.loss(aligner.project(batch, mask), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    aligner.eval()
    with torch.no_grad():
        projected = aligner.project(held_out, {m: p[1000:] for m, p in present.items()})
    accuracy = _retrieval_accuracy(projected["text"], projected["image"])
    assert accuracy > 0.3, f"held-out text->image top-1 accuracy {accuracy:.3f} (chance 0.005)"


def test_contrastive_loss_ignores_rows_missing_a_modality() -> None:
    features, present = random_batch(32, DIMS, p_present=0.6)
    aligner = build_aligner(AlignConfig(method="contrastive", shared_dim=8), DIMS)
    loss = aligner.loss(aligner.project(features, present), present)
    changed = {m: x.clone() for m, x in features.items()}
    changed["image"][~present["image"]] = float("nan")
    projected = aligner.project(changed, present)
    changed_loss = aligner.loss(projected, present)
    assert torch.equal(changed_loss, loss)
    assert torch.all(projected["image"][~present["image"]] == 0)
    changed_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in aligner.parameters() if p.grad is not None)
    norms = projected["text"][present["text"]].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_anchor_mode_pairs_every_modality_with_the_anchor() -> None:
    dims = {"text": 4, "image": 4, "audio": 4}
    pairs_all = build_aligner(AlignConfig(shared_dim=4), dims).pairs()
    pairs_anchor = build_aligner(AlignConfig(shared_dim=4, mode="anchor", anchor="image"), dims).pairs()
    assert sorted(pairs_all) == [("image", "audio"), ("text", "audio"), ("text", "image")]
    assert pairs_anchor == [("image", "text"), ("image", "audio")]


def test_learned_temperature_stays_clamped() -> None:
    aligner = build_aligner(AlignConfig(temperature=TemperatureConfig(initial=0.05, min=0.02, max=0.5)), DIMS)
    with torch.no_grad():
        aligner.log_temperature.fill_(10.0)
    assert float(aligner.temperature.detach()) == pytest.approx(0.5)
    fixed = build_aligner(
        AlignConfig(temperature=TemperatureConfig(initial=0.1, learn=False, min=0.01, max=1)), DIMS
    )
    assert "log_temperature" not in dict(fixed.named_parameters())


def test_cca_finds_correlated_directions_and_none_in_independent_data() -> None:
    features, present = paired_views(3000, {"text": 10, "image": 8}, latent=3, noise=0.2)
    cca = build_aligner(AlignConfig(method="cca", shared_dim=5), {"text": 10, "image": 8})
    assert isinstance(cca, CCAAligner)
    cca.fit(features, present)
    correlations = cca.canonical_correlations
    assert float(correlations[0]) > 0.95
    assert torch.all(correlations[:3] > 0.9) and torch.all(correlations[3:] < 0.3)

    generator = torch.Generator().manual_seed(1)
    independent = {m: torch.randn(3000, d, generator=generator) for m, d in {"text": 10, "image": 8}.items()}
    cca.fit(independent, present)
    assert float(cca.canonical_correlations[0]) < 0.15


def test_cca_projection_aligns_items_and_is_frozen_unless_trainable() -> None:
    features, present = paired_views(1500, DIMS, latent=4, noise=0.1)
    cca = build_aligner(AlignConfig(method="cca", shared_dim=4), DIMS)
    with pytest.raises(NotFittedError):
        cca.project(features, present)
    cca.fit({m: x[:1000] for m, x in features.items()}, {m: p[:1000] for m, p in present.items()})
    projected = cca.project(
        {m: x[1000:] for m, x in features.items()}, {m: p[1000:] for m, p in present.items()}
    )
    assert _retrieval_accuracy(projected["text"], projected["image"]) > 0.5
    assert not any(p.requires_grad for p in cca.parameters())
    trainable = build_aligner(AlignConfig(method="cca", shared_dim=4, trainable=True), DIMS)
    assert all(p.requires_grad for p in trainable.heads.parameters())


def test_cca_uses_rows_where_both_modalities_are_present() -> None:
    features, present = paired_views(2000, DIMS, latent=3, noise=0.1)
    present["image"] = torch.arange(2000) % 2 == 0
    features["image"][~present["image"]] = torch.randn(1000, 16) * 50  # junk where image is absent
    cca = build_aligner(AlignConfig(method="cca", shared_dim=3), DIMS)
    assert isinstance(cca, CCAAligner)
    cca.fit(features, present)
    assert float(cca.canonical_correlations.min()) > 0.9


def test_linear_maps_reduce_anchor_space_error() -> None:
    features, present = paired_views(2000, DIMS, latent=5, noise=0.1)
    aligner = build_aligner(AlignConfig(method="linear", shared_dim=5, anchor="text"), DIMS)
    assert isinstance(aligner, LinearAligner)
    aligner.fit(features, present)
    raw = aligner.project(features, present, normalize=False)
    target = raw["text"]
    fitted_error = float(((raw["image"] - target) ** 2).mean())
    baseline_error = float(((target - target.mean(dim=0)) ** 2).mean())  # best constant prediction
    random_map = torch.randn(16, 5, generator=torch.Generator().manual_seed(3)) / 4
    random_error = float(((features["image"] @ random_map - target) ** 2).mean())
    assert fitted_error < 0.05 * baseline_error
    assert fitted_error < 0.05 * random_error


def test_kg_loss_decreases_and_pulls_tag_sharing_items_together() -> None:
    torch.manual_seed(0)
    n, groups = 64, 4
    features, present = random_batch(n, DIMS, p_present=1.0, seed=5)
    tags = tag_incidence([[i % groups] for i in range(n)], n_tags=groups)
    same_tag = shares_tag(tags) & ~torch.eye(n, dtype=torch.bool)
    aligner = build_aligner(AlignConfig(method="kg", shared_dim=16, hidden_dim=32), DIMS)

    def cross_modal_gap() -> float:
        with torch.no_grad():
            projected = aligner.project(features, present)
        similarity = projected["text"] @ projected["image"].T
        return float(similarity[same_tag].mean() - similarity[~same_tag].mean())

    gap_before = cross_modal_gap()
    optimizer = torch.optim.Adam(aligner.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        loss = aligner.loss(aligner.project(features, present), present, item_tags=tags)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert cross_modal_gap() > gap_before + 0.4


def test_kg_tags_dense_and_sparse_agree() -> None:
    lists = [[0, 2], [2], [1], [], [1, 1]]
    sparse = tag_incidence(lists)
    dense = sparse.to_dense()
    assert dense.tolist() == [[1, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 0], [0, 1, 0]]
    expected = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 0, 1]],
        dtype=torch.bool,
    )
    assert torch.equal(shares_tag(sparse), expected)
    assert torch.equal(shares_tag(dense.bool()), expected)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        tag_incidence([[0, 5]], n_tags=2)


def test_none_aligner_has_the_heads_of_contrastive_and_no_loss() -> None:
    features, present = random_batch(8, DIMS)
    config = AlignConfig(method="none", shared_dim=8, hidden_dim=32)
    aligner = build_aligner(config, DIMS)
    contrastive = build_aligner(config.model_copy(update={"method": "contrastive"}), DIMS)
    assert all(isinstance(head, ProjectionHead) for head in aligner.heads.values())
    assert str(aligner.heads) == str(contrastive.heads)  # same layers, same widths
    assert float(aligner.loss(aligner.project(features, present), present)) == 0.0
    linear = build_aligner(config.model_copy(update={"hidden_dim": 0}), DIMS)  # the explicit choice
    assert all(isinstance(head.net, torch.nn.Linear) for head in linear.heads.values())


def test_pca_reduction_is_fitted_before_projection() -> None:
    features, present = paired_views(300, DIMS, latent=3)
    aligner = build_aligner(AlignConfig(method="contrastive", shared_dim=8, pca_dim=6), DIMS)
    assert aligner.requires_fit and not aligner.is_fitted
    with pytest.raises(NotFittedError, match="PCA of text"):
        aligner.project(features, present)
    aligner.fit(features, present)
    reducer = aligner.reducers["text"]
    assert isinstance(reducer, PCAReducer)
    components = reducer.components
    assert components.shape == (24, 6)
    assert torch.allclose(components.T @ components, torch.eye(6), atol=1e-5)
    reduced = aligner.reduce(features)["text"]
    # Three latent directions hold almost all the variance.
    assert float(reduced[:, :3].var(dim=0).sum() / reduced.var(dim=0).sum()) > 0.95


def test_conv_audio_encoder_reads_mel_frames() -> None:
    dims = {"text": 8, "audio": 4 * 6}
    config = AlignConfig(shared_dim=8, audio_encoder="conv", audio_channels=8)
    aligner = build_aligner(config, dims, audio_bands=4)  # 4 mel bands x 6 time segments
    assert isinstance(aligner.heads["audio"], MelAudioEncoder)
    assert (aligner.heads["audio"].n_mels, aligner.heads["audio"].frames) == (4, 6)
    features, present = random_batch(5, dims, p_present=1.0)
    loss = aligner.loss(aligner.project(features, present), present)
    loss.backward()
    assert aligner.heads["audio"].convs[0].weight.grad is not None
    gru = MelAudioEncoder(n_mels=4, frames=6, out_dim=3, channels=8, pool="gru")
    assert gru(torch.randn(2, 24)).shape == (2, 3)
    with pytest.raises(ConfigError, match=r"audio features \(24 values\) record mel bands 5"):
        build_aligner(config, dims, audio_bands=5)
    with pytest.raises(ConfigError, match="record mel bands None"):
        build_aligner(config, dims)
    with pytest.raises(ConfigError, match="closed form"):
        build_aligner(config.model_copy(update={"method": "cca"}), dims, audio_bands=4)


def test_malformed_batches_name_the_problem() -> None:
    aligner = build_aligner(AlignConfig(shared_dim=4), DIMS)
    features, present = random_batch(3, DIMS)
    with pytest.raises(ValueError, match=r"features\['image'\] has shape \(3, 5\), expected \(B, 16\)"):
        aligner.project({**features, "image": torch.zeros(3, 5)}, present)
    with pytest.raises(ValueError, match="lacks modalities \\['image'\\]"):
        aligner.project({"text": features["text"]}, present)


@pytest.mark.parametrize("method", ["contrastive", "cca", "linear"])
def test_a_method_that_aligns_modalities_says_it_is_inactive_with_one(method: str) -> None:
    config = AlignConfig(method=method)
    note = inactive_alignment(config, ["text"])
    assert note is not None and f"align.method={method!r}" in note and "only text" in note
    assert "inactive" in note and "loss is 0" in note
    assert inactive_alignment(config, ["text", "image"]) is None


@pytest.mark.parametrize("method", ["kg", "none"])
def test_tag_alignment_and_no_alignment_have_nothing_to_report_with_one_modality(method: str) -> None:
    assert inactive_alignment(AlignConfig(method=method), ["audio"]) is None
