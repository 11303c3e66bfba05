"""The API's documentation pages, served with no network beyond the app itself.

FastAPI's own ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a CDN (and ReDoc its fonts
from Google), so on an air-gapped cluster they are blank pages. :func:`serve_docs` answers the same
two pages with their JavaScript, CSS and icon served by the app, under :data:`ASSETS_PATH`, from
the files the ``fastapi-offline`` package ships (Swagger UI 5 and ReDoc 2, the majors FastAPI's CDN
links name). The pages stay open when the API has a key, as ``/openapi.json`` does
(:mod:`raymm.serve.auth`).

The asset files are found in the process that answers (a Serve replica imports this module), not
where the app was built: Serve pickles the FastAPI app to its replicas, and a path captured on the
driver, as a ``StaticFiles`` mount would hold, need not exist on a worker node.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ASSETS", "ASSETS_PATH", "DOCS_PATH", "REDOC_PATH", "serve_docs"]

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"

#: The files the pages load, by name under :data:`ASSETS_PATH`, and their media types.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def _asset_dir() -> Path:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "fastapi-offline is not installed: raymm serves its Swagger UI and ReDoc files as the "
            "API's docs (pip install raymm installs it)"
        )
    return Path(spec.origin).parent / "static"


_ASSET_DIR = _asset_dir()


def serve_docs(app: FastAPI) -> None:
    """Add ``/docs`` (Swagger UI), ``/redoc`` (ReDoc) and their assets to ``app``, which must be
    built with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages) and serve ``openapi_url``.

    Every URL a page names is under the request's ``root_path``, as FastAPI's own pages do, so the
    pages work behind a route prefix. Sets ``app.docs_url``, which FastAPI reads only when it is
    built, so that Ray Serve's status still names the docs page.
    """
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError(
            f"build the app with docs_url=None and redoc_url=None (it has {app.docs_url!r}, "
            f"{app.redoc_url!r}): FastAPI's own pages load their assets from a CDN"
        )
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("the docs pages read the app's schema: build the app with an openapi_url")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise StarletteHTTPException(404, f"no docs asset {name!r}")
        return FileResponse(_ASSET_DIR / name, media_type=media_type)

    app.docs_url, app.redoc_url = DOCS_PATH, REDOC_PATH
