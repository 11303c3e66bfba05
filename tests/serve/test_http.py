"""The HTTP layer's contract with the replica: the routes of :mod:`raymm.serve.http` are plain
functions that ask the replica for answers (:class:`~raymm.serve.http.Replica`), and the deployment
provides everything they ask for. The routes themselves are exercised over HTTP in test_app.py."""

from __future__ import annotations

from raymm.serve.deployment import RecommenderDeployment
from raymm.serve.http import Replica


def test_the_deployment_answers_everything_the_routes_ask() -> None:
    asked = {name for name in vars(Replica) if not name.startswith("_")}
    assert {"answer_user", "health", "publish_event", "max_body_bytes"} <= asked
    missing = sorted(name for name in asked if not hasattr(RecommenderDeployment, name))
    assert not missing, f"RecommenderDeployment lacks {missing}"
