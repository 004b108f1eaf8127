"""The API's process side: one builder of the app and its uvicorn server for `sentinel up`
(inside the pipeline) and `sentinel serve` (the API over the lake, optionally with the Kafka
tail as its live data)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from crypto_sentinel.api.app import create_app
from crypto_sentinel.api.coalesce import coalesce_writes
from crypto_sentinel.api.security import ApiSecurity
from crypto_sentinel.api.state import HotState
from crypto_sentinel.api.stream import Hub
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.config import Settings
from crypto_sentinel.engine.chunks import ChunkNews
from crypto_sentinel.engine.hotfeed import HotFeed
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.looplag import watch_loop_lag
from crypto_sentinel.startup import bind_api, check_lake

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling: the pipeline decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def api_server(
    settings: Settings,
    state: HotState,
    reader: LakeReader,
    hub: Hub,
    *,
    default_exchange: Callable[[], str],
    status: Callable[[], dict[str, Any]],
    ready: Callable[[], bool],
    own_signals: bool,
    books: BookRegistry | None = None,
) -> uvicorn.Server:
    """The API app and its uvicorn server: one builder for `sentinel up` (the pipeline stops
    it: `own_signals=False`) and `sentinel serve` (uvicorn stops on SIGINT/SIGTERM)."""
    app = create_app(
        state,
        reader,
        default_exchange=default_exchange,
        products=settings.products,
        status=status,
        ready=ready,
        hub=hub,
        cors_origins=settings.api_cors_origins,
        security=ApiSecurity.from_settings(settings),
        books=books,
    )
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            lifespan="off", ws_max_size=64 * 1024)  # fmt: skip
    coalesce_writes(config)
    return uvicorn.Server(config) if own_signals else _Server(config)


def live_memory(settings: Settings) -> tuple[HotState, Hub]:
    """The API's memory of recent data and its push hub, sized by the settings: built only
    when an API runs (`sentinel up` or `sentinel serve`)."""
    state = HotState(settings.hot_trades_per_product, hot_minutes=settings.api_hot_minutes)
    hub = Hub(settings.api_stream_queue, settings.api_stream_max_clients,
              settings.api_heartbeat_seconds)  # fmt: skip
    return state, hub


async def serve_lake(settings: Settings, exchange: str | None) -> None:
    """API only, over what the lake holds (history; no live stream)."""
    check_lake(settings, writes=False)
    sock = bind_api(settings.host, settings.port)  # a taken port stops start-up at once
    reader = LakeReader(settings.lake_root)
    state, hub = live_memory(settings)

    def on_chunk(news: ChunkNews) -> None:  # hot state first: push reads it
        state.on_chunk(news)
        hub.on_chunk(news)

    feed_task = None
    if settings.bus == "kafka":  # live data from the log's tail, history from the lake
        from crypto_sentinel.bus.kafka import KafkaFrames

        consumer = KafkaFrames(
            settings,
            position=lambda _exchange, _partition: None,
            group=f"{settings.kafka_group}-serve-{uuid.uuid4().hex[:8]}",
            from_end=True,
        )
        feed_task = asyncio.create_task(HotFeed(on_chunk).run(consumer, asyncio.Event()))
    lake = str(settings.lake_root)  # resolved once: status is asked on every request
    server = api_server(
        settings, state, reader, hub, default_exchange=lambda: exchange or settings.exchange,
        status=lambda: {"source": None, "lake": lake}, ready=lambda: True,
        own_signals=True,
    )  # fmt: skip
    log.info("API on http://%s:%d", settings.host, sock.getsockname()[1])
    stopped = asyncio.Event()
    lag_task = asyncio.create_task(watch_loop_lag(stopped))
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
        stopped.set()
        await lag_task
        if feed_task is not None:
            feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed_task
            consumer.close()
