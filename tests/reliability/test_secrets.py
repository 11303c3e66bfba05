"""Secrets never appear in ``--dry-run`` output, ``manifest.json`` or logs (issue 25, point 4).

The Kafka password and the API key are distinctive strings, set as a Kubernetes pod sets them
(``RAYMM__KAFKA__SASL_PLAIN_PASSWORD``, ``RAYMM__SERVE__API_KEY``) or typed on the command line.
Each check also finds the secret's key, masked, where the secret would be, so none passes by
showing nothing. How the secrets reach Serve's processes instead (their environment) is checked
here too; that Ray's view of a running app holds none is in test_access.py.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import pytest
import yaml
from kafka.errors import KafkaError
from pydantic import SecretStr

from raymm.cli import EXIT_INPUT_ERROR, main
from raymm.config import load_config
from raymm.deploy.render import render
from raymm.serve.auth import API_KEY_ENV, ApiKeySource, export_secrets
from raymm.stream.broker import ensure_topics
from raymm.stream.settings import MASK, PASSWORD_ENV, KafkaSettings
from raymm.training.trainer import train
from tests.conftest import Trained
from tests.fixtures import free_port

PASSWORD = f"kafka-secret-{uuid.uuid4().hex}"
API_KEY = f"api-secret-{uuid.uuid4().hex}"
SASL = [
    "kafka.security_protocol=SASL_SSL",
    "kafka.sasl_mechanism=SCRAM-SHA-512",
    "kafka.sasl_plain_username=raymm",
]
SECRETS_ENV = {PASSWORD_ENV: PASSWORD, API_KEY_ENV: API_KEY}


def _flags(overrides: list[str]) -> list[str]:
    return [word for override in overrides for word in ("--set", override)]


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text and API_KEY not in text


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS_ENV.items():
        monkeypatch.setenv(name, value)


# -- --dry-run --------------------------------------------------------------------------------------

DRY_RUNS = [["serve"], ["deploy", "render"], ["produce"], ["consume"], ["broker"], ["quickstart"]]


@pytest.mark.parametrize("command", DRY_RUNS, ids=" ".join)
def test_dry_run_prints_the_secrets_masked(
    command: list[str], secrets_in_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--dry-run", "--out", str(tmp_path), *_flags(SASL)]) == 0
    out, err = capsys.readouterr()
    resolved = yaml.safe_load(out.split("resolved configuration:", 1)[1])
    assert resolved["kafka"]["sasl_plain_password"] == MASK and resolved["serve"]["api_key"] == MASK
    _no_secret(out, err)


def test_secrets_typed_on_the_command_line_are_masked_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typed = [*SASL, f"kafka.sasl_plain_password={PASSWORD}", f"serve.api_key={API_KEY}"]
    assert main(["serve", "--dry-run", "--out", str(tmp_path), *_flags(typed)]) == 0
    out, err = capsys.readouterr()
    assert f"sasl_plain_password: '{MASK}'" in out and f"api_key: '{MASK}'" in out
    _no_secret(out, err)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        # A section's own check fails: the error shows the section's input, secrets masked.
        (["kafka.security_protocol=SASL_SSL"], "needs a sasl_mechanism"),
        (["serve.api_key_file=/run/secrets/key"], "not both"),
        # A value of the wrong type, and one YAML cannot read: neither is repeated.
        ([f"kafka.sasl_plain_password=[{PASSWORD}", *SASL], "not valid YAML"),
        ([f"serve.api_key={{{API_KEY}: 1}}"], "valid string"),
    ],
)
def test_a_configuration_error_shows_no_secret(
    overrides: list[str],
    problem: str,
    secrets_in_env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--dry-run", "--out", str(tmp_path), *_flags(overrides)]) == EXIT_INPUT_ERROR
    out, err = capsys.readouterr()
    assert problem in err
    _no_secret(out, err)


def test_the_rendered_serve_config_and_manifests_hold_no_secret() -> None:
    config = load_config(None, SASL, environ=SECRETS_ENV)
    assert config.serve.api_key is not None and config.kafka.sasl_plain_password is not None
    files = render(config)
    _no_secret(*files.values())
    # The RayService's pods get both from Secrets, by name.
    rayservice = files["k8s/dev/rayservice.yaml"]
    assert f"name: {API_KEY_ENV}" in rayservice and f"name: {PASSWORD_ENV}" in rayservice


# -- manifest.json ----------------------------------------------------------------------------------


def test_the_model_manifest_holds_no_secret(trained: Trained, tmp_path: Path) -> None:
    """The session's training run with both secrets set (its run key ignores them: Ray Train
    resumes the finished run), writing a new artifact and its manifest."""
    config = trained.config.model_copy(deep=True)
    config.kafka = config.kafka.model_copy(
        update={"sasl_plain_username": "raymm", "sasl_plain_password": SecretStr(PASSWORD)}
    )
    config.serve.api_key = SecretStr(API_KEY)
    train(config, str(trained.data), str(trained.features), str(tmp_path / "model"))
    text = (tmp_path / "model" / "manifest.json").read_text()
    _no_secret(text)
    recorded = json.loads(text)["config"]
    assert recorded["kafka"]["sasl_plain_password"] == MASK and recorded["serve"]["api_key"] == MASK


# -- logs -------------------------------------------------------------------------------------------


def test_logs_and_errors_hold_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="raymm",
        sasl_plain_password=PASSWORD,
        client_id=f"raymm-secrets-{uuid.uuid4().hex[:6]}",
    )
    options = settings.client_options()
    assert options["sasl_plain_password"] == PASSWORD  # what kafka-python gets, and uses
    _no_secret(repr(settings), str(settings), repr(options), str(options))
    config = load_config(None, SASL, environ=SECRETS_ENV)
    _no_secret(repr(config), str(config), config.to_yaml(), repr(config.serve), repr(config.kafka))

    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("tests.reliability.secrets")
    log.info("settings %s %r, options %s, config %r", settings, settings, options, config)
    # Kafka unreachable with SASL configured: kafka-python's admin client logs its configuration at
    # DEBUG before it gives up.
    with pytest.raises(KafkaError) as failed:
        ensure_topics(f"127.0.0.1:{free_port()}", {"raymm.events": 1}, kafka=settings, timeout_s=1.0)
    log.error("Kafka failed: %s (%r)", failed.value, failed.value)
    assert "Starting KafkaAdminClient with configuration" in caplog.text
    assert f"'sasl_plain_password': '{MASK}'" in caplog.text
    _no_secret(caplog.text, str(failed.value))


# -- how the secrets reach Serve's processes instead ----------------------------------------------


def test_a_local_ray_inherits_the_secrets_from_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    config = load_config(
        None, [*SASL, f"kafka.sasl_plain_password={PASSWORD}", f"serve.api_key={API_KEY}"], environ={}
    )
    for name in SECRETS_ENV:  # restored after the test, whatever export_secrets does
        monkeypatch.setenv(name, "before")
        monkeypatch.delenv(name)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert export_secrets(config) == []  # Ray is up: its processes keep the environment they had
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert sorted(export_secrets(config)) == sorted(SECRETS_ENV)
    assert {name: os.environ[name] for name in SECRETS_ENV} == SECRETS_ENV
    # What a state shard or a replica, started by that Ray, makes of its arguments.
    received = KafkaSettings.received(config.kafka.shared())
    assert (
        received.sasl_plain_password is not None
        and received.sasl_plain_password.get_secret_value() == PASSWORD
    )
    key = ApiKeySource.of(config.serve).load()
    assert key is not None and key.matches(API_KEY)
