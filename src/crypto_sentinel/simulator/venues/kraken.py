"""Kraken Spot WebSocket v2 for the simulator (``trade``, ``ticker``, heartbeats, ping) and
the public REST ``Trades``, ``AssetPairs`` and ``OHLC`` (PROTOCOLS.md sections 5 and 7).

WebSocket prices and quantities are JSON numbers: the market's exact decimal text is written
as the number literal, never through a float. ``side`` is the taker's. Symbols are
``BTC/USD``; REST pairs use Kraken's own names (``XBTUSD``, key ``XXBTZUSD``; ``AssetPairs``
gives ``wsname`` ``XBT/USD``, as Kraken does), and ``BTCUSD`` or ``BTC/USD`` are accepted
too. A ``trade`` subscription with ``snapshot`` true first gets the last 50 trades (oldest
first; the order of a real snapshot is not verified). ``Trades`` serves the trades the feed
emitted, hidden ones included, and the fault plan's REST delay and 429s apply to it.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import orjson

from crypto_sentinel.books.orderbook import LevelPair, OrderBook, kraken_checksum
from crypto_sentinel.simulator.depth import BookUpdate, text
from crypto_sentinel.simulator.faults import FrameShape, corruptions, trade_matcher
from crypto_sentinel.simulator.market import Market, SimTrade, format_time
from crypto_sentinel.simulator.venues.base import (
    Query,
    RestAnswer,
    Venue,
    candles,
    epoch_us,
    int_param,
    number,
    one,
    plain,
    quote_of,
    rfc3339_ns,
    taker_side,
    trades_since,
)

__all__ = ["KRAKEN_SHAPE", "Kraken", "pair_altname", "pair_key"]

SNAPSHOT_TRADES = 50
REST_MAX_COUNT = 1000
OHLC_MAX = 720
_CHANNELS = {"trade": "matches", "ticker": "ticker", "book": "book"}
BOOK_DEPTHS = (10, 25, 100, 500, 1000)
_CHECKSUM = re.compile(r'"checksum":(\d+)')
_NAMES = {v: k for k, v in _CHANNELS.items()}
_LEGACY = {"BTC": "XXBT", "ETH": "XETH", "USD": "ZUSD", "EUR": "ZEUR", "GBP": "ZGBP"}
_ALIAS = {"BTC": "XBT"}
_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)


def ws_symbol(product: str) -> str:
    return product.replace("-", "/")


def pair_altname(product: str) -> str:
    """``BTC-USD`` -> ``XBTUSD`` (Kraken calls bitcoin XBT in REST pair names)."""
    base, quote = product.split("-")
    return _ALIAS.get(base, base) + _ALIAS.get(quote, quote)


def pair_key(product: str) -> str:
    """The key REST answers use: ``XXBTZUSD`` for the old pairs, else the altname."""
    base, quote = product.split("-")
    if base in _LEGACY and quote in _LEGACY:
        return _LEGACY[base] + _LEGACY[quote]
    return pair_altname(product)


# ------------------------------------------------------------------------------ fault shape

KRAKEN_SHAPE = FrameShape(
    trade_matcher(r'\{"channel":"trade","type":"update","data":\[\{"symbol":"([^"]+)"'),
    '{"channel":"heartbeat"',
    corruptions(
        unknown=('"channel":"trade"', '"channel":"trades"'),
        trade_id=(r'"trade_id":(\d+)', r'"trade_id":"\1"'),
        size=(r'"qty":[0-9.]+', '"qty":0'),
        price=(r'"price":[0-9.]+', '"price":-1.5'),
        time=(r'"timestamp":"\d{4}', '"timestamp":"2999'),
    ),
    book=trade_matcher(r'\{"channel":"book","type":"update","data":\[\{"symbol":"([^"]+)"'),
    bad_checksum=lambda frame: _CHECKSUM.sub(
        lambda m: f'"checksum":{(int(m.group(1)) + 1) % 2**32}', frame, count=1
    ),
)


class _State:
    """A connection's book subscriptions: per product, the subscribed depth and the book as
    the client holds it (the best `depth` levels), so each update sends exactly what changed
    in that window, levels coming into view included, and its checksum."""

    __slots__ = ("books",)

    def __init__(self) -> None:
        self.books: dict[str, tuple[int, OrderBook]] = {}


def _now() -> str:
    import time

    return rfc3339_ns(time.time_ns())[:-4] + "Z"  # Kraken's acks show microseconds


def _dump(body: object) -> str:
    return orjson.dumps(body).decode()


class Kraken(Venue):
    name = "kraken"
    shape = KRAKEN_SHAPE

    # ------------------------------------------------------------------ WebSocket

    def ws_refusal(self, path: str, query: Query, market: Market) -> tuple[int, object] | None:
        if path.rstrip("/") not in ("", "/v2"):
            return 404, {"error": [f"path {path} not served: use /v2"]}
        return None

    def on_open(self, session: Any, path: str, query: Query, market: Market) -> list[str]:
        session.subscribed = True  # Kraken does not close a connection that has not subscribed
        session.state = _State()
        status = {
            "channel": "status",
            "type": "update",
            "data": [
                {
                    "version": "2.0.0",
                    "system": "online",
                    "api_version": "v2",
                    "connection_id": 1_000_000 + session.id,
                }
            ],
        }
        return [_dump(status)]

    def on_message(self, session: Any, raw: str | bytes, market: Market) -> list[str]:
        time_in = _now()
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict) or not isinstance(msg.get("method"), str):
            return [_dump({"error": "Malformed request", "success": False, "time_in": time_in,
                           "time_out": _now()})]  # fmt: skip
        method, req_id = msg["method"], msg.get("req_id")
        tail: dict[str, object] = {"time_in": time_in}
        if req_id is not None:
            tail["req_id"] = req_id
        if method == "ping":
            reply: dict[str, object] = {"method": "pong"}
            if req_id is not None:
                reply["req_id"] = req_id
            return [_dump({**reply, "time_in": time_in, "time_out": _now()})]
        if method not in ("subscribe", "unsubscribe"):
            return [_dump({"error": f"Method not found: {method}", "method": method,
                           "success": False, **tail, "time_out": _now()})]  # fmt: skip
        params = msg.get("params")
        channel = params.get("channel") if isinstance(params, dict) else None
        symbols = params.get("symbol") if isinstance(params, dict) else None
        if channel not in _CHANNELS or not (
            isinstance(symbols, list) and symbols and all(isinstance(s, str) for s in symbols)
        ):
            return [_dump({"error": f"Channel or symbol not supported: {channel!r}",
                           "method": method, "success": False, **tail,
                           "time_out": _now()})]  # fmt: skip
        assert isinstance(params, dict)
        depth = params.get("depth", 10)
        if channel == "book" and depth not in BOOK_DEPTHS:
            return [_dump({"error": f"Invalid depth: {depth!r}", "method": method,
                           "success": False, **tail, "time_out": _now()})]  # fmt: skip
        # trade defaults to no snapshot
        snapshot = params.get("snapshot", channel in ("ticker", "book"))
        by_symbol = {ws_symbol(p): p for p in market.products}
        frames: list[str] = []
        for symbol in symbols:
            product = by_symbol.get(symbol)
            if product is None:
                frames.append(_dump({"error": f"Currency pair not supported {symbol}",
                                     "method": method, "success": False, "symbol": symbol,
                                     **tail, "time_out": _now()}))  # fmt: skip
                continue
            internal = {_CHANNELS[channel]: [product]}
            result: dict[str, object] = {"channel": channel, "symbol": symbol}
            if channel == "book":
                result["depth"] = depth
                session.state.books.pop(product, None)
            if method == "subscribe":
                session.subs.subscribe(internal)
                result["snapshot"] = bool(snapshot)
                if channel == "book":
                    session.state.books[product] = (depth, self._book_start(product, depth))
            else:
                session.subs.unsubscribe(internal)
            frames.append(_dump({"method": method, "result": result, "success": True,
                                 **tail, "time_out": _now()}))  # fmt: skip
            if method == "subscribe" and snapshot and channel == "book":
                frames.append(self._book_snapshot(product, session.state.books[product][1]))
            elif method == "subscribe" and snapshot:
                frames.extend(self._snapshot(market, channel, product))
        return frames

    def _snapshot(self, market: Market, channel: str, product: str) -> list[str]:
        last = market.last_trade(product)
        if last is None:
            return []
        if channel == "ticker":
            frame = self.ticker_frame(market, last)
            return [frame.replace('"type":"update"', '"type":"snapshot"', 1)]
        trades = market.trades_page(product, SNAPSHOT_TRADES)[::-1]
        rows = ",".join(_trade_row(t) for t in trades)
        return [f'{{"channel":"trade","type":"snapshot","data":[{rows}]}}']

    def _book_start(self, product: str, depth: int) -> OrderBook:
        held = OrderBook("kraken", product)
        truth = self.depth.truth(product, depth)
        held.load_snapshot(truth.bids, truth.asks, truth.update_id)
        return held

    @staticmethod
    def _book_snapshot(product: str, held: OrderBook) -> str:
        bids, asks = held.top()
        item = (
            f'{{"symbol":"{ws_symbol(product)}","bids":{_levels(bids)},"asks":{_levels(asks)},'
            f'"checksum":{kraken_checksum(held)}}}'
        )
        return f'{{"channel":"book","type":"snapshot","data":[{item}]}}'

    def book_frames(self, session: Any, update: BookUpdate) -> list[str]:
        """What changed in the connection's window of the book (nothing: no frame)."""
        entry = session.state.books.get(update.product_id)
        if entry is None:
            return []
        depth, held = entry
        truth = self.depth.truth(update.product_id, depth)
        was_bids, was_asks = held.top()
        bids = _diff(dict(was_bids), truth.bids)
        asks = _diff(dict(was_asks), truth.asks)
        if not bids and not asks:
            return []
        for side, levels in (("bid", bids), ("ask", asks)):
            for price, qty in levels:
                held.apply(side, price, qty)
        stamp = format_time(update.time)
        item = (
            f'{{"symbol":"{ws_symbol(update.product_id)}","bids":{_levels(bids)},'
            f'"asks":{_levels(asks)},"checksum":{kraken_checksum(held)},"timestamp":"{stamp}"}}'
        )
        return [f'{{"channel":"book","type":"update","data":[{item}]}}']

    def heartbeat_frames(self, session: Any, now_ns: int, tick: int) -> list[str]:
        return ['{"channel":"heartbeat"}'] if session.subs.channels else []

    def trade_frame(self, market: Market, t: SimTrade) -> str:
        return f'{{"channel":"trade","type":"update","data":[{_trade_row(t)}]}}'

    def ticker_frame(self, market: Market, t: SimTrade) -> str:
        open_, high, low, volume = (Decimal(x) for x in market.day_stats(t.product_id))
        last = Decimal(t.price)
        change = last - open_
        vwap = ((open_ + last) / 2).quantize(Decimal(market.specs[t.product_id].quote_increment))
        bid, bid_qty, ask, ask_qty = quote_of(market, t)
        tick = {
            "symbol": ws_symbol(t.product_id),
            "bid": number(bid),
            "bid_qty": number(bid_qty),
            "ask": number(ask),
            "ask_qty": number(ask_qty),
            "last": number(t.price),
            "volume": number(plain(volume)),
            "vwap": number(plain(vwap)),
            "low": number(plain(low)),
            "high": number(plain(high)),
            "change": number(plain(change)),
            "change_pct": number(plain((change * 100 / open_).quantize(Decimal("0.01")))),
        }
        return _dump({"channel": "ticker", "type": "update", "data": [tick]})

    # ------------------------------------------------------------------ REST

    def is_trades_path(self, path: str) -> bool:
        return path.rstrip("/") == "/0/public/Trades"

    def throttled(self) -> RestAnswer:
        return RestAnswer(429, {"error": ["EGeneral:Too many requests"]})

    def rest(self, market: Market, path: str, query: Query) -> RestAnswer:
        path = path.rstrip("/")
        try:
            if path == "/0/public/AssetPairs":
                return self._asset_pairs(market, query)
            if path == "/0/public/Trades":
                return self._trades(market, query)
            if path == "/0/public/OHLC":
                return self._ohlc(market, query)
        except ValueError as exc:
            return RestAnswer(200, {"error": [f"EGeneral:Invalid arguments:{exc}"]})
        return RestAnswer(404, {"error": ["EGeneral:Unknown method"]})

    @staticmethod
    def _product(market: Market, pair: str | None) -> str:
        if not pair:
            raise ValueError("pair")
        wanted = pair.upper()
        for product in market.products:
            names = (pair_key(product), pair_altname(product), product.replace("-", ""),
                     ws_symbol(product))  # fmt: skip
            if wanted in names:
                return product
        raise ValueError(f"Unknown asset pair {pair}")

    def _asset_pairs(self, market: Market, query: Query) -> RestAnswer:
        wanted = one(query, "pair")
        chosen = (
            [self._product(market, p) for p in wanted.split(",")] if wanted else market.products
        )
        result = {}
        for product in chosen:
            spec = market.specs[product]
            base, quote = product.split("-")
            result[pair_key(product)] = {
                "altname": pair_altname(product),
                "wsname": "/".join(_ALIAS.get(a, a) for a in (base, quote)),  # XBT/USD
                "base": _LEGACY.get(base, base),
                "quote": _LEGACY.get(quote, quote),
                "pair_decimals": len(spec.quote_increment.partition(".")[2]),
                "lot_decimals": 8,
                "tick_size": spec.quote_increment,
                "ordermin": "0.00001",
                "status": "online",
            }
        return RestAnswer(200, {"error": [], "result": result})

    def _trades(self, market: Market, query: Query) -> RestAnswer:
        product = self._product(market, one(query, "pair"))
        count = int_param(query, "count", REST_MAX_COUNT)
        assert count is not None
        count = max(1, min(count, REST_MAX_COUNT))
        since_us = _since_us(one(query, "since"))
        if since_us is None:
            trades = market.trades_page(product, count)[::-1]
        else:
            trades = trades_since(market, product, since_us, count)
        rows = [
            [t.price, t.size, number(_seconds(t)), "b" if t.maker_side == "sell" else "s",
             _ord_type(t)[0], "", t.trade_id]
            for t in trades
        ]  # fmt: skip
        last = str((epoch_us(trades[-1].time) if trades else since_us or 0) * 1000)
        return RestAnswer(200, {"error": [], "result": {pair_key(product): rows, "last": last}})

    def _ohlc(self, market: Market, query: Query) -> RestAnswer:
        product = self._product(market, one(query, "pair"))
        interval = int_param(query, "interval", 1)
        if interval not in _INTERVALS:
            raise ValueError("interval")
        assert interval is not None
        since = int_param(query, "since")
        rows = candles(market.history(product), interval * 60)
        if since is not None:
            rows = [c for c in rows if c.start > since]
        rows = rows[-OHLC_MAX:]
        d = Decimal(market.specs[product].quote_increment)
        body = [
            [c.start, plain(c.open), plain(c.high), plain(c.low), plain(c.close),
             plain(c.vwap.quantize(d)), plain(c.volume), c.count]
            for c in rows
        ]  # fmt: skip
        last = rows[-1].start if rows else (since or 0)
        return RestAnswer(200, {"error": [], "result": {pair_key(product): body, "last": last}})


def _trade_row(t: SimTrade) -> str:
    return (
        f'{{"symbol":"{ws_symbol(t.product_id)}","side":"{taker_side(t)}","price":{t.price},'
        f'"qty":{t.size},"ord_type":"{_ord_type(t)}","trade_id":{t.trade_id},'
        f'"timestamp":"{format_time(t.time)}"}}'
    )


def _levels(levels: list[LevelPair]) -> str:
    """Levels as Kraken v2 writes them: JSON numbers with the pair's fixed places."""
    return "[" + ",".join(f'{{"price":{text(p)},"qty":{text(q)}}}' for p, q in levels) + "]"


def _diff(was: dict[Decimal, Decimal], now: list[LevelPair]) -> list[LevelPair]:
    """Levels to send so a window holding `was` holds `now`: gone ones with qty 0 first."""
    current = dict(now)
    gone = [(p, Decimal(0)) for p in was if p not in current]
    return gone + [(p, q) for p, q in now if was.get(p) != q]


def _ord_type(t: SimTrade) -> str:
    """The taker's order type, fixed by the trade (about one in six takers is a limit)."""
    return "limit" if int(t.taker_order_id[:2], 16) < 43 else "market"


def _seconds(t: SimTrade) -> str:
    us = epoch_us(t.time)
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def _since_us(text: str | None) -> int | None:
    """``since`` as µs: a nanosecond cursor (what ``last`` gives), or seconds (with decimals)."""
    if text is None or text == "":
        return None
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise ValueError(f"since {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"since {text!r}")
    if value >= 10**12:  # nanoseconds
        return int(value) // 1000
    return int(value * 1_000_000)
