"""The simulator's order books over real sockets, per venue: a client that follows each venue's
documented book rules rebuilds exactly the simulator's true book from the snapshot and the
updates; Binance U/u ids are contiguous and its REST snapshot fits them; every Kraken checksum
verifies with `kraken_checksum`; Advanced numbers its frames without a hole; Coinbase Exchange
refuses `level2` without the authentication fields; each book fault shows as planned and is
counted."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from crypto_sentinel.books.orderbook import OrderBook, kraken_checksum
from crypto_sentinel.simulator import SimulatorServer
from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec

USD = ["BTC-USD", "ETH-USD"]
USDT = ["BTC-USDT", "ETH-USDT"]
TRADES = 300
AUTH = {"signature": "c2ln", "key": "k", "passphrase": "p", "timestamp": "1700000000"}


def server(venue: str, products: list[str], faults: FaultPlan | None = None) -> SimulatorServer:
    options: dict[str, Any] = {} if venue == "coinbase" else {"venue": venue}
    return SimulatorServer(
        products, rate=250, seed=5, max_trades=TRADES, wait_for_subscriber=True,
        faults=faults, **options,
    )  # fmt: skip


async def collect(
    ws: ClientConnection, sim: SimulatorServer, is_book: Callable[[str], bool]
) -> list[str]:
    """Every frame until the simulator is done and no book frame came for half a second."""
    frames: list[str] = []
    quiet = 0.0
    async with asyncio.timeout(60):
        while quiet < 0.5 or not sim.done:
            try:
                text = await asyncio.wait_for(ws.recv(), 0.1)
            except TimeoutError:
                quiet += 0.1
                continue
            assert isinstance(text, str)
            frames.append(text)
            if is_book(text):
                quiet = 0.0
    return frames


def assert_true_book(book: OrderBook, sim: SimulatorServer, depth: int | None = None) -> None:
    truth = sim.depth.truth(book.product_id, depth)
    bids, asks = book.top(depth)
    assert (bids, asks) == (truth.bids, truth.asks)
    assert bids and asks and not book.crossed()


def apply_all(book: OrderBook, side: str, levels: list[list[str]]) -> None:
    for price, size in levels:
        book.apply(side, Decimal(price), Decimal(size))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- Binance


def binance_frames(frames: list[str]) -> list[dict[str, Any]]:
    return [json.loads(f)["data"] for f in frames if "@depth" in f[:40]]


async def binance_run(
    faults: FaultPlan | None = None, products: list[str] = USDT
) -> tuple[SimulatorServer, list[str], dict]:
    sim = server("binance", products, faults)
    symbols = [p.replace("-", "") for p in products]
    streams = [f"{s.lower()}@depth@100ms" for s in symbols]
    if len(streams) > 1:
        streams[1] = streams[1].removesuffix("@100ms")  # the 1 s name is served too
    async with sim, websockets.connect(sim.ws_url + "/stream?streams=" + "/".join(streams)) as ws:
        async with httpx.AsyncClient(base_url=sim.rest_url) as client:
            snapshots = {}
            for symbol in symbols:
                params = {"symbol": symbol, "limit": 1000}
                answer = await client.get("/api/v3/depth", params=params)
                assert answer.status_code == 200
                snapshots[symbol] = answer.json()
        frames = await collect(ws, sim, lambda t: "@depth" in t[:40])
    return sim, frames, snapshots


async def test_binance_depth_stream_and_rest_snapshot_rebuild_the_true_book() -> None:
    sim, frames, snapshots = await binance_run()
    events = binance_frames(frames)
    assert {json.loads(f)["stream"] for f in frames} == {"btcusdt@depth@100ms", "ethusdt@depth"}
    for symbol, product in (("BTCUSDT", "BTC-USDT"), ("ETHUSDT", "ETH-USDT")):
        mine = [e for e in events if e["s"] == symbol]
        assert len(mine) > 5  # one event per 100 ms batch
        for before, after in itertools.pairwise(mine):
            assert after["U"] == before["u"] + 1  # contiguous ids
            assert after["u"] >= after["U"]
        snap = snapshots[symbol]
        book = OrderBook("binance", product)
        book.load_snapshot(
            [(Decimal(p), Decimal(q)) for p, q in snap["bids"]],
            [(Decimal(p), Decimal(q)) for p, q in snap["asks"]],
            snap["lastUpdateId"],
        )
        last = snap["lastUpdateId"]
        applied = 0
        for e in mine:  # the documented rule
            if e["u"] <= last:
                continue
            assert e["U"] <= last + 1 <= e["u"]
            apply_all(book, "bid", e["b"])
            apply_all(book, "ask", e["a"])
            last, applied = e["u"], applied + 1
        assert applied > 3
        assert any(e["u"] > e["U"] for e in mine)  # an event spans several update ids
        assert last == sim.depth.truth(product).update_id
        assert_true_book(book, sim)
        assert all(len(q.split(".")[1]) == 8 for p, q in snap["bids"][:5])  # padded text


async def test_binance_rest_depth_refuses_bad_limits() -> None:
    async with server("binance", USDT) as sim, httpx.AsyncClient(base_url=sim.rest_url) as c:
        bad = await c.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 6000})
        assert bad.status_code == 400
        five = (await c.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 5})).json()
        assert len(five["bids"]) == len(five["asks"]) == 5
        assert Decimal(five["bids"][0][0]) < Decimal(five["asks"][0][0])


# ---------------------------------------------------------------------------------- Kraken


def parse_kraken(text: str) -> dict[str, Any]:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


async def kraken_run(depths: dict[str, int], faults: FaultPlan | None = None):
    sim = server("kraken", USD, faults)
    async with sim, websockets.connect(sim.ws_url + "/v2") as ws:
        for i, (symbol, depth) in enumerate(depths.items()):
            params = {"channel": "book", "symbol": [symbol], "depth": depth}
            await ws.send(json.dumps({"method": "subscribe", "params": params, "req_id": i}))
        frames = await collect(ws, sim, lambda t: t.startswith('{"channel":"book"'))
    return sim, frames


def kraken_follow(frames: list[str], depths: dict[str, int]) -> tuple[dict[str, OrderBook], int]:
    """Apply snapshot + updates, truncating to the depth; count checksum mismatches."""
    books: dict[str, OrderBook] = {}
    mismatches = 0
    for text in frames:
        msg = parse_kraken(text)
        if msg.get("channel") != "book":
            continue
        for item in msg["data"]:
            symbol = item["symbol"]
            if msg["type"] == "snapshot":
                books[symbol] = OrderBook("kraken", symbol.replace("/", "-"))
            book = books[symbol]
            for side, key in (("bid", "bids"), ("ask", "asks")):
                for level in item[key]:
                    book.apply(side, Decimal(level["price"]), Decimal(level["qty"]))  # type: ignore[arg-type]
            book.truncate(depths[symbol])
            if kraken_checksum(book) != int(item["checksum"]):
                mismatches += 1
    return books, mismatches


async def test_kraken_book_checksums_verify_and_the_window_is_the_true_top() -> None:
    depths = {"BTC/USD": 10, "ETH/USD": 25}
    sim, frames = await kraken_run(depths)
    acks = [json.loads(f) for f in frames if f.startswith('{"method":"subscribe"')]
    assert [(a["success"], a["result"]["depth"]) for a in acks] == [(True, 10), (True, 25)]
    updates = [f for f in frames if f.startswith('{"channel":"book","type":"update"')]
    assert len(updates) > 20
    assert '"price":' in updates[0] and '"price":"' not in updates[0]  # JSON numbers
    books, mismatches = kraken_follow(frames, depths)
    assert mismatches == 0
    for symbol, depth in depths.items():
        assert len(books[symbol].bids) == len(books[symbol].asks) == depth
        assert_true_book(books[symbol], sim, depth)


async def test_kraken_refuses_a_depth_it_does_not_offer() -> None:
    async with server("kraken", USD) as sim, websockets.connect(sim.ws_url + "/v2") as ws:
        params = {"channel": "book", "symbol": ["BTC/USD"], "depth": 7}
        await ws.send(json.dumps({"method": "subscribe", "params": params}))
        while (msg := json.loads(await ws.recv())).get("channel") == "status":
            pass
        assert msg["success"] is False and "depth" in msg["error"]


# ----------------------------------------------------------------------- Coinbase Advanced


async def advanced_run(faults: FaultPlan | None = None) -> tuple[SimulatorServer, list[str]]:
    sim = server("coinbase-advanced", USD, faults)
    async with sim, websockets.connect(sim.ws_url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "product_ids": USD, "channel": "level2"}))
        await ws.send(
            json.dumps({"type": "subscribe", "product_ids": USD, "channel": "market_trades"})
        )
        frames = await collect(ws, sim, lambda t: t.startswith('{"channel":"l2_data"'))
    return sim, frames


def advanced_follow(frames: list[str]) -> dict[str, OrderBook]:
    books: dict[str, OrderBook] = {}
    for text in frames:
        msg = json.loads(text)
        if msg["channel"] != "l2_data":
            continue
        for event in msg["events"]:
            product = event["product_id"]
            if event["type"] == "snapshot":
                books[product] = OrderBook("coinbase-advanced", product)
            for u in event["updates"]:
                side = "bid" if u["side"] == "bid" else "ask"
                books[product].apply(side, Decimal(u["price_level"]), Decimal(u["new_quantity"]))
    return books


async def test_advanced_level2_snapshot_updates_and_sequence_numbers() -> None:
    sim, frames = await advanced_run()
    numbers = [json.loads(f)["sequence_num"] for f in frames]
    assert numbers == list(range(len(frames)))  # shared with market_trades, no hole
    channels = {json.loads(f)["channel"] for f in frames}
    assert {"l2_data", "market_trades", "subscriptions"} <= channels
    subs = [json.loads(f) for f in frames if '"channel":"subscriptions"' in f]
    assert subs[-1]["events"][0]["subscriptions"]["level2"] == USD
    books = advanced_follow(frames)
    for product in USD:
        assert_true_book(books[product], sim)


# ----------------------------------------------------------------------- Coinbase Exchange


async def exchange_answer(sim: SimulatorServer, message: dict) -> dict:
    async with websockets.connect(sim.ws_url) as ws:
        await ws.send(json.dumps(message))
        return json.loads(await ws.recv())


async def test_exchange_level2_needs_the_auth_fields_and_rebuilds_the_true_book() -> None:
    sim = server("coinbase", USD)
    async with sim:
        plain = {"type": "subscribe", "product_ids": USD, "channels": ["level2"]}
        refused = await exchange_answer(sim, plain)
        assert refused["type"] == "error" and refused["message"] == "Failed to subscribe"
        assert "require authentication" in refused["reason"]
        partly = await exchange_answer(sim, {**plain, "key": "k", "signature": "s"})
        assert partly["type"] == "error"
        batch = await exchange_answer(sim, {**plain, "channels": ["level2_batch"]})
        assert batch["type"] == "subscriptions"  # level2_batch stayed public
        async with websockets.connect(sim.ws_url) as ws:
            await ws.send(json.dumps({**plain, **AUTH}))
            frames = await collect(ws, sim, lambda t: '"type":"l2update"' in t[:20])
    assert json.loads(frames[0])["channels"] == [{"name": "level2", "product_ids": USD}]
    books: dict[str, OrderBook] = {}
    for text in frames[1:]:
        msg = json.loads(text)
        product = msg["product_id"]
        if msg["type"] == "snapshot":
            books[product] = OrderBook("coinbase", product)
            apply_all(books[product], "bid", msg["bids"])
            apply_all(books[product], "ask", msg["asks"])
        else:
            assert msg["type"] == "l2update"
            for side, price, size in msg["changes"]:
                books[product].apply(
                    "bid" if side == "buy" else "ask", Decimal(price), Decimal(size)
                )
    for product in USD:
        assert_true_book(books[product], sim)


async def test_exchange_level2_and_level2_batch_on_one_connection_send_each_update_once() -> None:
    sim = server("coinbase", ["BTC-USD"])
    async with sim, websockets.connect(sim.ws_url) as ws:
        channels = ["level2", "level2_batch"]
        await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"],
                                  "channels": channels, **AUTH}))  # fmt: skip
        frames = await collect(ws, sim, lambda t: '"type":"l2update"' in t[:20])
    kinds = [json.loads(f)["type"] for f in frames]
    assert kinds[:2] == ["subscriptions", "snapshot"]
    assert kinds.count("snapshot") == 1
    assert kinds.count("l2update") == sim.depth.updates > 0


# ---------------------------------------------------------------------------------- faults


def plan(**rates: float) -> FaultPlan:
    return FaultPlan(FaultSpec(seed=3, **rates))  # type: ignore[arg-type]


async def test_book_faults_parse_and_count() -> None:
    spec = FaultSpec.parse("book_drop=0.1,book_duplicate=0.2,book_gap=0.05,book_checksum=0.1")
    assert (spec.book_drop, spec.book_duplicate, spec.book_gap) == (0.1, 0.2, 0.05)
    assert spec.active
    with pytest.raises(ValueError):
        FaultSpec.parse("book_reorder=2")


async def test_binance_dropped_and_duplicated_updates() -> None:
    faults = plan(book_drop=0.25, book_duplicate=0.25)
    sim, frames, _ = await binance_run(faults)
    events = binance_frames(frames)
    assert faults.book_dropped > 0 and faults.book_duplicated > 0
    sent = sim.venue.depth_events  # type: ignore[union-attr]
    assert len(events) == sent - faults.book_dropped + faults.book_duplicated
    ids = [(e["U"], e["u"]) for e in events]
    repeats = sum(1 for a, b in itertools.pairwise(ids) if a == b)
    assert repeats == faults.book_duplicated
    assert len(set(ids)) == sent - faults.book_dropped


async def test_binance_gap_breaks_u_contiguity_exactly_as_counted() -> None:
    faults = plan(book_gap=0.05)
    _sim, frames, _ = await binance_run(faults)
    per_symbol: dict[str, list[dict]] = {}
    for e in binance_frames(frames):
        per_symbol.setdefault(e["s"], []).append(e)
    breaks = sum(
        1 for evs in per_symbol.values() for a, b in itertools.pairwise(evs) if b["U"] != a["u"] + 1
    )
    assert breaks == faults.book_gaps > 0
    assert faults.counts()["book_gaps"] == faults.book_gaps


async def test_binance_reordered_updates() -> None:
    faults = plan(book_reorder=0.3)
    sim, frames, _ = await binance_run(faults, ["BTC-USDT"])
    events = binance_frames(frames)
    sent = sim.venue.depth_events  # type: ignore[union-attr]
    pending = sent - len(events)  # a last held-back event is never sent
    assert pending in (0, 1)
    inversions = sum(1 for a, b in itertools.pairwise(events) if b["U"] < a["U"])
    assert inversions == faults.book_reordered - pending
    assert faults.book_reordered > 0


async def test_kraken_corrupted_checksums_are_seen_and_counted() -> None:
    faults = plan(book_checksum=0.1)
    depths = {"BTC/USD": 10, "ETH/USD": 10}
    sim, frames = await kraken_run(depths, faults)
    books, mismatches = kraken_follow(frames, depths)
    assert mismatches == faults.book_corrupted > 0
    for symbol in depths:
        assert_true_book(books[symbol], sim, 10)  # the levels were right all along


async def test_advanced_dropped_updates_skip_sequence_numbers() -> None:
    faults = plan(book_drop=0.05)
    _sim, frames = await advanced_run(faults)
    numbers = [json.loads(f)["sequence_num"] for f in frames]
    missing = numbers[-1] + 1 - len(numbers)
    assert missing == faults.book_dropped > 0
    assert faults.dropped == 0  # only book updates were lost
