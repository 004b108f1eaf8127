"""The live dashboard at `/` and `/dashboard`: static files served by the API itself.

The page, its ES modules and styles live in `crypto_sentinel/web`; Plotly's JavaScript comes
from the `plotly` Python package, so the page works offline (no CDN, no Node build step).
Everything it shows comes from the public `/v1` routes, `/health` and `/v1/stream`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from crypto_sentinel.api.context import ApiContext

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
PLOTLY_JS = "plotly.min.js"


def plotly_dir() -> Path:
    """Where the `plotly` package keeps its minified bundle (found without importing it)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is not installed (pip install plotly)")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data"


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(include_in_schema=False)
    web = StaticFiles(directory=WEB_DIR)
    plotly_files: StaticFiles | None = None  # resolved on first use: the API runs without it

    async def page(request: Request) -> Response:
        response = await web.get_response("index.html", request.scope)
        response.headers["Cache-Control"] = "no-cache"
        return response

    api.add_api_route("/", page, methods=["GET"])
    api.add_api_route("/dashboard", page, methods=["GET"])

    @api.get("/dashboard/assets/{path:path}")
    async def asset(path: str, request: Request) -> Response:
        """Static files; 304 on a matching ETag, 404 (JSON) for anything unknown."""
        nonlocal plotly_files
        if path == PLOTLY_JS:
            if plotly_files is None:
                try:
                    plotly_files = StaticFiles(directory=plotly_dir())
                except RuntimeError as exc:
                    raise HTTPException(404, str(exc)) from None
            return await plotly_files.get_response(PLOTLY_JS, request.scope)
        if path == "index.html":
            raise HTTPException(404, "not found")
        response = await web.get_response(path, request.scope)
        response.headers["Cache-Control"] = "no-cache"
        return response

    return api
