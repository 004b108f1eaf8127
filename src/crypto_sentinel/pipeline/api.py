"""The API role inside a pipeline process: hot state and push fed by the engine running
beside it, built with the same builder as `sentinel serve` (`api.serving`)."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from crypto_sentinel.api.serving import api_server, live_memory
from crypto_sentinel.api.state import HotState
from crypto_sentinel.api.warmup import warm_up
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.config import Settings
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.eventloop import settle_heap
from crypto_sentinel.lake.query import LakeReader

#: GIL switch interval (seconds) of a process that serves the API next to the engine.
API_SWITCH_INTERVAL = 0.001

log = logging.getLogger(__name__)


class ApiRole:
    """Serves the API on an already bound socket until `stop`; the supervisor owns signals."""

    def __init__(
        self,
        settings: Settings,
        reader: LakeReader,
        engine: Engine | None,
        books: BookRegistry | None,
        *,
        status: Callable[[], dict[str, Any]],
        ready: Callable[[], bool],
        default_exchange: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.engine = engine
        self.books = books
        self.status = status
        self.ready = ready
        self.default_exchange = default_exchange
        self.state: HotState | None = None  # built when serving starts
        self.server: uvicorn.Server | None = None

    async def serve(self, sock: socket.socket) -> None:
        s = self.settings
        self.state, hub = live_memory(s)
        engine = self.engine
        if engine is not None:
            engine.listeners.append(self.state.on_chunk)
            # Rebuild hot state from the lake before the first frame reaches it (this task is
            # started before the engine's; warm-up is synchronous, so nothing interleaves).
            # If frames were processed already, memory keeps its conservative start instead.
            if engine.stats.frames == 0:
                warm_up(self.state, self.reader, s.api_warmup_seconds)
        settle_heap()
        if engine is not None:
            engine.listeners.append(hub.on_chunk)  # after hot state: push reads it
        self.server = api_server(
            s, self.state, self.reader, hub, default_exchange=self.default_exchange,
            status=self.status, ready=self.ready, own_signals=False, books=self.books,
        )  # fmt: skip
        # The engine's writer thread runs Python between Delta commits; with the default 5 ms
        # GIL switch interval a request waiting on the event loop can queue behind it several
        # times. A shorter interval hands the GIL back sooner (API tail latency) for a few
        # per cent of writer throughput.
        sys.setswitchinterval(API_SWITCH_INTERVAL)
        log.info("API on http://%s:%d", s.host, sock.getsockname()[1])
        await self.server.serve(sockets=[sock])

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
