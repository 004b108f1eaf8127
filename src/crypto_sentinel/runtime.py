"""Wire source -> bus -> engine -> lake and the API into one process (`sentinel up`).

Also runs the API alone over a lake (`sentinel serve`). Shutdown is orderly: the source
stops, the engine drains the bus and commits, then the API stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from crypto_sentinel.api.app import create_app
from crypto_sentinel.api.state import HotState
from crypto_sentinel.bus.memory import MemoryBus
from crypto_sentinel.config import Settings
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import LakeWriter
from crypto_sentinel.sources.base import Source
from crypto_sentinel.sources.coinbase import CoinbaseSource
from crypto_sentinel.sources.replay import ReplaySource

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling: the pipeline decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Pipeline:
    """One process: a source, the embedded engine, hot state and the API."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lake = settings.lake_path
        self.writer = LakeWriter(self.lake, settings.app_id)
        self.reader = LakeReader(self.lake)
        self.engine = Engine(
            self.writer, settings.batch_interval_ms / 1000, settings.batch_max_frames
        )
        self.bus = MemoryBus(settings.bus_capacity)
        self.state = HotState(settings.hot_trades_per_product)
        self.engine.listeners.append(self.state.on_event)
        self.source: Source | None = None
        self.simulator: Any = None
        self.stop_event = asyncio.Event()
        self.started = time.time()
        self.server: _Server | None = None

    # --- status for /health and /ready ----------------------------------------------------

    def status(self) -> dict[str, Any]:
        src = self.source.status.as_dict() if self.source else None
        return {
            "source": src,
            "engine": {**self.engine.stats.__dict__, "bus_depth": self.bus.depth()},
            "lake": str(self.lake),
            "uptime_seconds": round(time.time() - self.started, 3),
        }

    def ready(self) -> bool:
        if self.source is None:
            return False
        st = self.source.status
        return st.connected or st.finished

    # --- lifecycle -----------------------------------------------------------------------

    async def choose_source(self) -> Source:
        """The configured source; live Coinbase falls back to the simulator if unreachable."""
        s = self.settings
        if s.source.startswith("replay:"):
            speed = None if s.replay_speed == "max" else float(s.replay_speed)
            path = s.source.removeprefix("replay:")
            return ReplaySource(Path(path), exchange=s.replay_exchange, speed=speed)
        if s.source == "simulator":
            return await self._start_simulator()
        live = CoinbaseSource(s.products, s.coinbase_ws_url)
        return live

    async def _start_simulator(self) -> CoinbaseSource:
        from crypto_sentinel.simulator import SimulatorServer

        s = self.settings
        self.simulator = SimulatorServer(
            products=s.products,
            rate=s.simulator_rate,
            seed=s.simulator_seed,
            max_trades=s.simulator_max_trades,
        )
        await self.simulator.start()
        log.warning(
            "SIMULATED DATA: built-in simulator at %s, %.0f trades/s; stored as exchange"
            " 'simulator', never mixed with real Coinbase history",
            self.simulator.ws_url,
            s.simulator_rate,
        )
        return CoinbaseSource(
            s.products, self.simulator.ws_url, exchange="simulator", kind="simulator"
        )

    async def run(self, with_api: bool = True, install_signals: bool = True) -> None:
        self.engine.load_state(self.reader)
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop_event.set)
        tasks: list[asyncio.Task[Any]] = []
        if with_api:
            tasks.append(asyncio.create_task(self._serve_api(), name="api"))
        self.source = await self.choose_source()
        source_task = asyncio.create_task(self.source.run(self.bus.publish), name="source")
        if isinstance(self.source, CoinbaseSource) and self.source.status.kind == "coinbase":
            source_task = await self._fallback_if_unreachable(self.source, source_task)
        source_stopped = asyncio.Event()  # the engine drains the bus once this is set
        engine_task = asyncio.create_task(self.engine.run(self.bus, source_stopped), name="engine")
        stop_wait = asyncio.create_task(self.stop_event.wait())
        done, _ = await asyncio.wait(
            {source_task, engine_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED
        )
        if source_task in done:
            source_task.result()  # a source that fails for good is fatal: raise it
            log.info("source finished (%s frames)", self.source.status.frames)
            if not self.settings.source.startswith("replay:") or not with_api:
                self.stop_event.set()
        await asyncio.wait({stop_wait, engine_task}, return_when=asyncio.FIRST_COMPLETED)
        if engine_task.done():
            engine_task.result()  # an engine failure is fatal: raise it
        log.info("stopping: draining the bus and committing the last batch")
        source_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await source_task
        source_stopped.set()
        await engine_task
        self.engine.close()
        if self.server is not None:
            self.server.should_exit = True
        for task in tasks:
            await task
        if self.simulator is not None:
            await self.simulator.stop()
        log.info("stopped: %s", self.engine.stats)

    async def _fallback_if_unreachable(
        self, live: CoinbaseSource, task: asyncio.Task[None]
    ) -> asyncio.Task[None]:
        timeout = self.settings.connect_timeout
        try:
            await asyncio.wait_for(live.connected.wait(), timeout)
            return task
        except TimeoutError:
            pass
        if not self.settings.fallback_to_simulator:
            log.error("cannot reach Coinbase at %s yet; still retrying", live.url)
            return task
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.warning(
            "Could not connect to Coinbase at %s within %.0f s (%s). Falling back to the"
            " built-in simulator.",
            live.url,
            timeout,
            live.status.last_error or "no answer",
        )
        self.source = await self._start_simulator()
        return asyncio.create_task(self.source.run(self.bus.publish), name="source")

    async def _serve_api(self) -> None:
        app = create_app(
            self.state,
            self.reader,
            default_exchange=self._exchange_name,
            products=self.settings.products,
            status=self.status,
            ready=self.ready,
        )
        config = uvicorn.Config(
            app,
            host=self.settings.host,
            port=self.settings.port,
            log_level="warning",
            lifespan="off",
        )
        self.server = _Server(config)
        log.info("API on http://%s:%d", self.settings.host, self.settings.port)
        await self.server.serve()

    def _exchange_name(self) -> str:
        return self.source.status.exchange if self.source else self.settings.exchange


async def serve_lake(settings: Settings, exchange: str | None) -> None:
    """API only, over what the lake holds (history; no live stream)."""
    reader = LakeReader(settings.lake_path)
    app = create_app(
        HotState(settings.hot_trades_per_product),
        reader,
        default_exchange=lambda: exchange or settings.exchange,
        products=settings.products,
        status=lambda: {"source": None, "lake": str(settings.lake_path)},
        ready=lambda: True,
    )
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning")
    await uvicorn.Server(config).serve()
