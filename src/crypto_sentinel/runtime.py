"""Wire source -> bus -> engine -> lake and the API into processes.

Roles: ingest (source -> bus), process (bus -> engine -> Delta) and the API. `sentinel up`
runs all three in one process over the in-process bus (or Kafka with `--bus kafka`);
`sentinel ingest`, `sentinel process` and `sentinel serve` run one role each around Kafka.
Shutdown is orderly: the source stops, the engine drains and commits, then the API stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from crypto_sentinel import metrics
from crypto_sentinel.api.serving import api_server, settle_heap
from crypto_sentinel.api.state import HotState
from crypto_sentinel.api.stream import Hub
from crypto_sentinel.api.warmup import warm_up
from crypto_sentinel.books.processor import BookProcessor, BookSettings
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.books.sync import ENGINE_ONLY_BREAKS
from crypto_sentinel.bus.kafka import KafkaFrames, KafkaPublisher, ensure_topics, exchange_of
from crypto_sentinel.bus.memory import MemoryBus
from crypto_sentinel.config import LIVE_VENUES, Settings
from crypto_sentinel.engine.processor import Engine, FrameSource
from crypto_sentinel.health import heartbeat_path, heartbeats
from crypto_sentinel.lake.lock import writer_lock
from crypto_sentinel.lake.maintenance import run_maintenance_forever
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import LakeWriter
from crypto_sentinel.model import GapRecord
from crypto_sentinel.sources.base import Publish, Source
from crypto_sentinel.sources.bookfeed import coinbase_credentials
from crypto_sentinel.sources.feed import FeedSource
from crypto_sentinel.sources.replay import ReplaySource
from crypto_sentinel.sources.venues import (
    DISPLAY_NAMES,
    SIMULATED_PREFIX,
    connector_for,
    simulated_name,
    venue_of,
)
from crypto_sentinel.startup import StartupError, bind_api, check_lake, check_source, lake_problem

#: Frames per partition read back from the Kafka tail when the built-in simulator resumes.
KAFKA_RESUME_TAIL = 2000

#: GIL switch interval (seconds) of a process that serves the API next to the engine.
API_SWITCH_INTERVAL = 0.001

log = logging.getLogger(__name__)


class Pipeline:
    """One process running any of the roles: ingest, process, and (in `run`) the API."""

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
        self.ingest = ingest
        self.process = process
        self.kafka = settings.bus == "kafka"
        self.lake = settings.lake_root
        # The usual mistakes (lake is a file or read-only, no replay file) stop start-up with
        # one line naming the fix, before anything runs.
        check_lake(settings, writes=process)
        if ingest:
            check_source(settings)
        try:
            # One writer per lake and app id (else LakeLocked names the holder), taken before
            # the writer reads the batch versions it continues from; run() releases it.
            self.lock = writer_lock(settings, writes=process)
            # Over Kafka, one app id per (group, topic, partition) records offsets in Delta.
            app_id = settings.kafka_group if self.kafka else settings.app_id
            self.writer = LakeWriter(self.lake, app_id)
            self.reader = LakeReader(self.lake)
        except OSError as exc:
            if isinstance(self.lake, str):
                raise
            raise StartupError(lake_problem(self.lake, exc)) from exc
        processor = None
        if self.books is not None:
            processor = BookProcessor(self.books, BookSettings.from_settings(settings))
        self.engine = Engine(
            self.writer,
            settings.batch_interval_ms / 1000,
            settings.batch_max_frames,
            books=processor,
        )
        self.engine.on_book_break.append(self._resync_after_break)
        # Frames go through Kafka or, in one process, through this in-memory bus.
        self.bus = None if self.kafka else MemoryBus(settings.bus_capacity)
        self.state: HotState | None = None  # the API's memory, built when the API starts
        self.sources: list[Source] = []
        self.simulators: list[Any] = []
        self.stop_event = asyncio.Event()
        self.started = time.time()
        self.server: uvicorn.Server | None = None
        self.api_socket = api_socket
        self.publisher: KafkaPublisher | None = None
        self._delivery: asyncio.Task[None] | None = None  # the publisher's delivery reports
        self.consumer: KafkaFrames | None = None

    def bus_depth(self) -> int:
        """Frames waiting in the in-memory bus (0 over Kafka: the log holds them)."""
        return self.bus.depth() if self.bus is not None else 0

    @property
    def source(self) -> Source | None:
        """The first source (most runs have one)."""
        return self.sources[0] if self.sources else None

    @property
    def simulator(self) -> Any:
        """The first built-in simulator started, if any."""
        return self.simulators[0] if self.simulators else None

    # --- status for /health and /ready ----------------------------------------------------

    def status(self) -> dict[str, Any]:
        src = self.source.status.as_dict() if self.source else None
        status: dict[str, Any] = {
            "source": src,
            "sources": [source.status.as_dict() for source in self.sources],
            "engine": {**self.engine.stats.__dict__, "bus_depth": self.bus_depth()},
            "lake": str(self.lake),
            "bus": self.settings.bus,
            "uptime_seconds": round(time.time() - self.started, 3),
            "reliability": self.reliability(),
        }
        if self.publisher is not None:
            status["kafka_producer"] = {
                "outage": self.publisher.outage,
                "delivered": self.publisher.delivered,
                "pending": self.publisher.pending(),
                "last_error": self.publisher.last_error,
            }
        if self.consumer is not None:
            status["kafka_consumer"] = {"assigned": self.consumer.assigned}
        return status

    def last_frames(self) -> dict[tuple[str, str], int]:
        """(exchange, product) -> receive time of the product's newest frame (freshness)."""
        out = {}
        for source in self.sources:
            gaps = getattr(source, "gaps", None)
            if gaps is not None:
                exchange = source.status.exchange
                out.update({(exchange, p): ns for p, ns in list(gaps.last_frame_ns.items())})
        return out

    def reliability(self) -> dict[str, int]:
        """The counters that say whether trades were missed (also at /metrics), summed over
        the sources."""
        stats = self.engine.stats
        sources = [source.status for source in self.sources]
        return {
            "reconnects": sum(src.reconnects for src in sources),
            "gaps": sum(src.gaps for src in sources),
            "missing_trades": sum(src.missing_trades for src in sources),
            "backfilled_trades": sum(src.backfilled_trades for src in sources),
            "unfilled_trades": sum(src.unfilled_trades for src in sources),
            "quarantined_frames": stats.quarantined,
            "duplicate_trades": stats.duplicates,
        }

    def ready(self) -> bool:
        """Live data is flowing: the source is connected and the log (if any) accepts it."""
        if self.publisher is not None and self.publisher.outage:
            return False
        if not self.ingest:
            return True
        if not self.sources:
            return False
        return all(src.status.connected or src.status.finished for src in self.sources)

    # --- lifecycle -----------------------------------------------------------------------

    async def choose_sources(self) -> list[Source]:
        """The configured sources; a live venue falls back to its simulated twin if it
        cannot be reached (see `_fallback_if_unreachable`)."""
        s = self.settings
        if s.source.startswith("replay:"):
            speed = None if s.replay_speed == "max" else float(s.replay_speed)
            path = s.source.removeprefix("replay:")
            return [ReplaySource(Path(path), exchange=s.replay_exchange, speed=speed)]
        sources: list[Source] = []
        for name in s.source_names:
            if name == "simulator" and s.simulator_url:
                log.warning(
                    "SIMULATED DATA from %s, stored as exchange 'simulator'", s.simulator_url
                )
                url = s.simulator_url
                sources.append(self._feed("coinbase", url, rest_url_of(url), "simulator"))
            elif name == "simulator" or name.startswith(SIMULATED_PREFIX):
                sources.append(await self._start_simulator(venue_of(name) or "coinbase"))
            else:
                sources.append(self._feed(name, *s.venue_urls(name), kind=name))
        return sources

    def _feed(
        self, venue: str, url: str, rest_url: str, kind: str, resume: bool = True
    ) -> FeedSource:
        """A live feed of `venue` stored as `kind` (the venue, or its simulated twin) that
        starts backfilling from what the lake holds (`resume`; not for a fresh built-in
        simulator, whose market starts anew)."""
        s = self.settings
        source = FeedSource(
            connector_for(venue),
            s.products_for(venue),
            url,
            exchange=kind,
            kind=kind,
            idle_timeout=s.idle_timeout,
            backoff_cap=s.backoff_cap,
            rest_url=rest_url if s.backfill else None,
            rest_rate=s.rest_rate_for(venue),
            books=s.books,
            book_depth=s.book_depth,
            book_rest_url=rest_url,
            credentials=coinbase_credentials(s) if venue == "coinbase" else None,
        )
        if resume:
            source.seed(self._known_trade_ids(kind))
        return source

    def _known_trade_ids(self, exchange: str) -> dict[str, list[tuple[int, int]]]:
        if self.process:  # the engine loaded them from the lake already
            return self.engine.trade_id_ranges(exchange)
        try:  # an ingest-only process reads the lake if it can see it
            ranges = self.reader.trade_id_ranges()
        except Exception as exc:
            log.warning("cannot read trade ids from the lake (%s): no start-up backfill", exc)
            return {}
        return {p: r for (ex, p), r in ranges.items() if ex == exchange}

    def _resync_after_break(self, gap: GapRecord) -> None:
        """A break only the engine can see (a checksum, a crossed book, an overflowing
        buffer): ask the venue for the book afresh. Sequence breaks and reconnects the feed
        sees itself and resyncs already."""
        if gap.reason in ENGINE_ONLY_BREAKS:
            self.request_book_resync(gap.exchange, gap.product_id)

    def request_book_resync(self, exchange: str, product_id: str) -> bool:
        """Ask the live feed carrying `exchange`'s `product_id` book to resync it (the engine
        calls this on a checksum mismatch or a sequence break it sees); False if none does."""
        return any(
            isinstance(src, FeedSource) and src.request_book_resync(exchange, product_id)
            for src in self.sources
        )

    async def _start_simulator(self, venue: str = "coinbase") -> FeedSource:
        from crypto_sentinel.simulator import SimulatorServer

        s = self.settings
        name = simulated_name(venue)
        options: dict[str, Any] = {} if venue == "coinbase" else {"venue": venue}
        simulator = SimulatorServer(
            products=s.products_for(venue),
            rate=s.simulator_rate,
            seed=s.simulator_seed,
            max_trades=s.simulator_max_trades,
            wait_for_subscriber=True,
            faults=fault_plan(s.simulator_faults),
            **options,
            resume=simulator_resume(
                self.reader, s.products_for(venue), s if self.kafka else None, name
            ),
        )
        await simulator.start()
        self.simulators.append(simulator)
        log.warning(
            "SIMULATED DATA: built-in %s simulator at %s, %.0f trades/s; stored as exchange"
            " %r, never mixed with real %s history",
            venue, simulator.ws_url, s.simulator_rate, name, venue,
        )  # fmt: skip
        ws, rest = simulator.ws_url, simulator.rest_url
        return self._feed(venue, ws, rest, name, resume=False)

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
        if self.process:
            self.engine.load_state(self.reader)
            settle_heap()
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop_event.set)
        tasks: list[asyncio.Task[Any]] = []
        if with_api:
            tasks.append(asyncio.create_task(self._serve_api(), name="api"))
        if self.process:  # the lake maintains itself, in a folder or on object storage
            maintain = run_maintenance_forever(
                self.settings, self.lake, self.stop_event, self.writer.maintenance_turn
            )
            tasks.append(asyncio.create_task(maintain, name="maintenance"))
        role = "up" if self.ingest and self.process else "ingest" if self.ingest else "process"
        beat = heartbeats(
            heartbeat_path(self.settings.data_dir, role), self.ready, self.status, self.stop_event
        )
        tasks.append(asyncio.create_task(beat, name="heartbeat"))
        waiting: set[asyncio.Task[Any]] = {asyncio.create_task(self.stop_event.wait())}
        source_task = await self._start_ingest(tasks) if self.ingest else None
        if source_task is not None:
            waiting.add(source_task)
        input_done = asyncio.Event()  # the engine drains and returns once this is set
        engine_task = None
        if self.process:
            engine_task = asyncio.create_task(
                self.engine.run(self._engine_input(), input_done), name="engine"
            )
            waiting.add(engine_task)
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if source_task is not None and source_task in done and self.sources:
            source_task.result()  # a source that fails for good is fatal: raise it
            log.info("sources finished (%s frames)", sum(x.status.frames for x in self.sources))
            if not self.settings.source.startswith("replay:") or not with_api:
                self.stop_event.set()
        ends = {t for t in waiting if t is not source_task}
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        if engine_task is not None and engine_task.done():
            engine_task.result()  # an engine failure is fatal: raise it
        log.info("stopping: draining and committing what was received")
        if source_task is not None:
            source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await source_task
        if self.publisher is not None:
            left = await asyncio.to_thread(self.publisher.flush, 30)
            if left:
                log.error("%d frames not yet delivered to Kafka at shutdown", left)
        input_done.set()
        if engine_task is not None:
            await engine_task
        if self.consumer is not None:
            self.consumer.close()
        self.engine.close()
        if self.server is not None:
            self.server.should_exit = True
        if self._delivery is not None:  # it runs until cancelled
            self._delivery.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for simulator in self.simulators:
            await simulator.stop()
        log.info("stopped: %s", self.engine.stats)

    async def _start_ingest(self, tasks: list[asyncio.Task[Any]]) -> asyncio.Task[None]:
        if self.bus is not None:
            publish: Publish = self.bus.publish
        else:
            self.publisher = KafkaPublisher(self.settings)
            publish = self.publisher.publish
            self._delivery = asyncio.create_task(
                self.publisher.run_delivery_reports(), name="kafka-delivery"
            )
            tasks.append(self._delivery)
        self.sources = await self.choose_sources()
        if self.kafka:
            exchanges = [source.status.exchange for source in self.sources]
            await asyncio.to_thread(ensure_topics, self.settings, exchanges)
        feeds = [self._run_source(i, publish) for i in range(len(self.sources))]
        return asyncio.create_task(_all(feeds), name="source")

    async def _run_source(self, index: int, publish: Publish) -> None:
        """Run one source; a live venue that cannot be reached is replaced by its twin."""
        source = self.sources[index]
        task = asyncio.create_task(source.run(publish), name=f"source-{source.status.exchange}")
        if isinstance(source, FeedSource) and source.status.kind in LIVE_VENUES:
            task = await self._fallback_if_unreachable(index, source, task, publish)
        await task

    def _engine_input(self) -> FrameSource:
        if self.bus is not None:
            return self.bus
        self.consumer = consumer = KafkaFrames(
            self.settings,
            position=self.writer.log_position,
            before_revoke=self.engine.flush_now,
            after_assign=lambda: self.engine.forget(self.reader, self._assigned_app_ids()),
        )
        self.engine.on_commit.append(lambda batch: consumer.commit(batch.positions))
        return consumer

    def _assigned_app_ids(self) -> Callable[[str], bool]:
        """The partition app ids of what the Kafka consumer was just assigned."""
        consumer = self.consumer
        assigned = set()
        if consumer is not None:
            for topic, partition in consumer.assigned:
                exchange = exchange_of(self.settings, topic)
                assigned.add(self.writer.partition_app_id(exchange, partition))
        return assigned.__contains__

    async def _fallback_if_unreachable(
        self, index: int, live: FeedSource, task: asyncio.Task[None], publish: Publish
    ) -> asyncio.Task[None]:
        timeout = self.settings.connect_timeout
        try:
            await asyncio.wait_for(live.connected.wait(), timeout)
            return task
        except TimeoutError:
            pass
        venue = live.status.exchange
        name = DISPLAY_NAMES.get(venue, venue)
        if not self.settings.fallback_to_simulator:
            log.error("cannot reach %s at %s yet; still retrying", name, live.url)
            return task
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.warning(
            "Could not connect to %s at %s within %.0f s (%s). Falling back to the"
            " built-in simulator.",
            name,
            live.url,
            timeout,
            live.status.last_error or "no answer",
        )
        twin = self.sources[index] = await self._start_simulator(venue)
        if self.kafka:
            await asyncio.to_thread(ensure_topics, self.settings, [twin.status.exchange])
        return asyncio.create_task(twin.run(publish), name=f"source-{twin.status.exchange}")

    async def _serve_api(self) -> None:
        s = self.settings
        self.state = state = HotState(s.hot_trades_per_product, hot_minutes=s.api_hot_minutes)
        self.engine.listeners.append(state.on_chunk)
        # Rebuild hot state from the lake before the first frame reaches it (this task is
        # started before the engine's; warm-up is synchronous, so nothing interleaves). If
        # frames were processed already, memory keeps its conservative start instead.
        if self.process and self.engine.stats.frames == 0:
            warm_up(state, self.reader, s.api_warmup_seconds)
        settle_heap()
        hub = Hub(s.api_stream_queue, s.api_stream_max_clients, s.api_heartbeat_seconds)
        self.engine.listeners.append(hub.on_chunk)  # after hot state: push reads it
        self.server = api_server(
            s, state, self.reader, hub, default_exchange=self._exchange_name,
            status=self.status, ready=self.ready, own_signals=False, books=self.books,
        )  # fmt: skip
        # The engine's writer thread runs Python between Delta commits; with the default 5 ms
        # GIL switch interval a request waiting on the event loop can queue behind it several
        # times. A shorter interval hands the GIL back sooner (API tail latency) for a few
        # per cent of writer throughput.
        sys.setswitchinterval(API_SWITCH_INTERVAL)
        sock = self.api_socket or bind_api(s.host, s.port)
        log.info("API on http://%s:%d", s.host, sock.getsockname()[1])
        await self.server.serve(sockets=[sock])

    def _exchange_name(self) -> str:
        return self.source.status.exchange if self.source else self.settings.exchange


async def _all(coroutines: list[Any]) -> None:
    """Run sources side by side; the first to fail cancels the others and raises its
    error."""
    if len(coroutines) == 1:
        await coroutines[0]
        return
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:
                group.create_task(coroutine)
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None


def rest_url_of(ws_url: str) -> str:
    """The simulator serves REST on its WebSocket port."""
    return ws_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1).rstrip("/")


def simulator_resume(
    reader: LakeReader,
    products: list[str],
    kafka: Settings | None = None,
    exchange: str = "simulator",
) -> dict[str, Any]:
    """Last trade id and price per simulated product in the lake (under `exchange`, the
    simulated twin's name), and over Kafka also in the log's tail (frames not processed yet;
    Coinbase-protocol frames only); {} (a fresh walk) if none or if unreadable."""
    from crypto_sentinel.bus.kafka import tail_texts
    from crypto_sentinel.simulator.resume import merge_points, points_from_frames, resume_points

    try:
        points = resume_points(reader, products, exchange)
        if kafka is not None and exchange == "simulator":
            tail = tail_texts(kafka, "simulator", KAFKA_RESUME_TAIL)
            points = merge_points(points, points_from_frames(tail, products))
    except Exception as exc:
        log.warning("cannot read the simulator's last trades (%s): fresh start", exc)
        return {}
    for product, point in sorted(points.items()):
        log.info(
            "simulator resumes %s after trade %d at price %s", product, point.trade_id, point.price
        )
    return dict(points)


def fault_plan(text: str) -> Any:
    """A FaultPlan for the simulator, or None when no fault is configured."""
    from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec

    spec = FaultSpec.parse(text)
    return FaultPlan(spec) if spec.active else None
