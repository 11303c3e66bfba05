from __future__ import annotations

import os
import re
import subprocess
import sys
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


def test_loading_the_config_loads_no_framework() -> None:
    """Each stage's section is plain pydantic and ``raymm.features`` loads its names lazily, so
    assembling every section (a ``--dry-run``, a config check) imports no torch, Ray or web stack."""
    frameworks = ("torch", "ray", "kafka", "fastapi", "starlette")
    script = (
        "import sys; from raymm.config import load_config; load_config(sys.argv[1]); "
        f"print(','.join(m for m in {frameworks!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "configs" / "quickstart.yaml")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == ""


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


# -- keys that moved (MOVED_KEYS) ---------------------------------------------------------------


def test_moved_keys_in_a_file_are_refused_naming_where_each_went(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(
        "train:\n  epochs: 3\n  modalities: [text]\n  num_workers: 2\n"
        "extract:\n  text: {kind: hf, batch_size: 8}\n"
        "evaluate:\n  ks: [10, 20]\n  ablation: [text, popularity]\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message
    for moved in (
        "train.modalities moved to model.modalities",
        "train.num_workers moved to train.run.num_workers",
        "extract.text.batch_size moved to extract.text.resources.batch_size",
        "evaluate.ablation moved to ablation.variants",
    ):
        assert moved in message, moved
    assert "train.epochs" not in message and "extract.text.kind" not in message  # keys that stayed


@pytest.mark.parametrize(
    ("override", "moved"),
    [
        ("train.item_id_embeddings=false", "train.item_id_embeddings moved to model.item_id_embeddings"),
        ("train.storage_path=s3://b/ckpt", "train.storage_path moved to train.run.storage_path"),
        ("train.heap_trim_every=null", "train.heap_trim_every moved to train.run.heap_trim_every"),
        ("extract.audio.compute=tasks", "extract.audio.compute moved to extract.audio.resources.compute"),
        ("evaluate.missing_rate=0.2", "evaluate.missing_rate moved to ablation.missing_rate"),
    ],
)
def test_a_moved_key_in_set_is_refused_naming_where_it_went(override: str, moved: str) -> None:
    with pytest.raises(ConfigError, match=rf"--set {re.escape(override)}\):\n  {re.escape(moved)}$"):
        load_config(ROOT / "configs" / "quickstart.yaml", [override])


def test_a_moved_key_from_the_environment_names_the_variable_to_set_instead() -> None:
    with pytest.raises(
        ConfigError,
        match="RAYMM__EXTRACT__TEXT__NUM_GPUS: extract.text.num_gpus moved to extract.text.resources.num_gpus "
        r"\(set RAYMM__EXTRACT__TEXT__RESOURCES__NUM_GPUS\)",
    ):
        load_config(None, environ={"RAYMM__EXTRACT__TEXT__NUM_GPUS": "0.5"})


def test_every_moved_key_points_at_a_key_of_the_config_and_none_is_one_itself() -> None:
    from raymm.config import ENV_PREFIX, MOVED_KEYS, env_overrides

    def variable(key: str) -> str:
        return ENV_PREFIX + "__".join(key.upper().split("."))

    # 2 model keys, 4 ablation keys, 7 run keys, 7 resources for each of 3 modalities
    assert len(MOVED_KEYS) == 2 + 4 + 7 + 3 * 7
    for old, new in MOVED_KEYS.items():
        assert env_overrides({variable(new): "1"})[0][1] == new.split(".")  # names a key, not a section
        with pytest.raises(ConfigError, match=f"{re.escape(old)} moved to {re.escape(new)}"):
            env_overrides({variable(old): "1"})


# -- environment variables (RAYMM__<SECTION>__<KEY>) --------------------------------------------------


def test_environment_variables_override_the_file_and_yield_to_set(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("kafka:\n  partitions: 4\n  client_id: from-file\nserve:\n  port: 9000\n")
    environ = {
        "RAYMM__KAFKA__PARTITIONS": "6",  # parsed as YAML: an int
        "RAYMM__SERVE__PORT": "9100",
        "RAYMM__EXTRACT__TEXT__RESOURCES__NUM_GPUS": "0.5",  # deeper sections too
        "RAYMM_NOT_OURS": "x",  # one underscore: not an override
        "HOME": "/root",
    }
    config = load_config(file, ["serve.port=9200"], environ=environ)
    assert config.kafka.partitions == 6 and config.kafka.client_id == "from-file"
    assert config.serve.port == 9200  # --set comes last
    assert config.extract.text.resources.num_gpus == 0.5


def test_a_password_from_the_environment_stays_text_and_secret() -> None:
    base = [
        "kafka.security_protocol=SASL_SSL",
        "kafka.sasl_mechanism=SCRAM-SHA-512",
        "kafka.sasl_plain_username=raymm",
    ]
    for password in ("0123", "yes", "1e5", "null", "a: b", "[x"):  # YAML would retype or reject these
        config = load_config(None, base, environ={"RAYMM__KAFKA__SASL_PLAIN_PASSWORD": password})
        assert config.kafka.sasl_plain_password is not None
        assert config.kafka.sasl_plain_password.get_secret_value() == password
        assert yaml.safe_load(config.to_yaml())["kafka"]["sasl_plain_password"] == "**********"
    assert load_config(None, environ={"RAYMM__SERVE__MODEL": "007"}).serve.model == "007"


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        (
            "RAYMM__KAFKA__SASL_PASSWORD",
            r"RAYMM__KAFKA__SASL_PASSWORD: unknown key 'kafka\.sasl_password'; allowed here: .*sasl_plain_password",
        ),
        (
            "RAYMM__KAFKAA__PARTITIONS",
            r"RAYMM__KAFKAA__PARTITIONS: unknown key 'kafkaa'; allowed here: .*kafka",
        ),
        ("RAYMM__KAFKA", r"RAYMM__KAFKA: 'kafka' is a section, not a key"),
    ],
)
def test_an_unknown_environment_key_names_the_variable(variable: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(None, environ={variable: "1"})


def test_a_wrong_value_from_the_environment_names_the_variable_and_key() -> None:
    with pytest.raises(ConfigError, match=r"environment RAYMM__KAFKA__PARTITIONS[\s\S]*kafka\.partitions"):
        load_config(None, environ={"RAYMM__KAFKA__PARTITIONS": "many"})


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYMM__SERVE__STATE_SHARDS", "2")
    assert load_config(None).serve.state_shards == 2
