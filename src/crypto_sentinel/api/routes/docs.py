"""Interactive API documentation that works offline: Swagger UI at `/docs`, ReDoc at `/redoc`.

FastAPI's own pages load their JavaScript and CSS from a CDN; these load the same projects'
builds from the `fastapi-offline` package (it ships swagger-ui-dist and the ReDoc standalone
bundle as package data), served at `/docs/assets/...`. Nothing leaves the machine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from crypto_sentinel.api.context import ApiContext

ASSETS = "/docs/assets"
#: The pages may load nothing from elsewhere (ReDoc would fetch its vendor's logo from a CDN).
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; style-src 'self'"
    " 'unsafe-inline'; img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self'"
)
FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"})


def assets_dir() -> Path:
    """The `fastapi_offline` package's static folder (found without importing it)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the fastapi-offline package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(include_in_schema=False)
    files: StaticFiles | None = None  # resolved on first use

    @api.get("/docs")
    async def swagger(request: Request) -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Crypto Sentinel API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )
        page.headers["Content-Security-Policy"] = CSP
        return page

    @api.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        page = get_redoc_html(
            openapi_url="/openapi.json",
            title="Crypto Sentinel API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CSP
        return page

    @api.get(ASSETS + "/{name}")
    async def asset(name: str, request: Request) -> Response:
        nonlocal files
        if name not in FILES:
            raise HTTPException(404, "not found")
        if files is None:
            try:
                files = StaticFiles(directory=assets_dir())
            except RuntimeError as exc:
                raise HTTPException(404, str(exc)) from None
        response = await files.get_response(name, request.scope)
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response

    return api


def declare_bearer(app: FastAPI) -> None:
    """Say in the OpenAPI document that every operation needs the bearer token (Swagger UI
    then offers its Authorize button; /health and /ready stay open)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer"}
        for path, operations in schema.get("paths", {}).items():
            if path in ("/health", "/ready"):
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
