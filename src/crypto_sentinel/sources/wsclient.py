"""The live feeds' WebSocket client: picows (a Cython client) behind a small `recv`/`send`
interface.

Why picows and not `websockets`: measured on this 2-core machine, draining the same local feed
of 400,018 recorded frames, a `websockets` client received 145,608 frames/s and a picows one
1,194,662 (docs/benchmarks.md); the `websockets` frame parser was a third of `sentinel up`'s
time at full speed. picows hands over frames in a callback; this module turns them into
whole messages (fragments joined, text checked as UTF-8, size capped) and queues them for
`recv`, pausing the socket while the queue is full so a slow engine slows the feed instead of
growing memory. A connection that ends, however it ends, raises `ConnectionClosed` from `recv`
after the messages that arrived before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import AsyncIterator

from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

__all__ = ["ConnectionClosed", "FeedConnection", "WSError", "connect"]

#: Messages queued before the socket is paused, and the level at which it resumes.
HIGH_WATER = 1024
_TEXT = WSMsgType.TEXT
LOW_WATER = 256
#: A connection with no incoming data this long is pinged; no pong within as long: closed.
PING_SECONDS = 20.0


class ConnectionClosed(ConnectionError):
    """The connection ended: closed by the venue, broken, or failed by a protocol error."""


class _Listener(WSListener):
    """picows's callbacks: whole messages into a queue, the end of the connection noted."""

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size
        self.messages: deque[str | bytes] = deque()
        self.closed: ConnectionClosed | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.transport: WSTransport | None = None
        self._parts: list[bytes] = []
        self._parts_type = WSMsgType.TEXT
        self._parts_size = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # The common frame first, in as few steps as it takes: a whole text message.
        if (
            frame.msg_type == _TEXT
            and frame.fin
            and self.closed is None
            and not self._parts
            and frame.payload_size <= self.max_size
        ):
            try:
                text = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                self._fail(transport, WSCloseCode.INVALID_TEXT, "invalid UTF-8 in a text message")
                return
            self.messages.append(text)
            if len(self.messages) >= HIGH_WATER and not self.paused:
                self._pause()
            if self.waiter is not None:
                self._wake()
            return
        self._other_frame(transport, frame)

    def _other_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.closed is not None:  # nothing after a failure or the peer's close
            return
        if frame.payload_size > self.max_size:
            self._fail(transport, WSCloseCode.MESSAGE_TOO_BIG, "message over the size limit")
            return
        kind = frame.msg_type  # a whole text message took on_ws_frame's path
        if kind == WSMsgType.BINARY and frame.fin and not self._parts:
            self._deliver(frame.get_payload_as_bytes())
        elif kind in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            self._fragment(transport, frame)
        elif kind == WSMsgType.CLOSE:
            code = frame.get_close_code()
            reason = frame.get_close_message() or b""
            text = reason.decode("utf-8", errors="replace")
            self._end(f"closed by the peer: {getattr(code, 'value', code)} {text}".rstrip())
            with contextlib.suppress(Exception):
                transport.send_close(code)
            transport.disconnect()

    def _fragment(self, transport: WSTransport, frame: WSFrame) -> None:
        """A message in several frames: joined, with the same checks as a whole one."""
        kind = frame.msg_type
        if (kind == WSMsgType.CONTINUATION) != bool(self._parts):
            self._fail(transport, WSCloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
            return
        if kind != WSMsgType.CONTINUATION:
            self._parts_type, self._parts_size = kind, 0
        payload = frame.get_payload_as_bytes()
        self._parts.append(payload)
        self._parts_size += len(payload)
        if self._parts_size > self.max_size:
            self._fail(transport, WSCloseCode.MESSAGE_TOO_BIG, "message over the size limit")
            return
        if frame.fin:
            data = b"".join(self._parts)
            self._parts = []
            if self._parts_type == WSMsgType.BINARY:
                self._deliver(data)
                return
            try:
                self._deliver(data.decode("utf-8"))
            except UnicodeDecodeError:
                self._fail(transport, WSCloseCode.INVALID_TEXT, "invalid UTF-8 in a text message")

    def _deliver(self, message: str | bytes) -> None:
        self.messages.append(message)
        if len(self.messages) >= HIGH_WATER and not self.paused:
            self._pause()
        self._wake()

    def _pause(self) -> None:
        if self.transport is not None:
            self.paused = True
            self.transport.underlying_transport.pause_reading()

    def _fail(self, transport: WSTransport, code: WSCloseCode, reason: str) -> None:
        self._end(f"{reason} ({code.value})")
        with contextlib.suppress(Exception):
            transport.send_close(code, reason.encode())
        transport.disconnect()

    def _end(self, why: str) -> None:
        if self.closed is None:
            self.closed = ConnectionClosed(why)
        self._wake()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._end("connection lost")

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def resume_if_drained(self) -> None:
        if self.paused and len(self.messages) <= LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.underlying_transport.resume_reading()


class FeedConnection:
    """One open connection: `recv` the next message, `send` text."""

    def __init__(self, transport: WSTransport, listener: _Listener) -> None:
        self._transport = transport
        self._listener = listener

    async def recv(self) -> str | bytes:
        """The next message; `ConnectionClosed` once none is left and the connection ended."""
        message = (await self._waiting()).popleft()
        self._listener.resume_if_drained()
        return message

    async def recv_many(self) -> list[str | bytes]:
        """Every message that waits (at least one): a feed at full speed takes them by the
        hundred, one await instead of one per message."""
        messages = await self._waiting()
        taken = list(messages)
        messages.clear()
        self._listener.resume_if_drained()
        return taken

    async def _waiting(self) -> deque[str | bytes]:
        """The queue once it holds a message; `ConnectionClosed` if none will come."""
        listener = self._listener
        while not listener.messages:
            if listener.closed is not None:
                raise listener.closed
            listener.waiter = asyncio.get_running_loop().create_future()
            await listener.waiter
        return listener.messages

    async def send(self, text: str) -> None:
        if self._listener.closed is not None or self._transport.is_disconnected:
            raise self._listener.closed or ConnectionClosed("connection lost")
        self._transport.send(WSMsgType.TEXT, text.encode())

    async def close(self) -> None:
        """Close politely, waiting a moment for the peer; then the socket goes either way."""
        transport = self._transport
        if not transport.is_disconnected:
            with contextlib.suppress(Exception):
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        with contextlib.suppress(TimeoutError, WSError, OSError):  # its error was raised
            async with asyncio.timeout(1.0):
                await transport.wait_disconnected()


def system_proxy(url: str) -> str | None:
    """The proxy the environment (or the system) names for `url`, as `websockets` chose it
    before the feeds moved to picows: none for a host `no_proxy` covers; else, in this order,
    the proxy for the WebSocket scheme itself, a SOCKS proxy (as socks5h), the HTTPS proxy,
    and for plain ws the HTTP proxy."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    if urllib.request.proxy_bypass(f"{parts.hostname}:{port}"):
        return None
    proxies = urllib.request.getproxies()
    for scheme in ("wss", "socks", "https") if secure else ("ws", "socks", "https", "http"):
        proxy = proxies.get(scheme)
        if proxy is None:
            continue
        if scheme == "socks" and proxy.startswith("http://"):
            return "socks5h://" + proxy.removeprefix("http://")
        return proxy
    return None


@contextlib.asynccontextmanager
async def connect(url: str, max_size: int, open_timeout: float) -> AsyncIterator[FeedConnection]:
    """Open `url` (ws or wss) within `open_timeout` s, through the system's proxy if it names
    one; messages over `max_size` bytes close it."""
    async with asyncio.timeout(open_timeout):
        transport, listener = await ws_connect(
            lambda: _Listener(max_size),
            url,
            proxy=system_proxy(url),
            websocket_handshake_timeout=open_timeout,
            enable_auto_ping=True,
            auto_ping_idle_timeout=PING_SECONDS,
            auto_ping_reply_timeout=PING_SECONDS,
            max_frame_size=max_size,
        )
    if not isinstance(listener, _Listener):  # picows gives no listener when the peer hung up
        transport.disconnect(graceful=False)  # during the handshake
        raise ConnectionClosed("the connection closed during the WebSocket handshake")
    connection = FeedConnection(transport, listener)
    try:
        yield connection
    finally:
        await connection.close()
