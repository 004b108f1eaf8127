"""Each venue connector's book part without a network: what it subscribes with books on and
off, Binance's U/u watch (first event, repeats, gaps, a new connection), and the messages a
resync sends."""

from __future__ import annotations

import base64
import json

from crypto_sentinel.sources.binance.feed import BinanceConnector
from crypto_sentinel.sources.bookfeed import BookOptions, Credentials
from crypto_sentinel.sources.coinbase.feed import CoinbaseConnector
from crypto_sentinel.sources.coinbase_advanced.feed import CoinbaseAdvancedConnector
from crypto_sentinel.sources.kraken.feed import KrakenConnector

KEY = Credentials("k", base64.b64encode(b"s").decode(), "p")


class Resyncs:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, product: str, reason: str) -> None:
        self.seen.append((product, reason))


def options(
    depth: int = 1000, credentials: Credentials | None = None
) -> tuple[BookOptions, Resyncs]:
    resyncs = Resyncs()
    return BookOptions(depth, "http://127.0.0.1:1", resyncs, credentials), resyncs


def depth_event(symbol: str, first: int, last: int) -> str:
    return (
        f'{{"stream":"{symbol.lower()}@depth@100ms","data":{{"e":"depthUpdate","E":1,'
        f'"s":"{symbol}","U":{first},"u":{last},"b":[],"a":[]}}}}'
    )


def test_binance_streams_and_the_u_watch() -> None:
    off = BinanceConnector()
    assert "depth" not in off.url("ws://x", ["BTC-USDT"])
    assert off.check(depth_event("BTCUSDT", 1, 2)) == [] and off.pending == {}
    connector = BinanceConnector()
    opts, resyncs = options()
    connector.use_books(opts)
    assert connector.url("ws://x", ["BTC-USDT"]).endswith(
        "streams=btcusdt@aggTrade/btcusdt@ticker/btcusdt@depth@100ms"
    )
    connector.check(depth_event("BTCUSDT", 10, 12))
    assert list(connector.pending) == ["BTCUSDT"] and resyncs.seen == []  # first event
    connector.pending.clear()
    connector.check(depth_event("BTCUSDT", 13, 15))
    connector.check(depth_event("BTCUSDT", 13, 15))  # a repeat: not a break
    connector.check(depth_event("BTCUSDT", 11, 12))  # an old one: not a break
    assert connector.pending == {} and resyncs.seen == []
    connector.check(depth_event("BTCUSDT", 18, 20))
    assert list(connector.pending) == ["BTCUSDT"]
    assert resyncs.seen == [("BTC-USDT", "gap")]
    connector.check(depth_event("BTCUSDT", 21, 22))  # contiguous again
    assert resyncs.seen == [("BTC-USDT", "gap")]
    connector.new_connection()
    assert connector.pending == {} and connector.last_u == {}
    assert connector.resync_book("ETH-USDT") == [] and list(connector.pending) == ["ETHUSDT"]


def test_kraken_book_subscription_and_resync() -> None:
    off = KrakenConnector()
    assert all('"book"' not in m for m in off.subscribe(["BTC-USD"]))
    assert off.resync_book("BTC-USD") == []
    connector = KrakenConnector()
    connector.use_books(options(depth=300)[0])
    book = json.loads(connector.subscribe(["BTC-USD", "ETH-USD"])[-1])
    assert book["params"] == {"channel": "book", "symbol": ["BTC/USD", "ETH/USD"], "depth": 100}
    unsub, sub = (json.loads(m) for m in connector.resync_book("ETH-USD"))
    assert (unsub["method"], sub["method"]) == ("unsubscribe", "subscribe")
    assert unsub["params"]["symbol"] == sub["params"]["symbol"] == ["ETH/USD"]


def test_advanced_level2_and_a_sequence_break() -> None:
    connector = CoinbaseAdvancedConnector()
    opts, resyncs = options()
    connector.use_books(opts)
    channels = [json.loads(m)["channel"] for m in connector.subscribe(["BTC-USD", "ETH-USD"])]
    assert channels == ["market_trades", "ticker", "heartbeats", "level2"]
    assert connector.check('{"channel":"l2_data","sequence_num":0}') == []
    answers = [json.loads(m) for m in connector.check('{"channel":"l2_data","sequence_num":3}')]
    assert [(a["type"], a["channel"]) for a in answers] == [
        ("unsubscribe", "market_trades"), ("subscribe", "market_trades"),
        ("unsubscribe", "level2"), ("subscribe", "level2"),
    ]  # fmt: skip
    assert resyncs.seen == [("BTC-USD", "sequence"), ("ETH-USD", "sequence")]
    resync = [json.loads(m) for m in connector.resync_book("ETH-USD")]
    assert [(m["type"], m["product_ids"]) for m in resync] == [
        ("unsubscribe", ["ETH-USD"]), ("subscribe", ["ETH-USD"]),
    ]  # fmt: skip


def test_exchange_level2_only_with_credentials() -> None:
    without = CoinbaseConnector()
    without.use_books(options()[0])
    assert without.books is None and len(without.subscribe(["BTC-USD"])) == 1
    assert without.resync_book("BTC-USD") == []
    signed = CoinbaseConnector()
    signed.use_books(options(credentials=KEY)[0])
    trades, level2 = (json.loads(m) for m in signed.subscribe(["BTC-USD"]))
    assert [c["name"] for c in trades["channels"]] == ["matches", "ticker", "heartbeat"]
    assert level2["channels"] == [{"name": "level2", "product_ids": ["BTC-USD"]}]
    assert {"signature", "key", "passphrase", "timestamp"} <= set(level2)
    unsub, sub = (json.loads(m) for m in signed.resync_book("BTC-USD"))
    assert (unsub["type"], sub["type"]) == ("unsubscribe", "subscribe")
    assert sub["key"] == "k" and sub["passphrase"] == "p"
