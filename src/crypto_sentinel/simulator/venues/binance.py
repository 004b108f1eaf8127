"""Binance Spot for the simulator: combined streams (``/stream?streams=btcusdt@aggTrade/...``
and live ``SUBSCRIBE``), ``aggTrade`` and ``24hrTicker`` events, and the public REST
``aggTrades``, ``exchangeInfo`` and ``klines`` (PROTOCOLS.md sections 4 and 7).

Every simulated trade is one aggregate trade: ``a`` is the market's trade id (contiguous per
symbol) and ``f`` = ``l`` = that id. ``m`` is true when the buyer made the trade (the taker
sold). Prices and quantities are exact decimal text padded to 8 places as Binance sends them.
Binance has no heartbeat message (it pings at the WebSocket level), so there is none here.
Books: ``<symbol>@depth@100ms`` (and ``@depth``) send one ``depthUpdate`` per product every
100 ms covering the book updates since the last (``U``..``u`` contiguous; a gap in the ids
closes the event early, so it shows), and ``GET /api/v3/depth`` gives the ``lastUpdateId``.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import orjson

from crypto_sentinel.simulator.depth import BookUpdate, text
from crypto_sentinel.simulator.faults import FrameShape, corruptions, trade_matcher
from crypto_sentinel.simulator.market import Market, SimTrade
from crypto_sentinel.simulator.venues.base import (
    Query,
    RestAnswer,
    Venue,
    candles,
    decimals_of,
    epoch_ms,
    int_param,
    one,
    plain,
    quote_of,
    trades_from_id,
    window,
)

__all__ = ["BINANCE_SHAPE", "Binance", "pad8", "symbol_of"]

REST_MAX_LIMIT = 1000
_Q8 = Decimal("0.00000001")
_STREAM_CHANNELS = {
    "aggTrade": "matches", "ticker": "ticker", "depth@100ms": "book", "depth": "book",
}  # fmt: skip
DEPTH_DEFAULT_LIMIT = 100
DEPTH_MAX_LIMIT = 5000
_INTERVALS = {
    "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200,
    "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400,
}  # fmt: skip


def symbol_of(product: str) -> str:
    """``BTC-USDT`` -> ``BTCUSDT``."""
    return product.replace("-", "")


def pad8(text: str) -> str:
    """Decimal text padded to 8 fractional digits (``65083.67`` -> ``65083.67000000``)."""
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(8, '0')}" if len(frac) <= 8 else text


# ------------------------------------------------------------------------------ fault shape

BINANCE_SHAPE = FrameShape(
    trade_matcher(r'\{"stream":"([a-z0-9]+)@aggTrade"'),
    None,
    corruptions(
        unknown=('"e":"aggTrade"', '"e":"aggTrade_v2"'),
        trade_id=(r'"a":(\d+)', r'"a":"\1"'),
        size=(r'"q":"[^"]*"', '"q":"0.00000000"'),
        price=(r'"p":"[^"]*"', '"p":"-1.50000000"'),
        time=(r'"T":\d+', '"T":32503680000000'),  # the year 3000
    ),
    book=trade_matcher(r'\{"stream":"([a-z0-9]+)@depth'),
)


class _State:
    __slots__ = ("streams", "windows")

    def __init__(self) -> None:
        self.streams: list[str] = []
        self.windows: dict[str, _Window] = {}  # product -> book updates of this 100 ms


class _Window:
    """The book updates of one product collected for the next ``depthUpdate``: ``U`` is the
    first one's first id, ``u`` the last one's last id, each level at its final size."""

    __slots__ = ("asks", "bids", "first", "last", "time")

    def __init__(self, update: BookUpdate) -> None:
        self.first = update.first_id
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.add(update)

    def add(self, update: BookUpdate) -> None:
        for side, price, size in update.changes:
            (self.bids if side == "bid" else self.asks)[price] = size
        self.last = update.last_id
        self.time = update.time


class Binance(Venue):
    name = "binance"
    shape = BINANCE_SHAPE
    #: Depth events go out every 100 ms, each covering the book updates since the last one.
    batch_interval = 0.1

    def __init__(self) -> None:
        self.depth_events = 0  # depthUpdate events rendered (before the fault plan)

    # ------------------------------------------------------------------ WebSocket

    @staticmethod
    def _parse_stream(name: str, market: Market) -> tuple[str, str] | None:
        """``btcusdt@aggTrade`` -> (server channel, product), or None if not served."""
        symbol, at, kind = name.partition("@")
        if not at or kind not in _STREAM_CHANNELS:
            return None
        for product in market.products:
            if symbol_of(product).lower() == symbol:
                return _STREAM_CHANNELS[kind], product
        return None

    def ws_refusal(self, path: str, query: Query, market: Market) -> tuple[int, object] | None:
        if path.rstrip("/") != "/stream":
            return 404, {"code": -1, "msg": f"path {path} not served: use /stream"}
        for name in filter(None, (one(query, "streams") or "").split("/")):
            if self._parse_stream(name, market) is None:
                return 400, {"code": -1100, "msg": f"Invalid stream name {name!r}"}
        return None

    def on_open(self, session: Any, path: str, query: Query, market: Market) -> list[str]:
        session.state = _State()
        session.subscribed = True  # no subscribe deadline: streams may come with the URL
        names = [n for n in (one(query, "streams") or "").split("/") if n]
        self._subscribe(session, names, market)
        return []

    def _subscribe(self, session: Any, names: list[str], market: Market) -> None:
        wanted: dict[str, list[str]] = {}
        for name in names:
            parsed = self._parse_stream(name, market)
            assert parsed is not None
            channel, product = parsed
            wanted.setdefault(channel, []).append(product)
            if channel == "book":
                self.depth.ensure(product)  # the book starts when a client first wants it
            if name not in session.state.streams:
                session.state.streams.append(name)
        session.subs.subscribe(wanted)

    def on_message(self, session: Any, raw: str | bytes, market: Market) -> list[str]:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return [_dump({"code": 3, "msg": f"Invalid JSON: {exc}"})]
        if not isinstance(msg, dict):
            return [_dump({"code": 3, "msg": "Invalid JSON: expected an object"})]
        method, params, req_id = msg.get("method"), msg.get("params", []), msg.get("id")
        if method == "LIST_SUBSCRIPTIONS":
            return [_dump({"result": session.state.streams, "id": req_id})]
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            return [_dump({"code": 2, "msg": f"Invalid request: unknown method {method!r}"})]
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            return [_dump({"code": 2, "msg": "Invalid request: params must be stream names"})]
        for name in params:
            if self._parse_stream(name, market) is None:
                error = {"code": 2, "msg": f"Invalid request: stream {name!r}", "id": req_id}
                return [_dump(error)]
        if method == "SUBSCRIBE":
            self._subscribe(session, params, market)
        else:
            state: _State = session.state
            state.streams = [s for s in state.streams if s not in params]
            session.subs.channels.clear()
            self._subscribe(session, list(state.streams), market)
        return [_dump({"result": None, "id": req_id})]

    def trade_frame(self, market: Market, t: SimTrade) -> str:
        symbol = symbol_of(t.product_id)
        ms = epoch_ms(t.time)
        return (
            f'{{"stream":"{symbol.lower()}@aggTrade","data":{{"e":"aggTrade","E":{ms + 1},'
            f'"s":"{symbol}","a":{t.trade_id},"p":"{pad8(t.price)}","q":"{pad8(t.size)}",'
            f'"f":{t.trade_id},"l":{t.trade_id},"T":{ms},'
            f'"m":{"true" if t.maker_side == "buy" else "false"},"M":true}}}}'
        )

    def book_frames(self, session: Any, update: BookUpdate) -> list[str]:
        """Updates are collected per product until the next 100 ms batch; one whose ids do
        not follow the collected ones (a gap) first sends those, so the gap shows in U/u."""
        windows: dict[str, _Window] = session.state.windows
        window = windows.get(update.product_id)
        if window is not None and update.first_id == window.last + 1:
            window.add(update)
            return []
        windows[update.product_id] = _Window(update)
        return [] if window is None else [self._depth_event(session, update.product_id, window)]

    def flush(self, session: Any) -> list[str]:
        state: _State | None = session.state
        if state is None or not state.windows:
            return []
        windows, state.windows = state.windows, {}
        return [self._depth_event(session, product, w) for product, w in windows.items()]

    def _depth_event(self, session: Any, product: str, window: _Window) -> str:
        """A ``depthUpdate`` on the stream name the connection subscribed (``@depth@100ms``,
        or ``@depth``, sent at the same pace)."""
        self.depth_events += 1
        symbol = symbol_of(product)
        lower = symbol.lower()
        name = (
            f"{lower}@depth"
            if f"{lower}@depth" in session.state.streams
            else lower + "@depth@100ms"
        )
        bids = [[pad8(text(p)), pad8(text(q))] for p, q in window.bids.items()]
        asks = [[pad8(text(p)), pad8(text(q))] for p, q in window.asks.items()]
        return (
            f'{{"stream":"{name}","data":{{"e":"depthUpdate","E":{epoch_ms(window.time) + 1},'
            f'"s":"{symbol}","U":{window.first},"u":{window.last},'
            f'"b":{_dump(bids)},"a":{_dump(asks)}}}}}'
        )

    def ticker_frame(self, market: Market, t: SimTrade) -> str:
        symbol = symbol_of(t.product_id)
        d = decimals_of(market, t.product_id)
        open_, high, low, volume = (Decimal(x) for x in market.day_stats(t.product_id))
        last = Decimal(t.price)
        change = last - open_
        quote_volume = (volume * (open_ + last) / 2).quantize(Decimal(1).scaleb(-8))
        vwap = (quote_volume / volume).quantize(Decimal(1).scaleb(-d)) if volume else last
        pct = (change * 100 / open_).quantize(Decimal("0.001"))
        bid, bid_qty, ask, ask_qty = quote_of(market, t)
        ms = epoch_ms(t.time)
        first = market.start_trade_id
        fields: dict[str, object] = {
            "e": "24hrTicker",
            "E": ms + 1,
            "s": symbol,
            "p": pad8(plain(change)) if change >= 0 else "-" + pad8(plain(-change)),
            "P": format(pct, "f"),
            "w": pad8(plain(vwap)),
            "x": pad8(plain(open_)),
            "c": pad8(t.price),
            "Q": pad8(t.size),
            "b": pad8(bid),
            "B": pad8(bid_qty),
            "a": pad8(ask),
            "A": pad8(ask_qty),
            "o": pad8(plain(open_)),
            "h": pad8(plain(high)),
            "l": pad8(plain(low)),
            "v": pad8(plain(volume)),
            "q": pad8(plain(quote_volume)),
            "O": ms - 86_400_000,
            "C": ms,
            "F": first,
            "L": t.trade_id,
            "n": t.trade_id - first + 1,
        }
        data = orjson.dumps(fields).decode()
        return f'{{"stream":"{symbol.lower()}@ticker","data":{data}}}'

    # ------------------------------------------------------------------ REST

    def is_trades_path(self, path: str) -> bool:
        return path.rstrip("/") == "/api/v3/aggTrades"

    def throttled(self) -> RestAnswer:
        return RestAnswer(
            429, {"code": -1003, "msg": "Too many requests; current limit is exceeded."}
        )

    def rest(self, market: Market, path: str, query: Query) -> RestAnswer:
        path = path.rstrip("/")
        try:
            if path == "/api/v3/exchangeInfo":
                return self._exchange_info(market, query)
            if path == "/api/v3/aggTrades":
                return self._agg_trades(market, query)
            if path == "/api/v3/klines":
                return self._klines(market, query)
            if path == "/api/v3/depth":
                return self._depth(market, query)
        except ValueError as exc:
            return RestAnswer(400, {"code": -1100, "msg": str(exc)})
        return RestAnswer(404, {"code": -1, "msg": "Not found"})

    @staticmethod
    def _product(market: Market, query: Query) -> str:
        symbol = one(query, "symbol")
        if not symbol:
            raise ValueError("Mandatory parameter 'symbol' was not sent, was empty/null.")
        for product in market.products:
            if symbol_of(product) == symbol.upper():
                return product
        raise ValueError("Invalid symbol.")

    def _exchange_info(self, market: Market, query: Query) -> RestAnswer:
        wanted = one(query, "symbol")
        symbols = []
        for product in market.products:
            spec = market.specs[product]
            if wanted and symbol_of(product) != wanted.upper():
                continue
            symbols.append(
                {
                    "symbol": symbol_of(product),
                    "status": "TRADING",
                    "baseAsset": spec.base_currency,
                    "baseAssetPrecision": 8,
                    "quoteAsset": spec.quote_currency,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "isSpotTradingAllowed": True,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "tickSize": pad8(spec.quote_increment),
                        },
                        {"filterType": "LOT_SIZE", "stepSize": pad8(spec.base_increment)},
                    ],
                }
            )
        if wanted and not symbols:
            raise ValueError("Invalid symbol.")
        return RestAnswer(
            200,
            {
                "timezone": "UTC",
                "serverTime": time.time_ns() // 1_000_000,
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 6000,
                    }
                ],
                "exchangeFilters": [],
                "symbols": symbols,
            },
        )

    def _agg_trades(self, market: Market, query: Query) -> RestAnswer:
        product = self._product(market, query)
        limit = int_param(query, "limit", 500)
        assert limit is not None
        if not 1 <= limit <= REST_MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {REST_MAX_LIMIT}")
        from_id = int_param(query, "fromId")
        if from_id is None:
            trades = market.trades_page(product, limit)[::-1]
        else:
            trades = trades_from_id(market, product, from_id, limit)
        return RestAnswer(200, [_rest_agg(t) for t in trades])

    def _depth(self, market: Market, query: Query) -> RestAnswer:
        """The REST snapshot: best ``limit`` levels a side and the ``lastUpdateId`` they
        include (the book is made here if no stream asked for it yet)."""
        product = self._product(market, query)
        limit = int_param(query, "limit", DEPTH_DEFAULT_LIMIT)
        assert limit is not None
        if not 1 <= limit <= DEPTH_MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {DEPTH_MAX_LIMIT}")
        truth = self.depth.truth(product, limit)
        return RestAnswer(
            200,
            {
                "lastUpdateId": truth.update_id,
                "bids": [[pad8(text(p)), pad8(text(q))] for p, q in truth.bids],
                "asks": [[pad8(text(p)), pad8(text(q))] for p, q in truth.asks],
            },
        )

    def _klines(self, market: Market, query: Query) -> RestAnswer:
        product = self._product(market, query)
        seconds = _INTERVALS.get(one(query, "interval") or "")
        if seconds is None:
            raise ValueError("Invalid interval.")
        limit = int_param(query, "limit", 500)
        assert limit is not None
        if not 1 <= limit <= REST_MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {REST_MAX_LIMIT}")
        start_ms, end_ms = int_param(query, "startTime"), int_param(query, "endTime")
        rows = window(
            candles(market.history(product), seconds),
            None if start_ms is None else -(-start_ms // 1000),
            None if end_ms is None else end_ms // 1000,
        )
        rows = rows[:limit] if start_ms is not None else rows[-limit:]
        return RestAnswer(
            200,
            [
                [
                    c.start * 1000,
                    pad8(plain(c.open)),
                    pad8(plain(c.high)),
                    pad8(plain(c.low)),
                    pad8(plain(c.close)),
                    pad8(plain(c.volume)),
                    (c.start + seconds) * 1000 - 1,
                    pad8(plain(c.quote_volume.quantize(_Q8))),
                    c.count,
                    pad8(plain(c.taker_buy_volume)),
                    pad8(plain(c.taker_buy_quote.quantize(_Q8))),
                    "0",
                ]
                for c in rows
            ],
        )


def _rest_agg(t: SimTrade) -> dict[str, object]:
    return {
        "a": t.trade_id,
        "p": pad8(t.price),
        "q": pad8(t.size),
        "f": t.trade_id,
        "l": t.trade_id,
        "T": epoch_ms(t.time),
        "m": t.maker_side == "buy",
        "M": True,
    }


def _dump(body: object) -> str:
    return orjson.dumps(body).decode()
