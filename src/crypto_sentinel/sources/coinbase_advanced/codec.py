"""Decode and validate Coinbase Advanced Trade WebSocket frames into records.

Every frame is an envelope `{channel, timestamp, sequence_num, events}`. `market_trades`
events carry batches of trades (a snapshot of recent ones on subscribe, then updates), newest
first, with string trade ids that are contiguous per product; `side` is the maker's, as on
the Exchange feed, so the taker is the opposite. `ticker` events carry best bid/ask and 24 h
figures, stamped with the envelope's time. `heartbeats` (whose `current_time` is not RFC 3339
and is not parsed), `subscriptions`, `candles` and `level2` carry no row (bronze keeps them).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from crypto_sentinel.model import RawFrame, Ticker, Trade
from crypto_sentinel.sources.codec import (
    GAP_RECORD_PREFIX,
    Decoded,
    FrameError,
    Sighting,
    check_amount,
    check_product,
    check_time,
    decode_gap_frame,
    ids_message,
    is_backfill_page,
)

_TAKER = {"BUY": "sell", "SELL": "buy"}


class _Trade(msgspec.Struct):
    product_id: str
    trade_id: str
    price: str
    size: str
    time: datetime
    side: str


class _TradeEvent(msgspec.Struct):
    trades: list[_Trade]
    type: str = "update"


class _Tick(msgspec.Struct):
    product_id: str
    price: str
    volume_24_h: str | None = None
    low_24_h: str | None = None
    high_24_h: str | None = None
    best_bid: str | None = None
    best_ask: str | None = None
    best_bid_quantity: str | None = None
    best_ask_quantity: str | None = None


class _TickerEvent(msgspec.Struct):
    tickers: list[_Tick]
    type: str = "update"


class _Envelope(msgspec.Struct):
    timestamp: datetime
    sequence_num: int


class _Trades(_Envelope, tag_field="channel", tag="market_trades"):
    events: list[_TradeEvent]


class _Tickers(_Envelope, tag_field="channel", tag="ticker"):
    events: list[_TickerEvent]


class _TickerBatch(_Envelope, tag_field="channel", tag="ticker_batch"):
    events: list[_TickerEvent]


class _Quiet(msgspec.Struct):
    """Channels that carry nothing we store."""


class _Heartbeats(_Quiet, tag_field="channel", tag="heartbeats"):
    pass


class _Subscriptions(_Quiet, tag_field="channel", tag="subscriptions"):
    pass


class _Candles(_Quiet, tag_field="channel", tag="candles"):
    pass


class _Level2(_Quiet, tag_field="channel", tag="l2_data"):
    pass


_Message = _Trades | _Tickers | _TickerBatch | _Heartbeats | _Subscriptions | _Candles | _Level2


class _Probe(msgspec.Struct):
    channel: str | None = None
    type: str | None = None
    message: str = ""


class _RecentBody(msgspec.Struct):
    """The body of GET /api/v3/brokerage/market/products/{id}/ticker (recent trades)."""

    trades: list[_Trade]


class _RestTrades(msgspec.Struct, tag_field="type", tag="rest_trades", kw_only=True):
    """One recent-trades body, wrapped by our backfill."""

    product_id: str
    trades: _RecentBody


_decoder = msgspec.json.Decoder(_Message)
_probe = msgspec.json.Decoder(_Probe)
_page = msgspec.json.Decoder(_RestTrades)


def decode(frame: RawFrame) -> Decoded:
    if is_backfill_page(frame):
        return _rest_page(frame)
    if frame.text.startswith(GAP_RECORD_PREFIX):
        return decode_gap_frame(frame)
    try:
        msg = _decoder.decode(frame.text)
    except msgspec.DecodeError as exc:
        raise FrameError(_explain(frame.text, exc)) from None
    if isinstance(msg, _Trades):
        # Each batch comes newest first: store oldest first, as they happened.
        trades = [t for event in msg.events for t in event.trades]
        return [_trade(frame, t) for t in reversed(trades)]
    if isinstance(msg, _Tickers | _TickerBatch):
        ticks = [t for event in msg.events for t in event.tickers]
        if len(ticks) != 1:
            raise FrameError(f"ticker message with {len(ticks)} tickers (expected 1)")
        return _ticker(frame, msg, ticks[0])
    return None


def _explain(text: str, exc: msgspec.DecodeError) -> str:
    try:
        probe = _probe.decode(text)
    except msgspec.DecodeError:
        try:
            msgspec.json.decode(text)
        except msgspec.DecodeError:
            return f"invalid JSON: {exc}"
        return "not a message object"
    if probe.type == "error":
        return f"exchange error: {probe.message}".strip()
    if probe.channel is None:
        return "not a message object with a string 'channel'"
    if probe.channel not in _KNOWN:
        return f"unknown channel {probe.channel!r}"
    return f"bad {probe.channel} message: {exc}"


_KNOWN = frozenset(
    ("market_trades", "ticker", "ticker_batch", "heartbeats", "subscriptions", "candles", "l2_data")
)


def _trade(frame: RawFrame, t: _Trade) -> Trade:
    check_product(t.product_id)
    if not (t.trade_id.isascii() and t.trade_id.isdigit()) or len(t.trade_id) > 18:
        raise FrameError(f"trade_id must be a decimal integer, got {t.trade_id!r}")
    trade_id = int(t.trade_id)
    if trade_id <= 0:
        raise FrameError(f"trade_id must be positive, got {t.trade_id}")
    taker = _TAKER.get(t.side)
    if taker is None:
        raise FrameError(f"side must be 'BUY' or 'SELL', got {t.side!r}")
    check_amount("price", t.price)
    check_amount("size", t.size)
    check_time(frame, t.time)
    return Trade(
        exchange=frame.exchange,
        product_id=t.product_id,
        trade_id=trade_id,
        price=Decimal(t.price),
        size=Decimal(t.size),
        side=taker,  # the maker's side is reported
        time=t.time,
        recv_ns=frame.recv_ns,
        conn_id=frame.conn_id,
        venue_symbol=t.product_id,
    )


def _rest_page(frame: RawFrame) -> list[Trade]:
    """A recent-trades page: newest first, the same trade objects as `market_trades`."""
    try:
        page = _page.decode(frame.text)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad rest_trades message: {exc}") from None
    check_product(page.product_id)
    out = []
    for t in reversed(page.trades.trades):
        if t.product_id != page.product_id:
            raise FrameError(f"trade {t.trade_id} of a {page.product_id} page is {t.product_id}")
        try:
            out.append(_trade(frame, t))
        except FrameError as exc:
            raise FrameError(f"trade {t.trade_id} of the REST page: {exc}") from None
    return out


_TICK_AMOUNTS = (
    "volume_24_h", "low_24_h", "high_24_h", "best_bid", "best_ask", "best_bid_quantity",
    "best_ask_quantity",
)  # fmt: skip


def _ticker(frame: RawFrame, msg: _Tickers | _TickerBatch, t: _Tick) -> Ticker:
    check_product(t.product_id)
    check_amount("price", t.price)
    for name in _TICK_AMOUNTS:
        value = getattr(t, name)
        if value is not None:
            check_amount(name, value, allow_zero=True)
    check_time(frame, msg.timestamp)
    return Ticker(
        exchange=frame.exchange,
        product_id=t.product_id,
        sequence=msg.sequence_num,
        price=t.price,
        best_bid=t.best_bid,
        best_ask=t.best_ask,
        best_bid_size=t.best_bid_quantity,
        best_ask_size=t.best_ask_quantity,
        open_24h=None,
        high_24h=t.high_24_h,
        low_24h=t.low_24_h,
        volume_24h=t.volume_24_h,
        volume_30d=None,
        side=None,
        last_size=None,
        trade_id=None,
        time=msg.timestamp,
        recv_ns=frame.recv_ns,
    )


class _IdTrade(msgspec.Struct):
    product_id: str | None = None
    trade_id: str | None = None


class _IdEvent(msgspec.Struct):
    trades: list[_IdTrade] = []


class _Ids(msgspec.Struct):
    channel: str | None = None
    events: list[_IdEvent] = []


_ids = msgspec.json.Decoder(_Ids)


def sightings(text: str) -> list[Sighting]:
    """The trade ids a `market_trades` frame carries, oldest first."""
    msg = ids_message(_ids, text, '"market_trades"')
    if msg is None:
        return []
    seen = []
    for event in msg.events:
        for t in event.trades:
            tid = t.trade_id
            if not (isinstance(tid, str) and tid.isdigit() and len(tid) <= 18):
                continue
            if isinstance(t.product_id, str) and int(tid) > 0:
                seen.append(Sighting(t.product_id, int(tid), int(tid) - 1, "trade_id", True))
    return sorted(seen, key=lambda s: s.newest)
