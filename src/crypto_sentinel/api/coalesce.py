"""A connection's socket writes of one event-loop turn, sent as one.

Why: uvicorn writes a response's headers and its body with two writes, and the live push
writes each message as it is sent. Every write is a system call, and on loopback it also
delivers the data to the reader. In a live run at 5,000 frames/s those writes were more than
half of answering `/latest` and most of the live push (docs/benchmarks.md, session 30). Here a
connection's writes are kept until the loop turn that made them ends, then sent together, in
order. Closing a connection sends what is kept first.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast


class CoalescingTransport:
    """Wraps a connection's transport: `write` keeps, the next loop turn sends; the rest is
    the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    @classmethod
    def around(cls, transport: Any) -> CoalescingTransport:
        """The connection's wrapper (a WebSocket upgrade hands on the HTTP one's)."""
        if isinstance(transport, CoalescingTransport):
            return transport
        return cls(transport, asyncio.get_running_loop())

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        chunk = data if isinstance(data, bytes) else bytes(data)  # the caller may reuse it
        if self._pending is None:
            self._pending = [chunk]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(chunk)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        kept = sum(map(len, self._pending)) if self._pending else 0
        return self._transport.get_write_buffer_size() + kept

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalescing(protocol_class: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """`protocol_class` whose connections write through a `CoalescingTransport`."""

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        wrapped = cast(asyncio.BaseTransport, CoalescingTransport.around(transport))
        protocol_class.connection_made(self, wrapped)  # duck-typed: the rest is delegated

    name = f"Coalescing{protocol_class.__name__}"
    return type(name, (protocol_class,), {"connection_made": connection_made})


def coalesce_writes(config: Any) -> None:
    """Make a uvicorn config's HTTP and WebSocket protocols coalesce their writes (it loads
    the config to learn which protocols it chose)."""
    if not config.loaded:
        config.load()
    config.http_protocol_class = coalescing(config.http_protocol_class)
    if config.ws_protocol_class is not None:
        config.ws_protocol_class = coalescing(config.ws_protocol_class)
