"""The simulator speaks Binance, Kraken v2 and Coinbase Advanced Trade over real sockets: a stock
``websockets`` client subscribes as the live sources do, every frame decodes through the
project's own codec for that venue, the trades are the market's, the REST trades endpoint
serves an id range (hidden trades included), and the seeded fault plan punches the same holes
and duplicates into every venue's stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from crypto_sentinel.model import RawFrame, Ticker, Trade
from crypto_sentinel.simulator import SimTrade, SimulatorServer
from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec
from crypto_sentinel.sources.codec import FrameError
from crypto_sentinel.sources.venues import codec_for


@dataclass(frozen=True)
class Case:
    products: list[str]
    path: str  # appended to ws_url
    messages: list[dict]  # sent after connecting


BOTH = ["BTC-USD", "ETH-USD"]
CASES = {
    "binance": Case(
        ["BTC-USDT", "ETH-USDT"],
        "/stream?streams=btcusdt@ticker/ethusdt@ticker",
        # The trades through a live SUBSCRIBE; aggTrade streams in the URL are tested below.
        [{"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "ethusdt@aggTrade"], "id": 1}],
    ),
    "kraken": Case(
        ["BTC-USD", "ETH-USD"],
        "/v2",
        [
            {
                "method": "subscribe",
                "params": {"channel": "trade", "symbol": ["BTC/USD", "ETH/USD"], "snapshot": True},
                "req_id": 1,
            },
            {
                "method": "subscribe",
                "params": {"channel": "ticker", "symbol": ["BTC/USD", "ETH/USD"]},
                "req_id": 2,
            },
            {"method": "ping", "req_id": 3},
        ],
    ),
    "coinbase-advanced": Case(
        ["BTC-USD", "ETH-USD"],
        "",
        [
            {
                "type": "subscribe",
                "product_ids": ["BTC-USD", "ETH-USD"],
                "channel": "market_trades",
            },
            {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "ticker"},
            {"type": "subscribe", "product_ids": [], "channel": "heartbeats"},
        ],
    ),
}
VENUES = list(CASES)


def decode(venue: str, i: int, text: str) -> list[object]:
    """One frame through the venue's codec: its records (FrameError propagates)."""
    codec = codec_for(venue)
    assert codec is not None
    out = codec.decode(RawFrame(venue, "c", i, time.time_ns(), text))
    if out is None:
        return []
    return list(out) if isinstance(out, list) else [out]


def taker(t: SimTrade) -> str:
    return "buy" if t.maker_side == "sell" else "sell"


def sim_time(venue: str, t: SimTrade) -> object:
    if venue == "binance":  # Binance trade times are milliseconds
        return t.time - timedelta(microseconds=t.time.microsecond % 1000)
    return t.time


def assert_same_trade(venue: str, got: Trade, want: SimTrade) -> None:
    assert (got.product_id, got.trade_id) == (want.product_id, want.trade_id)
    assert got.price == Decimal(want.price)
    assert got.size == Decimal(want.size)
    assert got.side == taker(want)
    assert got.time == sim_time(venue, want)


def is_live_trade(venue: str, text: str) -> bool:
    """A live (not snapshot) trade frame: the ones the fault plan acts on."""
    if venue == "binance":
        return "@aggTrade" in text[:40]
    if venue == "kraken":
        return text.startswith('{"channel":"trade","type":"update"')
    return text.startswith('{"channel":"market_trades"') and '"type":"update"' in text


async def connect(server: SimulatorServer, venue: str) -> ClientConnection:
    ws = await websockets.connect(server.ws_url + CASES[venue].path)
    for msg in CASES[venue].messages:
        await ws.send(json.dumps(msg))
    return ws


class Collector:
    """Frames a client received, each decoded once as it arrives."""

    def __init__(self, venue: str) -> None:
        self.venue = venue
        self.frames: list[str] = []
        self.trades: list[Trade] = []
        self.tickers: list[Ticker] = []
        self.rejected: list[tuple[str, str]] = []  # (reason, frame)
        self.live: list[tuple[str, int]] = []  # (product, trade id) of live trade frames

    def add(self, text: str) -> None:
        i = len(self.frames)
        self.frames.append(text)
        try:
            records = decode(self.venue, i, text)
        except FrameError as exc:
            self.rejected.append((str(exc), text))
            return
        trades = [r for r in records if isinstance(r, Trade)]
        self.trades.extend(trades)
        self.tickers.extend(r for r in records if isinstance(r, Ticker))
        if is_live_trade(self.venue, text):
            self.live.extend((t.product_id, t.trade_id) for t in trades)

    async def read_until(
        self, ws: ClientConnection, done: Callable[[], bool], timeout: float = 20.0
    ) -> None:
        """Receive until ``done()``; fail if that takes ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, f"condition not reached; {len(self.frames)} frames received"
            try:
                self.add(await asyncio.wait_for(ws.recv(), min(left, 0.5)))
            except TimeoutError:
                continue


# -------------------------------------------------------------------------- the stream


@pytest.mark.parametrize("venue", VENUES)
async def test_every_frame_decodes_and_the_trades_are_the_markets(venue: str) -> None:
    case = CASES[venue]
    got = Collector(venue)
    async with SimulatorServer(
        case.products, rate=400, seed=7, start_trade_id=5000, max_trades=300,
        wait_for_subscriber=True, heartbeat_interval=0.2, venue=venue,
    ) as server:  # fmt: skip
        ws = await connect(server, venue)

        def complete() -> bool:
            heartbeat = venue == "binance" or any("heartbeat" in f for f in got.frames)
            return server.done and heartbeat and len(got.trades) >= 300

        await got.read_until(ws, complete)
        await ws.close()
        emitted = {(t.product_id, t.trade_id): t for t in server.market.emitted()}

    assert got.rejected == []
    assert len(emitted) == 300
    by_product: dict[str, list[int]] = {}
    for t in got.trades:
        by_product.setdefault(t.product_id, []).append(t.trade_id)
        assert_same_trade(venue, t, emitted[(t.product_id, t.trade_id)])
    for product in case.products:
        ids = by_product[product]
        assert len(ids) == len(set(ids)), "a trade was sent twice without faults"
        assert sorted(ids) == list(range(5000, 5000 + len(ids))), "ids are not contiguous"
    assert len(got.trades) == 300  # every trade the market emitted, each once
    assert {t.product_id for t in got.tickers} == set(case.products)
    frames = got.frames
    if venue == "coinbase-advanced":
        seqs = [json.loads(f)["sequence_num"] for f in frames]
        assert seqs == list(range(len(frames))), "sequence_num is not 0, 1, 2, ..."
        assert any(f.startswith('{"channel":"heartbeats"') for f in frames)
        # Live trades come in batches (about 250 ms of them), newest first.
        batches = [json.loads(f)["events"][0]["trades"] for f in frames if is_live_trade(venue, f)]
        assert max(len(rows) for rows in batches) > 10
        for rows in batches:
            for product in case.products:
                ids = [int(r["trade_id"]) for r in rows if r["product_id"] == product]
                assert ids == sorted(ids, reverse=True)
    if venue == "kraken":
        replies = [json.loads(f) for f in frames if f.startswith('{"method"')]
        assert [r["method"] for r in replies] == ["subscribe"] * 4 + ["pong"]
        assert replies[-1]["req_id"] == 3 and all(r.get("success", True) for r in replies)
        assert '{"channel":"heartbeat"}' in frames
    if venue == "binance":
        assert frames[0] == '{"result":null,"id":1}'  # the clock starts on this subscribe


async def test_kraken_snapshot_is_the_last_50_trades_and_bad_symbols_fail() -> None:
    async with SimulatorServer(
        ["BTC-USD"], rate=500, seed=2, start_trade_id=100, max_trades=120, venue="kraken"
    ) as server:
        await server.wait_done()
        async with websockets.connect(server.ws_url + "/v2") as ws:
            await ws.recv()  # status
            await ws.send(json.dumps({"method": "subscribe", "params": {
                "channel": "trade", "symbol": ["BTC/USD", "DOGE/XYZ"], "snapshot": True},
                "req_id": 9}))  # fmt: skip
            ack = json.loads(await ws.recv())
            snapshot = json.loads(await ws.recv(), parse_float=Decimal)
            error = json.loads(await ws.recv())
    assert ack["success"] is True and ack["result"]["symbol"] == "BTC/USD" and ack["req_id"] == 9
    assert snapshot["type"] == "snapshot"
    assert [row["trade_id"] for row in snapshot["data"]] == list(range(170, 220))
    last = server.market.last_trade("BTC-USD")
    assert last is not None and snapshot["data"][-1]["price"] == Decimal(last.price)
    assert error["success"] is False and "DOGE/XYZ" in error["error"]
    with pytest.raises(FrameError, match="exchange error"):
        decode("kraken", 0, json.dumps(error))


# -------------------------------------------------------------------------- REST


async def rest_trades(
    client: httpx.AsyncClient, server: SimulatorServer, venue: str, product: str, first: int, n: int
) -> list[Trade]:
    """Trades ``first .. first + n - 1`` of a product through the venue's REST trades API,
    decoded by the venue's codec where it reads REST pages (wrapped as our backfill does)."""
    base = server.rest_url
    wrap = f'{{"type":"rest_trades","product_id":"{product}","trades":'
    if venue == "binance":
        params = {"symbol": product.replace("-", ""), "fromId": first, "limit": n}
        r = await client.get(f"{base}/api/v3/aggTrades", params=params)
        r.raise_for_status()
        return [t for t in decode(venue, 0, wrap + r.text + "}") if isinstance(t, Trade)]
    if venue == "kraken":
        before = next(t for t in server.market.history(product) if t.trade_id == first - 1)
        since = int(before.time.timestamp()) * 10**9 + before.time.microsecond * 1000
        params = {"pair": product.replace("-", ""), "since": since, "count": n}
        r = await client.get(f"{base}/0/public/Trades", params=params)
        r.raise_for_status()
        head = '{"error":[],"result":'
        assert r.text.startswith(head)  # the exact text: times are JSON numbers
        page = wrap + r.text[len(head) : -1] + "}"
        return [t for t in decode(venue, 0, page) if isinstance(t, Trade)]
    r = await client.get(f"{base}/api/v3/brokerage/market/products/{product}/ticker",
                         params={"limit": 1000})  # fmt: skip
    r.raise_for_status()
    out = []
    for row in r.json()["trades"]:
        tid = int(row["trade_id"])
        if first <= tid < first + n:
            out.append(Trade(venue, row["product_id"], tid, Decimal(row["price"]),
                             Decimal(row["size"]), {"BUY": "sell", "SELL": "buy"}[row["side"]],
                             _parse_time(row["time"]), 0))  # fmt: skip
    return sorted(out, key=lambda t: t.trade_id)


def _parse_time(text: str) -> object:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("venue", VENUES)
async def test_rest_trades_serve_an_id_range_including_hidden_trades(venue: str) -> None:
    case = CASES[venue]
    spec = FaultSpec(hide_every=4)
    got = Collector(venue)
    async with SimulatorServer(
        case.products, rate=400, seed=5, start_trade_id=1000, max_trades=240,
        wait_for_subscriber=True, heartbeat_interval=3600, faults=FaultPlan(spec), venue=venue,
    ) as server:  # fmt: skip
        ws = await connect(server, venue)
        await got.read_until(ws, lambda: server.done)
        emitted = server.market.emitted()
        # Which trades the plan hides follows from the stream alone: replay it offline.
        mirror = FaultPlan(spec)
        hidden = {(t.product_id, t.trade_id) for i, t in enumerate(emitted)
                  if mirror.hides(i, t.product_id, 240)}  # fmt: skip
        visible = len(emitted) - len(hidden)
        await got.read_until(ws, lambda: len(got.live) >= visible)
        await ws.close()
        product = case.products[0]
        mine = [t for t in emitted if t.product_id == product]
        async with httpx.AsyncClient() as client:
            page = await rest_trades(client, server, venue, product, 1001, len(mine) - 1)
    assert got.rejected == []
    assert len(hidden) >= 50
    assert len(got.live) == visible and not set(got.live) & hidden
    want = mine[1:]
    assert [t.trade_id for t in page] == [t.trade_id for t in want]
    for g, w in zip(page, want, strict=True):
        assert_same_trade(venue, g, w)
    assert any((product, t.trade_id) in hidden for t in page), "no hidden trade in the range"


@pytest.mark.parametrize("venue", VENUES)
async def test_rest_throttle_and_klines_like_candles(venue: str) -> None:
    """Every n-th REST trades request gets HTTP 429 from the fault plan; candles add up to
    the market's trades."""
    case = CASES[venue]
    product = case.products[0]
    plan = FaultPlan(FaultSpec(rest_429_every=2))
    async with SimulatorServer(
        case.products, rate=500, seed=4, start_trade_id=1, max_trades=150, faults=plan,
        venue=venue,
    ) as server:  # fmt: skip
        await server.wait_done()
        base = server.rest_url
        if venue == "binance":
            trades_url = f"{base}/api/v3/aggTrades?symbol={product.replace('-', '')}&limit=5"
            candle_url = f"{base}/api/v3/klines?symbol={product.replace('-', '')}&interval=1m"
        elif venue == "kraken":
            trades_url = f"{base}/0/public/Trades?pair=XBTUSD&count=5"
            candle_url = f"{base}/0/public/OHLC?pair=XBTUSD&interval=1"
        else:
            path = f"{base}/api/v3/brokerage/market/products/{product}"
            trades_url = f"{path}/ticker?limit=5"
            candle_url = f"{path}/candles?granularity=ONE_MINUTE"
        async with httpx.AsyncClient() as client:
            statuses = [(await client.get(trades_url)).status_code for _ in range(4)]
            candles = (await client.get(candle_url)).json()
        history = server.market.history(product)
    assert statuses == [200, 429, 200, 429]
    assert plan.rest_throttled == 2
    if venue == "binance":
        volume = sum(Decimal(row[5]) for row in candles)
        count = sum(row[8] for row in candles)
    elif venue == "kraken":
        rows = candles["result"]["XXBTZUSD"]
        volume = sum(Decimal(row[6]) for row in rows)
        count = sum(row[7] for row in rows)
    else:
        volume = sum(Decimal(c["volume"]) for c in candles["candles"])
        count = len(history)  # Advanced candles carry no trade count
    assert volume == sum(Decimal(t.size) for t in history)
    assert count == len(history)


# -------------------------------------------------------------------------- faults


@pytest.mark.parametrize("venue", VENUES)
async def test_fault_plan_drops_and_duplicates_the_planned_trades(venue: str) -> None:
    case = CASES[venue]
    spec = FaultSpec(seed=11, drop=0.04, drop_max=3, duplicate=0.06, malformed=0.04)
    plan = FaultPlan(spec)
    got = Collector(venue)
    async with SimulatorServer(
        case.products, rate=400, seed=3, start_trade_id=700, max_trades=300,
        wait_for_subscriber=True, heartbeat_interval=3600, faults=plan, venue=venue,
    ) as server:  # fmt: skip
        ws = await connect(server, venue)
        await got.read_until(ws, lambda: server.done)
        venue_impl = server.venue
        assert venue_impl is not None
        emitted = server.market.emitted()
        # The plan's decisions follow from the seed and the trade stream: replay them offline
        # over the same trades rendered by the same venue.
        mirror = FaultPlan(spec)
        mirror.use_shape(venue_impl.shape)
        session = object()
        expected: list[tuple[str, int]] = []
        expected_rejects = 0
        for i, t in enumerate(emitted):
            assert not mirror.hides(i, t.product_id, 300)
            for out in mirror.outbound(session, venue_impl.trade_frame(server.market, t)):
                assert isinstance(out, str)
                try:
                    records = decode(venue, i, out)
                except FrameError:
                    expected_rejects += 1
                    continue
                expected.extend((r.product_id, r.trade_id) for r in records if isinstance(r, Trade))
        await got.read_until(ws, lambda: len(got.live) >= len(expected))
        if venue == "coinbase-advanced":  # one more numbered frame after every drop
            acks = sum(f.startswith('{"channel":"subscriptions"') for f in got.frames)
            await ws.send(json.dumps(CASES[venue].messages[1]))
            await got.read_until(
                ws,
                lambda: sum(f.startswith('{"channel":"subscriptions"') for f in got.frames) > acks,
            )
        await ws.close()

    assert got.live == expected
    assert plan.counts() == mirror.counts()
    assert plan.dropped > 0 and plan.duplicated > 0 and plan.malformed > 0
    assert len(got.rejected) == expected_rejects == plan.malformed
    # Each dropped frame is one missing trade, each duplicate one repeated id.
    missing = {(t.product_id, t.trade_id) for t in emitted} - set(got.live)
    assert len(missing) == plan.dropped
    assert len(got.live) - len(set(got.live)) == plan.duplicated
    if venue == "coinbase-advanced":
        # Each dropped frame was lost in transit: its sequence_num is missing, the break a
        # client resubscribes on; nothing else breaks the count.
        seqs = [json.loads(f)["sequence_num"] for f in got.frames if _whole(f)]
        truncated = len(got.frames) - len(seqs)  # malformed copies cut short lose theirs
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
        assert seqs[-1] + 1 - len(seqs) == plan.dropped + truncated
        assert plan.dropped > 0


def _whole(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# -------------------------------------------------------------------------- refusals


async def test_refusals_and_error_answers_per_venue() -> None:
    async with SimulatorServer(["BTC-USDT"], rate=50, venue="binance") as server:
        for path, status in (("/stream?streams=dogeusdt@aggTrade", 400), ("/ws", 404)):
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(server.ws_url + path)
            assert info.value.response.status_code == status
        async with websockets.connect(server.ws_url + "/stream") as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["x@depth"], "id": 5}))
            error = await ws.recv()
            await ws.send(
                json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@ticker"], "id": 6})
            )
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 7}))
            ok, listed = await ws.recv(), await ws.recv()
        async with websockets.connect(server.ws_url + "/stream?streams=btcusdt@aggTrade") as ws:
            url_trade = json.loads(await ws.recv())
        async with httpx.AsyncClient() as client:
            bad_symbol = await client.get(f"{server.rest_url}/api/v3/aggTrades?symbol=DOGEUSDT")
    assert json.loads(error)["code"] == 2
    with pytest.raises(FrameError, match="exchange error"):
        decode("binance", 0, error)
    assert json.loads(ok) == {"result": None, "id": 6}
    assert json.loads(listed) == {"result": ["btcusdt@ticker"], "id": 7}
    assert bad_symbol.status_code == 400
    assert url_trade["stream"] == "btcusdt@aggTrade" and url_trade["data"]["s"] == "BTCUSDT"

    async with SimulatorServer(["BTC-USD"], rate=50, venue="coinbase-advanced") as server:
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(json.dumps({"type": "subscribe", "product_ids": ["DOGE-XYZ"],
                                      "channel": "market_trades"}))  # fmt: skip
            error = await ws.recv()
        async with httpx.AsyncClient() as client:
            missing = await client.get(
                f"{server.rest_url}/api/v3/brokerage/market/products/DOGE-XYZ/ticker?limit=1"
            )
    assert "DOGE-XYZ" in json.loads(error)["message"]
    with pytest.raises(FrameError, match="exchange error"):
        decode("coinbase-advanced", 0, error)
    assert missing.status_code == 404


@pytest.mark.parametrize("venue", VENUES)
async def test_disconnect_fault_cuts_every_venue(venue: str) -> None:
    plan = FaultPlan(FaultSpec(disconnect_every=0.3))
    async with SimulatorServer(CASES[venue].products, rate=100, faults=plan, venue=venue) as server:
        ws = await connect(server, venue)
        got = Collector(venue)
        with pytest.raises(websockets.ConnectionClosed):
            await got.read_until(ws, lambda: False)
        assert server.disconnects >= 1
        assert got.rejected == []


@pytest.mark.parametrize("venue", ["binance", "kraken"])
async def test_rest_paging_walks_every_trade(venue: str) -> None:
    """Following the venue's cursor (Binance ``fromId``, Kraken ``last``) page by page gives
    every trade of a product once, in order."""
    product = CASES[venue].products[0]
    async with SimulatorServer(
        CASES[venue].products, rate=500, seed=8, start_trade_id=40, max_trades=120, venue=venue
    ) as server:
        await server.wait_done()
        want = [t.trade_id for t in server.market.history(product)]
        ids: list[int] = []
        async with httpx.AsyncClient() as client:
            if venue == "binance":
                params: dict[str, object] = {"symbol": product.replace("-", ""), "fromId": 40}
                for _ in range(60):  # 120 trades in pages of 7, never endless
                    r = await client.get(
                        f"{server.rest_url}/api/v3/aggTrades", params={**params, "limit": 7}
                    )
                    page = [row["a"] for row in r.json()]
                    if not page:
                        break
                    ids.extend(page)
                    params["fromId"] = page[-1] + 1
            else:
                since = "0"
                for _ in range(60):  # 120 trades in pages of 7, never endless
                    r = await client.get(
                        f"{server.rest_url}/0/public/Trades",
                        params={"pair": "XBTUSD", "since": since, "count": 7},
                    )
                    result = r.json()["result"]
                    page = [row[6] for row in result["XXBTZUSD"]]
                    if not page:
                        break
                    ids.extend(page)
                    since = result["last"]
    assert ids == want and len(want) > 30
