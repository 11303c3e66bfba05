"""The HTTP layer's contract with the replica: the routes of :mod:`raymm.serve.http` are plain
functions that ask the replica for answers (:class:`~raymm.serve.http.Replica`), and the deployment
provides everything they ask for. The routes themselves are exercised over HTTP in test_app.py."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from raymm.serve.deployment import RecommenderDeployment
from raymm.serve.http import Replica, api


def test_the_deployment_answers_everything_the_routes_ask() -> None:
    asked = {name for name in vars(Replica) if not name.startswith("_")}
    assert {"answer_user", "health", "publish_event", "max_body_bytes"} <= asked
    missing = sorted(name for name in asked if not hasattr(RecommenderDeployment, name))
    assert not missing, f"RecommenderDeployment lacks {missing}"


def _on_the_loop(call: Any) -> bool:
    """What FastAPI awaits on the event loop: a coroutine function, or an object whose
    ``__call__`` is one (its security schemes)."""
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)


def _dependency_calls(dependant: Dependant) -> list[Any]:
    calls = []
    for dependency in dependant.dependencies:
        calls.append(dependency.call)
        calls.extend(_dependency_calls(dependency))
    return calls


def test_every_dependency_of_a_route_runs_on_the_event_loop() -> None:
    """FastAPI runs a plain ``def`` dependency in its thread pool: a thread hop per request, ~13%
    of the replica's busy CPU at 100/s when :func:`~raymm.serve.http.replica` was one."""
    in_thread_pool = {
        f"{route.path} -> {getattr(call, '__name__', type(call).__name__)}"
        for route in api.routes
        if isinstance(route, APIRoute)
        for call in _dependency_calls(route.dependant)
        if call is not None and not _on_the_loop(call)
    }
    assert "/v1/recommendations/{user_id}" in {r.path for r in api.routes if isinstance(r, APIRoute)}
    assert not in_thread_pool, f"dependencies FastAPI would run in a thread: {sorted(in_thread_pool)}"
