"""`GET /latest`: the seed's contract, newest trades first, from memory.

The seed's frontend polls this, so it is the busiest route. A well-formed request that
memory can answer is served by `LatestFastPath`, a pure ASGI layer in front of the app that
skips FastAPI's per-request parameter machinery (about half the route's CPU). Anything else
(bad parameters, unknown products, the lake fallback) reaches the FastAPI route below, which
is also what the OpenAPI document describes; both build the body with `memory_items`.
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

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/latest" and scope["method"] == "GET":
            body = self.answer(scope["query_string"])
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

    def answer(self, query: bytes) -> bytes | None:
        """The response body, or None to let the FastAPI route decide."""
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs):
            return None  # a repeated parameter: let FastAPI apply its rules
        limit = params.get("limit", str(MAX_LIMIT))
        if not _LIMIT.fullmatch(limit) or not 1 <= int(limit) <= MAX_LIMIT:
            return None
        exchange = params.get("exchange")
        if exchange is not None and not 0 < len(exchange) <= 40:
            return None
        symbol = params.get("symbol")
        if symbol is not None and not 0 < len(symbol) <= 40:
            return None
        # memory has trades of the symbol only if it is a known product, so an empty answer
        # (unknown product, or memory empty) is left to the route: 404 or the lake
        items = memory_items(self.ctx, exchange, symbol, int(limit))
        return orjson.dumps({"data": items}) if items else None
