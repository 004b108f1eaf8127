"""The HTTP API: `/latest` in the seed's contract, `/v1` market data, health and metrics.

Recent data is answered from hot state; anything older from the lake via DuckDB. Errors are
JSON with a 4xx status, never a 200 carrying an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import Response

from crypto_sentinel import __version__, metrics
from crypto_sentinel.api.state import HotState, SeenTrade
from crypto_sentinel.config import PRODUCT_RE
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.model import format_decimal, iso_time

GRANULARITIES = (60,)  # more come with the serving-layer issue
MAX_CANDLES = 300


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return iso_time(value)
    raise TypeError(type(value).__name__)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)


def create_app(
    state: HotState,
    reader: LakeReader,
    default_exchange: Callable[[], str],
    products: list[str],
    status: Callable[[], dict[str, Any]],
    ready: Callable[[], bool],
) -> FastAPI:
    app = FastAPI(
        title="Crypto Sentinel",
        version=__version__,
        description="Real-time crypto market data from exchange feeds and the Delta lake.",
        default_response_class=JSONResponse,
    )
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"])
    known = set(products)
    Exchange = Annotated[
        str | None, Query(max_length=40, description="lake exchange name; default: the live one")
    ]

    @app.middleware("http")
    async def timing(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.API_SECONDS.labels(path).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"][1:]), "message": e["msg"]}
            for e in exc.errors()
        ]
        return _error(422, "invalid request parameters", detail=problems)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    def check_product(product_id: str) -> None:
        if product_id not in known and not PRODUCT_RE.match(product_id):
            raise HTTPException(404, f"unknown product {product_id!r}")
        if product_id not in known and product_id not in reader.exchanges_with_product(product_id):
            raise HTTPException(404, f"unknown product {product_id!r}")

    @app.get("/latest", summary="Newest trades (seed contract)")
    def latest(
        symbol: Annotated[str | None, Query(description="product id, e.g. BTC-USD")] = None,
        limit: Annotated[int, Query(ge=1, le=50)] = 50,
        exchange: Exchange = None,
    ) -> JSONResponse:
        exchange = exchange or default_exchange()
        if symbol is not None:
            check_product(symbol)
            seen = list(state.recent_trades(exchange, symbol))[-limit:]
        else:
            seen = [s for s in state.latest if s.trade.exchange == exchange][-limit:]
        if seen:
            items = [_latest_item(s) for s in reversed(seen)]
        else:  # nothing streamed yet (e.g. `sentinel serve` on a lake): read the lake
            rows = reader.latest_trades([exchange], 1000 if symbol else limit)
            items = [_latest_row(r) for r in rows if symbol in (None, r["product_id"])][:limit]
        return JSONResponse({"data": items})

    @app.get("/v1/products/{product_id}/trades", summary="Trades, newest first")
    def trades(
        product_id: str,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, description="trade_id cursor")] = None,
        exchange: Exchange = None,
    ) -> JSONResponse:
        exchange = exchange or default_exchange()
        check_product(product_id)
        ring = state.recent_trades(exchange, product_id)
        items: list[dict[str, Any]] = []
        cutoff = before if before is not None else None
        if ring and (cutoff is None or ring[0].trade.trade_id < cutoff):
            for seen in reversed(ring):
                t = seen.trade
                if cutoff is not None and t.trade_id >= cutoff:
                    continue
                items.append(_trade_item(t.trade_id, t.price, t.size, t.side, t.time, t.exchange))
                if len(items) == limit:
                    break
        if len(items) < limit:
            lake_before = items[-1]["trade_id"] if items else cutoff
            rows = reader.trades(exchange, product_id, lake_before, limit - len(items))
            items += [
                _trade_item(
                    r["trade_id"], r["price"], r["size"], r["side"], r["time"], r["exchange"]
                )
                for r in rows
            ]
        headers = {}
        if items:
            headers = {
                "CB-BEFORE": str(items[0]["trade_id"]),
                "CB-AFTER": str(items[-1]["trade_id"]),
            }
        next_cursor = items[-1]["trade_id"] if len(items) == limit else None
        return JSONResponse(
            {"data": items, "next_before": next_cursor, "product_id": product_id},
            headers=headers,
        )

    @app.get("/v1/products/{product_id}/candles", summary="OHLCV candles, newest first")
    def candles(
        product_id: str,
        granularity: Annotated[int, Query(description="seconds; 60")] = 60,
        start: datetime | None = None,
        end: datetime | None = None,
        exchange: Exchange = None,
    ) -> JSONResponse:
        exchange = exchange or default_exchange()
        check_product(product_id)
        if granularity not in GRANULARITIES:
            raise RequestValidationError(
                [{"loc": ("query", "granularity"), "msg": f"must be one of {GRANULARITIES}"}]
            )
        end_at = _utc(end) if end else datetime.now(UTC) + timedelta(minutes=1)
        start_at = _utc(start) if start else end_at - timedelta(seconds=granularity * MAX_CANDLES)
        if start_at >= end_at:
            raise RequestValidationError(
                [{"loc": ("query", "start"), "msg": "start must be before end"}]
            )
        if (end_at - start_at).total_seconds() / granularity > MAX_CANDLES:
            raise RequestValidationError(
                [{"loc": ("query", "end"), "msg": f"at most {MAX_CANDLES} candles per request"}]
            )
        rows = {
            r["start"]: r
            for r in reader.candles(exchange, product_id, start_at, end_at, MAX_CANDLES)
        }
        book = state.candles.get((exchange, product_id)) or {}
        for minute, candle in book.items():
            if start_at <= minute < end_at:
                rows[minute] = candle.to_row()
        now_minute = datetime.now(UTC).replace(second=0, microsecond=0)
        items = [_candle_item(rows[k], forming=k >= now_minute) for k in sorted(rows, reverse=True)]
        return JSONResponse({"data": items, "granularity": granularity, "product_id": product_id})

    @app.get("/health", summary="Liveness and what the pipeline is doing")
    def health() -> JSONResponse:
        return JSONResponse({"status": "ok", **status()})

    @app.get("/ready", summary="Ready to serve live data")
    def is_ready() -> JSONResponse:
        ok = ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _latest_item(seen: SeenTrade) -> dict[str, Any]:
    t = seen.trade
    return {
        "symbol": t.product_id,
        "price": format_decimal(t.price),
        "side": t.side,
        "timestamp": iso_time(t.time),
        "processing_time": iso_time(datetime.fromtimestamp(seen.processed_ns / 1e9, UTC)),
        "size": format_decimal(t.size),
        "trade_id": t.trade_id,
        "exchange": t.exchange,
        "recv_time": iso_time(datetime.fromtimestamp(t.recv_ns / 1e9, UTC)),
    }


def _latest_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "symbol": r["product_id"],
        "price": format_decimal(r["price"]),
        "side": r["side"],
        "timestamp": iso_time(r["time"]),
        "processing_time": iso_time(r["recv_time"]),
        "size": format_decimal(r["size"]),
        "trade_id": r["trade_id"],
        "exchange": r["exchange"],
        "recv_time": iso_time(r["recv_time"]),
    }


def _trade_item(
    trade_id: int, price: Decimal, size: Decimal, side: str, time_: datetime, exchange: str
) -> dict[str, Any]:
    return {
        "trade_id": trade_id,
        "price": format_decimal(price),
        "size": format_decimal(size),
        "side": side,
        "time": iso_time(time_),
        "exchange": exchange,
    }


def _candle_item(row: dict[str, Any], forming: bool) -> dict[str, Any]:
    item = {k: v for k, v in row.items() if k not in ("date", "exchange", "product_id")}
    item["forming"] = forming
    return item
