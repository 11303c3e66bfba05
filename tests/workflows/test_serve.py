"""The serve workflow (:mod:`raymm.workflows.serve`): the app deployed for the session's model with an
embedded broker answers, its summary says where, and it is taken down when the caller stops it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray import serve as ray_serve

from raymm.workflows.serve import ServeRunning, plan_serve, serve
from tests.conftest import Trained
from tests.fixtures import free_port


class _Stop(Exception):
    pass


def test_serve_deploys_answers_and_comes_down(trained: Trained, tmp_path: Path) -> None:
    config = trained.config.model_copy(deep=True)
    config.out = str(tmp_path)
    config.serve.port = free_port()
    seen: list[tuple[ServeRunning, dict[str, Any]]] = []

    def answer_then_stop(running: ServeRunning) -> None:
        seen.append((running, running.app.client().recommendations("someone", k=3)))
        raise _Stop

    try:
        with pytest.raises(_Stop):
            serve(config, model=str(trained.model), on_ready=answer_then_stop)
    finally:
        ray_serve.shutdown()
    ((running, answer),) = seen
    assert answer["fallback"] == "unknown_user" and len(answer["items"]) == 3
    rows = dict(running.summary_rows())
    assert rows["url"] == running.app.url and f":{config.serve.port}" in running.app.url
    assert rows["kafka"].endswith(" (embedded)")
    assert rows["state shards"].endswith(f"snapshots in {config.snapshot_uri()}")


def test_the_plan_deploys_serve_model_else_the_output_roots(tmp_path: Path, trained: Trained) -> None:
    config = trained.config.model_copy(deep=True)
    config.out = str(tmp_path)
    assert plan_serve(config).steps[-1][0].startswith(f"deploy {tmp_path / 'model'} with ")
    config.serve.model = "s3://b/m"
    assert plan_serve(config).steps[-1][0].startswith("deploy s3://b/m with ")
    assert plan_serve(config, model="given").steps[-1][0].startswith("deploy given with ")
