"""Coinbase Advanced Trade market data for the simulator: ``market_trades``, ``ticker`` and
``heartbeats`` over WebSocket, and the public REST ``market/products`` routes (recent trades
through ``ticker``, and ``candles``) (PROTOCOLS.md sections 3 and 7).

Every frame is ``{channel, timestamp, sequence_num, events}``; ``sequence_num`` is numbered
per connection from 0 across all channels, so frames are rendered with a ``-1`` placeholder
and stamped as they are queued for a connection. A frame the fault plan drops is lost in
transit: its number is skipped, so the client sees the break a real lost message leaves.
Hidden trades are lost before the feed (never sent, no number skipped): only REST knows them.
Trade ids are strings, ``side`` is the maker's in upper case. A subscribe gets a snapshot
per product (up to 100 trades, newest first; one ticker) and then a ``subscriptions`` frame,
the order a real session shows.
Live trades are batched as the real feed does ("collected over the last 250 ms and sent
together", newest first), after the fault plan: the plan still drops, repeats and corrupts
single trades (deterministic by seed, whatever the timing), then each connection's surviving
intact trade frames are merged into one ``update`` per interval. Malformed copies go out
alone at once, so one never spoils a batch. ``batch_interval=0`` sends one trade per frame.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from crypto_sentinel.books.orderbook import Side
from crypto_sentinel.simulator.depth import BookUpdate, text
from crypto_sentinel.simulator.faults import FrameShape, corruptions, trade_matcher
from crypto_sentinel.simulator.market import Market, SimTrade, format_time
from crypto_sentinel.simulator.venues.base import (
    EPOCH,
    Query,
    RestAnswer,
    Venue,
    candles,
    epoch_us,
    int_param,
    one,
    plain,
    quote_of,
    rfc3339_ns,
    trades_since,
    window,
)

__all__ = ["COINBASE_ADVANCED_SHAPE", "CoinbaseAdvanced"]

SNAPSHOT_TRADES = 100
REST_MAX_LIMIT = 1000
MAX_CANDLES = 350
_CHANNELS = {
    "market_trades": "matches", "ticker": "ticker", "heartbeats": "heartbeat", "level2": "book",
}  # fmt: skip
_L2_SIDES = {"bid": "bid", "ask": "offer"}
_NAMES = {v: k for k, v in _CHANNELS.items()}
_GRANULARITIES = {
    "ONE_MINUTE": 60, "FIVE_MINUTE": 300, "FIFTEEN_MINUTE": 900, "THIRTY_MINUTE": 1800,
    "ONE_HOUR": 3600, "TWO_HOUR": 7200, "SIX_HOUR": 21600, "ONE_DAY": 86400,
}  # fmt: skip
_SEQ = '"sequence_num":-1,'
_PRODUCTS = "/api/v3/brokerage/market/products"


# ------------------------------------------------------------------------------ fault shape

COINBASE_ADVANCED_SHAPE = FrameShape(
    trade_matcher(
        r'\{"channel":"market_trades","timestamp":"[^"]*","sequence_num":-?\d+,'
        r'"events":\[\{"type":"update","trades":\[\{"product_id":"([^"]+)"'
    ),
    '{"channel":"heartbeats"',
    corruptions(
        unknown=('"channel":"market_trades"', '"channel":"market_trades_v2"'),
        trade_id=(r'"trade_id":"(\d+)"', r'"trade_id":\1'),  # a number, not the string
        size=(r'"size":"[^"]*"', '"size":"0"'),
        price=(r'"price":"[^"]*"', '"price":"-1.5"'),
        time=(r'"time":"\d{4}', '"time":"2999'),
    ),
    book=trade_matcher(
        r'\{"channel":"l2_data","timestamp":"[^"]*","sequence_num":-?\d+,'
        r'"events":\[\{"type":"update","product_id":"([^"]+)"'
    ),
)


def _envelope(channel: str, events: str, now_ns: int | None = None) -> str:
    if now_ns is None:
        import time

        now_ns = time.time_ns()
    return f'{{"channel":"{channel}","timestamp":"{rfc3339_ns(now_ns)}",{_SEQ}"events":{events}}}'


def _trade_obj(t: SimTrade) -> str:
    return (
        f'{{"product_id":"{t.product_id}","trade_id":"{t.trade_id}","price":"{t.price}",'
        f'"size":"{t.size}","time":"{format_time(t.time)}","side":"{t.maker_side.upper()}"}}'
    )


_TRADES = '"trades":['
_RENDERED_KEPT = 10_000  # live trade frames remembered to tell them from malformed copies


class _State:
    __slots__ = ("batch", "next_seq")

    def __init__(self) -> None:
        self.next_seq = 0
        self.batch: list[str] = []  # intact live trade frames waiting for the next batch


class CoinbaseAdvanced(Venue):
    name = "coinbase-advanced"
    shape = COINBASE_ADVANCED_SHAPE
    stamps = True

    def __init__(self, batch_interval: float = 0.25) -> None:
        self.batch_interval = batch_interval
        self._rendered: dict[str, None] = {}  # insertion-ordered, bounded

    # ------------------------------------------------------------------ WebSocket

    def ws_refusal(self, path: str, query: Query, market: Market) -> tuple[int, object] | None:
        if path.rstrip("/") != "":
            return 404, {"error": "NOT_FOUND", "message": f"path {path} not served: use /"}
        return None

    def on_open(self, session: Any, path: str, query: Query, market: Market) -> list[str]:
        session.state = _State()
        return []

    def stamp(self, session: Any, frame: str) -> str | None:
        if self.batch_interval > 0 and frame in self._rendered:
            session.state.batch.append(frame)
            return None
        return self._number(session, frame)

    def lost(self, session: Any, count: int) -> None:
        session.state.next_seq += count

    @staticmethod
    def _number(session: Any, frame: str) -> str:
        state: _State = session.state
        n = state.next_seq
        state.next_seq += 1
        return frame.replace(_SEQ, f'"sequence_num":{n},', 1)

    def flush(self, session: Any) -> list[str]:
        state: _State | None = session.state
        if state is None or not state.batch:
            return []
        frames, state.batch = state.batch, []
        # Newest first, as real batches come; a duplicated trade stays where it was sent.
        trades = ",".join(f[f.index(_TRADES) + len(_TRADES) : -4] for f in reversed(frames))
        batch = _envelope("market_trades", f'[{{"type":"update","trades":[{trades}]}}]')
        return [self._number(session, batch)]

    def on_message(self, session: Any, raw: str | bytes, market: Market) -> list[str]:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return [_error("malformed JSON")]
        if not isinstance(msg, dict):
            return [_error("malformed JSON")]
        kind, channel, ids = msg.get("type"), msg.get("channel"), msg.get("product_ids", [])
        if kind not in ("subscribe", "unsubscribe"):
            return [_error(f"unknown message type {kind!r}")]
        if channel not in _CHANNELS:
            return [_error(f"Failed to subscribe: unknown channel {channel!r}")]
        if not isinstance(ids, list) or not all(isinstance(p, str) for p in ids):
            return [_error("Failed to subscribe: product_ids must be a list of strings")]
        for product in ids:
            if product not in market.specs:
                return [_error(f"Failed to subscribe: {product} is not a valid product")]
        if not ids and channel != "heartbeats":
            return [_error(f"Failed to subscribe: no product ids for channel {channel}")]
        internal = _CHANNELS[channel]
        # Heartbeats are per connection; the products only name the subscription.
        wanted = {internal: list(dict.fromkeys(ids)) or ["heartbeats"]}
        frames: list[str] = []
        if kind == "subscribe":
            session.subscribed = True
            added = session.subs.subscribe(wanted)
            for product in added.get(internal, ()):
                frames.extend(self._snapshot(market, channel, product))
        else:
            session.subs.unsubscribe(wanted)
        subs = {_NAMES[c]: ps for c, ps in session.subs.channels.items()}
        frames.append(_envelope("subscriptions", _dump([{"subscriptions": subs}])))
        return frames

    def _snapshot(self, market: Market, channel: str, product: str) -> list[str]:
        if channel == "heartbeats":
            return []
        if channel == "level2":
            truth = self.depth.truth(product)
            when = format_time(truth.time) if truth.time else _now_text()
            levels: list[tuple[Side, Decimal, Decimal]] = [("bid", p, q) for p, q in truth.bids]
            levels += [("ask", p, q) for p, q in truth.asks]
            return [_envelope("l2_data", _l2_event("snapshot", product, levels, when))]
        if channel == "market_trades":
            trades = market.trades_page(product, SNAPSHOT_TRADES)  # newest first
            rows = ",".join(_trade_obj(t) for t in trades)
            return [_envelope("market_trades", f'[{{"type":"snapshot","trades":[{rows}]}}]')]
        last = market.last_trade(product)
        if channel == "ticker" and last is not None:
            return [self._ticker(market, last, "snapshot")]
        return []

    def book_frames(self, session: Any, update: BookUpdate) -> list[str]:
        event = _l2_event("update", update.product_id, update.changes, format_time(update.time))
        return [_envelope("l2_data", event)]

    def heartbeat_frames(self, session: Any, now_ns: int, tick: int) -> list[str]:
        if "heartbeat" not in session.subs.channels:
            return []
        seconds, frac = divmod(now_ns, 1_000_000_000)
        when = datetime.fromtimestamp(seconds, EPOCH.tzinfo).strftime("%Y-%m-%d %H:%M:%S")
        current = f"{when}.{frac:09d} +0000 UTC m=+{tick}.{frac:09d}"
        body = _dump([{"current_time": current, "heartbeat_counter": tick}])
        return [_envelope("heartbeats", body, now_ns)]

    def trade_frame(self, market: Market, t: SimTrade) -> str:
        frame = _envelope("market_trades", f'[{{"type":"update","trades":[{_trade_obj(t)}]}}]')
        if self.batch_interval > 0:
            rendered = self._rendered
            rendered[frame] = None
            if len(rendered) > _RENDERED_KEPT:
                del rendered[next(iter(rendered))]
        return frame

    def ticker_frame(self, market: Market, t: SimTrade) -> str:
        return self._ticker(market, t, "update")

    def _ticker(self, market: Market, t: SimTrade, kind: str) -> str:
        open_, high, low, volume = (Decimal(x) for x in market.day_stats(t.product_id))
        last = Decimal(t.price)
        tick = Decimal(market.specs[t.product_id].quote_increment)
        bid, bid_qty, ask, ask_qty = quote_of(market, t)
        change_pct = ((last - open_) * 100 / open_).quantize(Decimal("1e-14"))
        ticker = {
            "type": "ticker",
            "product_id": t.product_id,
            "price": t.price,
            "volume_24_h": plain(volume),
            "low_24_h": plain(low),
            "high_24_h": plain(high),
            "low_52_w": plain((low * Decimal("0.75")).quantize(tick)),
            "high_52_w": plain((high * Decimal("1.6")).quantize(tick)),
            "price_percent_chg_24_h": plain(change_pct),
            "best_bid": bid,
            "best_ask": ask,
            "best_bid_quantity": bid_qty,
            "best_ask_quantity": ask_qty,
        }
        return _envelope("ticker", _dump([{"type": kind, "tickers": [ticker]}]))

    # ------------------------------------------------------------------ REST

    def is_trades_path(self, path: str) -> bool:
        parts = _parts(path)
        return parts is not None and len(parts) == 2 and parts[1] == "ticker"

    def throttled(self) -> RestAnswer:
        return RestAnswer(429, {"error": "RATE_LIMIT_EXCEEDED", "message": "Too many requests"})

    def rest(self, market: Market, path: str, query: Query) -> RestAnswer:
        parts = _parts(path)
        try:
            if parts == []:
                return self._products(market)
            if parts and parts[0] in market.specs:
                product = parts[0]
                if len(parts) == 1:
                    return RestAnswer(200, self._product(market, product))
                if parts[1:] == ["ticker"]:
                    return self._recent(market, product, query)
                if parts[1:] == ["candles"]:
                    return self._candles(market, product, query)
            elif parts:
                return RestAnswer(404, {"error": "NOT_FOUND", "message": "ProductID is invalid"})
        except ValueError as exc:
            return RestAnswer(400, {"error": "INVALID_ARGUMENT", "message": str(exc)})
        return RestAnswer(404, {"error": "NOT_FOUND", "message": "Not Found"})

    @staticmethod
    def _product(market: Market, product: str) -> dict[str, object]:
        spec = market.specs[product]
        last = market.last_trade(product)
        return {
            "product_id": product,
            "price": last.price if last else "",
            "base_increment": spec.base_increment,
            "quote_increment": spec.quote_increment,
            "base_currency_id": spec.base_currency,
            "quote_currency_id": spec.quote_currency,
            "status": "online",
            "trading_disabled": False,
            "product_type": "SPOT",
        }

    def _products(self, market: Market) -> RestAnswer:
        products = [self._product(market, p) for p in market.products]
        return RestAnswer(200, {"products": products, "num_products": len(products)})

    def _recent(self, market: Market, product: str, query: Query) -> RestAnswer:
        """Recent trades, newest first; ``start``/``end`` (unix seconds) narrow the window."""
        limit = int_param(query, "limit")
        if limit is None or not 1 <= limit <= REST_MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {REST_MAX_LIMIT}")
        start, end = int_param(query, "start"), int_param(query, "end")
        if start is not None:
            trades = trades_since(market, product, start * 1_000_000 - 1, REST_MAX_LIMIT)
            if end is not None:
                trades = [t for t in trades if epoch_us(t.time) < end * 1_000_000]
            trades = trades[::-1][:limit]  # newest first (of the window's oldest 1000)
        else:
            trades = market.trades_page(product, REST_MAX_LIMIT if end is not None else limit)
            if end is not None:
                trades = [t for t in trades if epoch_us(t.time) < end * 1_000_000][:limit]
        bid = ask = ""
        last = market.last_trade(product)
        if last is not None:
            bid, _, ask, _ = quote_of(market, last)
        return RestAnswer(
            200,
            {
                "trades": [orjson.Fragment(_rest_trade(t).encode()) for t in trades],
                "best_bid": bid,
                "best_ask": ask,
            },
        )

    def _candles(self, market: Market, product: str, query: Query) -> RestAnswer:
        seconds = _GRANULARITIES.get(one(query, "granularity") or "")
        if seconds is None:
            raise ValueError("granularity must be one of " + ", ".join(_GRANULARITIES))
        start, end = int_param(query, "start"), int_param(query, "end")
        rows = window(candles(market.history(product), seconds), start, end)
        if len(rows) > MAX_CANDLES:
            raise ValueError(f"number of candles requested should be less than {MAX_CANDLES}")
        body = [
            {"start": str(c.start), "low": plain(c.low), "high": plain(c.high),
             "open": plain(c.open), "close": plain(c.close), "volume": plain(c.volume)}
            for c in reversed(rows)
        ]  # fmt: skip
        return RestAnswer(200, {"candles": body})


def _parts(path: str) -> list[str] | None:
    """Path segments after ``/api/v3/brokerage/market/products``, or None for other paths."""
    path = path.rstrip("/")
    if path != _PRODUCTS and not path.startswith(_PRODUCTS + "/"):
        return None
    return [p for p in path[len(_PRODUCTS) :].split("/") if p]


def _rest_trade(t: SimTrade) -> str:
    obj = _trade_obj(t)[:-1]
    return f'{obj},"bid":"","ask":"","exchange":"coinbase"}}'


def _l2_event(
    kind: str, product: str, levels: list[tuple[Side, Decimal, Decimal]], when: str
) -> str:
    updates = ",".join(
        f'{{"side":"{_L2_SIDES[side]}","event_time":"{when}","price_level":"{text(p)}",'
        f'"new_quantity":"{text(q)}"}}'
        for side, p, q in levels
    )
    return f'[{{"type":"{kind}","product_id":"{product}","updates":[{updates}]}}]'


def _now_text() -> str:
    import time

    return rfc3339_ns(time.time_ns())


def _error(message: str) -> str:
    return _dump({"type": "error", "message": message})


def _dump(body: object) -> str:
    return orjson.dumps(body).decode()
