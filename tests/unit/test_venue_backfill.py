"""REST backfill of the venues that cannot ask by trade id: Kraken (Trades paged by a time
cursor) and Coinbase Advanced (only the recent-trades window), with bad pages; and Binance
symbols from exchangeInfo. The REST side is a fake exchange answering in-process; tracker,
connector, backfill and codecs are the real ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from crypto_sentinel.config import ConfigError, load_settings
from crypto_sentinel.model import GapRecord, RawFrame, Trade
from crypto_sentinel.sources import backfill as backfill_module
from crypto_sentinel.sources.backfill import Backfiller
from crypto_sentinel.sources.base import GapTracker, SourceStatus
from crypto_sentinel.sources.binance.feed import BinanceConnector, BinanceSymbols
from crypto_sentinel.sources.codec import FrameError
from crypto_sentinel.sources.coinbase_advanced.feed import CoinbaseAdvancedConnector
from crypto_sentinel.sources.feed import FeedSource
from crypto_sentinel.sources.kraken import rest as kraken_rest
from crypto_sentinel.sources.kraken.feed import KrakenConnector
from crypto_sentinel.sources.kraken.rest import PageError, read_page
from crypto_sentinel.sources.ratelimit import TokenBucket
from crypto_sentinel.sources.venues import connector_for, decode_frame

T0_NS = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z
SECOND = 10**9


def iso(ns: int) -> str:
    seconds, frac = divmod(ns, SECOND)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac // 1000:06d}Z"


def kraken_ws(trade_id: int, ns: int) -> str:
    row = (
        f'{{"symbol":"BTC/USD","side":"buy","price":30000.1,"qty":0.25,"ord_type":"market",'
        f'"trade_id":{trade_id},"timestamp":"{iso(ns)}"}}'
    )
    return f'{{"channel":"trade","type":"update","data":[{row}]}}'


class FakeKraken:
    """Trades ids first..last of BTC/USD (`XXBTZUSD`), one a second from T0; `since` is an
    exclusive ns cursor and `last` the time of the last row, as Kraken pages. `rows` caps a
    page (Kraken may answer fewer than asked); `answer` overrides a Trades response."""

    def __init__(
        self, first: int = 1000, last: int = 1300, rows: int = 1000, t0: int = T0_NS
    ) -> None:
        self.first, self.last, self.rows, self.t0 = first, last, rows, t0
        self.requests: list[dict[str, str]] = []
        self.answer: Callable[[int], httpx.Response | None] = lambda n: None

    def ns(self, trade_id: int) -> int:
        return self.t0 + (trade_id - self.first) * SECOND + 123_456_000

    def seconds(self, trade_id: int) -> str:
        """The row's time as Kraken writes it: seconds, a JSON number with decimals."""
        us = self.ns(trade_id) // 1000
        return f"{us // 10**6}.{us % 10**6:06d}"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/0/public/AssetPairs":
            pairs = {"XXBTZUSD": {"altname": "XBTUSD", "wsname": "XBT/USD"}}
            return httpx.Response(200, json={"error": [], "result": pairs})
        params = dict(request.url.params)
        self.requests.append(params)
        special = self.answer(len(self.requests))
        if special is not None:
            return special
        if params.get("pair") != "XXBTZUSD":
            return httpx.Response(200, json={"error": ["EQuery:Unknown asset pair"]})
        since, count = int(params["since"]), min(int(params["count"]), self.rows)
        ids = [i for i in range(self.first, self.last + 1) if self.ns(i) > since][:count]
        rows = ",".join(f'["30000.{i % 10}","0.5",{self.seconds(i)},"b","m","",{i}]' for i in ids)
        last = self.ns(ids[-1]) if ids else since
        return httpx.Response(
            200, text=f'{{"error":[],"result":{{"XXBTZUSD":[{rows}],"last":"{last}"}}}}'
        )


class Run:
    """A venue's tracker, connector and backfill against a fake REST exchange."""

    def __init__(self, venue: str, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        transport = httpx.MockTransport(handler)
        self.status = SourceStatus(venue, venue, "ws://x")
        self.tracker = GapTracker(self.status)
        connector: KrakenConnector | CoinbaseAdvancedConnector
        if venue == "kraken":
            connector = KrakenConnector(rest_rate=1000)
            connector.trades.transport = transport
        else:
            connector = CoinbaseAdvancedConnector()
        self.connector = connector
        rest = connector.rest
        assert rest is not None
        self.filler = Backfiller(
            "http://x", self.status, self.tracker, bucket=TokenBucket(1000, 1000), rest=rest,
            grace=0.0, linger=0.0, quiet=0.0, transport=transport,
        )  # fmt: skip
        self.published: list[RawFrame] = []

    async def publish(self, frame: RawFrame) -> None:
        self.published.append(frame)

    def observe(self, *texts: str) -> None:
        for text in texts:
            self.tracker.observe(text)
            self.connector.check(text)

    async def finish(self, limit: float = 10.0) -> list[GapRecord]:
        task = asyncio.create_task(self.filler.run(self.publish))
        deadline = time.monotonic() + limit
        try:
            while not self.filler.empty():
                assert time.monotonic() < deadline, "backfill did not finish in time"
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return [r for r in map(self.decoded, self.gap_frames()) if isinstance(r, GapRecord)]

    def gap_frames(self) -> list[RawFrame]:
        return [f for f in self.published if f.text.startswith('{"type":"gap"')]

    def pages(self) -> list[RawFrame]:
        return [f for f in self.published if f.text.startswith('{"type":"rest_trades"')]

    def stored_ids(self) -> list[int]:
        """What the engine would store from the published pages (the codec decides)."""
        ids = set()
        for frame in self.pages():
            with contextlib.suppress(FrameError):
                decoded = self.decoded(frame)
                assert isinstance(decoded, list)
                ids |= {t.trade_id for t in decoded if isinstance(t, Trade)}
        return sorted(ids)

    @staticmethod
    def decoded(frame: RawFrame) -> Any:
        return decode_frame(frame)


# ------------------------------------------------------------------------------- Kraken


def test_kraken_trades_page_gives_its_ids_and_cursor_or_says_why_not() -> None:
    body = '{"error":[],"result":{"XXBTZUSD":[["1.5","2",1688669597.8277369,"b","m","",7]],"last":"1688671969993150842"}}'  # noqa: E501
    assert read_page(body) == ([7], 1688671969993150842)
    bad = {
        "not JSON": ("invalid Trades body", '{"error":[],"result":{"XXBTZUSD":[['),
        "error": ("exchange error: EQuery:Unknown asset pair",
                  '{"error":["EQuery:Unknown asset pair"]}'),
        "no cursor": ("without result.last", '{"error":[],"result":{"XXBTZUSD":[]}}'),
        "cursor": ("not a nanosecond cursor", '{"error":[],"result":{"X":[],"last":"soon"}}'),
        "id": ("bad Trades rows",
               '{"error":[],"result":{"X":[["1","1",1,"b","m","","7"]],"last":1}}'),
    }  # fmt: skip
    for reason, text in bad.values():
        with pytest.raises(PageError, match=reason):
            read_page(text)


async def test_kraken_gap_is_paged_by_cursor_from_the_trade_before_it() -> None:
    fake = FakeKraken(rows=40)  # Kraken answers fewer rows than asked: follow `last`
    run = Run("kraken", fake)
    await run.connector.prepare("http://x", ["BTC-USD"])  # AssetPairs: XBT/USD is XXBTZUSD
    run.observe(*(kraken_ws(i, fake.ns(i)) for i in (1000, 1001, 1002, 1150)))
    (record,) = await run.finish()
    assert (record.kind, record.first_missing_id, record.last_missing_id) == (
        "trade_id",
        1003,
        1149,
    )
    assert (record.outcome, record.missing, record.backfilled) == ("filled", 147, 147)
    assert set(range(1003, 1150)) <= set(run.stored_ids())
    sinces = [int(r["since"]) for r in fake.requests]
    assert sinces[0] == fake.ns(1002) - 1  # just before the last trade seen below the gap
    # Each next page starts at the previous page's `last`: the time of its last row.
    assert sinces[1:] == [fake.ns(1001 + 40 * k) for k in range(1, len(sinces))]
    assert len(sinces) == 4 and {r["pair"] for r in fake.requests} == {"XXBTZUSD"}
    assert int(fake.requests[0]["count"]) == 1149 - 1003 + 2


async def test_kraken_start_up_gap_searches_back_for_its_first_page() -> None:
    """The trade before a start-up gap is in the lake, not in memory: step back from the
    first trade seen after it (10 s, then 4x further each time) until a page starts at or
    before the gap's first id."""
    fake = FakeKraken()
    run = Run("kraken", fake)
    await run.connector.prepare("http://x", ["BTC-USD"])
    run.tracker.seed("BTC-USD", [(1000, 1050)])
    run.observe(*(kraken_ws(i, fake.ns(i)) for i in (1120, 1121)))
    (record,) = await run.finish()
    assert (record.kind, record.missing, record.outcome) == ("startup", 69, "filled")
    upper = fake.ns(1120)
    sinces = [int(r["since"]) for r in fake.requests]
    # Each step goes 4x further back than the last from the latest page found too late.
    assert sinces == [upper - 10 * SECOND, upper - 50 * SECOND, upper - 210 * SECOND]


async def test_kraken_hole_deep_in_the_lake_is_found_by_halving_the_time() -> None:
    """A hole between stored ranges, reported at start-up before any trade streamed: no
    time is known on either side, and the market stopped trading 100 s ago. Stepping back
    from now overshoots the hole by hours; halving the time finds its first page."""
    t0 = (time.time_ns() // SECOND - 19_100) * SECOND  # ids 1000..20000, one a second
    fake = FakeKraken(last=20_000, t0=t0)
    run = Run("kraken", fake)
    await run.connector.prepare("http://x", ["BTC-USD"])
    run.tracker.seed("BTC-USD", [(1000, 5000), (5100, 20_000)])
    (record,) = await run.finish()
    assert (record.kind, record.first_missing_id, record.last_missing_id) == ("startup", 5001, 5099)
    assert (record.outcome, record.backfilled) == ("filled", 99)
    assert len(fake.requests) <= 12  # 7 steps back, a few halvings, the pages themselves
    assert set(range(5001, 5100)) <= set(run.stored_ids())


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("malformed JSON", "bad rest_trades message"),
        ("non-decimal price", "bad rest_trades message"),
        ("exchange error", "exchange error: EGeneral:Invalid arguments"),
        ("HTTP 400", None),
        ("HTTP 503", None),
    ],
)
async def test_kraken_bad_pages_leave_the_gap_unfilled_with_a_reason(
    name: str, reason: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backfill_module, "RETRY_DELAYS", (0.0,))
    bodies = {
        "malformed JSON": '{"error":[],"result":{"XXBTZUSD":[["1","1",1700000000.1,"b"',
        "non-decimal price": '{"error":[],"result":{"XXBTZUSD":[["abc","1",1700000000.1,"b","m","",1003]],"last":"1700000000100000000"}}',  # noqa: E501
        "exchange error": '{"error":["EGeneral:Invalid arguments"]}',
    }
    fake = FakeKraken()
    if name.startswith("HTTP"):
        status = int(name.split()[1])
        fake.answer = lambda n: httpx.Response(status, text="no")
    else:
        fake.answer = lambda n: httpx.Response(200, text=bodies[name])
    run = Run("kraken", fake)
    await run.connector.prepare("http://x", ["BTC-USD"])
    run.observe(*(kraken_ws(i, fake.ns(i)) for i in (1000, 1001, 1010)))
    (record,) = await run.finish()
    assert (record.outcome, record.missing, record.backfilled) == ("unfilled", 8, 0)
    assert run.status.unfilled_trades == 8
    pages = run.pages()
    if reason is None:  # no usable answer: nothing published, the record says unfilled
        assert pages == [] and len(fake.requests) == (2 if name == "HTTP 503" else 1)
    else:  # bronze keeps the page and the engine quarantines it with the reason
        (page,) = pages
        with pytest.raises(FrameError, match=reason):
            decode_frame(page)


async def test_kraken_in_body_rate_limit_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kraken_rest, "THROTTLE_DELAYS", (0.0, 0.0))
    fake = FakeKraken()
    limited = httpx.Response(200, json={"error": ["EAPI:Rate limit exceeded"]})
    fake.answer = lambda n: limited if n == 1 else None
    run = Run("kraken", fake)
    await run.connector.prepare("http://x", ["BTC-USD"])
    run.observe(*(kraken_ws(i, fake.ns(i)) for i in (1000, 1005)))
    (record,) = await run.finish()
    assert (record.outcome, record.backfilled) == ("filled", 4)
    assert len(fake.requests) == 2 and len(run.pages()) == 1


def test_kraken_backfill_keeps_to_about_one_request_a_second_by_default() -> None:
    rest = KrakenConnector().rest
    assert rest is not None and (rest.rate, rest.burst) == (1.0, 1)
    assert rest.pages is not None


async def test_kraken_asset_pairs_unreachable_falls_back_to_the_xbt_rule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    connector = KrakenConnector()
    connector.trades.transport = httpx.MockTransport(down)
    with caplog.at_level(logging.WARNING):
        await connector.prepare("http://x", ["BTC-USD"])
        await connector.prepare("http://x", ["BTC-USD"])  # one attempt, one line
    assert [r.message for r in caplog.records if "AssetPairs" in r.message] == [
        "kraken AssetPairs unavailable (refused); REST pairs by the XBT rule"
    ]
    assert connector.trades.pair("BTC-USD") == "XBTUSD"
    assert connector.trades.pair("DOGE-EUR") == "XDGEUR"


# ---------------------------------------------------------------------- Coinbase Advanced


class FakeAdvanced:
    """Recent trades of BTC-USD, ids 1..newest, newest first, at most `limit`."""

    def __init__(self, newest: int, price: str = "100.5") -> None:
        self.newest, self.price = newest, price
        self.requests: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v3/brokerage/market/products/BTC-USD/ticker"
        params = dict(request.url.params)
        self.requests.append(params)
        ids = range(self.newest, max(0, self.newest - int(params["limit"])), -1)
        trades = [
            {"trade_id": str(i), "product_id": "BTC-USD", "price": self.price, "size": "0.1",
             "time": "2023-11-14T22:13:20.000001Z", "side": "BUY", "bid": "", "ask": "",
             "exchange": "coinbase"}
            for i in ids
        ]  # fmt: skip
        return httpx.Response(200, json={"trades": trades, "best_bid": "1", "best_ask": "2"})


def advanced_ws(*ids: int) -> str:
    trades = [
        {"trade_id": str(i), "product_id": "BTC-USD", "price": "100.5", "size": "0.1",
         "time": "2023-11-14T22:13:20.000001Z", "side": "SELL"}
        for i in sorted(ids, reverse=True)
    ]  # fmt: skip
    return orjson.dumps(
        {"channel": "market_trades", "timestamp": "2023-11-14T22:13:20.5Z", "sequence_num": 1,
         "events": [{"type": "update", "trades": trades}]}
    ).decode()  # fmt: skip


async def test_advanced_gap_among_the_recent_trades_is_filled() -> None:
    fake = FakeAdvanced(newest=400)
    run = Run("coinbase-advanced", fake)
    run.observe(advanced_ws(10, 11), advanced_ws(300))
    (record,) = await run.finish()
    assert (record.outcome, record.missing, record.backfilled) == ("filled", 288, 288)
    assert fake.requests == [{"limit": "1000"}]
    assert set(range(12, 300)) <= set(run.stored_ids())


async def test_advanced_gap_older_than_the_recent_window_is_recorded_partial() -> None:
    fake = FakeAdvanced(newest=3000)  # the window holds 2001..3000 only
    run = Run("coinbase-advanced", fake)
    run.observe(advanced_ws(9, 10), advanced_ws(2990))
    records = await run.finish()
    assert sum(r.missing for r in records) == 2979
    assert sum(r.backfilled for r in records) == 989  # 2001..2989
    assert {r.outcome for r in records} <= {"partial", "unfilled"}
    assert run.status.unfilled_trades == 2979 - 989


async def test_advanced_non_decimal_page_is_quarantined_and_the_gap_unfilled() -> None:
    fake = FakeAdvanced(newest=50, price="1e5")
    run = Run("coinbase-advanced", fake)
    run.observe(advanced_ws(10), advanced_ws(20))
    (record,) = await run.finish()
    assert (record.outcome, record.backfilled) == ("unfilled", 0)
    (page,) = run.pages()
    with pytest.raises(FrameError, match="of the REST page: price is not a plain"):
        decode_frame(page)


# -------------------------------------------------------------------------------- Binance


def exchange_info(*symbols: tuple[str, str, str]) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v3/exchangeInfo"
        rows = [{"symbol": s, "baseAsset": b, "quoteAsset": q, "status": "TRADING"}
                for s, b, q in symbols]  # fmt: skip
        return httpx.Response(200, json={"timezone": "UTC", "symbols": rows})

    return answer


async def test_binance_symbols_come_from_exchange_info_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []
    listed = exchange_info(("BTCUSDT", "BTC", "USDT"), ("NEWXYZ", "NEW", "XYZ"))

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return listed(request)

    connector = BinanceConnector()
    connector.symbols.transport = httpx.MockTransport(answer)
    products = ["BTC-USDT", "NEW-XYZ", "GONE-USDT"]
    with caplog.at_level(logging.WARNING):
        await connector.prepare("http://x", products)
        await connector.prepare("http://x", products)
    assert len(calls) == 1  # cached: read once
    assert connector.url("wss://b", products[:2]) == (
        "wss://b/stream?streams=btcusdt@aggTrade/btcusdt@ticker/newxyz@aggTrade/newxyz@ticker"
    )
    errors = [r.message for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "binance symbol NEWXYZ is NEW-XYZ per exchangeInfo, but stored frames read as nothing"
        " (symbol 'NEWXYZ' does not end in a known quote asset)",
        "binance lists no symbol for GONE-USDT (exchangeInfo): no trades",
    ]


async def test_binance_unreachable_exchange_info_falls_back_to_the_quote_rule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    symbols = BinanceSymbols(transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    with caplog.at_level(logging.WARNING):
        await symbols.load("http://x", ["ETH-BTC"])
    (line,) = [r.message for r in caplog.records]
    assert line.startswith("binance exchangeInfo unavailable (") and "quote rule" in line
    assert symbols.symbol("ETH-BTC") == "ETHBTC"


def test_kraken_backfill_rate_is_a_setting() -> None:
    settings = load_settings(kraken_rest_rate=2.5)
    assert settings.rest_rate_for("kraken") == 2.5
    assert settings.rest_rate_for("binance") is None  # the connector's own
    source = FeedSource(
        connector_for("kraken"), ["BTC-USD"], "ws://x", "kraken", "kraken",
        rest_url="http://x", rest_rate=settings.rest_rate_for("kraken"),
    )  # fmt: skip
    assert source.backfill is not None and source.backfill.bucket.rate == 2.5
    with pytest.raises(ConfigError, match="kraken_rest_rate"):
        load_settings(kraken_rest_rate=0)
