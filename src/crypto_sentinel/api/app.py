"""The HTTP API: `/latest` in the seed's contract, `/v1` market data and live push, health and
metrics.

Recent data is answered from hot state; anything older from the lake via DuckDB. Errors are
JSON with a 4xx status, never a 200 carrying an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crypto_sentinel import __version__, metrics
from crypto_sentinel.api.candles import GRANULARITIES, MAX_CANDLES
from crypto_sentinel.api.context import ApiContext
from crypto_sentinel.api.responses import JSONResponse, error
from crypto_sentinel.api.routes import book, dashboard, docs, latest, market, ops, push
from crypto_sentinel.api.security import ApiSecurity, Guard
from crypto_sentinel.api.state import HotState
from crypto_sentinel.api.stream import Hub
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.lake.query import LakeReader

__all__ = ["GRANULARITIES", "MAX_CANDLES", "JSONResponse", "create_app"]

log = logging.getLogger(__name__)

DESCRIPTION = """Real-time crypto market data from exchange feeds and the Delta lake.

Prices and sizes are exact decimal strings. Recent data comes from memory, history from the
lake. Live push: WebSocket `/v1/stream` (send `{"type": "subscribe", "product_ids":
["BTC-USD"], "channels": ["trades", "ticker", "candles:60", "book"], "depth": 10}`) or SSE
`/v1/stream/sse`. Order books: `/v1/products/{id}/book` (live or `at=` a past time) and
`/v1/products/{id}/book/series` (spread, mid and depth over time).
"""


class HeadAsGet:
    """Pure ASGI middleware: `HEAD` answers wherever `GET` does (monitoring probes use it).

    The app sees a GET; the client gets its status and headers (Content-Length included)
    and no body. A streaming answer (SSE) ends after its headers: the app is told the
    client left."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def head_receive() -> Message:
            if finished:
                return {"type": "http.disconnect"}
            return await receive()

        async def head_send(message: Message) -> None:
            nonlocal finished
            if finished:  # a stream goes on: as if the client left (Starlette stops it)
                raise OSError("HEAD: the response ended after its headers")
            if message["type"] == "http.response.body":
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        try:
            await self.app({**scope, "method": "GET"}, head_receive, head_send)
        except (OSError, ClientDisconnect):
            if not finished:
                raise


class Timing:
    """Pure ASGI middleware: request latency and status per route (no per-request task)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.API_SECONDS.labels(route).observe(time.perf_counter() - started)
            metrics.API_RESPONSES.labels(route, str(status)).inc()


def problems(exc: RequestValidationError) -> list[dict[str, str]]:
    """One entry per parameter; a parameter that accepts several types (ISO time or Unix
    seconds) gets one message listing why each failed."""
    found: dict[str, list[str]] = {}
    for e in exc.errors():
        loc = e["loc"]
        name = str(loc[1]) if len(loc) > 1 and loc[0] in ("query", "path") else ".".join(
            str(p) for p in loc[1:]
        )  # fmt: skip
        found.setdefault(name, []).append(e["msg"])
    return [{"field": name, "message": "; or ".join(msgs)} for name, msgs in found.items()]


def create_app(
    state: HotState,
    reader: LakeReader,
    default_exchange: Callable[[], str],
    products: list[str],
    status: Callable[[], dict[str, Any]],
    ready: Callable[[], bool],
    *,
    hub: Hub | None = None,
    cors_origins: Sequence[str] = (),
    security: ApiSecurity | None = None,
    books: BookRegistry | None = None,
) -> FastAPI:
    """The API over `state` and `reader`. Register `hub.on_chunk` as an engine listener (after
    the hot state's) for live push; without a hub one with default limits is made. Without
    `security` there is no token and no rate limit. `books` holds the live order books (the
    engine fills it; without one the book routes answer 404 until a book arrives)."""
    security = security or ApiSecurity()
    security.warn_if_open()
    app = FastAPI(
        title="Crypto Sentinel",
        version=__version__,
        description=DESCRIPTION,
        default_response_class=JSONResponse,
        docs_url=None,  # served from local assets by routes/docs.py (no CDN)
        redoc_url=None,
    )
    ctx = ApiContext(
        state=state,
        reader=reader,
        hub=hub or Hub(queue_limit=2000, max_clients=1000, heartbeat=5.0),
        default_exchange=default_exchange,
        products=list(products),
        status=status,
        ready=ready,
        books=books if books is not None else BookRegistry(),
    )
    ctx.books.subscribe(ctx.hub.on_book)  # push: the book channel hears every change
    app.state.ctx = ctx
    app.add_middleware(latest.LatestFastPath, ctx=ctx)  # innermost: CORS and timing apply
    # token, rate limit and request-target bounds before any route (the fast path included);
    # inside CORS, so a browser's preflight needs no token and a 401 carries CORS headers
    app.add_middleware(Guard, security=security)
    if cors_origins:  # off unless origins are configured: no other site reads the API
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "HEAD"],
            allow_headers=["Authorization"],
            expose_headers=["CB-BEFORE", "CB-AFTER", "Retry-After"],
        )
    app.add_middleware(HeadAsGet)
    app.add_middleware(Timing)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid request parameters", detail=problems(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error(500, "internal server error")

    for module in (latest, market, book, push, ops, dashboard, docs):
        app.include_router(module.router(ctx))
    if security.token is not None:
        docs.declare_bearer(app)
    return app
