"""The docs pages render with no network beyond the app (:mod:`raymm.serve.docs`): an air-gapped
cluster gets the endpoint list, not the blank page of FastAPI's CDN-loaded default.

A real browser proves it: Debian's Chromium, headless, loads the page from the app (uvicorn in a
thread, serving the same FastAPI app Serve wraps; ``/docs`` and its assets ask nothing of a
replica), with every host but the app's unresolvable and every connection but the app's sent to a
dead proxy. The app is reached as ``raymm.test``, not ``127.0.0.1``, so the page sees a host like
a cluster's, not the loopback that Swagger UI treats specially.

The control is the same Swagger UI page with its JavaScript and CSS taken from another origin: the
app itself by its IP, ``http://127.0.0.1:PORT``, standing for FastAPI's CDN. It must render with the
network and nothing without, or the cut proves nothing (this machine may have no internet at all,
so FastAPI's real CDN page would be blank here whatever the browser's flags).
"""

from __future__ import annotations

import contextlib
import html.parser
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from raymm.serve.docs import ASSETS_PATH, DOCS_PATH, REDOC_PATH
from raymm.serve.http import api
from tests.fixtures import free_port

HOST = "raymm.test"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium. ``make test`` installs it where it can (root with apt-get, as in CI); in
    CI (``CI`` set) a missing one fails the test instead of skipping it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = (
            "!!! Chromium is not installed: the offline docs test CANNOT RUN "
            "(apt-get install -y chromium, or make test as root) !!!"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextlib.contextmanager
def _serving(app: FastAPI) -> Iterator[int]:
    """``app`` on a free loopback port (uvicorn in a thread) for the block; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _rendered(chromium: str, url: str, profile: Path, *, offline: bool = True) -> str:
    """The DOM of ``url`` (on ``HOST``) after headless Chromium ran its scripts; ``offline``: with
    no network but ``HOST``."""
    if offline:
        # Two cuts, each enough alone (the control below fails under either): every name but HOST
        # resolves nowhere (IP literals too), and every connection but HOST's, loopback included
        # (<-loopback>), goes to a dead proxy.
        network = [
            f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
            f"--proxy-bypass-list={HOST};<-loopback>",
        ]
    else:
        network = [f"--host-resolver-rules=MAP {HOST} 127.0.0.1"]
    browser = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    run = subprocess.run(
        [*browser, *network, "--disable-background-networking", f"--user-data-dir={profile}",
         "--no-first-run", "--dump-dom", "--virtual-time-budget=10000", url],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert run.returncode == 0, f"chromium failed ({run.returncode}): {run.stderr[-2000:]}"
    return run.stdout


class _Loads(html.parser.HTMLParser):
    """The URLs a page loads: scripts, stylesheets and icons, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        attr = {"script": "src", "img": "src", "iframe": "src", "link": "href"}.get(tag)
        if attr is not None and named.get(attr):
            self.urls.append(str(named[attr]))


def _outside(dom: str, origin: str) -> list[str]:
    parser = _Loads()
    parser.feed(dom)
    return [u for u in parser.urls if not (u.startswith("/") or u.startswith(origin + "/"))]


def _foreign_docs(port: int) -> FastAPI:
    """The control: an app whose ``/docs`` is Swagger UI with its assets from another origin (the
    app on ``port``, by IP), as FastAPI's default takes them from its CDN."""
    control = FastAPI(title="control", docs_url=None)
    control.get("/ping")(lambda: "pong")  # an operation the page draws when it can load

    @control.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="control",
            swagger_js_url=f"http://127.0.0.1:{port}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"http://127.0.0.1:{port}{ASSETS_PATH}/swagger-ui.css",
        )

    return control


def _operations(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, path, operationId) of every operation in the app's schema."""
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return [(method, path, op["operationId"]) for path, ops in paths.items() for method, op in ops.items()]


def test_the_docs_list_every_endpoint_with_no_network(chromium: str, tmp_path: Path) -> None:
    operations = _operations(api)
    assert len(operations) >= 7, operations  # the routes are registered: the checks below have teeth
    with _serving(api) as port, _serving(_foreign_docs(port)) as control_port:
        origin = f"http://{HOST}:{port}"
        docs = _rendered(chromium, origin + DOCS_PATH, tmp_path / "docs")
        redoc = _rendered(chromium, origin + REDOC_PATH, tmp_path / "redoc")
        control_url = f"http://{HOST}:{control_port}/docs"
        control_online = _rendered(chromium, control_url, tmp_path / "online", offline=False)
        control_offline = _rendered(chromium, control_url, tmp_path / "offline")

    # Swagger UI draws one opblock per operation: its method, and its path as data-path.
    drawn = set(re.findall(r'class="opblock opblock-(\w+)".*?data-path="([^"]+)"', docs, re.S))
    missing = sorted({(m, p) for m, p, _ in operations} - drawn)
    assert not missing, f"/docs did not render {missing} with no network; drew {sorted(drawn)}"
    # ReDoc draws a menu entry per operationId.
    unlisted = sorted(o for _, _, o in operations if f'href="#operation/{o}"' not in redoc)
    assert not unlisted, f"/redoc did not render {unlisted} with no network"
    for page, dom in (("/docs", docs), ("/redoc", redoc)):
        assert not _outside(dom, origin), f"{page} loads from outside the app: {_outside(dom, origin)}"

    # The control draws its one operation when the browser may reach the other origin, and
    # nothing when it may not: the cut above is real.
    assert 'data-path="/ping"' in control_online, "the control page does not render even with the network"
    assert "opblock" not in control_offline, "the cut network let the control's other-origin assets through"
