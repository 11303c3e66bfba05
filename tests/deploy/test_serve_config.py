"""The rendered Serve config runs: ``serve deploy`` (Serve's own CLI, which PUTs the config to the
dashboard's ``/api/serve/applications/``) of a ``deploy/serve.yaml`` rendered for the session's
Ray, trained model and a noida broker builds raymm's app through ``app_builder`` and answers
recommendations over HTTP, including one that reflects an event it was sent. And the builder's
arguments are checked: an unknown one is named."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
import yaml
from ray import serve

from raymm.config import load_config
from raymm.deploy.render import SERVE_CONFIG, render
from raymm.errors import RaymmError
from raymm.serve.app import APP_BUILDER, app_builder
from raymm.stream.broker import EmbeddedBroker
from tests.conftest import Trained
from tests.fixtures import free_port
from tests.serve.test_app import _event, _until


def test_an_unknown_builder_argument_is_named() -> None:
    with pytest.raises(RaymmError, match=r"got unknown argument\(s\) \['bootstrap'\]"):
        app_builder({"bootstrap": "x:1"})


def _dashboard_url() -> str:
    import ray

    # The session's local Ray starts its dashboard (raymm.runtime.init_ray); Ray exposes its
    # address only here.
    address = ray._private.worker.get_dashboard_url()
    assert address, "the session's Ray has no dashboard, so `serve deploy` has nowhere to send the config"
    return address if "://" in address else f"http://{address}"


def _wait_healthy(url: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{url}/healthz", timeout=10)
            if response.status_code == 200:
                return response.json()
            last = f"{response.status_code} {response.text[:300]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(1)
    raise AssertionError(f"the deployed app never became healthy: {last}")


def test_serve_deploy_of_the_rendered_config_answers_over_http(
    trained: Trained, tmp_path: Path, ray_session: None
) -> None:
    port = free_port()
    with EmbeddedBroker("noida") as broker:
        config = load_config(
            None,
            [
                f"deploy.storage={tmp_path}",  # the app's out: snapshots go to <storage>/state
                f"serve.model={trained.ranked}",
                f"serve.port={port}",
                f"kafka.bootstrap_servers={broker.bootstrap_servers}",
                "kafka.partitions=2",
                "serve.state_timeout_s=2.0",
            ],
            environ={},
        )
        document = yaml.safe_load(render(config)[SERVE_CONFIG])
        assert document["applications"][0]["args"]["bootstrap_servers"] == broker.bootstrap_servers
        document["http_options"]["host"] = "127.0.0.1"  # the one edit: loopback, not every interface
        path = tmp_path / "serve.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        dashboard = _dashboard_url()
        serve_cli = Path(sys.executable).with_name("serve")
        deployed = subprocess.run(
            [str(serve_cli), "deploy", str(path), "--address", dashboard],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        url = f"http://127.0.0.1:{port}"
        try:
            health = _wait_healthy(url)
            assert health["status"] == "ok" and len(health["shards"]) == 1
            details = requests.get(f"{dashboard}/api/serve/applications/", timeout=30).json()
            app = details["applications"]["raymm"]
            assert app["source"] == "declarative" and app["deployed_app_config"]["import_path"] == APP_BUILDER
            assert app["deployments"]["Recommender"]["deployment_config"]["user_config"] == {
                "model": str(trained.ranked),
                "version": "v1",
            }

            items = pq.read_table(trained.data / "items.parquet", columns=["item_id"]).column("item_id")
            user = "deployed-" + uuid.uuid4().hex[:8]
            before = requests.get(f"{url}/v1/recommendations/{user}", params={"k": 5}, timeout=30).json()
            assert before["fallback"] == "unknown_user" and len(before["items"]) == 5
            liked = items[0].as_py()
            event = requests.post(f"{url}/v1/events", json=_event(user, liked), timeout=30)
            assert event.status_code == 202, event.text
            after = _until(
                lambda: (
                    (
                        b := requests.get(
                            f"{url}/v1/recommendations/{user}", params={"k": 5}, timeout=30
                        ).json()
                    )["fallback"]
                    is None
                    and b
                ),
                timeout_s=30,
            )
            assert after, "the event never reached the deployed app's user state"
            assert len(after["items"]) == 5 and liked not in {i["item_id"] for i in after["items"]}
            assert after["model_version"]
        finally:
            serve.delete("raymm")
            serve.shutdown()
