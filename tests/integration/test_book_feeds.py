"""The live feeds' book subscriptions against the real simulator over WebSocket and REST: with
books on, the bus gets book frames for every product of every venue; Binance publishes its
REST `depthSnapshot` frame after a product's first depth event and again after a U/u gap;
Kraken and Advanced re-subscribe a product's book on `request_book_resync` and get a fresh
snapshot; Coinbase Exchange subscribes `level2` signed only with credentials; with books off,
no book channel is subscribed at all."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from crypto_sentinel import metrics
from crypto_sentinel.config import load_settings
from crypto_sentinel.model import RawFrame
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.simulator import SimulatorServer
from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec
from crypto_sentinel.sources.bookfeed import Credentials, coinbase_signature, kraken_depth
from crypto_sentinel.sources.feed import FeedSource
from crypto_sentinel.sources.venues import connector_for, simulated_name
from tests.conftest import free_port

PRODUCTS = {
    "coinbase": ["BTC-USD", "ETH-USD"],
    "binance": ["BTC-USDT", "ETH-USDT"],
    "kraken": ["BTC-USD", "ETH-USD"],
    "coinbase-advanced": ["BTC-USD", "ETH-USD"],
}
CREDENTIALS = Credentials("key-1", base64.b64encode(b"a secret").decode(), "phrase")


def book_product(venue: str, text: str) -> tuple[str, str] | None:
    """(kind, product) of a book frame of the venue: kind snapshot or update; else None."""
    msg = json.loads(text)
    if venue == "binance":
        stream = msg.get("stream", "")
        symbol = stream.split("@")[0].upper()
        product = symbol[:3] + "-" + symbol[3:]
        if stream.endswith("@depthSnapshot"):
            return "snapshot", product
        return ("update", product) if "@depth" in stream else None
    if venue == "kraken":
        if msg.get("channel") != "book":
            return None
        return msg["type"], msg["data"][0]["symbol"].replace("/", "-")
    if venue == "coinbase-advanced":
        if msg.get("channel") != "l2_data":
            return None
        event = msg["events"][0]
        return event["type"], event["product_id"]
    if msg.get("type") in ("snapshot", "l2update"):
        return ("snapshot" if msg["type"] == "snapshot" else "update"), msg["product_id"]
    return None


class Bus:
    """What the feed published, in order."""

    def __init__(self) -> None:
        self.frames: list[RawFrame] = []

    async def publish(self, frame: RawFrame) -> None:
        self.frames.append(frame)

    def books(self, venue: str) -> list[tuple[str, str]]:
        return [b for f in self.frames if (b := book_product(venue, f.text)) is not None]


async def until(check: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


@contextlib.asynccontextmanager
async def running(
    venue: str, books: bool, faults: FaultPlan | None = None, **options: Any
) -> AsyncIterator[tuple[SimulatorServer, FeedSource, Bus]]:
    venue_option: dict[str, Any] = {} if venue == "coinbase" else {"venue": venue}
    sim = SimulatorServer(PRODUCTS[venue], rate=100, seed=9, faults=faults, **venue_option)
    async with sim:
        source = FeedSource(
            connector_for(venue), PRODUCTS[venue], sim.ws_url, simulated_name(venue),
            simulated_name(venue), books=books, book_depth=100, book_rest_url=sim.rest_url,
            **options,
        )  # fmt: skip
        bus = Bus()
        task = asyncio.create_task(source.run(bus.publish))
        try:
            yield sim, source, bus
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.parametrize("venue", list(PRODUCTS))
async def test_books_on_every_product_of_every_venue_reaches_the_bus(venue: str) -> None:
    options = {"credentials": CREDENTIALS} if venue == "coinbase" else {}
    async with running(venue, True, **options) as (sim, source, bus):
        wanted = {(kind, p) for p in PRODUCTS[venue] for kind in ("snapshot", "update")}
        await until(lambda: wanted <= set(bus.books(venue)), "snapshot and updates per product")
        assert set(sim.depth.books) == set(PRODUCTS[venue])
        assert source.status.book_resyncs == 0
        conns = {f.conn_id for f in bus.frames}
        assert len(conns) == 1  # one connection carries trades and books
        seqs = [f.recv_seq for f in bus.frames]
        assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.parametrize("venue", list(PRODUCTS))
async def test_books_off_subscribes_no_book_channel(venue: str) -> None:
    options = {"credentials": CREDENTIALS} if venue == "coinbase" else {}
    async with running(venue, False, **options) as (sim, source, bus):
        await until(lambda: source.status.frames > 30, "trade frames")
        assert bus.books(venue) == []
        assert sim.depth.books == {}  # no client asked for a book
        assert source.request_book_resync(simulated_name(venue), PRODUCTS[venue][0]) is False


async def test_binance_snapshot_after_the_first_event_and_after_a_gap() -> None:
    faults = FaultPlan(FaultSpec(seed=4, book_gap=0.03))
    exchange = simulated_name("binance")
    before = metrics.BOOK_RESYNCS.labels(exchange, "gap")._value.get()
    async with running("binance", True, faults) as (_sim, source, bus):
        await until(lambda: source.status.book_resyncs >= 3, "resyncs after U/u gaps")
        connector: Any = source.connector
        await until(lambda: not connector.pending, "snapshots fetched")
        frames = [f.text for f in bus.frames]
        resyncs, snapshots = source.status.book_resyncs, source.status.book_snapshots
    prefix = '{"stream":"btcusdt@depthSnapshot","data":{"e":"depthSnapshot","s":"BTCUSDT",'
    breaks = 0
    for symbol in ("btcusdt", "ethusdt"):
        mine = [json.loads(t) for t in frames if t.startswith(f'{{"stream":"{symbol}@depth')]
        assert mine[0]["stream"] == f"{symbol}@depth@100ms"  # the first event comes first
        assert mine[1]["stream"] == f"{symbol}@depthSnapshot"  # then the REST snapshot
        assert mine[1]["data"]["lastUpdateId"] >= mine[0]["data"]["u"]
        last, owed = None, False
        for msg in mine:
            data = msg["data"]
            if data["e"] == "depthSnapshot":
                owed = False
                continue
            if last is not None and data["u"] > last and data["U"] != last + 1:
                breaks += 1
                assert not owed  # the previous gap's snapshot came before this gap
                owed = True
            last = data["u"] if last is None else max(last, data["u"])
        assert not owed  # every gap was followed by a snapshot (none left pending)
    assert breaks == resyncs >= 3
    ours = [t for t in frames if "@depthSnapshot" in t[:40]]
    assert any(t.startswith(prefix) for t in ours)
    assert all(set(json.loads(t)["data"]) == {"e", "s", "lastUpdateId", "bids", "asks"}
               for t in ours)  # fmt: skip
    assert len(ours) == snapshots
    assert 3 <= snapshots <= 2 + resyncs  # gaps close together may share one snapshot
    after = metrics.BOOK_RESYNCS.labels(exchange, "gap")._value.get()
    assert after - before == resyncs


@pytest.mark.parametrize("venue", ["kraken", "coinbase-advanced", "coinbase", "binance"])
async def test_resync_hook_brings_a_fresh_snapshot(venue: str) -> None:
    options = {"credentials": CREDENTIALS} if venue == "coinbase" else {}
    exchange = simulated_name(venue)
    product = PRODUCTS[venue][0]
    async with running(venue, True, **options) as (_sim, source, bus):
        wanted = {(kind, p) for p in PRODUCTS[venue] for kind in ("snapshot", "update")}
        await until(lambda: wanted <= set(bus.books(venue)), "snapshots and updates")
        assert bus.books(venue).count(("snapshot", product)) == 1
        assert source.request_book_resync("kraken-nowhere", product) is False
        assert source.request_book_resync(exchange, "DOGE-USD") is False
        assert source.request_book_resync(exchange, product) is True
        await until(lambda: bus.books(venue).count(("snapshot", product)) == 2, "new snapshot")
        assert source.status.book_resyncs == 1
        other = PRODUCTS[venue][1]
        assert bus.books(venue).count(("snapshot", other)) == 1  # only the product asked for


async def test_advanced_sequence_break_resubscribes_the_books() -> None:
    faults = FaultPlan(FaultSpec(seed=4, book_drop=0.05))
    async with running("coinbase-advanced", True, faults) as (_sim, source, bus):
        await until(lambda: faults.book_dropped >= 1, "a dropped update")
        await until(lambda: source.status.book_resyncs >= 2, "resyncs")
        await until(
            lambda: all(bus.books("coinbase-advanced").count(("snapshot", p)) >= 2
                        for p in PRODUCTS["coinbase-advanced"]),
            "fresh snapshots",
        )  # fmt: skip


async def test_exchange_without_credentials_logs_once_and_streams_trades(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        async with running("coinbase", True) as (sim, source, bus):
            await until(lambda: source.status.frames > 30, "trade frames")
            assert bus.books("coinbase") == []
            assert not any('"type":"error"' in f.text for f in bus.frames)
            assert source.request_book_resync("simulator", "BTC-USD") is False
    said = [r for r in caplog.records if "books need credentials" in r.getMessage()]
    assert len(said) == 1
    assert sim.depth.books == {}


def test_signature_is_coinbase_documented_hmac() -> None:
    import hashlib
    import hmac

    fields = coinbase_signature(CREDENTIALS, "1700000000")
    expected = hmac.new(b"a secret", b"1700000000GET/users/self/verify", hashlib.sha256)
    assert fields == {
        "signature": base64.b64encode(expected.digest()).decode(),
        "key": "key-1",
        "passphrase": "phrase",
        "timestamp": "1700000000",
    }
    assert CREDENTIALS.secret not in repr(CREDENTIALS)
    assert [kraken_depth(d) for d in (10, 24, 25, 999, 1000, 5000)] == [10, 10, 25, 500, 1000, 1000]


async def test_pipeline_hook_and_health_counter(lake: Path) -> None:
    """`up --source kraken` with books on: the pipeline's hook reaches the Kraken feed, and
    /health shows the resync the feed started."""
    async with SimulatorServer(["ETH-USD"], rate=30, seed=5, venue="kraken") as sim:
        port = free_port()
        settings = load_settings(
            source="kraken", kraken_products=["ETH-USD"], kraken_ws_url=sim.ws_url,
            kraken_rest_url=sim.rest_url, lake_dir=lake, port=port, batch_interval_ms=100,
            fallback_to_simulator=False, books=True, book_depth=30,
        )  # fmt: skip
        pipeline = Pipeline(settings)
        task = asyncio.create_task(pipeline.run(with_api=True, install_signals=False))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await until(lambda: sim.depth.books != {}, "book subscribed", 60)
                assert pipeline.request_book_resync("kraken", "BTC-USD") is False
                assert pipeline.request_book_resync("binance", "ETH-USD") is False
                assert pipeline.request_book_resync("kraken", "ETH-USD") is True
                health: dict[str, Any] = {}

                async def fetch() -> None:
                    nonlocal health
                    health = (await client.get("/health")).json()

                for _ in range(120):
                    with contextlib.suppress(httpx.TransportError):
                        await fetch()
                    if health.get("sources"):
                        break
                    await asyncio.sleep(0.25)
                (source,) = health["sources"]
                assert source["exchange"] == "kraken"
                assert source["book_resyncs"] == 1
                assert source["book_snapshots"] == 0  # REST snapshots are Binance's
        finally:
            pipeline.stop_event.set()
            await asyncio.wait_for(task, 60)
