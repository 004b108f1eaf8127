"""Decode and validate Binance Spot WebSocket frames (combined streams) into records.

Trades come from `<symbol>@aggTrade`: the aggregate id `a` is contiguous per symbol, so it is
the trade id gaps are found with (`sightings`). `m` says whether the buyer was the maker, so
`m: true` means the taker sold. Tickers come from the 24 h `<symbol>@ticker` stream. Other
streams (`bookTicker`, `depthUpdate`) and the REST depth snapshot our feed publishes
(`depthSnapshot`) are kept raw in bronze and carry no row: books are read from them by
sources/binance/book.py.

Binance names symbols `BTCUSDT`; the lake's product id is `BTC-USDT`. The split must follow
from the frame alone (a rebuild from bronze decodes it again), so it is the longest known quote
asset at the end of the symbol; a symbol with none is quarantined with a reason naming it.
The live source reads exchangeInfo for the symbols it subscribes to and reports any symbol
this rule would split differently (sources/binance/feed.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
    is_backfill_page,
)

#: Quote assets Binance and Binance.US list, longest first so `BTCTUSD` is BTC-TUSD.
QUOTES = tuple(
    sorted(
        (
            "USDT", "FDUSD", "USDC", "TUSD", "BUSD", "USDP", "DAI", "USD", "TRY", "EUR", "GBP",
            "BRL", "AUD", "JPY", "RUB", "UAH", "NGN", "ZAR", "IDR", "ARS", "PLN", "RON", "MXN",
            "COP", "CZK", "BIDR", "IDRT", "BVND", "PAX", "BTC", "ETH", "BNB", "XRP", "TRX",
            "DOGE", "DOT",
        ),
        key=len,
        reverse=True,
    )
)  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def product_of(symbol: str) -> str:
    """`BTCUSDT` -> `BTC-USDT` (see the module docstring)."""
    for quote in QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            product = f"{symbol[: -len(quote)]}-{quote}"
            check_product(product)
            return product
    raise FrameError(f"symbol {symbol!r} does not end in a known quote asset")


def symbol_of(product_id: str) -> str:
    """`BTC-USDT` -> `BTCUSDT`."""
    return product_id.replace("-", "")


def _ms(value: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=value)


class _AggTrade(msgspec.Struct, tag_field="e", tag="aggTrade"):
    s: str  # symbol
    a: int  # aggregate trade id
    p: str
    q: str
    T: int  # trade time, ms
    m: bool  # the buyer is the maker
    E: int = 0
    f: int | None = None
    l: int | None = None  # noqa: E741 (Binance's field name)


class _DayTicker(msgspec.Struct, tag_field="e", tag="24hrTicker"):
    E: int  # event time, ms
    s: str
    c: str  # last price
    Q: str | None = None  # last quantity
    b: str | None = None
    B: str | None = None
    a: str | None = None
    A: str | None = None
    o: str | None = None
    h: str | None = None
    l: str | None = None  # noqa: E741
    v: str | None = None  # base volume
    L: int | None = None  # last trade id


class _Depth(msgspec.Struct, tag_field="e", tag="depthUpdate"):
    pass


class _DepthSnapshot(msgspec.Struct, tag_field="e", tag="depthSnapshot"):
    """Our feed's REST depth snapshot, published in its connection (sources/binance/book)."""


_Event = _AggTrade | _DayTicker | _Depth | _DepthSnapshot


class _Combined(msgspec.Struct):
    stream: str
    data: msgspec.Raw


class _Ack(msgspec.Struct):
    """`{"result": null, "id": 1}`, or `{"code": .., "msg": ..}` for an error."""

    id: int | str | None = None
    result: msgspec.Raw | None = None
    code: int | None = None
    msg: str = ""


class _RestAgg(msgspec.Struct):
    a: int
    p: str
    q: str
    T: int
    m: bool
    f: int | None = None
    l: int | None = None  # noqa: E741


class _RestTrades(msgspec.Struct, tag_field="type", tag="rest_trades", kw_only=True):
    """One page of GET /api/v3/aggTrades, wrapped by our backfill."""

    product_id: str
    trades: list[_RestAgg]


_combined = msgspec.json.Decoder(_Combined)
_event = msgspec.json.Decoder(_Event)
_ack = msgspec.json.Decoder(_Ack)
_page = msgspec.json.Decoder(_RestTrades)


class _Kind(msgspec.Struct):
    e: str | None = None


_kind = msgspec.json.Decoder(_Kind)


def decode(frame: RawFrame) -> Decoded:
    """One frame -> a record, a list of trades (a REST page), None (acks, streams we keep
    only raw), or FrameError saying why it is unusable."""
    text = frame.text
    if is_backfill_page(frame):
        return _rest_page(frame)
    if text.startswith(GAP_RECORD_PREFIX):
        return decode_gap_frame(frame)
    payload: msgspec.Raw | bytes
    try:
        envelope = _combined.decode(text)
        if envelope.stream.endswith("@bookTicker"):
            return None  # kept raw in bronze: best bid/ask without a last price or time
        payload = envelope.data
    except msgspec.DecodeError:
        payload = text.encode()  # a raw stream (/ws/<stream>) or a control message
        if b'"e"' not in payload:
            return _control(text)
    try:
        event = _event.decode(payload)
    except msgspec.DecodeError as exc:
        raise FrameError(_explain(payload, exc)) from None
    if isinstance(event, _AggTrade):
        return _trade(frame, event)
    if isinstance(event, _DayTicker):
        return _ticker(frame, event)
    return None


def _explain(payload: msgspec.Raw | bytes, exc: msgspec.DecodeError) -> str:
    try:
        kind = _kind.decode(payload).e
    except msgspec.DecodeError:
        return f"invalid JSON: {exc}"
    if kind not in ("aggTrade", "24hrTicker"):
        return f"unknown message type {kind!r}"
    return f"bad {kind} message: {exc}"


def _control(text: str) -> Decoded:
    try:
        ack = _ack.decode(text)
    except msgspec.DecodeError as exc:
        try:
            msgspec.json.decode(text)
        except msgspec.DecodeError:
            raise FrameError(f"invalid JSON: {exc}") from None
        raise FrameError("not a Binance message object") from None
    if ack.code is not None:
        raise FrameError(f"exchange error: {ack.code} {ack.msg}".strip())
    if '"u"' in text and '"b"' in text and '"a"' in text:
        return None  # a bookTicker on a raw stream (it has no event type)
    if ack.id is None and ack.result is None:
        raise FrameError("not a Binance message object")
    return None


def _trade(frame: RawFrame, t: _AggTrade) -> Trade:
    return _agg(frame, product_of(t.s), t.a, t.p, t.q, t.T, t.m)


def _agg(
    frame: RawFrame, product: str, agg_id: int, price: str, qty: str, ms: int, buyer_maker: bool
) -> Trade:
    if agg_id < 0:
        raise FrameError(f"trade_id must be >= 0, got {agg_id}")
    check_amount("price", price)
    check_amount("size", qty)
    time = _ms(ms)
    check_time(frame, time)
    return Trade(
        exchange=frame.exchange,
        product_id=product,
        trade_id=agg_id,
        price=Decimal(price),
        size=Decimal(qty),
        side="sell" if buyer_maker else "buy",  # the buyer made: the taker sold
        time=time,
        recv_ns=frame.recv_ns,
        conn_id=frame.conn_id,
        venue_symbol=symbol_of(product),
    )


def _rest_page(frame: RawFrame) -> list[Trade]:
    try:
        page = _page.decode(frame.text)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad rest_trades message: {exc}") from None
    check_product(page.product_id)
    out = []
    for t in page.trades:
        try:
            out.append(_agg(frame, page.product_id, t.a, t.p, t.q, t.T, t.m))
        except FrameError as exc:
            raise FrameError(f"trade {t.a} of the REST page: {exc}") from None
    return out


_TICKER_AMOUNTS = ("Q", "b", "B", "a", "A", "o", "h", "l", "v")


def _ticker(frame: RawFrame, t: _DayTicker) -> Ticker:
    product = product_of(t.s)
    check_amount("price", t.c)
    for name in _TICKER_AMOUNTS:
        value = getattr(t, name)
        if value is not None:
            check_amount(name, value, allow_zero=True)
    time = _ms(t.E)
    check_time(frame, time)
    return Ticker(
        exchange=frame.exchange,
        product_id=product,
        sequence=t.E,
        price=t.c,
        best_bid=t.b,
        best_ask=t.a,
        best_bid_size=t.B,
        best_ask_size=t.A,
        open_24h=t.o,
        high_24h=t.h,
        low_24h=t.l,
        volume_24h=t.v,
        volume_30d=None,
        side=None,
        last_size=t.Q,
        trade_id=t.L if t.L is not None and t.L >= 0 else None,
        time=time,
        recv_ns=frame.recv_ns,
    )


class _Ids(msgspec.Struct):
    e: str | None = None
    s: str | None = None
    a: int | None = None


class _IdsCombined(msgspec.Struct):
    data: _Ids


_ids_combined = msgspec.json.Decoder(_IdsCombined)
_ids_raw = msgspec.json.Decoder(_Ids)


def sightings(text: str) -> list[Sighting]:
    """The aggregate trade id a frame carries (cheap: full checks happen in the engine)."""
    if '"aggTrade"' not in text:
        return []
    try:
        combined = text.startswith('{"stream"')
        msg = _ids_combined.decode(text).data if combined else _ids_raw.decode(text)
        product = product_of(msg.s) if isinstance(msg.s, str) else None
    except (msgspec.DecodeError, FrameError):
        return []
    if msg.e != "aggTrade" or product is None or not isinstance(msg.a, int) or msg.a < 0:
        return []
    return [Sighting(product, msg.a, msg.a - 1, "trade_id", True)]
