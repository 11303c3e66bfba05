"""The model config: strict sections, validated assignment, cross-field checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raymm.models.config import ModelConfig


def test_defaults_validate_and_round_trip_through_json() -> None:
    config = ModelConfig()
    assert ModelConfig.model_validate_json(config.model_dump_json()) == config


def test_unknown_keys_are_rejected_in_every_section() -> None:
    for document in ({"typo": 1}, {"align": {"shared_dims": 64}}, {"loss": {"temp": 0.1}}):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            ModelConfig.model_validate(document)


def test_assignments_are_validated() -> None:
    config = ModelConfig()
    with pytest.raises(ValidationError):
        config.align.method = "clip"  # type: ignore[assignment]
    with pytest.raises(ValidationError):
        config.fusion.modality_dropout = 1.5


def test_cross_field_checks_name_the_values() -> None:
    with pytest.raises(ValidationError, match=r"fusion\.heads=3 must divide align\.shared_dim=64"):
        ModelConfig.model_validate(
            {"align": {"shared_dim": 64}, "fusion": {"method": "attention", "heads": 3}}
        )
    with pytest.raises(ValidationError, match=r"towers\.user_heads=5 must divide towers\.embed_dim=64"):
        ModelConfig.model_validate({"user_state": {"pooling": "attention"}, "towers": {"user_heads": 5}})
    with pytest.raises(
        ValidationError,
        match=r"align\.temperature[\s\S]*temperature 2\.0 must lie within \[min, max\] = \[0\.01, 1\.0\]",
    ):
        ModelConfig.model_validate({"align": {"temperature": {"initial": 2.0, "min": 0.01, "max": 1.0}}})
    with pytest.raises(ValidationError, match=r"loss\.temperature[\s\S]*temperature 0\.01 must lie within"):
        ModelConfig.model_validate({"loss": {"temperature": {"initial": 0.01, "min": 0.02, "max": 1.0}}})
