"""One embedded broker of each kind per test session, shared by the stream tests."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
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


@pytest.fixture(scope="session")
def kcat() -> str:
    """The path of kcat (librdkafka's command-line client), the independent client of the interop
    tests. ``make test`` installs it where it can; in CI (``CI`` set) a missing kcat fails the test
    instead of skipping it, so the interop tests cannot silently stop running."""
    path = shutil.which("kcat")
    if path is None:
        message = "kcat is not installed: the interop tests cannot run (apt-get install -y kcat, or make test as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
