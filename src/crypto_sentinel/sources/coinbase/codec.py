"""Decode and validate Coinbase Exchange WebSocket frames into normalised records.

Kept apart from the connection code so the engine can decode frames that came through
Kafka or a replay file exactly as the live source does.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from crypto_sentinel.model import GapRecord, Heartbeat, RawFrame, Ticker, Trade
from crypto_sentinel.sources.codec import (
    GAP_KINDS,
    GAP_OUTCOMES,
    MAX_INTEGER_DIGITS,
    MAX_SKEW_SECONDS,
    Decoded,
    FrameError,
    GapFrame,
    Sighting,
    gap_record,
)
from crypto_sentinel.sources.codec import PLAIN_AMOUNT as _PLAIN_AMOUNT
from crypto_sentinel.sources.codec import check_amount as _check_amount
from crypto_sentinel.sources.codec import check_product as _check_product
from crypto_sentinel.sources.codec import check_time as _check_time

__all__ = [
    "GAP_KINDS", "GAP_OUTCOMES", "MAX_INTEGER_DIGITS", "MAX_SKEW_SECONDS", "TAKER_SIDE",
    "Decoded", "FrameError", "decode",
]  # fmt: skip

TAKER_SIDE = {"buy": "sell", "sell": "buy"}


class _Match(msgspec.Struct, tag_field="type", tag="match", kw_only=True):
    trade_id: int
    side: str
    size: str
    price: str
    product_id: str
    time: datetime
    sequence: int | None = None
    maker_order_id: str | None = None
    taker_order_id: str | None = None


class _LastMatch(_Match, tag="last_match", kw_only=True):
    pass


class _Ticker(msgspec.Struct, tag_field="type", tag="ticker", kw_only=True):
    product_id: str
    sequence: int
    price: str
    time: datetime
    open_24h: str | None = None
    volume_24h: str | None = None
    low_24h: str | None = None
    high_24h: str | None = None
    volume_30d: str | None = None
    best_bid: str | None = None
    best_ask: str | None = None
    best_bid_size: str | None = None
    best_ask_size: str | None = None
    side: str | None = None
    trade_id: int | None = None
    last_size: str | None = None


class _Heartbeat(msgspec.Struct, tag_field="type", tag="heartbeat", kw_only=True):
    product_id: str
    last_trade_id: int
    sequence: int
    time: datetime


class _Subscriptions(msgspec.Struct, tag_field="type", tag="subscriptions", kw_only=True):
    channels: list[msgspec.Raw] = []


class _Snapshot(msgspec.Struct, tag_field="type", tag="snapshot", kw_only=True):
    """level2 book frames carry no row here: sources/coinbase/book.py reads them."""


class _L2Update(msgspec.Struct, tag_field="type", tag="l2update", kw_only=True):
    pass


class _Error(msgspec.Struct, tag_field="type", tag="error", kw_only=True):
    message: str = ""
    reason: str = ""


class _RestTrade(msgspec.Struct):
    trade_id: int
    side: str
    size: str
    price: str
    time: datetime


class _RestTrades(msgspec.Struct, tag_field="type", tag="rest_trades", kw_only=True):
    """One page of GET /products/{id}/trades, wrapped by our backfill (sources/backfill.py)."""

    product_id: str
    trades: list[_RestTrade]


_Gap = GapFrame


class _Envelope(msgspec.Struct):
    type: str


_Message = (
    _Match | _LastMatch | _Ticker | _Heartbeat | _Subscriptions | _Snapshot | _L2Update | _Error
    | _RestTrades | _Gap
)  # fmt: skip
_decoder = msgspec.json.Decoder(_Message)
_envelope = msgspec.json.Decoder(_Envelope)


def decode(frame: RawFrame) -> Decoded:
    """Turn one frame into a record (a list of trades for a REST backfill page); None for
    control frames; FrameError if unusable."""
    try:
        msg = _decoder.decode(frame.text)
    except msgspec.DecodeError as exc:
        raise FrameError(_explain(frame.text, exc)) from None
    if isinstance(msg, _Match):
        return _trade(frame, msg)
    if isinstance(msg, _Ticker):
        return _ticker(frame, msg)
    if isinstance(msg, _Heartbeat):
        _check_product(msg.product_id)
        return Heartbeat(frame.exchange, msg.product_id, msg.last_trade_id, msg.sequence, msg.time)
    if isinstance(msg, _RestTrades):
        _check_product(msg.product_id)
        return [_rest_trade(frame, msg.product_id, t) for t in msg.trades]
    if isinstance(msg, _Gap):
        return _gap(frame, msg)
    if isinstance(msg, _Error):
        raise FrameError(f"exchange error: {msg.message} {msg.reason}".strip())
    return None


def _explain(text: str, exc: msgspec.DecodeError) -> str:
    """Say whether the frame was not JSON, of an unknown type, or had a bad field."""
    try:
        kind = _envelope.decode(text).type
    except msgspec.DecodeError:
        try:
            msgspec.json.decode(text)
        except msgspec.DecodeError:
            return f"invalid JSON: {exc}"
        return "not a message object with a string 'type'"
    if kind not in _KNOWN_TYPES:
        return f"unknown message type {kind!r}"
    return f"bad {kind} message: {exc}"


_KNOWN_TYPES = {
    "match", "last_match", "ticker", "heartbeat", "subscriptions", "snapshot", "l2update", "error",
    "rest_trades", "gap",
}  # fmt: skip


def _check_trade(frame: RawFrame, msg: _Match | _RestTrade) -> None:
    if msg.side not in TAKER_SIDE:
        raise FrameError(f"side must be 'buy' or 'sell', got {msg.side!r}")
    if msg.trade_id <= 0:
        raise FrameError(f"trade_id must be positive, got {msg.trade_id}")
    _check_amount("price", msg.price)
    _check_amount("size", msg.size)
    _check_time(frame, msg.time)


def _rest_trade(frame: RawFrame, product_id: str, t: _RestTrade) -> Trade:
    """REST `side` is the maker's side too, as in the matches channel."""
    try:
        _check_trade(frame, t)
    except FrameError as exc:
        raise FrameError(f"trade {t.trade_id} of the REST page: {exc}") from None
    return Trade(
        exchange=frame.exchange,
        product_id=product_id,
        trade_id=t.trade_id,
        price=Decimal(t.price),
        size=Decimal(t.size),
        side=TAKER_SIDE[t.side],
        time=t.time,
        recv_ns=frame.recv_ns,
        conn_id=frame.conn_id,
        venue_symbol=product_id,
    )


def _gap(frame: RawFrame, msg: _Gap) -> GapRecord:
    return gap_record(frame, msg)


def _trade(frame: RawFrame, msg: _Match) -> Trade:
    _check_product(msg.product_id)
    _check_trade(frame, msg)
    return Trade(
        exchange=frame.exchange,
        product_id=msg.product_id,
        trade_id=msg.trade_id,
        price=Decimal(msg.price),
        size=Decimal(msg.size),
        side=TAKER_SIDE[msg.side],  # Coinbase reports the maker's side
        time=msg.time,
        recv_ns=frame.recv_ns,
        sequence=msg.sequence,
        maker_order_id=msg.maker_order_id,
        taker_order_id=msg.taker_order_id,
        conn_id=frame.conn_id,
        venue_symbol=msg.product_id,
    )


def _ticker(frame: RawFrame, msg: _Ticker) -> Ticker:
    _check_product(msg.product_id)
    _check_amount("price", msg.price)
    for name in TICKER_AMOUNTS:
        value = getattr(msg, name)
        if value is not None and _PLAIN_AMOUNT.fullmatch(value) is None:
            _check_amount(name, value, allow_zero=True)  # raises, saying what is wrong
    _check_time(frame, msg.time)
    return Ticker(
        exchange=frame.exchange,
        product_id=msg.product_id,
        sequence=msg.sequence,
        price=msg.price,
        best_bid=msg.best_bid,
        best_ask=msg.best_ask,
        best_bid_size=msg.best_bid_size,
        best_ask_size=msg.best_ask_size,
        open_24h=msg.open_24h,
        high_24h=msg.high_24h,
        low_24h=msg.low_24h,
        volume_24h=msg.volume_24h,
        volume_30d=msg.volume_30d,
        side=msg.side,
        last_size=msg.last_size,
        trade_id=msg.trade_id,
        time=msg.time,
        recv_ns=frame.recv_ns,
    )


#: Ticker fields that may be zero (an empty book side, no volume yet) but must be plain decimals.
TICKER_AMOUNTS = (
    "best_bid", "best_ask", "best_bid_size", "best_ask_size", "last_size",
    "open_24h", "high_24h", "low_24h", "volume_24h", "volume_30d",
)  # fmt: skip


class _Ids(msgspec.Struct):
    """The fields of a frame the gap tracker looks at; the others are skipped unparsed."""

    type: Any = None
    product_id: Any = None
    trade_id: Any = None
    last_trade_id: Any = None


_ids_of = msgspec.json.Decoder(_Ids).decode


def sightings(text: str) -> list[Sighting]:
    """Trade ids a frame shows: a match's own id (ids before it should have arrived), or a
    heartbeat's last_trade_id (which names the id without carrying the trade). A heartbeat or
    match with no usable id still shows the product is alive (`newest` 0)."""
    if '"match"' not in text and '"last_match"' not in text and '"heartbeat"' not in text:
        return []  # cannot be of a type that carries ids (tickers are half the frames)
    try:
        msg = _ids_of(text)
    except msgspec.DecodeError:  # not JSON, or not an object
        return []
    product = msg.product_id
    if not isinstance(product, str):
        return []
    kind = msg.type
    if kind in ("match", "last_match"):
        tid = msg.trade_id
        newest = tid if isinstance(tid, int) and tid > 0 else 0
        return [Sighting(product, newest, newest - 1, "trade_id", True)]
    if kind == "heartbeat":
        last = msg.last_trade_id
        newest = last if isinstance(last, int) and last > 0 else 0
        return [Sighting(product, newest, newest, "heartbeat", False)]
    return []
