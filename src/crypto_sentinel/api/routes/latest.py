"""`GET /latest`: the seed's contract, newest trades first, from memory.

The seed's frontend polls this, so it is the busiest route. A well-formed request that
memory can answer, or that the lake reader has an answer kept for (a `sentinel serve`
replica), is served by `LatestFastPath`, a pure ASGI layer in front of the app that skips
FastAPI's per-request parameter machinery (about half the route's CPU); a lake answer is
rendered once per table version. Anything else (bad parameters, unknown products, a lake
answer still to be read) reaches the FastAPI route below, which is also what the OpenAPI
document describes; both build the body with `memory_items` and `latest_row_item`.
"""

from __future__ import annotations

import re
from itertools import islice
from types import SimpleNamespace
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Path, Query
from starlette.types import ASGIApp, Receive, Scope, Send

from crypto_sentinel.api.context import ApiContext
from crypto_sentinel.api.render import latest_item, latest_row_item
from crypto_sentinel.api.responses import JSONResponse
from crypto_sentinel.api.schemas import Latest, errors
from crypto_sentinel.api.state import SeenTrade

ExchangeParam = Annotated[
    str | None,
    Query(
        max_length=40,
        description="lake exchange name; default: every exchange with data (a product: the"
        " first with data for it, the live ones first)",
    ),
]
#: Longest product id accepted anywhere (path, query, push subscriptions).
MAX_PRODUCT_ID = 40
ProductPath = Annotated[
    str,
    Path(max_length=MAX_PRODUCT_ID, description="product id, e.g. BTC-USD (at most 40 characters)"),
]
MAX_LIMIT = 50
_LIMIT = re.compile(r"[0-9]{1,2}")


def memory_items(
    ctx: ApiContext, exchange: str | None, symbol: str | None, limit: int
) -> list[dict[str, Any]]:
    """The newest trades memory has, newest first (rendered once per trade); of every
    exchange when none is given."""
    state = ctx.state
    seen: list[SeenTrade]
    if symbol is None:
        newest = reversed(state.latest)
        if exchange is not None:
            newest = (s for s in newest if s.trade.exchange == exchange)
        seen = list(islice(newest, limit))
    else:
        names = [exchange] if exchange is not None else state.exchanges_of(symbol)
        rings = [ring for name in names if (ring := state.ring(name, symbol))]
        seen = [s for ring in rings for s in islice(reversed(ring), limit)]
        if len(rings) > 1:
            seen.sort(key=lambda s: s.processed_ns, reverse=True)  # as `latest`: arrival
            del seen[limit:]
    items = []
    for s in seen:
        if s.item is None:
            s.item = latest_item(s.trade, s.processed_ns)
        items.append(s.item)
    return items


async def lake_items(
    ctx: ApiContext, exchange: str | None, symbol: str | None, limit: int
) -> list[dict[str, Any]]:
    """`/latest` from the lake (memory is empty, e.g. a `sentinel serve` replica); of every
    exchange with data when none is given."""
    names = [exchange] if exchange is not None else await ctx.exchanges_with_data(symbol)
    rows: list[dict[str, Any]] = []
    for name in names:
        kept = ctx.reader.kept_newest_trades(name, symbol, limit)  # no thread when kept
        if kept is None:
            kept = await ctx.in_thread(ctx.reader.newest_trades, name, symbol, limit)
        rows += kept
    if len(names) > 1:
        rows.sort(key=lambda r: (r["time"], r["trade_id"]), reverse=True)
        del rows[limit:]
    return [latest_row_item(r) for r in rows]


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter()

    @api.get(
        "/latest",
        summary="Newest trades (seed contract)",
        response_class=JSONResponse,
        responses={200: {"model": Latest}, **errors(404, 422)},
    )
    async def latest(
        symbol: Annotated[
            str | None,
            Query(max_length=MAX_PRODUCT_ID, description="product id, e.g. BTC-USD"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
        exchange: ExchangeParam = None,
    ) -> JSONResponse:
        ex = None if exchange is None else await ctx.exchange(exchange)
        if symbol is not None:
            await ctx.check_product(symbol)
        items = memory_items(ctx, ex, symbol, limit)
        if not items:  # nothing in memory (e.g. `sentinel serve` over a lake): the lake
            items = await lake_items(ctx, ex, symbol, limit)
        return JSONResponse({"data": items})

    return api


class LatestFastPath:
    """Answers a well-formed `GET /latest` from memory; passes anything else on."""

    ROUTE = SimpleNamespace(path="/latest")  # what the metrics middleware labels it

    #: Rendered lake answers kept at most (a key is the exchanges, symbol and limit asked).
    LAKE_BODIES = 256

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx
        self._lake_bodies: dict[tuple[Any, ...], tuple[tuple[int, ...], bytes]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/latest" and scope["method"] == "GET":
            query = self.parameters(scope["query_string"])
            body = None if query is None else self.memory_body(*query)
            if body is None and query is not None:
                body = await self.lake_body(*query)
            if body is not None:
                scope["route"] = self.ROUTE
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    @staticmethod
    def parameters(query: bytes) -> tuple[str | None, str | None, int] | None:
        """(exchange, symbol, limit) of a well-formed query, or None to let the FastAPI route
        apply its rules and errors."""
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs):
            return None  # a repeated parameter
        limit = params.get("limit", str(MAX_LIMIT))
        if not _LIMIT.fullmatch(limit) or not 1 <= int(limit) <= MAX_LIMIT:
            return None
        exchange = params.get("exchange")
        if exchange is not None and not 0 < len(exchange) <= 40:
            return None
        symbol = params.get("symbol")
        if symbol is not None and not 0 < len(symbol) <= MAX_PRODUCT_ID:
            return None
        return exchange, symbol, int(limit)

    def memory_body(self, exchange: str | None, symbol: str | None, limit: int) -> bytes | None:
        """The body from memory. Memory has trades of the symbol only if it is a known
        product, so an empty answer (unknown product, or memory empty) is None."""
        items = memory_items(self.ctx, exchange, symbol, limit)
        return orjson.dumps({"data": items}) if items else None

    async def lake_body(self, exchange: str | None, symbol: str | None, limit: int) -> bytes | None:
        """The body from the lake reader's answers for the current snapshot (read in a
        thread when not kept), rendered once per table version; None when the lake has no
        such trades (the route answers 404 or an empty list) or a file lacks statistics."""
        reader = self.ctx.reader
        names = [exchange] if exchange is not None else await self.ctx.exchanges_with_data(symbol)
        answers = []
        for name in names:
            kept = reader.kept_newest(name, symbol, limit)  # no thread while fresh
            if kept is None:
                kept = await self.ctx.in_thread(reader.newest, name, symbol, limit)
            if kept is None:
                return None
            answers.append(kept)
        if not answers:
            return None
        versions = tuple(version for version, _ in answers)
        key = (tuple(names), symbol, limit)
        hit = self._lake_bodies.get(key)
        if hit is not None and hit[0] == versions:
            return hit[1]
        rows = [row for _, rows in answers for row in rows]
        if not rows:
            return None
        if len(names) > 1:
            rows.sort(key=lambda r: (r["time"], r["trade_id"]), reverse=True)
            del rows[limit:]
        body = orjson.dumps({"data": [latest_row_item(r) for r in rows]})
        if len(self._lake_bodies) >= self.LAKE_BODIES:
            self._lake_bodies.clear()
        self._lake_bodies[key] = (versions, body)
        return body
