"""Fusion: absent modalities never leak into the output, weights are a distribution, dropout is safe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raymm.errors import ConfigError
from raymm.models.config import FusionConfig
from raymm.models.fusion import FUSIONS, Fusion, build_fusion, modality_dropout

MODALITIES = ["text", "image", "audio"]
DIM = 8


def _batch(n: int = 16, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    present = {m: torch.rand(n, generator=generator) < 0.6 for m in MODALITIES}
    present["text"][0] = present["image"][0] = present["audio"][0] = False  # an empty item
    present["text"][1] = present["image"][1] = present["audio"][1] = True  # a complete item
    projected = {
        m: F.normalize(torch.randn(n, DIM, generator=generator), dim=1) * present[m].unsqueeze(1)
        for m in MODALITIES
    }
    return projected, present


def _fusion(method: str, **overrides: object) -> Fusion:
    torch.manual_seed(0)
    config = FusionConfig.model_validate({"method": method, "hidden_dim": 16, "heads": 2, **overrides})
    fusion = build_fusion(config, MODALITIES, DIM)
    fusion.eval()
    return fusion


@pytest.mark.parametrize("method", sorted(FUSIONS))
def test_absent_modality_features_do_not_affect_output(method: str) -> None:
    fusion = _fusion(method)
    projected, present = _batch()
    fused, weights = fusion(projected, present)
    tampered = {
        m: torch.where(present[m].unsqueeze(1), v, torch.randn_like(v) * 10) for m, v in projected.items()
    }
    fused_again, weights_again = fusion(tampered, present)
    assert fused.shape == (16, DIM)
    assert torch.equal(fused, fused_again)
    if weights is not None:
        assert weights_again is not None and torch.equal(weights, weights_again)


@pytest.mark.parametrize("method", sorted(FUSIONS))
def test_missing_is_marked_not_just_zero_filled(method: str) -> None:
    fusion = _fusion(method)
    projected, present = _batch()
    absent_image = {**present, "image": present["image"].clone()}
    absent_image["image"][1] = False
    zero_image = {**projected, "image": projected["image"].clone()}
    zero_image["image"][1] = 0.0
    as_missing, _ = fusion(projected, absent_image)
    as_zero_vector, _ = fusion(zero_image, present)
    assert not torch.allclose(as_missing[1], as_zero_vector[1])


@pytest.mark.parametrize("method", sorted(FUSIONS))
def test_item_without_modalities_gets_the_empty_vector(method: str) -> None:
    fusion = _fusion(method)
    projected, present = _batch()
    fused, weights = fusion(projected, present)
    assert torch.equal(fused[0], fusion.empty.detach())
    assert torch.isfinite(fused).all()
    if weights is not None:
        assert torch.all(weights[0] == 0)


@pytest.mark.parametrize("method", ["gated", "attention"])
def test_weights_sum_to_one_over_present_and_zero_for_absent(method: str) -> None:
    fusion = _fusion(method)
    projected, present = _batch(64)
    _, weights = fusion(projected, present)
    assert weights is not None and weights.shape == (64, 3)
    mask = torch.stack([present[m] for m in MODALITIES], dim=1)
    assert torch.all(weights[~mask] == 0)
    has_any = mask.any(dim=1)
    assert torch.allclose(weights[has_any].sum(dim=1), torch.ones(int(has_any.sum())), atol=1e-6)
    assert bool((weights[mask] > 0).all())


def test_concat_returns_no_weights() -> None:
    projected, present = _batch()
    assert _fusion("concat")(projected, present)[1] is None


def test_modality_dropout_never_drops_all_present_modalities() -> None:
    generator = torch.Generator().manual_seed(0)
    present = torch.rand(5000, 3, generator=generator) < 0.5
    kept = modality_dropout(present, p=0.8, generator=generator)
    assert torch.equal(kept.any(dim=1), present.any(dim=1))  # nobody emptied, nobody filled
    assert not bool((kept & ~present).any())  # never invents a modality
    complete = present.all(dim=1)
    dropped = float((~kept[complete]).float().mean())
    # Three present: each hidden with p = 0.8, and one is given back when all three were (p^3).
    assert dropped == pytest.approx((3 * 0.8 - 0.8**3) / 3, abs=0.03)


def test_modality_dropout_only_in_training() -> None:
    fusion = _fusion("gated", modality_dropout=0.9)
    projected, present = _batch(64)
    eval_out = fusion(projected, present)[0]
    assert torch.equal(eval_out, fusion(projected, present)[0])
    fusion.train()
    torch.manual_seed(1)
    _, weights = fusion(projected, present)
    assert weights is not None
    mask = torch.stack([present[m] for m in MODALITIES], dim=1)
    has_any = mask.any(dim=1)
    assert torch.allclose(weights[has_any].sum(dim=1), torch.ones(int(has_any.sum())), atol=1e-6)
    assert int((weights[mask] == 0).sum()) > 0  # some present modalities were hidden


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ConfigError, match="heads=3 must divide the aligned width 8"):
        build_fusion(FusionConfig(method="attention", heads=3), MODALITIES, DIM)
    with pytest.raises(ValueError, match="lacks modalities \\['audio'\\]"):
        projected, present = _batch()
        _fusion("concat")({m: projected[m] for m in MODALITIES[:2]}, present)
