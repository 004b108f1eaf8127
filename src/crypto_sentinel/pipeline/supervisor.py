"""One process running the roles a command asks for, and stopping them in order.

`sentinel up` runs ingest, process and the API over the in-process bus (or Kafka with
`--bus kafka`); `sentinel ingest` and `sentinel process` run one role each around Kafka
(`sentinel serve` is the API alone, `api.serving.serve_lake`). Only what a run uses is
built: no in-memory bus over Kafka, no engine or writer without the process role, no hot
state without the API. Shutdown is orderly, on a signal, when the sources finish or when a
role fails: the sources stop, Kafka gets what was published, the engine drains and makes
its final commit, then the API stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

from crypto_sentinel import metrics
from crypto_sentinel.api.state import HotState
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.bus.memory import MemoryBus
from crypto_sentinel.config import Settings
from crypto_sentinel.engine.processor import Engine, EngineStats
from crypto_sentinel.eventloop import settle_heap
from crypto_sentinel.health import heartbeat_path, heartbeats
from crypto_sentinel.lake.lock import writer_lock
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.looplag import watch_loop_lag
from crypto_sentinel.native import trim_heap_forever
from crypto_sentinel.pipeline.process import ProcessRole
from crypto_sentinel.sources.base import Source, source_counters
from crypto_sentinel.startup import StartupError, bind_api, check_lake, check_source, lake_problem

if TYPE_CHECKING:  # the API stack (FastAPI, uvicorn) loads only in processes that serve it
    from crypto_sentinel.pipeline.api import ApiRole
    from crypto_sentinel.pipeline.ingest import IngestRole

log = logging.getLogger(__name__)


class Pipeline:
    """Supervises the roles of one process: ingest, process, and (in `run`) the API."""

    def __init__(
        self,
        settings: Settings,
        ingest: bool = True,
        process: bool = True,
        api_socket: socket.socket | None = None,
        books: BookRegistry | None = None,
    ) -> None:
        """`api_socket`: the API's socket if bound already (see `startup.bind_api`);
        `books`: the process's live books (created here when `settings.books` is on and
        none is given; None while books are off)."""
        self.settings = settings
        self.books = (books or BookRegistry()) if settings.books else None
        self.lake = settings.lake_root
        # The usual mistakes (lake is a file or read-only, no replay file) stop start-up with
        # one line naming the fix, before anything runs.
        check_lake(settings, writes=process)
        if ingest:
            check_source(settings)
        self.processing: ProcessRole | None = None
        self.ingesting: IngestRole | None = None
        try:
            # One writer per lake and app id (else LakeLocked names the holder), taken before
            # the writer reads the batch versions it continues from; run() releases it.
            self.lock = writer_lock(settings, writes=process)
            self.reader = LakeReader(self.lake)
            if process:
                self.processing = ProcessRole(
                    settings, self.reader, self.books, self.request_book_resync
                )
        except OSError as exc:
            if isinstance(self.lake, str):
                raise
            raise StartupError(lake_problem(self.lake, exc)) from exc
        if ingest:  # the feeds' clients load only in processes that ingest
            from crypto_sentinel.pipeline.ingest import IngestRole

            known = self.processing.engine.trade_id_ranges if self.processing else None
            self.ingesting = IngestRole(settings, self.reader, known)
        self.api: ApiRole | None = None  # built by `run` when it serves the API
        # Frames go through Kafka or, in one process, through this in-memory bus.
        self.bus = MemoryBus(settings.bus_capacity) if settings.bus != "kafka" else None
        self.stop_event = asyncio.Event()
        self.started = time.time()
        self.api_socket = api_socket

    # --- what tests, benchmarks and the CLI look at ----------------------------------------

    @property
    def engine(self) -> Engine:
        """The process role's engine (only a process-role pipeline has one)."""
        if self.processing is None:
            raise AttributeError("this pipeline runs no process role: it has no engine")
        return self.processing.engine

    @property
    def sources(self) -> list[Source]:
        return self.ingesting.sources if self.ingesting is not None else []

    @property
    def source(self) -> Source | None:
        """The first source (most runs have one)."""
        return self.sources[0] if self.sources else None

    @property
    def simulator(self) -> Any:
        """The first built-in simulator started, if any."""
        simulators = self.ingesting.simulators if self.ingesting is not None else []
        return simulators[0] if simulators else None

    @property
    def state(self) -> HotState | None:
        """The API's memory, built when the API starts."""
        return self.api.state if self.api is not None else None

    @property
    def server(self) -> Any:
        """The API's uvicorn server once it is built."""
        return self.api.server if self.api is not None else None

    def bus_depth(self) -> int:
        """Frames waiting in the in-memory bus (0 over Kafka: the log holds them)."""
        return self.bus.depth() if self.bus is not None else 0

    def request_book_resync(self, exchange: str, product_id: str) -> bool:
        """Ask the live feed carrying `exchange`'s `product_id` book to resync it (the engine
        calls this on a checksum mismatch or a sequence break it sees); False if none does."""
        if self.ingesting is None:
            return False
        return self.ingesting.request_book_resync(exchange, product_id)

    # --- status for /health and /ready ----------------------------------------------------

    def status(self) -> dict[str, Any]:
        src = self.source.status.as_dict() if self.source else None
        status: dict[str, Any] = {
            "source": src,
            "sources": [source.status.as_dict() for source in self.sources],
        }
        if self.processing is not None:
            status["engine"] = self.processing.status(self.bus_depth())
        status.update(
            lake=str(self.lake),
            bus=self.settings.bus,
            uptime_seconds=round(time.time() - self.started, 3),
            reliability=self.reliability(),
        )
        producer = self.ingesting.publisher_status() if self.ingesting is not None else None
        if producer is not None:
            status["kafka_producer"] = producer
        if self.processing is not None and self.processing.consumer is not None:
            status["kafka_consumer"] = {"assigned": self.processing.consumer.assigned}
        return status

    def last_frames(self) -> dict[tuple[str, str], int]:
        """(exchange, product) -> receive time of the product's newest frame (freshness)."""
        return self.ingesting.last_frames() if self.ingesting is not None else {}

    def reliability(self) -> dict[str, int]:
        """The counters that say whether trades were missed (also at /metrics), summed over
        the sources."""
        stats = self.processing.engine.stats if self.processing is not None else EngineStats()
        return {
            **source_counters(self.sources),
            "quarantined_frames": stats.quarantined,
            "duplicate_trades": stats.duplicates,
        }

    def ready(self) -> bool:
        """Live data is flowing: the source is connected and the log (if any) accepts it."""
        return self.ingesting.ready() if self.ingesting is not None else True

    def _exchange_name(self) -> str:
        return self.source.status.exchange if self.source else self.settings.exchange

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, with_api: bool = True, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.lock.on_lost = lambda: loop.call_soon_threadsafe(self.stop_event.set)
        unwatch = metrics.SOURCE_FRESHNESS.watch(self.last_frames)
        try:
            if with_api and self.api_socket is None:  # a taken port stops start-up now
                self.api_socket = bind_api(self.settings.host, self.settings.port)
            await self._run(with_api, install_signals)
        finally:
            unwatch()
            if self.api_socket is not None:
                self.api_socket.close()
            self.lock.release()

    async def _run(self, with_api: bool, install_signals: bool) -> None:
        ingesting, processing = self.ingesting, self.processing
        if processing is not None:
            processing.load_state()
            settle_heap()
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop_event.set)
        tasks: list[asyncio.Task[Any]] = []
        # Roles whose end stops the process (with the stop event and the sources).
        waiting: set[asyncio.Task[Any]] = {asyncio.create_task(self.stop_event.wait())}
        if with_api and self.api_socket is not None:
            from crypto_sentinel.pipeline.api import ApiRole

            # Started before the engine: the API's warm-up fills hot state before any frame.
            self.api = ApiRole(
                self.settings, self.reader, processing.engine if processing else None,
                self.books, status=self.status, ready=self.ready,
                default_exchange=self._exchange_name,
            )  # fmt: skip
            api_task = asyncio.create_task(self.api.serve(self.api_socket), name="api")
            tasks.append(api_task)
            waiting.add(api_task)
        if processing is not None:
            maintain = processing.maintenance(self.stop_event)
            tasks.append(asyncio.create_task(maintain, name="maintenance"))
        role = "up" if ingesting and processing else "ingest" if ingesting else "process"
        beat = heartbeats(
            heartbeat_path(self.settings.data_dir, role), self.ready, self.status, self.stop_event
        )
        tasks.append(asyncio.create_task(beat, name="heartbeat"))
        trimming = trim_heap_forever(self.stop_event)
        tasks.append(asyncio.create_task(trimming, name="heap-trim"))
        tasks.append(asyncio.create_task(watch_loop_lag(self.stop_event), name="loop-lag"))
        source_task = await ingesting.start(self.bus) if ingesting is not None else None
        if source_task is not None:
            waiting.add(source_task)
        input_done = asyncio.Event()  # the engine drains and returns once this is set
        engine_task = None
        if processing is not None:
            engine_task = processing.start(self.bus, input_done)
            waiting.add(engine_task)
        failure = await self._wait_for_the_end(waiting, source_task, with_api)
        log.info("stopping: draining and committing what was received")
        self.stop_event.set()  # maintenance and heartbeat end with it
        if ingesting is not None and source_task is not None:
            await ingesting.stop(source_task)
        input_done.set()
        if engine_task is not None:
            await asyncio.wait([engine_task])
            failure = failure or _failure(engine_task)
        if processing is not None:
            processing.close()
        if self.api is not None:
            self.api.stop()
        if ingesting is not None:
            await ingesting.close()
        if tasks:
            await asyncio.wait(tasks)
        if ingesting is not None:
            await ingesting.stop_simulators()
        log.info("stopped: %s", processing.engine.stats if processing else "ingest only")
        for task in tasks:
            failure = failure or _failure(task)
        if failure is not None:
            raise failure

    async def _wait_for_the_end(
        self,
        waiting: set[asyncio.Task[Any]],
        source_task: asyncio.Task[None] | None,
        with_api: bool,
    ) -> BaseException | None:
        """Until a stop is asked for or a role ends; the failure that ended it, if any. A
        replay that finishes while the API serves keeps the process up for its readers."""
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if source_task is not None and source_task in done and self.sources:
            failure = _failure(source_task)  # a source that fails for good is fatal
            if failure is not None:
                return failure
            log.info("sources finished (%s frames)", sum(x.status.frames for x in self.sources))
            if not self.settings.source.startswith("replay:") or not with_api:
                self.stop_event.set()
        ends = {t for t in waiting if t is not source_task}
        done, _ = await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        return next((f for t in done if (f := _failure(t)) is not None), None)


def _failure(task: asyncio.Task[Any]) -> BaseException | None:
    """The error a finished task ended with (None if it returned or was cancelled)."""
    if not task.done() or task.cancelled():
        return None
    return task.exception()
