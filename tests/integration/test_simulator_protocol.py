"""The simulator speaks the Coinbase Exchange ws-feed and REST protocols, end to end over
real sockets, with the stock ``websockets`` and ``httpx`` clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from crypto_sentinel.simulator import Session, SimTrade, SimulatorServer
from tests.conftest import COINBASE_DATA

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]


def real_lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (COINBASE_DATA / name).read_text().splitlines()]


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def recv(ws: ClientConnection, timeout: float = 3.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_for(ws: ClientConnection, seconds: float) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            break
    return out


def subscribe(channels: list, product_ids: list[str] | None = None) -> str:
    msg: dict = {"type": "subscribe"}
    if product_ids is not None:
        msg["product_ids"] = product_ids
    msg["channels"] = channels
    return json.dumps(msg)


def emitted_after(server: SimulatorServer, last_ids: dict[str, int]) -> list[SimTrade]:
    return [t for t in server.market.emitted() if t.trade_id > last_ids[t.product_id]]


async def test_real_client_form_gets_acks_last_match_then_every_match_and_ticker() -> None:
    async with SimulatorServer(PRODUCTS, rate=200, seed=5, start_trade_id=1000) as server:
        await until(lambda: all(server.market.last_trade(p) for p in PRODUCTS))
        async with websockets.connect(server.ws_url) as ws:
            # One subscribe per channel, top-level product_ids: what the recorded client sent.
            recorded = real_lines("client_subscribe_requests.ndjson")
            request = dict(recorded[2], product_ids=PRODUCTS)
            assert request["channels"] == ["matches"]
            await ws.send(json.dumps(request))
            ack = await recv(ws)
            real_ack = real_lines("subscriptions.ndjson")[0]
            assert list(ack) == list(real_ack)
            assert ack == {
                "type": "subscriptions",
                "channels": [{"name": "matches", "product_ids": PRODUCTS}],
            }
            last_ids = {}
            for product in PRODUCTS:
                last = await recv(ws)
                assert last["type"] == "last_match" and last["product_id"] == product
                last_ids[product] = last["trade_id"]

            texts = [await asyncio.wait_for(ws.recv(), 3) for _ in range(60)]
            expected = [server.market.match_frame(t) for t in emitted_after(server, last_ids)]
            assert texts == expected[:60]  # byte-identical, contiguous, in emission order

            await ws.send(json.dumps(dict(recorded[1], product_ids=PRODUCTS)))  # + ticker
            frames = await recv_for(ws, 0.6)
        ack_at = next(i for i, f in enumerate(frames) if f["type"] == "subscriptions")
        assert frames[ack_at]["channels"] == [
            {"name": "matches", "product_ids": PRODUCTS},
            {"name": "ticker", "product_ids": PRODUCTS},
        ]
        assert all(f["type"] == "match" for f in frames[:ack_at])
        snapshots = frames[ack_at + 1 : ack_at + 4]
        assert [f["type"] for f in snapshots] == ["ticker"] * 3
        assert sorted(f["product_id"] for f in snapshots) == sorted(PRODUCTS)
        live = frames[ack_at + 4 :]
        if live and live[-1]["type"] == "match":
            live.pop()  # the time window closed between a match and its ticker
        assert len(live) > 40
        matches = [f for f in live if f["type"] == "match"]
        tickers = [f for f in live if f["type"] == "ticker"]
        assert len(tickers) == len(matches)
        for match, ticker in zip(live[::2], live[1::2], strict=True):
            assert (match["type"], ticker["type"]) == ("match", "ticker")
            assert ticker["trade_id"] == match["trade_id"]
            assert ticker["sequence"] == match["sequence"]
            assert ticker["side"] != match["side"]  # taker vs maker
        all_matches = [f for f in frames if f["type"] == "match"]
        for product in PRODUCTS:
            ids = [f["trade_id"] for f in all_matches if f["product_id"] == product]
            assert ids == list(range(ids[0], ids[0] + len(ids)))


async def test_channel_object_form_with_heartbeats_and_ticker() -> None:
    async with SimulatorServer(PRODUCTS, rate=200, seed=6, start_trade_id=1) as server:
        await until(lambda: server.emitted_count > 10)
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(
                subscribe(
                    [
                        {"name": "heartbeat", "product_ids": ["BTC-USD", "ETH-USD"]},
                        {"name": "ticker", "product_ids": ["SOL-USD"]},
                    ]
                )
            )
            ack = await recv(ws)
            assert ack["channels"] == [
                {"name": "heartbeat", "product_ids": ["BTC-USD", "ETH-USD"]},
                {"name": "ticker", "product_ids": ["SOL-USD"]},
            ]
            frames = await recv_for(ws, 2.3)
    types = {f["type"] for f in frames}
    assert types == {"heartbeat", "ticker"}
    assert {f["product_id"] for f in frames if f["type"] == "ticker"} == {"SOL-USD"}
    beats = [f for f in frames if f["type"] == "heartbeat"]
    for product in ("BTC-USD", "ETH-USD"):
        mine = [b for b in beats if b["product_id"] == product]
        assert len(mine) >= 2
        assert [b["time"] for b in mine] == sorted(b["time"] for b in mine)
        history = {t.trade_id: t for t in server.market.history(product)}
        for beat in mine:
            assert list(beat) == ["type", "last_trade_id", "product_id", "sequence", "time"]
            trade = history[beat["last_trade_id"]]  # a trade that really happened
            assert beat["sequence"] == trade.sequence
        assert mine[-1]["last_trade_id"] > mine[0]["last_trade_id"]
    assert "SOL-USD" not in {b["product_id"] for b in beats}


async def test_error_frames_then_a_valid_subscribe_still_works() -> None:
    real = real_lines("error.ndjson")
    async with (
        SimulatorServer(PRODUCTS, rate=50, seed=1, start_trade_id=1) as server,
        websockets.connect(server.ws_url) as ws,
    ):
        await ws.send(subscribe(["matches"], ["FOO-USD"]))
        err = await recv(ws)
        assert err == {
            "type": "error",
            "message": "Failed to subscribe",
            "reason": "FOO-USD is not a valid product",
        }
        assert list(err) == list(real[1])

        await ws.send(subscribe([], ["BTC-USD"]))
        err = await recv(ws)
        assert {k: err[k] for k in real[0]} == real[0]  # the real "No channels provided"

        await ws.send(subscribe(["heartbeat"]))
        err = await recv(ws)
        assert err["reason"] == (
            "You need to specify at least one product ID for channel heartbeat"
        )

        await ws.send("{not json")
        assert (await recv(ws))["type"] == "error"
        await ws.send('{"type":"ping"}')
        assert (await recv(ws))["type"] == "error"

        await ws.send(subscribe(["matches"], ["BTC-USD"]))
        ack = await recv(ws)  # errors left no partial subscription behind
        assert ack["channels"] == [{"name": "matches", "product_ids": ["BTC-USD"]}]
        frames = await recv_for(ws, 0.5)
        assert frames and {f["product_id"] for f in frames} == {"BTC-USD"}


async def test_connection_without_subscribe_is_closed() -> None:
    async with SimulatorServer(PRODUCTS, rate=50, subscribe_timeout=0.4) as server:
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(subscribe(["matches"], ["NOPE-USD"]))  # failed subscribes do not count
            assert (await recv(ws))["type"] == "error"
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 3)
            assert time.monotonic() - started < 2
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        await until(lambda: server.connection_count == 0)


async def test_unsubscribe_stops_a_channel() -> None:
    async with (
        SimulatorServer(PRODUCTS, rate=300, seed=2, start_trade_id=1) as server,
        websockets.connect(server.ws_url) as ws,
    ):
        await ws.send(subscribe(["matches", "ticker"], ["BTC-USD", "ETH-USD"]))
        await recv(ws)
        await recv_for(ws, 0.3)
        await ws.send(json.dumps({"type": "unsubscribe", "channels": ["ticker"]}))
        while (frame := await recv(ws))["type"] != "subscriptions":
            assert frame["type"] in ("match", "ticker", "last_match")
        assert frame["channels"] == [{"name": "matches", "product_ids": ["BTC-USD", "ETH-USD"]}]
        after = await recv_for(ws, 0.5)
        assert after and {f["type"] for f in after} == {"match"}

        unsub = {"type": "unsubscribe", "product_ids": ["BTC-USD"], "channels": ["matches"]}
        await ws.send(json.dumps(unsub))
        while (frame := await recv(ws))["type"] != "subscriptions":
            pass
        assert frame["channels"] == [{"name": "matches", "product_ids": ["ETH-USD"]}]
        after = await recv_for(ws, 0.5)
        assert after and {f["product_id"] for f in after} == {"ETH-USD"}


async def test_max_trades_stops_the_clock_and_rate_is_validated() -> None:
    for bad in (0, 0.5, 50_001):
        with pytest.raises(ValueError):
            SimulatorServer(rate=bad)
    async with SimulatorServer(PRODUCTS, rate=2000, max_trades=300, start_trade_id=1) as server:
        assert not server.done
        await asyncio.wait_for(server.wait_done(), 5)
        assert server.done
        await asyncio.sleep(0.1)
        assert len(server.market.emitted()) == 300 == server.emitted_count


async def test_rest_products_and_trade_pagination_walk_the_whole_history() -> None:
    products = ["BTC-USD", "ETH-USD"]
    real_products = json.loads((COINBASE_DATA / "rest_products.json").read_text())
    real_keys = list(real_products[0])
    async with (
        SimulatorServer(products, rate=10_000, max_trades=4000, start_trade_id=1) as server,
        httpx.AsyncClient(base_url=server.rest_url, timeout=5) as http,
    ):
        await asyncio.wait_for(server.wait_done(), 5)
        resp = await http.get("/products")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/json")
        assert [p["id"] for p in resp.json()] == products
        assert all(list(p) == real_keys for p in resp.json())
        resp = await http.get("/products/ETH-USD")
        assert resp.status_code == 200 and resp.json()["quote_increment"] == "0.01"

        history = server.market.history("BTC-USD")
        all_ids = [t.trade_id for t in history]
        assert len(all_ids) > 1500 and all_ids[0] == 1

        resp = await http.get("/products/BTC-USD/trades")
        assert resp.status_code == 200
        newest = resp.json()
        assert len(newest) == 1000  # default limit
        assert newest == [server.market.rest_trade(t) for t in reversed(history[-1000:])]
        item = newest[0]
        assert isinstance(item["trade_id"], int) and item["side"] in ("buy", "sell")
        assert item["side"] == history[-1].maker_side
        assert Decimal(item["price"]) == Decimal(history[-1].price)

        # Older pages with `after` until the beginning.
        seen: list[int] = []
        params: dict[str, int] = {"limit": 300}
        for _ in range(len(all_ids) // 300 + 2):
            resp = await http.get("/products/BTC-USD/trades", params=params)
            assert resp.status_code == 200
            page = [t["trade_id"] for t in resp.json()]
            if not page:
                assert "cb-after" not in resp.headers
                break
            assert len(page) <= 300 and page == sorted(page, reverse=True)
            assert resp.headers["cb-before"] == str(page[0])
            assert resp.headers["cb-after"] == str(page[-1])
            seen += page
            params = {"limit": 300, "after": int(resp.headers["cb-after"])}
        else:
            pytest.fail("paging with `after` did not reach the oldest trade")
        assert seen == all_ids[::-1]

        # Newer pages with `before`, starting below the oldest trade.
        forward: list[int] = []
        params = {"limit": 250, "before": 0}
        for _ in range(len(all_ids) // 250 + 2):
            resp = await http.get("/products/BTC-USD/trades", params=params)
            page = [t["trade_id"] for t in resp.json()]
            if not page:
                break
            assert page == sorted(page, reverse=True) and len(page) <= 250
            forward += page[::-1]
            params = {"limit": 250, "before": int(resp.headers["cb-before"])}
        else:
            pytest.fail("paging with `before` did not reach the newest trade")
        assert forward == all_ids

        resp = await http.get("/products/FOO-USD/trades")
        assert (resp.status_code, resp.json()) == (404, {"message": "NotFound"})
        resp = await http.get("/nothing/here")
        assert resp.status_code == 404
        for query in ("limit=0", "limit=1001", "limit=abc", "after=-1", "before=x", "limit="):
            resp = await http.get(f"/products/BTC-USD/trades?{query}")
            assert resp.status_code == 400, query
            assert isinstance(resp.json()["message"], str)


def small_buffer_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, so a non-reading client backs up fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_slow_consumer_is_disconnected_without_stalling_others() -> None:
    async with SimulatorServer(
        PRODUCTS, rate=3000, seed=3, start_trade_id=1, send_buffer_limit=64 * 1024
    ) as server:
        slow = await websockets.connect(
            server.ws_url, sock=small_buffer_socket(server.port), max_queue=1
        )
        fast = await websockets.connect(server.ws_url)
        await slow.send(subscribe(["matches", "ticker"], PRODUCTS))
        await fast.send(subscribe(["matches"], ["BTC-USD"]))
        await recv(fast)
        received: list[dict] = []

        async def read_fast() -> None:
            while True:
                received.append(await recv(fast))

        reader = asyncio.create_task(read_fast())
        before = server.emitted_count
        await until(lambda: server.slow_disconnects == 1, timeout=8)
        # The slow client now reads what it was sent: the server's close frame comes after
        # it (the server waits 2 s for the close handshake before it aborts the socket).
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(slow.recv(), 5)
        rcvd = closed.value.rcvd
        assert rcvd is not None, "no close frame: the connection was dropped without one"
        assert (rcvd.code, rcvd.reason) == (1008, "ErrSlowConsume")
        await until(lambda: server.connection_count == 1, timeout=5)
        mark = server.emitted_count
        await until(lambda: server.emitted_count > mark, timeout=5)  # the clock kept running
        assert mark > before

        await fast.close()  # the reader keeps reading, so it sees the server's close frame
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(reader, 3)
        ids = [f["trade_id"] for f in received if f["type"] == "match"]
        assert len(ids) > 50 and ids == list(range(ids[0], ids[0] + len(ids)))


class DuplicateMatches:
    """A fault hook: sees every outbound frame and sends each match twice."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def outbound(self, session: Session, frame: str) -> list[str]:
        self.seen.append(frame)
        return [frame, frame] if frame.startswith('{"type":"match"') else [frame]


async def test_every_outbound_frame_passes_the_fault_hook() -> None:
    hook = DuplicateMatches()
    async with (
        SimulatorServer(["BTC-USD"], rate=200, start_trade_id=1, faults=hook) as server,
        websockets.connect(server.ws_url) as ws,
    ):
        await ws.send(subscribe(["matches", "heartbeat"], ["BTC-USD"]))
        frames = await recv_for(ws, 1.2)
    assert frames[0]["type"] == "subscriptions"
    once = [f for i, f in enumerate(frames) if not (f["type"] == "match" and f == frames[i - 1])]
    seen = [json.loads(f) for f in hook.seen]
    assert seen[: len(once)] == once  # the hook saw exactly what was sent, in order
    matches = [f["trade_id"] for f in frames if f["type"] == "match"]
    if len(matches) % 2:
        matches.pop()  # the window closed between a match and its duplicate
    assert len(matches) > 20 and matches[::2] == matches[1::2]
    assert any(f["type"] == "heartbeat" for f in frames)


async def test_run_forever_serves_until_cancelled() -> None:
    server = SimulatorServer(["ETH-USD"], rate=100, start_trade_id=1)
    task = asyncio.create_task(server.run_forever())
    await until(lambda: server.port != 0 and server.emitted_count > 0)
    async with httpx.AsyncClient(base_url=server.rest_url) as http:
        resp = await http.get("/products/ETH-USD/trades", params={"limit": 1})
        assert resp.status_code == 200 and len(resp.json()) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=server.rest_url) as http:
            await http.get("/products")


async def test_restart_keeps_port_and_continues_ids() -> None:
    """Stopping and starting the same server models an exchange outage for reconnect tests."""
    server = SimulatorServer(["BTC-USD"], rate=300, start_trade_id=1)
    await server.start()
    try:
        port = server.port
        await until(lambda: server.emitted_count >= 20)
        await server.stop()
        last = server.market.last_trade("BTC-USD")
        assert last is not None
        await asyncio.sleep(0.2)
        assert server.market.last_trade("BTC-USD") == last  # no trades while down
        await server.start()
        assert server.port == port
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(subscribe(["matches"], ["BTC-USD"]))
            await recv(ws)
            ids = [(await recv(ws))["trade_id"] for _ in range(10)]
        assert ids[0] >= last.trade_id and ids == list(range(ids[0], ids[0] + 10))
    finally:
        await server.stop()
