"""Live push over real sockets: the simulator streams into the pipeline, clients subscribe over
WebSocket (`websockets`) or SSE (httpx), and what they receive is checked against what the
simulator emitted and what the lake stored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from crypto_sentinel.api.stream import Hub
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import GapRecord
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.simulator import SimTrade, SimulatorServer
from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec
from crypto_sentinel.verify import verify
from tests.conftest import free_port, read_table
from tests.served import served_pipeline

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]


async def live(lake: Path, **overrides: Any) -> AsyncIterator[Pipeline]:
    options = {"simulator_rate": 500, "simulator_seed": 5, "api_heartbeat_seconds": 0.2,
               **overrides}  # fmt: skip
    async for _, pipeline in served_pipeline(
        lake, source="simulator", products=",".join(PRODUCTS), batch_interval_ms=100, **options
    ):
        yield pipeline


@pytest.fixture
async def pipeline(lake: Path) -> AsyncIterator[Pipeline]:
    async for p in live(lake):
        yield p


def base(pipeline: Pipeline) -> str:
    return f"http://127.0.0.1:{pipeline.settings.port}"


def ws_url(pipeline: Pipeline) -> str:
    return f"ws://127.0.0.1:{pipeline.settings.port}/v1/stream"


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


async def receive(ws: ClientConnection, timeout: float = 10) -> dict:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def until(cond: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 20) -> None:
    """Poll `cond` (sync or async) until it holds; fail naming `what` past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        done = cond()
        if done if isinstance(done, bool) else await done:
            return
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.1)


async def next_of(ws: ClientConnection, kind: str) -> dict:
    while True:
        msg = await receive(ws)
        if msg["type"] == kind:
            return msg


async def test_trades_are_pushed_complete_and_exact(pipeline: Pipeline, lake: Path) -> None:
    async with connect(ws_url(pipeline)) as ws:
        await send(ws, type="subscribe", product_ids=["BTC-USD"], channels=["trades"])
        ack = await receive(ws)
        assert ack == {"type": "subscriptions", "channels": [
            {"name": "trades", "exchange": "simulator", "product_ids": ["BTC-USD"]}]}  # fmt: skip
        trades = []
        while len(trades) < 150:
            msg = await receive(ws)
            assert msg["type"] in ("trade", "heartbeat")
            if msg["type"] == "trade":
                trades.append(msg)
    assert {t["product_id"] for t in trades} == {"BTC-USD"}
    ids = [t["trade_id"] for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "contiguous: none lost or reordered"
    emitted = {t.trade_id: t for t in pipeline.simulator.market.emitted()
               if t.product_id == "BTC-USD"}  # fmt: skip
    for t in trades:
        assert Decimal(t["price"]) == Decimal(emitted[t["trade_id"]].price)
        assert Decimal(t["size"]) == Decimal(emitted[t["trade_id"]].size)
        assert t["exchange"] == "simulator" and t["recv_time"].endswith("Z")
    stored: dict[tuple[str, int], dict] = {}

    def committed() -> bool:
        stored.update(
            ((r["product_id"], r["trade_id"]), r) for r in read_table(lake, T.TRADES).to_pylist()
        )
        return all(("BTC-USD", t["trade_id"]) in stored for t in trades)

    await until(committed, "every pushed trade in the lake")
    for t in trades:
        row = stored[("BTC-USD", t["trade_id"])]
        assert (Decimal(t["price"]), Decimal(t["size"]), t["side"]) == (
            row["price"], row["size"], row["side"])  # fmt: skip


async def test_ticker_snapshot_then_updates(pipeline: Pipeline) -> None:
    async with connect(ws_url(pipeline)) as ws:
        await send(ws, type="subscribe", product_ids=["ETH-USD"], channels=["ticker"])
        assert (await receive(ws))["type"] == "subscriptions"
        first = await next_of(ws, "ticker")  # the snapshot, sent at once
        later = await next_of(ws, "ticker")
    assert first["product_id"] == later["product_id"] == "ETH-USD"
    assert later["sequence"] > first["sequence"]
    for t in (first, later):
        assert Decimal(t["best_bid"]) <= Decimal(t["best_ask"]) and t["source"] == "ticker"


async def test_candle_updates_end_equal_to_rest_and_lake(lake: Path) -> None:
    """After the simulator stops, the last pushed candle of each bucket is the final one."""
    async for pipeline in live(lake, simulator_rate=1000, simulator_max_trades=3000):
        channels = ["candles:60", "candles:3600"]
        async with connect(ws_url(pipeline)) as ws:
            await send(ws, type="subscribe", product_ids=["SOL-USD"], channels=channels)
            last: dict[tuple[int, str], dict] = {}
            counts: dict[tuple[int, str], int] = {}
            quiet = 0
            while quiet < 3:  # three heartbeats in a row: the stream has ended
                msg = await receive(ws)
                if msg["type"] == "candle":
                    key = (msg["granularity"], msg["start"])
                    assert msg["trade_count"] >= counts.get(key, 0), "updates only grow"
                    counts[key] = msg["trade_count"]
                    last[key] = msg
                    quiet = 0
                elif msg["type"] == "heartbeat" and pipeline.simulator.done:
                    quiet += 1
        assert {g for g, _ in last} == {60, 3600}
        sol = sum(t.product_id == "SOL-USD" for t in pipeline.simulator.market.emitted())

        def committed(want: int = sol) -> bool:
            rows = read_table(lake, T.CANDLES_1M).to_pylist()
            return sum(r["trade_count"] for r in rows if r["product_id"] == "SOL-USD") == want

        await until(committed, "every SOL-USD trade in the lake's 1-minute candles")
        async with httpx.AsyncClient(base_url=base(pipeline)) as client:
            for (g, start), pushed in last.items():
                begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
                end = begin + timedelta(seconds=g)
                params = {"granularity": g, "start": begin.isoformat(), "end": end.isoformat()}
                r = await client.get("/v1/products/SOL-USD/candles", params=params)
                (rest,) = [c for c in r.json()["data"] if c["start"] == start]
                assert rest["gap"] is pushed["gap"] is False  # no unfilled gap in this run
                assert rest["complete"] is pushed["complete"] is True  # nothing lost either
                assert {k: v for k, v in pushed.items() if k not in ("type", "product_id",
                        "exchange", "forming")} == {k: v for k, v in rest.items()
                                                    if k != "forming"}  # fmt: skip
        stored = [r for r in read_table(lake, T.CANDLES_1M).to_pylist()
                  if r["product_id"] == "SOL-USD"]  # fmt: skip
        minutes = {(60, r["start"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")): r for r in stored}
        for key, pushed in last.items():
            if key[0] == 60:
                row = minutes[key]
                assert pushed["trade_count"] == row["trade_count"]
                assert Decimal(pushed["close"]) == row["close"]
                assert Decimal(pushed["volume"]) == row["volume"]


async def test_pushed_candle_carries_the_gap_flag(lake: Path) -> None:
    """An unfilled gap recorded in bronze.gaps flags the pushed candle that overlaps it, as
    the REST candle of that bucket, and no other product's."""
    async for pipeline in live(lake, simulator_rate=100):
        async with connect(ws_url(pipeline)) as ws:
            await send(ws, type="subscribe", product_ids=PRODUCTS, channels=["candles:86400"])
            sim = pipeline.simulator
            await until(lambda: len(sim.market.emitted()) >= 50, "50 trades")  # noqa: B023
            victim = next(t for t in reversed(pipeline.simulator.market.emitted())
                          if t.product_id == "BTC-USD")  # fmt: skip
            record = GapRecord(
                "simulator", "BTC-USD", "trade_id", victim.time, victim.trade_id,
                victim.trade_id, 1, 0, "unfilled", time.time_ns(), "rest-test",
            )  # fmt: skip
            LakeWriter(lake, "gap-test").commit(Batch(version=1, gaps=[record]))
            day = victim.time.strftime("%Y-%m-%dT00:00:00.000000Z")
            flags: dict[str, bool] = {}
            deadline = time.monotonic() + 30  # the flags are re-read every few seconds
            while not flags.get("BTC-USD"):
                assert time.monotonic() < deadline, f"no flagged BTC-USD candle: {flags}"
                msg = await receive(ws)
                if msg["type"] == "candle" and msg["start"] == day:
                    flags[msg["product_id"]] = msg["gap"]
            while len(flags) < len(PRODUCTS):
                msg = await receive(ws)
                if msg["type"] == "candle" and msg["start"] == day:
                    flags[msg["product_id"]] = msg["gap"]
        assert flags == {"BTC-USD": True, "ETH-USD": False, "SOL-USD": False}
        async with httpx.AsyncClient(base_url=base(pipeline)) as client:
            params = {"granularity": 86400, "start": day}
            for product, flag in flags.items():
                r = await client.get(f"/v1/products/{product}/candles", params=params)
                (rest,) = [c for c in r.json()["data"] if c["start"] == day]
                assert rest["gap"] is flag, product


class RestDown(FaultPlan):
    """Simulator faults whose REST trades endpoint refuses every request (HTTP 404): the
    backfill cannot fill a single gap, so each ends in an unfilled gap record."""

    def rest_fault(self) -> tuple[float, int | None]:
        return 0.0, 404


async def test_candles_are_incomplete_exactly_where_trades_were_lost(lake: Path) -> None:
    """The simulator hides an outage's matches and its REST fails: pushed candles and REST
    candles say `complete` false exactly for the minutes the lost ids touch (from the stored
    trade before them to the one after), true for every other; verify agrees per hour."""
    spec = FaultSpec(seed=31, hide_from=600, hide_count=60)
    total = 1500
    async with SimulatorServer(
        PRODUCTS, rate=500, seed=31, max_trades=total, faults=RestDown(spec),
        wait_for_subscriber=True,
    ) as sim:  # fmt: skip
        async for pipeline in live(lake, simulator_url=sim.ws_url, idle_timeout=3):
            pushed: dict[tuple[str, str], dict] = {}
            async with connect(ws_url(pipeline)) as ws:
                await send(ws, type="subscribe", product_ids=PRODUCTS, channels=["candles:60"])
                quiet = 0
                while quiet < 3:  # three heartbeats in a row once the gaps are recorded
                    msg = await receive(ws)
                    if msg["type"] == "candle":
                        pushed[(msg["product_id"], msg["start"])] = msg
                        quiet = 0
                    elif msg["type"] == "heartbeat" and sim.done and recorded(pipeline):
                        quiet += 1
            emitted = sim.market.emitted()
            plan = FaultPlan(spec)
            hidden = {(t.product_id, t.trade_id) for i, t in enumerate(emitted)
                      if plan.hides(i, t.product_id, total)}  # fmt: skip
            assert len(hidden) == 60
            batches = pipeline.engine.stats.batches
            await until(  # the last frames committed
                lambda: pipeline.engine.stats.batches >= batches + 2,  # noqa: B023
                "two more commits",
            )
            stored = read_table(lake, T.TRADES).num_rows
            assert stored == len(emitted) - len(hidden)
            gaps = read_table(lake, T.GAPS).to_pylist()
            assert {g["outcome"] for g in gaps} == {"unfilled"}
            async with httpx.AsyncClient(base_url=base(pipeline)) as client:
                for product in PRODUCTS:
                    spans = lost_spans([t for t in emitted if t.product_id == product], hidden)
                    assert len(spans) == 1  # one outage: one run of lost ids per product
                    r = await client.get(f"/v1/products/{product}/candles")
                    candles = r.json()["data"]
                    assert candles
                    for c in candles:
                        start = datetime.fromisoformat(c["start"])
                        hit = any(lo < start + timedelta(minutes=1) and hi >= start
                                  for lo, hi in spans)  # fmt: skip
                        assert c["complete"] is not hit, (product, c["start"], spans)
                        assert pushed[(product, c["start"])]["complete"] is c["complete"]
            assert any(not c["complete"] for c in pushed.values())
            reports = {r.product_id: r for r in await verify(lake, "simulator", sim.rest_url,
                                                              None, all_minutes=False)}  # fmt: skip
            async with httpx.AsyncClient(base_url=base(pipeline)) as client:
                for product in PRODUCTS:
                    r = await client.get(f"/v1/products/{product}/candles")
                    want = {datetime.fromisoformat(c["start"]) for c in r.json()["data"]
                            if not c["complete"]}  # fmt: skip
                    report = reports[product]
                    got = {datetime.fromisoformat(m) for h in report.hours
                           for m in h["incomplete"]}  # fmt: skip
                    assert got == want and report.incomplete_minutes == len(want)
                    assert not report.ok
                    for h in report.hours:
                        assert h["complete"] is (h["complete_minutes"] == h["minutes"])
                        assert h["minutes"] == h["complete_minutes"] + len(h["incomplete"])


def recorded(pipeline: Pipeline) -> bool:
    """Every gap the source reported has its record committed."""
    source = pipeline.source
    return (
        source is not None
        and source.status.gap_records > 0
        and pipeline.engine.stats.gap_records >= source.status.gap_records
    )


def lost_spans(
    trades: list[SimTrade], hidden: set[tuple[str, int]]
) -> list[tuple[datetime, datetime]]:
    """Per run of lost ids of one product: the times of the stored trades around it."""
    spans = []
    before: SimTrade | None = None
    lost = False
    for trade in sorted(trades, key=lambda t: t.trade_id):
        if (trade.product_id, trade.trade_id) in hidden:
            lost = True
            continue
        if lost and before is not None:
            spans.append((before.time, trade.time))
        before, lost = trade, False
    return spans


async def test_protocol_errors_ping_and_unsubscribe(pipeline: Pipeline) -> None:
    async with connect(ws_url(pipeline)) as ws:
        await send(ws, type="ping")
        assert (await next_of(ws, "pong")) == {"type": "pong"}
        await ws.send("not json")
        assert (await next_of(ws, "error"))["message"] == "not JSON"
        await send(ws, type="subscribe", product_ids=["BTC-USD"], channels=["candles:7"])
        assert "unknown channel" in (await next_of(ws, "error"))["message"]
        await send(ws, type="subscribe", product_ids=["NOPE-USD"], channels=["trades"])
        assert "unknown product" in (await next_of(ws, "error"))["message"]
        await send(ws, type="subscribe", product_ids="BTC-USD", channels=["trades"])
        assert "list of strings" in (await next_of(ws, "error"))["message"]
        await send(ws, type="dance")
        assert "subscribe, unsubscribe or ping" in (await next_of(ws, "error"))["message"]
        await send(ws, type="subscribe", product_ids=["BTC-USD", "ETH-USD"], channels=["trades"])
        await next_of(ws, "trade")
        await send(ws, type="unsubscribe", product_ids=["BTC-USD"], channels=["trades"])
        ack = await next_of(ws, "subscriptions")
        while ack["channels"][0]["product_ids"] != ["ETH-USD"]:
            ack = await next_of(ws, "subscriptions")
        products = set()
        beats = 0
        while beats < 3:
            msg = await receive(ws)
            beats += msg["type"] == "heartbeat"
            if msg["type"] == "trade":
                products.add(msg["product_id"])
        assert products == {"ETH-USD"}
        await send(ws, type="unsubscribe", product_ids=["ETH-USD"], channels=["trades"])
        assert (await next_of(ws, "subscriptions"))["channels"] == []
        assert pipeline.engine.stats.trades > 0


async def test_heartbeats_without_subscriptions(pipeline: Pipeline) -> None:
    async with connect(ws_url(pipeline)) as ws:
        beats = [await receive(ws), await receive(ws), await receive(ws)]
    assert [b["type"] for b in beats] == ["heartbeat"] * 3
    assert [b["sequence"] for b in beats] == [1, 2, 3]  # counted per connection


async def test_server_sent_events(pipeline: Pipeline) -> None:
    params = {"product_ids": "BTC-USD,SOL-USD", "channels": "trades,candles:300"}
    events: list[tuple[str, dict]] = []
    async with (
        httpx.AsyncClient(base_url=base(pipeline), timeout=10) as client,
        client.stream("GET", "/v1/stream/sse", params=params) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
            if sum(n == "trade" for n, _ in events) >= 40 and any(
                n == "heartbeat" for n, _ in events
            ):
                break  # fmt: skip
    assert events[0][0] == "subscriptions"
    assert all(name == data["type"] for name, data in events)
    trades = [d for n, d in events if n == "trade"]
    assert {t["product_id"] for t in trades} <= {"BTC-USD", "SOL-USD"}
    for product in ("BTC-USD", "SOL-USD"):
        ids = [t["trade_id"] for t in trades if t["product_id"] == product]
        assert ids == sorted(ids)
    candles = [d for n, d in events if n == "candle"]
    assert candles and all(c["granularity"] == 300 and c["forming"] for c in candles)
    await until(  # the server notices the client left and forgets it
        lambda: not any(c.transport == "sse" for c in hub_of(pipeline).clients),
        "the SSE client forgotten after it left",
        timeout=5,
    )


def hub_of(pipeline: Pipeline) -> Hub:
    assert pipeline.server is not None
    return pipeline.server.config.app.state.ctx.hub  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def sentinel_up(lake: Path, **env: str) -> AsyncIterator[str]:
    """`sentinel up` in its own process (so the test's clients do not share its CPU)."""
    port = free_port()
    settings = {"SOURCE": "simulator", "LAKE_DIR": str(lake), "PORT": str(port),
                "PRODUCTS": ",".join(PRODUCTS), "LOG_LEVEL": "WARNING", **env}  # fmt: skip
    environ = {**os.environ, **{f"SENTINEL_{k}": v for k, v in settings.items()}}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crypto_sentinel.cli", "up", env=environ,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(300):
                assert proc.returncode is None, "sentinel up exited"
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("sentinel up did not become ready")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()


async def test_slow_client_is_dropped_and_never_slows_the_pipeline(lake: Path) -> None:
    """A client that stops reading fills the kernel's socket buffers (up to 4 MB on
    loopback, so no compression here), then its 1000-message queue, and is dropped; a
    client that reads goes on being served and the pipeline takes every trade."""
    total = 24_000
    async with sentinel_up(
        lake, SIMULATOR_RATE="3000", SIMULATOR_MAX_TRADES=str(total), API_STREAM_QUEUE="1000",
        API_HEARTBEAT_SECONDS="0.2",
    ) as url, httpx.AsyncClient(base_url=url) as http:  # fmt: skip
        ws = url.replace("http", "ws") + "/v1/stream"
        sub = json.dumps({"type": "subscribe", "product_ids": PRODUCTS, "channels": ["trades"]})
        slow_sock = socket.socket()
        slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow_sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        async with (
            connect(ws, sock=slow_sock, max_queue=1, compression=None) as slow,
            connect(ws) as reader,
        ):
            await slow.send(sub)  # and then it stops reading
            await reader.send(sub)
            health: dict = {}
            received = 0
            while not health.get("push", {}).get("dropped"):
                for _ in range(200):
                    received += (await receive(reader))["type"] == "trade"
                health = (await http.get("/health")).json()
                assert health["source"]["frames"] < 3 * total, "the slow client was not dropped"
            assert health["push"] == {"clients": 2, "dropped": 1} or health["push"] == {
                "clients": 1, "dropped": 1}  # fmt: skip
            after_drop = 0
            while after_drop < 300:  # the reader is still served
                after_drop += (await receive(reader))["type"] == "trade"
            # the slow reader finally reads: what was buffered, then the error and a close
            last: dict = {}
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    last = json.loads(await asyncio.wait_for(slow.recv(), 10))
            assert last["type"] == "error" and "slow consumer" in last["message"]
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013

        async def took_all() -> bool:
            nonlocal health
            health = (await http.get("/health")).json()
            return bool(health["engine"]["trades"] == total)

        await until(took_all, f"the pipeline took all {total} trades", timeout=30)
        assert health["push"]["dropped"] == 1
        metrics = (await http.get("/metrics")).text
        assert 'sentinel_push_dropped_clients_total{transport="websocket"} 1.0' in metrics


async def test_rest_flags_the_forming_candle_and_sees_live_trades(pipeline: Pipeline) -> None:
    async with httpx.AsyncClient(base_url=base(pipeline)) as client:

        async def flowing() -> bool:
            r = await client.get("/latest", params={"symbol": "BTC-USD", "limit": 1})
            return bool(r.json()["data"])

        await until(flowing, "a BTC-USD trade at /latest")
        for g in (3600, 86400):
            r = await client.get("/v1/products/BTC-USD/candles", params={"granularity": g})
            data = r.json()["data"]
            assert data[0]["forming"] is True and data[0]["trade_count"] > 0
            assert all(c["forming"] is False for c in data[1:])
        newest = (await client.get("/latest", params={"symbol": "BTC-USD", "limit": 1})).json()
        trade_id = newest["data"][0]["trade_id"]
        page = (await client.get("/v1/products/BTC-USD/trades", params={"limit": 5})).json()
        assert page["data"][0]["trade_id"] >= trade_id
        ticker = (await client.get("/v1/products/BTC-USD/ticker")).json()
        assert ticker["source"] == "ticker" and ticker["trade_id"] >= trade_id


async def test_client_limit_is_enforced(lake: Path) -> None:
    async for pipeline in live(lake, api_stream_max_clients=1):
        async with connect(ws_url(pipeline)) as first:
            assert (await receive(first))["type"] == "heartbeat"
            async with connect(ws_url(pipeline)) as second:
                with pytest.raises(ConnectionClosed) as closed:
                    await receive(second)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
                assert closed.value.rcvd.reason == "too many stream clients"
            async with httpx.AsyncClient(base_url=base(pipeline)) as client:
                r = await client.get("/v1/stream/sse", params={"product_ids": "BTC-USD"})
                assert r.status_code == 503
                assert r.json() == {"error": "too many stream clients", "status": 503}
            await send(first, type="ping")
            assert (await next_of(first, "pong")) == {"type": "pong"}
