"""One embedded broker of each kind per test session, shared by the stream tests."""

from __future__ import annotations

import importlib.util
import platform
from collections.abc import Iterator

import pytest

from raymm.stream.broker import BrokerKind, EmbeddedBroker

# The one platform where pyproject leaves noida-db out; anywhere else a missing wheel is an error.
NOIDA_MISSING_ON_ARM = platform.machine() == "aarch64" and importlib.util.find_spec("noida_db") is None
BROKER_KINDS: tuple[BrokerKind, ...] = ("tansu", "noida")


@pytest.fixture(scope="session", params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    """A running broker, Tansu then noida; tests share it, so each uses topics of its own."""
    if request.param == "noida" and NOIDA_MISSING_ON_ARM:
        pytest.skip("noida-db has no aarch64 Linux wheel")
    with EmbeddedBroker(request.param) as running:
        yield running
