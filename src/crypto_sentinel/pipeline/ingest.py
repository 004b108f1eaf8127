"""The ingest role: the configured sources (live feeds, replay, the built-in simulator as
a fallback) publishing their frames onto the bus - the in-process queue or Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto_sentinel.bus.memory import MemoryBus
from crypto_sentinel.config import LIVE_VENUES, Settings
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.pipeline.simulated import rest_url_of, start_simulator
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

if TYPE_CHECKING:  # Kafka's client library loads only where the log is used
    from crypto_sentinel.bus.kafka import KafkaPublisher

#: (exchange) -> product -> trade id ranges the lake holds, where start-up backfill begins.
KnownTradeIds = Callable[[str], dict[str, list[tuple[int, int]]]]

log = logging.getLogger(__name__)


class IngestRole:
    """Sources -> bus. `known_trade_ids` is the engine's view when this process also runs
    the engine; without it the lake is read (an ingest-only process that can see it)."""

    def __init__(
        self, settings: Settings, reader: LakeReader, known_trade_ids: KnownTradeIds | None
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.known_trade_ids = known_trade_ids or self._lake_trade_ids
        self.sources: list[Source] = []
        self.simulators: list[Any] = []
        self.publisher: KafkaPublisher | None = None
        self.delivery: asyncio.Task[None] | None = None  # the publisher's delivery reports

    # --- status ------------------------------------------------------------------------

    def last_frames(self) -> dict[tuple[str, str], int]:
        """(exchange, product) -> receive time of the product's newest frame (freshness)."""
        out = {}
        for source in self.sources:
            gaps = getattr(source, "gaps", None)
            if gaps is not None:
                exchange = source.status.exchange
                out.update({(exchange, p): ns for p, ns in list(gaps.last_frame_ns.items())})
        return out

    def ready(self) -> bool:
        """Every source is connected (or done) and the log, if any, accepts frames."""
        if self.publisher is not None and self.publisher.outage:
            return False
        if not self.sources:
            return False
        return all(src.status.connected or src.status.finished for src in self.sources)

    def publisher_status(self) -> dict[str, Any] | None:
        if self.publisher is None:
            return None
        return {
            "outage": self.publisher.outage,
            "delivered": self.publisher.delivered,
            "pending": self.publisher.pending(),
            "last_error": self.publisher.last_error,
        }

    def request_book_resync(self, exchange: str, product_id: str) -> bool:
        """Ask the live feed carrying `exchange`'s `product_id` book to resync it; False if
        none does."""
        return any(
            isinstance(src, FeedSource) and src.request_book_resync(exchange, product_id)
            for src in self.sources
        )

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, bus: MemoryBus | None) -> asyncio.Task[None]:
        """Open the sources and start them publishing onto `bus`, or onto Kafka when None;
        the returned task ends when every source has (replay) or one fails for good."""
        if bus is not None:
            publish: Publish = bus.publish
        else:
            from crypto_sentinel.bus.kafka import KafkaPublisher

            self.publisher = KafkaPublisher(self.settings)
            publish = self.publisher.publish
            self.delivery = asyncio.create_task(
                self.publisher.run_delivery_reports(), name="kafka-delivery"
            )
        self.sources = await self.choose_sources()
        if bus is not None:
            for source in self.sources:
                if isinstance(source, ReplaySource):
                    source.publish_many = bus.publish_many
                    source.room_for = bus.room_for
        else:
            exchanges = [source.status.exchange for source in self.sources]
            await asyncio.to_thread(_ensure_topics, self.settings, exchanges)
        feeds = [self._run_source(i, publish) for i in range(len(self.sources))]
        return asyncio.create_task(_all(feeds), name="source")

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop the sources (`task` from `start`; a failure it ended with is the
        supervisor's to raise) and hand Kafka what they published."""
        task.cancel()
        await asyncio.wait([task])
        if self.publisher is not None:
            left = await asyncio.to_thread(self.publisher.flush, 30)
            if left:
                log.error("%d frames not yet delivered to Kafka at shutdown", left)

    async def close(self) -> None:
        """After the engine drained: the delivery reports (they run until cancelled)."""
        if self.delivery is not None:
            self.delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.delivery

    async def stop_simulators(self) -> None:
        for simulator in self.simulators:
            await simulator.stop()

    # --- sources -------------------------------------------------------------------------

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
                sources.append(await self._simulated(venue_of(name) or "coinbase"))
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
            source.seed(self.known_trade_ids(kind))
        return source

    def _lake_trade_ids(self, exchange: str) -> dict[str, list[tuple[int, int]]]:
        try:
            ranges = self.reader.trade_id_ranges()
        except Exception as exc:
            log.warning("cannot read trade ids from the lake (%s): no start-up backfill", exc)
            return {}
        return {p: r for (ex, p), r in ranges.items() if ex == exchange}

    async def _simulated(self, venue: str) -> FeedSource:
        """A built-in simulator of `venue` started now, and the feed that reads it."""
        simulator = await start_simulator(self.settings, self.reader, venue)
        self.simulators.append(simulator)
        name = simulated_name(venue)
        return self._feed(venue, simulator.ws_url, simulator.rest_url, name, resume=False)

    async def _run_source(self, index: int, publish: Publish) -> None:
        """Run one source; a live venue that cannot be reached is replaced by its twin."""
        source = self.sources[index]
        task = asyncio.create_task(source.run(publish), name=f"source-{source.status.exchange}")
        if isinstance(source, FeedSource) and source.status.kind in LIVE_VENUES:
            task = await self._fallback_if_unreachable(index, source, task, publish)
        await task

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
        twin = self.sources[index] = await self._simulated(venue)
        if self.settings.bus == "kafka":
            await asyncio.to_thread(_ensure_topics, self.settings, [twin.status.exchange])
        return asyncio.create_task(twin.run(publish), name=f"source-{twin.status.exchange}")


def _ensure_topics(settings: Settings, exchanges: list[str]) -> None:
    from crypto_sentinel.bus.kafka import ensure_topics

    ensure_topics(settings, exchanges)


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
