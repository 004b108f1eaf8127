"""Response shapes for the OpenAPI document.

Routes build their JSON by hand on the hot path (no per-request model validation); these
models only describe it, and the schemathesis test checks that every response matches.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

Dec = Annotated[
    str,
    Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="exact decimal", examples=["65000.12"]),
]
Time = Annotated[str, Field(description="ISO-8601 UTC", examples=["2024-01-01T00:00:00.000000Z"])]


class FieldProblem(BaseModel):
    field: str
    message: str


class Error(BaseModel):
    error: str
    status: int
    detail: list[FieldProblem] | None = None


class LatestItem(BaseModel):
    symbol: str
    price: Dec
    side: str
    timestamp: Time
    processing_time: Time
    size: Dec
    trade_id: int
    exchange: str
    recv_time: Time


class Latest(BaseModel):
    data: list[LatestItem]


class TradeItem(BaseModel):
    trade_id: int
    price: Dec
    size: Dec
    side: str = Field(description="taker (aggressor) side: buy or sell")
    time: Time
    exchange: str


class TradesPage(BaseModel):
    data: list[TradeItem] = Field(description="newest first")
    next_before: int | None = Field(description="cursor for the next (older) page; null: last")
    product_id: str


class CandleItem(BaseModel):
    start: Time
    open: Dec
    high: Dec
    low: Dec
    close: Dec
    volume: Dec
    buy_volume: Dec
    sell_volume: Dec
    quote_volume: Dec
    vwap: Dec
    trade_count: int
    first_trade_id: int
    last_trade_id: int
    first_trade_time: Time
    last_trade_time: Time
    granularity: int
    forming: bool = Field(description="the bucket is still open (it contains now)")
    gap: bool = Field(
        False, description="the bucket overlaps a trade-id gap the REST backfill could not fill"
    )
    complete: bool = Field(
        description="every trade of the bucket is stored: its trade ids are contiguous, and"
        " contiguous with the product's previous and next stored trades, and no unfilled gap"
        " overlaps it (gap implies not complete)"
    )


class CandlesPage(BaseModel):
    data: list[CandleItem] = Field(description="newest first; buckets without trades omitted")
    granularity: int
    product_id: str
    exchange: str
    start: Time = Field(description="start of the first bucket of the window")
    end: Time = Field(description="end of the last bucket of the window (exclusive)")


class TickerOut(BaseModel):
    product_id: str
    exchange: str
    price: Dec
    size: Dec | None
    side: str | None
    trade_id: int | None
    time: Time
    best_bid: Dec | None
    best_bid_size: Dec | None
    best_ask: Dec | None
    best_ask_size: Dec | None
    open_24h: Dec | None = Field(description="as reported by the exchange")
    high_24h: Dec | None
    low_24h: Dec | None
    volume_24h: Dec | None
    volume_30d: Dec | None
    sequence: int | None
    source: str = Field(description="ticker, or trade when no ticker was seen")


class Stats(BaseModel):
    product_id: str
    exchange: str
    last: Dec | None
    last_trade_time: Time | None
    open_24h: Dec | None
    high_24h: Dec | None
    low_24h: Dec | None
    volume_24h: Dec
    quote_volume_24h: Dec
    vwap_24h: Dec | None
    trade_count_24h: int
    change_24h: Dec | None
    change_24h_percent: Dec | None
    window_start: Time | None = Field(description="24 h up to the product's last trade")
    window_end: Time | None


class Product(Stats):
    base_currency: str
    quote_currency: str
    venue_symbol: str | None = Field(description="the venue's own name (BTCUSDT, BTC/USD)")


class Products(BaseModel):
    data: list[Product]
    exchange: str | None = Field(description="the exchange asked for; null: every one with data")


class Health(BaseModel):
    status: str = Field(description="ok, or degraded with reasons")
    reasons: list[str]
    model_config = {"extra": "allow"}


class Ready(BaseModel):
    ready: bool
    reasons: list[str]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for error statuses (all share the `Error` body)."""
    text = {
        404: "unknown product or exchange, or no data",
        422: "invalid parameters",
        503: "not ready",
    }
    return {code: {"model": Error, "description": text.get(code, "error")} for code in codes}


class ExchangeSource(BaseModel):
    kind: str = Field(description="the venue, simulator-<venue>, or replay")
    connected: bool
    simulated: bool
    frames: int
    last_frame_age_seconds: float | None


class ExchangeItem(BaseModel):
    exchange: str = Field(description="lake name: pass it as `exchange` to any /v1 route")
    venue: str | None = Field(description="the protocol it speaks, e.g. binance")
    name: str | None = Field(description="the venue's display name")
    simulated: bool
    source: ExchangeSource | None = Field(description="the running source, if any")
    products: list[str] = Field(description="products with data in memory or the lake")


class Exchanges(BaseModel):
    data: list[ExchangeItem]


Level = Annotated[list[Dec], Field(min_length=2, max_length=2, description="[price, size]")]


class DepthWithin(BaseModel):
    bps: int
    bids: Dec = Field(description="bid size within `bps` basis points of the mid")
    asks: Dec = Field(description="ask size within `bps` basis points of the mid")


class BookOut(BaseModel):
    exchange: str
    product_id: str
    bids: list[Level] = Field(description="best (highest) first; empty when not valid")
    asks: list[Level] = Field(description="best (lowest) first; empty when not valid")
    update_id: int | None = Field(description="the venue's id of the last applied update")
    time: Time | None = Field(description="exchange time of the last applied update")
    valid: bool = Field(description="false between a break (gap, checksum) and a new snapshot")
    invalid_reason: str
    spread: Dec | None
    mid: Dec | None
    depth_within_bps: DepthWithin | None
    at: Time | None = Field(description="the time asked with `at=`; null: the live book")


class BookPoint(BaseModel):
    time: Time
    valid: bool
    best_bid: Dec | None
    best_ask: Dec | None
    spread: Dec | None
    mid: Dec | None
    bid_depth: Dec | None
    ask_depth: Dec | None


class BookSeries(BaseModel):
    data: list[BookPoint] = Field(description="one point per stored snapshot, oldest first")
    exchange: str
    product_id: str
    start: Time
    end: Time
    bps: int
