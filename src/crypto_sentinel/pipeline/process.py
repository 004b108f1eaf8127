"""The process role: the engine consuming the bus (the in-process queue or Kafka) in
micro-batches into the Delta lake, the lake's own maintenance, and the book resyncs only the
engine can see the need for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from crypto_sentinel.books.processor import BookProcessor, BookSettings
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.books.sync import ENGINE_ONLY_BREAKS
from crypto_sentinel.bus.memory import MemoryBus
from crypto_sentinel.config import Settings
from crypto_sentinel.engine.processor import Engine, FrameSource
from crypto_sentinel.lake.maintenance import run_maintenance_forever
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import LakeWriter
from crypto_sentinel.model import GapRecord

if TYPE_CHECKING:  # Kafka's client library loads only where the log is used
    from crypto_sentinel.bus.kafka import KafkaFrames

#: (exchange, product_id) -> whether a live feed took the request to resync that book.
ResyncBook = Callable[[str, str], bool]


class ProcessRole:
    """Bus -> engine -> lake. `resync_book` asks the feeds (when this process runs them) for
    a book afresh."""

    def __init__(
        self,
        settings: Settings,
        reader: LakeReader,
        books: BookRegistry | None,
        resync_book: ResyncBook,
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.resync_book = resync_book
        # Over Kafka, one app id per (group, topic, partition) records offsets in Delta.
        app_id = settings.kafka_group if settings.bus == "kafka" else settings.app_id
        self.writer = LakeWriter(settings.lake_root, app_id)
        processor = None
        if books is not None:
            processor = BookProcessor(books, BookSettings.from_settings(settings))
        self.engine = Engine(
            self.writer,
            settings.batch_interval_ms / 1000,
            settings.batch_max_frames,
            books=processor,
        )
        self.engine.on_book_break.append(self._resync_after_break)
        self.consumer: KafkaFrames | None = None

    def status(self, bus_depth: int) -> dict[str, Any]:
        return {**self.engine.stats.__dict__, "bus_depth": bus_depth}

    def _resync_after_break(self, gap: GapRecord) -> None:
        """A break only the engine can see (a checksum, a crossed book, an overflowing
        buffer): ask the venue for the book afresh. Sequence breaks and reconnects the feed
        sees itself and resyncs already."""
        if gap.reason in ENGINE_ONLY_BREAKS:
            self.resync_book(gap.exchange, gap.product_id)

    # --- lifecycle -----------------------------------------------------------------------

    def load_state(self) -> None:
        """What the lake holds already (trade ids, open candles, books), before any frame.
        Over Kafka nothing yet: the engine learns it when partitions are assigned (`forget`),
        as only then is it known whose unfinished commits are this process's to finish, and a
        load here would be thrown away unused."""
        if self.settings.bus != "kafka":
            self.engine.load_state(self.reader)

    def maintenance(self, stop: asyncio.Event) -> Coroutine[Any, Any, None]:
        """The lake maintains itself, in a folder or on object storage, until `stop`."""
        lake = self.settings.lake_root
        return run_maintenance_forever(self.settings, lake, stop, self.writer.maintenance_turn)

    def start(self, bus: MemoryBus | None, input_done: asyncio.Event) -> asyncio.Task[None]:
        """The engine reading `bus`, or Kafka when None; it drains, commits and returns once
        `input_done` is set."""
        frames = bus if bus is not None else self._kafka_input()
        return asyncio.create_task(self.engine.run(frames, input_done), name="engine")

    def close(self) -> None:
        """After the engine's last commit."""
        if self.consumer is not None:
            self.consumer.close()
        self.engine.close()

    def _kafka_input(self) -> FrameSource:
        from crypto_sentinel.bus.kafka import KafkaFrames

        self.consumer = consumer = KafkaFrames(
            self.settings,
            position=self.writer.log_position,
            before_revoke=self.engine.flush_now,
            after_assign=lambda: self.engine.forget(self.reader, self._assigned_app_ids()),
        )
        self.engine.on_commit.append(lambda batch: consumer.commit(batch.positions))
        return consumer

    def _assigned_app_ids(self) -> set[str]:
        """The partition app ids of what the Kafka consumer was just assigned."""
        from crypto_sentinel.bus.kafka import exchange_of

        consumer = self.consumer
        assigned = set()
        if consumer is not None:
            for topic, partition in consumer.assigned:
                exchange = exchange_of(self.settings, topic)
                assigned.add(self.writer.partition_app_id(exchange, partition))
        return assigned
