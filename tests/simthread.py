"""A simulated exchange with a seeded past, serving REST from its own thread (so a test, or a
`sentinel history` subprocess, can page through it while the test's own loop is free)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from crypto_sentinel.simulator import SimulatorServer
from crypto_sentinel.simulator.history import seed_history
from crypto_sentinel.simulator.market import SimTrade


@contextmanager
def history_simulator(
    products: list[str],
    count: int,
    since: datetime,
    until: datetime,
    first_id: int = 10_000,
    venue: str = "coinbase",
) -> Iterator[tuple[SimulatorServer, list[SimTrade]]]:
    """(server, the seeded trades oldest first); no live trades are emitted."""
    server = SimulatorServer(
        products, rate=1, port=0, max_trades=0, start_trade_id=first_id, venue=venue
    )
    trades = seed_history(server.market, count, since, until)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="simulator", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=30)
    try:
        yield server, trades
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
