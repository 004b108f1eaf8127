"""A connection's writes of one loop turn leave as one write, in order; closing sends what is
kept first; everything else is the transport's own."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from crypto_sentinel.api.coalesce import CoalescingTransport, coalesce_writes


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False
        self.extra = {"peername": ("127.0.0.1", 5)}

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


async def test_the_writes_of_one_turn_leave_together_at_its_end() -> None:
    real = FakeTransport()
    wrapped = CoalescingTransport.around(real)
    wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
    wrapped.write(bytearray(b"body"))
    wrapped.write(b"")
    assert real.writes == [] and wrapped.get_write_buffer_size() == 7 + 23
    await asyncio.sleep(0)  # the turn ends
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    wrapped.write(b"next")
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next"]  # a turn with one write sends it as it is
    assert wrapped.get_extra_info("peername") == ("127.0.0.1", 5)  # the transport's own
    assert CoalescingTransport.around(wrapped) is wrapped  # an upgrade keeps the wrapper


async def test_closing_sends_what_is_kept_first_and_aborting_drops_it() -> None:
    real = FakeTransport()
    wrapped = CoalescingTransport.around(real)
    wrapped.write(b"last words")
    wrapped.close()
    await asyncio.sleep(0)
    assert real.writes == [b"last words"] and real.closed
    other = FakeTransport()
    aborted = CoalescingTransport.around(other)
    aborted.write(b"never")
    aborted.abort()
    await asyncio.sleep(0)
    assert other.writes == [] and other.aborted


async def test_a_closed_transport_is_not_written_by_a_late_turn() -> None:
    real = FakeTransport()
    wrapped = CoalescingTransport.around(real)
    wrapped.write(b"late")
    real.close()  # the peer went away within the turn
    await asyncio.sleep(0)
    assert real.writes == []


def test_a_uvicorn_config_gets_coalescing_protocols() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not served here")

    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    coalesce_writes(config)
    assert config.loaded
    chosen_http = config.http_protocol_class.__mro__[1]
    assert config.http_protocol_class.__name__ == f"Coalescing{chosen_http.__name__}"
    assert config.ws_protocol_class is not None
    assert config.ws_protocol_class.__name__.startswith("Coalescing")
