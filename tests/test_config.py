from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raymm.config import apply_overrides, config_from_dict, load_config
from raymm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.seed == 0
    assert config.out


def test_quickstart_config_fits_two_cores() -> None:
    config = load_config(ROOT / "configs" / "quickstart.yaml")
    assert config.synth.size == "small"
    assert config.ray.num_cpus is not None and config.ray.num_cpus <= 2
    assert config.extract.device == "cpu"


def test_dotted_overrides_are_typed() -> None:
    config = load_config(
        None, ["synth.size=tiny", "synth.missing.image=0.5", "seed=7", "import.split=[0.6, 0.2, 0.2]"]
    )
    assert config.synth.size == "tiny"
    assert config.synth.missing.image == 0.5
    assert config.seed == 7
    assert config.import_.split == (0.6, 0.2, 0.2)


def test_override_does_not_mutate_the_document() -> None:
    document = {"synth": {"size": "small"}}
    result = apply_overrides(document, ["synth.size=tiny"])
    assert document["synth"]["size"] == "small"
    assert result["synth"]["size"] == "tiny"


def test_unknown_key_is_named_with_the_allowed_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("synth:\n  sise: tiny\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "unknown key 'synth.sise'" in message
    assert "size" in message and str(path) in message


def test_wrong_type_names_key_and_expected_type() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, ["seed=abc"])
    assert "seed" in str(error.value) and "integer" in str(error.value)


def test_wrong_choice_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, ["synth.size=huge"])
    assert "synth.size" in str(error.value) and "'tiny'" in str(error.value)


def test_out_of_range_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"synth\.missing\.text"):
        load_config(None, ["synth.missing.text=1.5"])


def test_split_must_sum_to_one() -> None:
    with pytest.raises(ConfigError, match="summing to 1"):
        load_config(None, ["import.split=[0.5, 0.1, 0.1]"])


@pytest.mark.parametrize(
    ("content", "expected"),
    [("synth: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "mapping at the top")],
)
def test_malformed_files_are_errors(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_missing_file_and_malformed_override() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such.yaml")
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["synth.size"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["seed=1", "seed.x=2"])


def test_yaml_round_trip_is_lossless() -> None:
    config = load_config(ROOT / "configs" / "cluster-gpu.yaml", ["synth.size=tiny"])
    assert config_from_dict(yaml.safe_load(config.to_yaml())) == config


def test_name_lists_follow_the_registries() -> None:
    from typing import get_args

    from raymm.config import ImportFormat, SizeName
    from raymm.data.importers import IMPORTERS
    from raymm.data.synth import SIZES

    assert set(get_args(ImportFormat)) == set(IMPORTERS)
    assert set(get_args(SizeName)) == set(SIZES)


def test_the_validation_metric_must_be_computed() -> None:
    from raymm.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"train.val_metric 'ndcg@100' must be <metric>@<K> .* K in evaluate.ks \[10, 20, 50\]",
    ):
        load_config(None, ["train.val_metric=ndcg@100"])
    with pytest.raises(ConfigError, match=r"train\.val_metric 'auc@20'"):
        load_config(None, ["train.val_metric=auc@20"])
    assert load_config(None, ["train.val_metric=recall@50"]).train.val_metric == "recall@50"


def test_test_hooks_and_twin_knobs_are_gone_from_the_config() -> None:
    from raymm.errors import ConfigError

    for key in (
        "train.fail_at_step=3",
        "train.max_history=5",
        "train.positive_events=[view]",
        "model.towers.n_item_ids=4",
        "model.align.n_mels=8",
        "rank.positive_events=[view]",
    ):
        with pytest.raises(ConfigError, match="unknown key"):
            load_config(None, [key])
