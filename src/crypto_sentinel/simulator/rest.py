"""The simulator's Coinbase Exchange REST answers (products, trades, candles), as the real
endpoints shape them; other venues answer through their own `simulator.venues` module."""

from __future__ import annotations

from datetime import UTC, datetime
from http import HTTPStatus

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from crypto_sentinel.simulator.candles import (
    CANDLE_GRANULARITIES,
    REST_MAX_CANDLES,
    candle_rows,
)
from crypto_sentinel.simulator.market import Market

REST_MAX_LIMIT = 1000


def coinbase_rest(
    conn: ServerConnection, market: Market, path: str, query: dict[str, list[str]]
) -> Response:
    """Coinbase Exchange's public REST: products, a product, its trades and candles."""
    parts = [p for p in path.split("/") if p]
    if parts == ["products"]:
        return json_response(conn, 200, [market.specs[p].rest() for p in market.products])
    if len(parts) >= 2 and parts[0] == "products":
        product = parts[1]
        if product not in market.specs:
            return json_response(conn, 404, {"message": "NotFound"})
        if len(parts) == 2:
            return json_response(conn, 200, market.specs[product].rest())
        if len(parts) == 3 and parts[2] == "trades":
            return _trades(conn, market, product, query)
        if len(parts) == 3 and parts[2] == "candles":
            return _candles(conn, market, product, query)
    return json_response(conn, 404, {"message": "NotFound"})


def _trades(
    conn: ServerConnection, market: Market, product: str, query: dict[str, list[str]]
) -> Response:
    """``GET /products/{id}/trades``: newest first, cursor-paginated by trade_id."""
    try:
        limit = _int_param(query, "limit", REST_MAX_LIMIT)
        before = _int_param(query, "before", None)
        after = _int_param(query, "after", None)
    except ValueError as exc:
        return json_response(conn, 400, {"message": str(exc)})
    assert limit is not None
    if not 1 <= limit <= REST_MAX_LIMIT:
        return json_response(
            conn, 400, {"message": f"limit must be between 1 and {REST_MAX_LIMIT}"}
        )
    page = market.trades_page(product, limit, before=before, after=after)
    headers = {}
    if page:
        headers = {"CB-BEFORE": str(page[0].trade_id), "CB-AFTER": str(page[-1].trade_id)}
    return json_response(conn, 200, [market.rest_trade(t) for t in page], headers)


def _candles(
    conn: ServerConnection, market: Market, product: str, query: dict[str, list[str]]
) -> Response:
    """``GET /products/{id}/candles``: ``[time, low, high, open, close, volume]`` rows,
    newest first, at most 300, computed from the retained trade history."""
    try:
        granularity = _int_param(query, "granularity", 60)
        start = _time_param(query, "start")
        end = _time_param(query, "end")
    except ValueError as exc:
        return json_response(conn, 400, {"message": str(exc)})
    if granularity not in CANDLE_GRANULARITIES:
        return json_response(conn, 400, {"message": "Unsupported granularity"})
    assert granularity is not None
    rows = candle_rows(market.history(product), granularity, start, end)
    if len(rows) > REST_MAX_CANDLES:
        return json_response(
            conn, 400, {"message": "granularity too small for the requested range"}
        )
    return json_response(conn, 200, rows)


def _time_param(query: dict[str, list[str]], name: str) -> datetime | None:
    values = query.get(name)
    if not values or not values[-1]:
        return None
    try:
        value = datetime.fromisoformat(values[-1].replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid {name}: {values[-1]!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _int_param(query: dict[str, list[str]], name: str, default: int | None) -> int | None:
    values = query.get(name)
    if not values:
        return default
    value = values[-1]
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"invalid {name}: {value!r} is not a positive integer")
    return int(value)


def json_response(
    conn: ServerConnection,
    status: int,
    body: object,
    headers: dict[str, str] | None = None,
) -> Response:
    response = conn.respond(HTTPStatus(status), orjson.dumps(body).decode())
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
