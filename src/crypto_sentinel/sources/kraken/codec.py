"""Decode and validate Kraken Spot WebSocket v2 frames into records.

`trade` messages carry several trades (`snapshot` on subscribe, then `update`s); `side` is the
taker's and `trade_id` is sequential per book, so gaps are found with it (`sightings`). Prices
and quantities are JSON numbers: they are parsed as Decimal (never float) and held to the same
rules as the string amounts of other venues. `ticker` messages give best bid/ask and 24 h
statistics. Symbols are `BTC/USD`; the lake's product id is `BTC-USD`. Acks, pongs, heartbeats,
status and book messages carry no row (bronze keeps them).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Generic, TypeVar

import msgspec

from crypto_sentinel.model import RawFrame, Ticker, Trade
from crypto_sentinel.sources.codec import (
    GAP_RECORD_PREFIX,
    Decoded,
    FrameError,
    Sighting,
    check_product,
    check_time,
    decode_gap_frame,
    ids_message,
    is_backfill_page,
    number_text,
)

_SIDES = ("buy", "sell")
_Item = TypeVar("_Item")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def product_of(symbol: str) -> str:
    """`BTC/USD` -> `BTC-USD`."""
    base, slash, quote = symbol.partition("/")
    if not slash:
        raise FrameError(f"symbol {symbol!r} is not BASE/QUOTE")
    product = f"{base}-{quote}"
    check_product(product)
    return product


def symbol_of(product_id: str) -> str:
    return product_id.replace("-", "/")


class _Trade(msgspec.Struct):
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    trade_id: int
    timestamp: datetime
    ord_type: str | None = None


class _Data(msgspec.Struct, Generic[_Item]):
    """The shape of every data channel: `type` is "snapshot" on subscribe, then "update"."""

    data: list[_Item]
    type: str = "update"


class _TradeMsg(_Data[_Trade], tag_field="channel", tag="trade"):
    pass


class _Tick(msgspec.Struct):
    symbol: str
    last: Decimal
    bid: Decimal | None = None
    bid_qty: Decimal | None = None
    ask: Decimal | None = None
    ask_qty: Decimal | None = None
    volume: Decimal | None = None
    low: Decimal | None = None
    high: Decimal | None = None
    timestamp: datetime | None = None


class _TickerMsg(_Data[_Tick], tag_field="channel", tag="ticker"):
    pass


class _Quiet(msgspec.Struct):
    """Channels that carry nothing we store."""


class _Heartbeat(_Quiet, tag_field="channel", tag="heartbeat"):
    pass


class _Status(_Quiet, tag_field="channel", tag="status"):
    pass


class _Book(_Quiet, tag_field="channel", tag="book"):
    pass


_Channel = _TradeMsg | _TickerMsg | _Heartbeat | _Status | _Book


class _Method(msgspec.Struct):
    """Answers to our requests: subscribe acks, pongs, errors."""

    method: str
    success: bool = True
    error: str = ""


class _Probe(msgspec.Struct):
    channel: str | None = None
    method: str | None = None


class _RestTrades(msgspec.Struct, tag_field="type", tag="rest_trades", kw_only=True):
    """One body of GET /0/public/Trades, wrapped by our backfill: the whole body
    (`{"error": [...], "result": {<PAIR>: rows, "last": cursor}}`) or only its `result`."""

    product_id: str
    trades: dict[str, msgspec.Raw]


_channel = msgspec.json.Decoder(_Channel)
_method = msgspec.json.Decoder(_Method)
_probe = msgspec.json.Decoder(_Probe)
_page = msgspec.json.Decoder(_RestTrades)
#: A REST trade row: [price, volume, time, side b|s, order type, misc, trade_id].
_rest_rows = msgspec.json.Decoder(list[tuple[Decimal, Decimal, Decimal, str, str, str, int]])
_rest_errors = msgspec.json.Decoder(list[str])
_rest_result = msgspec.json.Decoder(dict[str, msgspec.Raw])


def decode(frame: RawFrame) -> Decoded:
    text = frame.text
    if is_backfill_page(frame):
        return _rest_page(frame)
    if text.startswith(GAP_RECORD_PREFIX):
        return decode_gap_frame(frame)
    try:
        msg = _channel.decode(text)
    except msgspec.DecodeError as exc:
        _not_a_channel(text, exc)  # raises, or returns for an ack or a pong
        return None
    if isinstance(msg, _TradeMsg):
        return [_trade(frame, t) for t in msg.data]
    if isinstance(msg, _TickerMsg):
        if len(msg.data) != 1:
            raise FrameError(f"ticker message with {len(msg.data)} entries (expected 1)")
        return _ticker(frame, msg.data[0])
    return None


def _not_a_channel(text: str, exc: msgspec.DecodeError) -> None:
    try:
        probe = _probe.decode(text)
    except msgspec.DecodeError:
        try:
            msgspec.json.decode(text)
        except msgspec.DecodeError:
            raise FrameError(f"invalid JSON: {exc}") from None
        raise FrameError("not a Kraken message object") from None
    if probe.channel is not None:
        if probe.channel in ("trade", "ticker"):
            raise FrameError(f"bad {probe.channel} message: {exc}")
        raise FrameError(f"unknown channel {probe.channel!r}")
    if probe.method is None:
        raise FrameError("not a Kraken message object")
    reply = _method.decode(text)
    if not reply.success:
        raise FrameError(f"exchange error: {reply.method} failed: {reply.error}".strip())
    return None


def _trade(frame: RawFrame, t: _Trade) -> Trade:
    product = product_of(t.symbol)
    if t.side not in _SIDES:
        raise FrameError(f"side must be 'buy' or 'sell', got {t.side!r}")
    if t.trade_id <= 0:
        raise FrameError(f"trade_id must be positive, got {t.trade_id}")
    price = number_text("price", t.price)
    qty = number_text("size", t.qty)
    check_time(frame, t.timestamp)
    return Trade(
        exchange=frame.exchange,
        product_id=product,
        trade_id=t.trade_id,
        price=Decimal(price),
        size=Decimal(qty),
        side=t.side,  # Kraken reports the taker's side
        time=t.timestamp,
        recv_ns=frame.recv_ns,
        conn_id=frame.conn_id,
        venue_symbol=t.symbol,  # the WebSocket v2 name (REST pages are mapped to it)
    )


def _text(name: str, value: Decimal | None) -> str | None:
    return None if value is None else number_text(name, value, allow_zero=True)


def _ticker(frame: RawFrame, t: _Tick) -> Ticker:
    product = product_of(t.symbol)
    time = t.timestamp or _EPOCH + timedelta(microseconds=frame.recv_ns // 1000)
    check_time(frame, time)
    return Ticker(
        exchange=frame.exchange,
        product_id=product,
        sequence=0,  # Kraken's ticker has none; the time orders them
        price=number_text("price", t.last),
        best_bid=_text("bid", t.bid),
        best_ask=_text("ask", t.ask),
        best_bid_size=_text("bid_qty", t.bid_qty),
        best_ask_size=_text("ask_qty", t.ask_qty),
        open_24h=None,
        high_24h=_text("high", t.high),
        low_24h=_text("low", t.low),
        volume_24h=_text("volume", t.volume),
        volume_30d=None,
        side=None,
        last_size=None,
        trade_id=None,
        time=time,
        recv_ns=frame.recv_ns,
    )


def _rest_page(frame: RawFrame) -> list[Trade]:
    try:
        page = _page.decode(frame.text)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad rest_trades message: {exc}") from None
    check_product(page.product_id)
    result = page.trades
    try:
        if "result" in result or "error" in result:  # the whole body
            errors = _rest_errors.decode(result["error"]) if "error" in result else []
            if errors:
                raise FrameError(f"exchange error: {', '.join(errors)}")
            if "result" not in result:
                raise FrameError("bad rest_trades message: a Trades body without result")
            result = _rest_result.decode(result["result"])
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad rest_trades message: {exc}") from None
    out: list[Trade] = []
    for pair, raw in result.items():
        if pair == "last":
            continue
        try:
            rows = _rest_rows.decode(raw)
        except msgspec.DecodeError as exc:
            raise FrameError(f"bad rest_trades message: {exc}") from None
        for price, volume, seconds, side, _kind, _misc, trade_id in rows:
            time = _EPOCH + timedelta(microseconds=int(seconds * 1_000_000))
            taker = {"b": "buy", "s": "sell"}.get(side, side)
            t = _Trade(page.product_id.replace("-", "/"), taker, price, volume, trade_id, time)
            try:
                out.append(_trade(frame, t))
            except FrameError as exc:
                raise FrameError(f"trade {trade_id} of the REST page: {exc}") from None
    return out


class _IdRow(msgspec.Struct):
    symbol: str | None = None
    trade_id: int | None = None


class _Ids(msgspec.Struct):
    channel: str | None = None
    data: list[_IdRow] = []


_ids = msgspec.json.Decoder(_Ids)


def sightings(text: str) -> list[Sighting]:
    """The trade ids a `trade` message carries, oldest first (snapshots come newest first)."""
    msg = ids_message(_ids, text, '"trade"')
    if msg is None:
        return []
    if msg.channel != "trade":
        return []
    seen = []
    for row in msg.data:
        if isinstance(row.symbol, str) and isinstance(row.trade_id, int) and row.trade_id > 0:
            try:
                product = product_of(row.symbol)
            except FrameError:
                continue
            seen.append(Sighting(product, row.trade_id, row.trade_id - 1, "trade_id", True))
    return sorted(seen, key=lambda s: s.newest)
