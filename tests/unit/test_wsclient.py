"""The feeds' WebSocket client (sources/wsclient.py) against a real `websockets` server on
127.0.0.1: whole and fragmented messages, the peer's close, the size limit, a paused socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from crypto_sentinel.sources import wsclient
from crypto_sentinel.sources.wsclient import ConnectionClosed, connect

Handler = Callable[[ServerConnection], Awaitable[None]]


async def with_server(handler: Handler, client: Callable[[str], Awaitable[Any]]) -> Any:
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        return await asyncio.wait_for(client(f"ws://127.0.0.1:{port}"), 20)


def test_messages_arrive_whole_and_in_order_then_the_close_is_raised() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("first")
        await ws.send(b"\x00binary")
        await ws.send(["frag", "mented ", "caf\u00e9"])  # one text message in three frames
        await ws.close(4000, "venue restart")

    async def client(url: str) -> tuple[list[str | bytes], str]:
        got: list[str | bytes] = []
        async with connect(url, 1 << 20, 5.0) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    got.append(await ws.recv())
        return got, str(closed.value)

    got, why = asyncio.run(with_server(handler, client))
    assert got == ["first", b"\x00binary", "fragmented caf\u00e9"]
    assert "4000" in why and "venue restart" in why


def test_a_message_over_the_limit_ends_the_connection() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("small")
        await ws.send("x" * 5000)
        await ws.send("after")
        await ws.wait_closed()

    async def client(url: str) -> list[str | bytes]:
        got: list[str | bytes] = []
        async with connect(url, 1000, 5.0) as ws:
            with pytest.raises(ConnectionClosed):
                while True:
                    got.append(await ws.recv())
        return got

    assert asyncio.run(with_server(handler, client)) == ["small"]


def test_a_fragmented_message_over_the_limit_ends_the_connection() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(["y" * 600, "y" * 600])  # each frame under the limit, the message over
        await ws.wait_closed()

    async def client(url: str) -> list[str | bytes]:
        got: list[str | bytes] = []
        async with connect(url, 1000, 5.0) as ws:
            with pytest.raises(ConnectionClosed, match="size limit"):
                while True:
                    got.append(await ws.recv())
        return got

    assert asyncio.run(with_server(handler, client)) == []


def test_a_slow_reader_pauses_the_socket_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wsclient, "HIGH_WATER", 50)
    monkeypatch.setattr(wsclient, "LOW_WATER", 10)
    total = 3000

    async def handler(ws: ServerConnection) -> None:
        for i in range(total):
            await ws.send(str(i))
        await ws.wait_closed()

    async def client(url: str) -> tuple[list[str | bytes], bool, int]:
        async with connect(url, 1 << 20, 5.0) as ws:
            await asyncio.sleep(0.5)  # the server sends while nothing reads
            listener = ws._listener
            paused, queued = listener.paused, len(listener.messages)
            got = [await ws.recv() for _ in range(total)]
        return got, paused, queued

    got, paused, queued = asyncio.run(with_server(handler, client))
    assert got == [str(i) for i in range(total)]
    assert paused and queued < total  # reading stopped near the high-water mark


def test_sent_text_reaches_the_server() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("echo:" + str(await ws.recv()))
        await ws.wait_closed()

    async def client(url: str) -> str | bytes:
        async with connect(url, 1 << 20, 5.0) as ws:
            await ws.send('{"type":"subscribe"}')
            return await ws.recv()

    assert asyncio.run(with_server(handler, client)) == 'echo:{"type":"subscribe"}'


def test_no_server_is_an_os_error() -> None:
    async def client() -> None:
        async with connect("ws://127.0.0.1:9/", 1 << 20, 2.0):
            pass

    with pytest.raises((OSError, wsclient.WSError)):
        asyncio.run(client())


def test_recv_many_takes_every_waiting_message_in_order() -> None:
    total = 500

    async def handler(ws: ServerConnection) -> None:
        for i in range(total):
            await ws.send(str(i))
        await ws.close()

    async def client(url: str) -> tuple[list[str | bytes], int]:
        got: list[str | bytes] = []
        calls = 0
        async with connect(url, 1 << 20, 5.0) as ws:
            await asyncio.sleep(0.3)  # let them queue up
            with pytest.raises(ConnectionClosed):
                while True:
                    got += await ws.recv_many()
                    calls += 1
        return got, calls

    got, calls = asyncio.run(with_server(handler, client))
    assert got == [str(i) for i in range(total)]
    assert calls < total  # taken by the many, not one by one


def clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http", "https", "ws", "wss", "socks", "all", "no"):
        monkeypatch.delenv(f"{name}_proxy", raising=False)
        monkeypatch.delenv(f"{name.upper()}_PROXY", raising=False)


def test_the_proxy_is_the_one_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_proxies(monkeypatch)
    assert wsclient.system_proxy("wss://ws-feed.exchange.coinbase.com") is None
    monkeypatch.setenv("http_proxy", "http://plain:3128")
    assert wsclient.system_proxy("wss://ws-feed.exchange.coinbase.com") is None  # not for wss
    assert wsclient.system_proxy("ws://127.0.0.1:9000/feed") == "http://plain:3128"
    monkeypatch.setenv("https_proxy", "http://tls:3128")
    assert wsclient.system_proxy("wss://ws-feed.exchange.coinbase.com") == "http://tls:3128"
    assert wsclient.system_proxy("ws://127.0.0.1:9000/feed") == "http://tls:3128"
    monkeypatch.setenv("no_proxy", "ws-feed.exchange.coinbase.com")
    assert wsclient.system_proxy("wss://ws-feed.exchange.coinbase.com") is None
    assert wsclient.system_proxy("wss://stream.binance.com:9443/ws") == "http://tls:3128"


def test_a_feed_goes_through_the_http_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real CONNECT proxy on 127.0.0.1 between the client and the server."""
    clear_proxies(monkeypatch)
    tunnels: list[bytes] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        tunnels.append(head.split(b"\r\n")[0])
        host, port = head.split()[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def handler(ws: ServerConnection) -> None:
        await ws.send("through the proxy")
        await ws.wait_closed()

    async def client(url: str) -> str | bytes:
        proxy = await asyncio.start_server(tunnel, "127.0.0.1", 0)
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
        async with proxy, connect(url, 1 << 20, 5.0) as ws:
            return await ws.recv()

    assert asyncio.run(with_server(handler, client)) == "through the proxy"
    assert len(tunnels) == 1 and tunnels[0].startswith(b"CONNECT 127.0.0.1:")


def test_a_peer_that_hangs_up_at_once_is_a_closed_connection() -> None:
    """Accepted, then reset before the handshake (a proxy refusing for a while): an OSError
    the feed reconnects after, not some other error that would end the source."""

    async def client() -> None:
        async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.transport.abort()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        async with server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            for _ in range(2):
                with pytest.raises(OSError):  # ConnectionClosed, or a reset picows saw
                    async with connect(url, 1 << 20, 5.0):
                        pass

    asyncio.run(client())
