"""Order books over the real API: a uvicorn server on a free port serving `create_app` with a
`BookRegistry` the test fills; REST through httpx, push over a real WebSocket and SSE, the
series from a real Delta `gold.book_snapshots` table written here with the layout
`lake.tables.BOOK_SNAPSHOTS` defines. `at=` goes through a stand-in for the lake's
`books.history.book_at` (its own tests cover the rebuild)."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import uvicorn
from deltalake import write_deltalake
from websockets.asyncio.client import ClientConnection, connect

from crypto_sentinel import metrics
from crypto_sentinel.api.app import create_app
from crypto_sentinel.api.state import HotState
from crypto_sentinel.api.stream import Hub
from crypto_sentinel.books.orderbook import BookView, OrderBook
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.tables import BOOK_SNAPSHOTS
from tests.conftest import free_port

D = Decimal
BIDS = [(D("65000.10"), D("0.50000000")), (D("64999.5"), D("1.25")), (D("64990"), D("3"))]
ASKS = [(D("65000.30"), D("0.1")), (D("65001"), D("2.000")), (D("65100.75"), D("7.5"))]
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Api:
    base: str
    books: BookRegistry
    lake: Path

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=10)


@pytest.fixture
async def api(lake: Path) -> AsyncIterator[Api]:
    books = BookRegistry()
    book = books.book("coinbase", "BTC-USD")
    book.load_snapshot(BIDS, ASKS, update_id=41, time=T0)
    app = create_app(
        HotState(),
        LakeReader(lake),
        default_exchange=lambda: "coinbase",
        products=["BTC-USD"],
        status=lambda: {"sources": [{"exchange": "coinbase"}]},
        ready=lambda: True,
        hub=Hub(queue_limit=100, max_clients=10, heartbeat=0.3),
        books=books,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the API did not start"
        await asyncio.sleep(0.02)
    try:
        yield Api(f"http://127.0.0.1:{port}", books, lake)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_live_book_is_exact_best_first_and_bounded(api: Api) -> None:
    async with api.client() as client:
        body = (await client.get("/v1/products/BTC-USD/book")).json()
        assert body["exchange"] == "coinbase" and body["product_id"] == "BTC-USD"
        assert body["bids"] == [["65000.1", "0.5"], ["64999.5", "1.25"], ["64990", "3"]]
        assert body["asks"] == [["65000.3", "0.1"], ["65001", "2"], ["65100.75", "7.5"]]
        assert body["update_id"] == 41 and body["time"] == "2024-03-01T12:00:00.000000Z"
        assert body["valid"] is True and body["invalid_reason"] == ""
        assert body["spread"] == "0.2" and body["mid"] == "65000.2"
        # 10 bps of 65000.2 = 65.0002: bids down to 64935.1998, asks up to 65065.2002
        assert body["depth_within_bps"] == {"bps": 10, "bids": "4.75", "asks": "2.1"}
        assert body["at"] is None

        top = (await client.get("/v1/products/BTC-USD/book", params={"depth": 1})).json()
        assert top["bids"] == [["65000.1", "0.5"]] and top["asks"] == [["65000.3", "0.1"]]
        wide = await client.get("/v1/products/BTC-USD/book", params={"bps": 100, "depth": 1000})
        assert wide.json()["depth_within_bps"] == {"bps": 100, "bids": "4.75", "asks": "9.6"}

        for name, value in (("depth", 0), ("depth", 1001), ("bps", 0), ("bps", 10_001)):
            bad = await client.get("/v1/products/BTC-USD/book", params={name: value})
            assert bad.status_code == 422, (name, value)
            assert bad.json()["detail"][0]["field"] == name


async def test_missing_book_is_404_and_exchange_follows_the_book(api: Api) -> None:
    kraken = api.books.book("kraken", "ETH-USD")
    kraken.load_snapshot([(D("3000.5"), D("1"))], [(D("3001"), D("2"))], update_id=None, time=T0)
    async with api.client() as client:
        missing = await client.get("/v1/products/SOL-USD/book")
        assert missing.status_code == 404
        assert "order books are off" in missing.json()["error"]
        assert "none has been received yet" in missing.json()["error"]
        other = await client.get("/v1/products/BTC-USD/book", params={"exchange": "kraken"})
        assert other.status_code == 404
        eth = (await client.get("/v1/products/ETH-USD/book")).json()
        assert eth["exchange"] == "kraken" and eth["bids"] == [["3000.5", "1"]]
        unknown = await client.get("/v1/products/BTC-USD/book", params={"exchange": "nowhere"})
        assert unknown.status_code == 404 and "unknown exchange" in unknown.json()["error"]


async def test_invalid_book_shows_no_levels_and_why(api: Api) -> None:
    book = api.books.get("coinbase", "BTC-USD")
    assert book is not None
    book.mark_invalid("sequence gap 41 -> 43")
    async with api.client() as client:
        body = (await client.get("/v1/products/BTC-USD/book")).json()
    assert body["valid"] is False and body["invalid_reason"] == "sequence gap 41 -> 43"
    assert body["bids"] == [] and body["asks"] == []
    assert body["spread"] is None and body["mid"] is None and body["depth_within_bps"] is None


def fake_history(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[Any, ...]]) -> None:
    """`books.history` with a `book_at` that answers from a fixed past book from T0 on."""

    def book_at(
        lake: Any, exchange: str, product_id: str, at: datetime, depth: int | None
    ) -> BookView | None:
        calls.append((lake, exchange, product_id, at, depth))
        if at < T0:
            return None
        past = OrderBook(exchange, product_id)
        past.load_snapshot([(D("100.10"), D("2")), (D("99"), D("1"))], [(D("100.3"), D("4"))],
                           update_id=7, time=T0)  # fmt: skip
        return past.view(depth)

    module = types.ModuleType("crypto_sentinel.books.history")
    module.book_at = book_at  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "crypto_sentinel.books.history", module)


async def test_book_at_a_past_time(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    fake_history(monkeypatch, calls)
    async with api.client() as client:
        url = "/v1/products/BTC-USD/book"
        body = (await client.get(url, params={"at": "2024-03-01T12:00:05Z", "depth": 1})).json()
        assert body["bids"] == [["100.1", "2"]] and body["asks"] == [["100.3", "4"]]
        assert body["update_id"] == 7 and body["at"] == "2024-03-01T12:00:05.000000Z"
        assert body["spread"] == "0.2" and body["mid"] == "100.2"
        assert calls[-1][1:] == ("coinbase", "BTC-USD", T0 + timedelta(seconds=5), None)
        assert str(calls[-1][0]) == str(api.lake)

        before = await client.get(url, params={"at": "2024-02-01T00:00:00Z"})
        assert before.status_code == 404
        assert "no book data in the lake" in before.json()["error"]
        future = datetime.now(UTC) + timedelta(hours=1)
        ahead = await client.get(url, params={"at": future.isoformat()})
        assert ahead.status_code == 422 and "in the future" in ahead.text
        garbled = await client.get(url, params={"at": "yesterday-ish"})
        assert garbled.status_code == 422 and garbled.json()["detail"][0]["field"] == "at"
    assert len(calls) == 2  # the rejected times never reached the lake


def levels(pairs: list[tuple[str, str]]) -> list[dict[str, Decimal]]:
    return [{"price": D(p), "size": D(s)} for p, s in pairs]


def write_snapshots(lake: Path) -> None:
    """Three BTC-USD snapshots (the middle one taken while the book was out of sync) and one
    of another exchange, as the lake's book snapshotter writes them."""
    rows = [
        ("coinbase", T0, True, [("100", "1"), ("99.95", "2"), ("90", "5")],
         [("100.1", "3"), ("100.2", "0.5")]),
        ("coinbase", T0 + timedelta(seconds=1), False, [], []),
        ("coinbase", T0 + timedelta(seconds=2), True, [("101", "1.5")],
         [("101.01", "0.25"), ("102", "9")]),
        ("kraken", T0, True, [("1", "1")], [("2", "1")]),
    ]  # fmt: skip
    stored = [
        {
            "exchange": ex,
            "product_id": "BTC-USD",
            "time": t,
            "reason": "interval",
            "depth": 50,
            "valid": valid,
            "bids": levels(bids),
            "asks": levels(asks),
            "date": t.date(),
        }
        for ex, t, valid, bids, asks in rows
    ]
    # a full-depth checkpoint at the same moment as the first interval row: one point
    stored.append({**stored[0], "reason": "checkpoint", "depth": None})
    table = pa.Table.from_pylist(stored, schema=BOOK_SNAPSHOTS.schema)
    write_deltalake(BOOK_SNAPSHOTS.uri(lake), table, partition_by=list(BOOK_SNAPSHOTS.partition_by))


async def test_series_from_book_snapshots(api: Api) -> None:
    write_snapshots(api.lake)
    window = {"start": "2024-03-01T11:59:00Z", "end": "2024-03-01T12:01:00Z", "bps": 10}
    async with api.client() as client:
        body = (await client.get("/v1/products/BTC-USD/book/series", params=window)).json()
        assert body["exchange"] == "coinbase" and body["bps"] == 10
        assert [p["time"] for p in body["data"]] == [
            "2024-03-01T12:00:00.000000Z",
            "2024-03-01T12:00:01.000000Z",
            "2024-03-01T12:00:02.000000Z",
        ]
        first, gap, last = body["data"]
        # mid 100.05, 10 bps = 0.10005: bids from 99.94995, asks up to 100.15005
        assert first == {"time": first["time"], "valid": True, "best_bid": "100",
                         "best_ask": "100.1", "spread": "0.1", "mid": "100.05",
                         "bid_depth": "3", "ask_depth": "3"}  # fmt: skip
        assert gap["valid"] is False and gap["mid"] is None and gap["bid_depth"] is None
        assert last["spread"] == "0.01" and last["mid"] == "101.005"
        assert (last["bid_depth"], last["ask_depth"]) == ("1.5", "0.25")

        wide = {**window, "bps": 1100}  # 11.0055 each side: every level
        points = (await client.get("/v1/products/BTC-USD/book/series", params=wide)).json()
        assert points["data"][0]["bid_depth"] == "8" and points["data"][0]["ask_depth"] == "3.5"

        empty = {"start": "2024-03-02T00:00:00Z", "end": "2024-03-02T00:10:00Z"}
        none = (await client.get("/v1/products/BTC-USD/book/series", params=empty)).json()
        assert none["data"] == []
        too_long = {"start": "2024-03-01T10:00:00Z", "end": "2024-03-01T12:00:00Z"}
        bad = await client.get("/v1/products/BTC-USD/book/series", params=too_long)
        assert bad.status_code == 422 and "at most 3600 seconds" in bad.text
        backwards = {"start": "2024-03-01T12:00:00Z", "end": "2024-03-01T11:00:00Z"}
        bad = await client.get("/v1/products/BTC-USD/book/series", params=backwards)
        assert bad.status_code == 422 and "before end" in bad.text


async def receive(ws: ClientConnection, kind: str | None = None) -> dict[str, Any]:
    """The next message (of `kind`, skipping heartbeats and others when given)."""
    while True:
        message = dict(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        if kind is None or message["type"] == kind:
            return message


async def test_book_push_is_conflated_to_the_newest(api: Api) -> None:
    book = api.books.get("coinbase", "BTC-USD")
    assert book is not None
    url = api.base.replace("http", "ws") + "/v1/stream"
    async with connect(url) as ws:
        subscribe = {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["book"]}
        await ws.send(json.dumps({**subscribe, "depth": 51}))
        assert (await receive(ws))["message"] == "depth must be an integer from 1 to 50"
        await ws.send(json.dumps({**subscribe, "depth": "2"}))
        assert (await receive(ws))["type"] == "error"

        await ws.send(json.dumps({**subscribe, "depth": 2}))
        subs = await receive(ws, "subscriptions")
        assert subs["channels"] == [
            {"name": "book", "exchange": "coinbase", "product_ids": ["BTC-USD"]}
        ]
        first = await receive(ws, "book")  # the current book at once
        assert first["update_id"] == 41 and first["valid"] is True
        assert first["bids"] == [["65000.1", "0.5"], ["64999.5", "1.25"]]
        assert first["asks"] == [["65000.3", "0.1"], ["65001", "2"]]
        assert first["spread"] == "0.2" and first["mid"] == "65000.2"

        conflated = metrics.PUSH_CONFLATED._value.get()
        for n in range(1, 201):  # 200 changes before the sender can run: one message
            book.apply("bid", D("65000.2"), D(n))
            book.update_id = 41 + n
            api.books.changed(book)
        assert metrics.PUSH_CONFLATED._value.get() - conflated == 199
        newest = await receive(ws, "book")
        assert newest["update_id"] == 241
        assert newest["bids"] == [["65000.2", "200"], ["65000.1", "0.5"]]
        assert newest["spread"] == "0.1"
        quiet = await receive(ws)  # nothing of the book was queued behind the newest
        assert quiet["type"] == "heartbeat", quiet
        book.apply("ask", D("65000.3"), D(0))
        api.books.changed(book)
        after = await receive(ws, "book")
        assert after["update_id"] == 241 and after["asks"][0] == ["65001", "2"]


async def test_book_over_sse(api: Api) -> None:
    async with api.client() as client:
        params = {"product_ids": "BTC-USD", "channels": "book", "depth": 1}
        async with client.stream("GET", "/v1/stream/sse", params=params) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: ") and '"type":"book"' in line:
                    message = json.loads(line[6:])
                    break
        assert message["bids"] == [["65000.1", "0.5"]] and message["asks"] == [["65000.3", "0.1"]]
        bad = await client.get("/v1/stream/sse", params={**params, "depth": 51})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "depth"
