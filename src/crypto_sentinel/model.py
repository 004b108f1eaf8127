"""Normalised market-data records shared by sources, engine, lake and API.

Exchange quirks stay in the source modules; everything downstream sees these types.
Prices and sizes are `Decimal` parsed from the exchange's strings, never floats.
"""

from __future__ import annotations

import decimal
from datetime import UTC, datetime
from decimal import Decimal

import msgspec

#: Decimal places kept in the lake for prices and sizes. Values with more places are rejected
#: (quarantined) rather than silently rounded.
SCALE = 12
QUANTUM = Decimal(1).scaleb(-SCALE)

#: Arithmetic context wide enough that price * size and sums of them are exact.
EXACT = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN)


class RawFrame(msgspec.Struct, frozen=True):
    """One message exactly as received, before any parsing (the bronze row)."""

    exchange: str  # lake name of the venue: "coinbase", "simulator", ...
    conn_id: str  # one id per connection (or replay run)
    recv_seq: int  # position of the frame within its connection
    recv_ns: int  # receive time, unix nanoseconds
    text: str
    partition: int = -1  # position in the durable log (Kafka), -1 for the in-process bus
    offset: int = -1


class Trade(msgspec.Struct):
    """One executed trade. `side` is the taker's (aggressor's) side."""

    exchange: str
    product_id: str
    trade_id: int
    price: Decimal
    size: Decimal
    side: str
    time: datetime  # exchange time, UTC
    recv_ns: int
    sequence: int | None = None
    maker_order_id: str | None = None
    taker_order_id: str | None = None
    conn_id: str = ""
    venue_symbol: str = ""  # the venue's own name of the product (BTCUSDT, BTC/USD)


class Ticker(msgspec.Struct):
    """Best bid/ask and 24 h statistics as the exchange reports them.

    Amounts stay the exchange's exact decimal text (validated); the lake stores them as
    decimals. Converting a dozen fields per ticker to `Decimal` here would cost more than the
    rest of the pipeline and nothing downstream computes with them.
    """

    exchange: str
    product_id: str
    sequence: int
    price: str
    best_bid: str | None
    best_ask: str | None
    best_bid_size: str | None
    best_ask_size: str | None
    open_24h: str | None
    high_24h: str | None
    low_24h: str | None
    volume_24h: str | None
    volume_30d: str | None
    side: str | None  # taker side of the last trade
    last_size: str | None
    trade_id: int | None
    time: datetime
    recv_ns: int


class Heartbeat(msgspec.Struct):
    """Liveness plus the last trade id, so quiet products can still be gap-checked."""

    exchange: str
    product_id: str
    last_trade_id: int
    sequence: int
    time: datetime


class GapRecord(msgspec.Struct):
    """Trade ids the stream missed and what the REST backfill recovered (bronze.gaps)."""

    exchange: str
    product_id: str
    kind: str  # disconnect | trade_id | heartbeat | startup
    detected_at: datetime
    first_missing_id: int | None  # None: nothing was missing (a clean reconnect)
    last_missing_id: int | None
    missing: int
    backfilled: int
    outcome: str  # filled | partial | unfilled
    recv_ns: int = 0
    conn_id: str = ""
    reason: str | None = None  # kind "book": why the book was resynced


class Rejected(msgspec.Struct):
    """A frame that failed to parse or validate, with the reason (the quarantine row)."""

    frame: RawFrame
    reason: str


def utc_from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def format_decimal(value: Decimal) -> str:
    """Plain decimal string without exponent or trailing zeros (API output)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def iso_time(value: datetime) -> str:
    """Exchange-style ISO-8601 UTC with microseconds and a Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
