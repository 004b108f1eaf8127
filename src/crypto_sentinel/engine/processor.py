"""The embedded stream engine: decode each frame as it arrives, cut micro-batches, commit.

Per frame (on the event loop): decode and validate, drop duplicates, update candles and tell
listeners (hot state, push) at once. Per batch (in a writer thread, one at a time): commit
to Delta with the batch version as app transaction. While one batch commits the next one
fills, so commits overlap with decoding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel import metrics
from crypto_sentinel.books.history import BookHistory
from crypto_sentinel.books.processor import BookProcessor, datetime_of, first_book_frames
from crypto_sentinel.engine import recovery
from crypto_sentinel.engine.candles import Candle, CandleKey
from crypto_sentinel.engine.chunks import ChunkAcceptor, Listener  # noqa: F401 (re-exported)
from crypto_sentinel.engine.dedupe import IdRanges
from crypto_sentinel.engine.records import unix_us
from crypto_sentinel.engine.repair import lacks_candles, minutes_of, repair_candles
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.rows import bronze_table
from crypto_sentinel.lake.writer import Batch, CommitResult, LakeWriter
from crypto_sentinel.model import GapRecord, RawFrame, Rejected

log = logging.getLogger(__name__)


def _add(rows: pa.Table | list[Any], records: list[Any], tables: list[pa.Table]) -> int:
    """Add a chunk's accepted rows to the batch (records or an Arrow table); their count."""
    if isinstance(rows, list):
        records.extend(rows)
        return len(rows)
    if rows.num_rows:
        tables.append(rows)
    return int(rows.num_rows)


class FrameSource(Protocol):
    """What the engine reads from: the in-process bus or a Kafka consumer."""

    async def take(self, max_frames: int, timeout: float) -> list[RawFrame]: ...

    def depth(self) -> int: ...


#: Candles older than this (behind the newest trade of the product) leave memory; a late
#: trade for them is merged with the stored row instead.
CANDLE_HORIZON = timedelta(hours=2)

#: Frames decoded together at most. A live feed's chunk is the few frames waiting; only a
#: backlog fills one, and then its frames are late already: 5,000 spread a chunk's fixed
#: column-wise cost over more of them than 2,000 did (a replay drained 6-7 % faster, a
#: WebSocket feed sending as fast as read 11-21 %; the live phase's latencies unchanged:
#: docs/benchmarks.md, session 35).
CHUNK_FRAMES = 5000


#: Frames waiting in a batch from which their bronze rows are built, so that the batch keeps
#: the rows and not the frame objects (about 600 bytes each besides the row: a replay's peak
#: RSS fell from 282-289 to 253-254 MB, docs/benchmarks.md, session 36). A live feed's
#: chunk of a few frames would each pay a table's fixed cost (about 20 us) on the event
#: loop; its batches are built by the writer, as the records of a Kafka batch are.
BRONZE_BUILD_FRAMES = 1000


def _receipts(batch: Batch) -> array[int]:
    """Receive times of a batch's bronze rows in arrival order, unix ns (those of its tables
    to the microsecond, as bronze stores them): the tables hold the frames that came first."""
    recv = array("q")
    for table in batch.bronze_tables:
        recv.extend(pc.multiply(table["recv_time"].cast(pa.int64()), 1000).to_pylist())
    recv.extend(f.recv_ns for f in batch.frames)
    return recv


def _first_receipt(batch: Batch) -> int | None:
    if batch.bronze_tables:
        return int(batch.bronze_tables[0]["recv_time"][0].value) * 1000
    return batch.frames[0].recv_ns if batch.frames else None


def _new_batch() -> Batch:
    """An empty batch; every frame added goes through `process_frames`, so its first log
    positions are known."""
    return Batch(version=0, first_positions={})


@dataclass
class EngineStats:
    frames: int = 0
    trades: int = 0
    duplicates: int = 0
    tickers: int = 0
    quarantined: int = 0
    backfill_pages: int = 0
    gap_records: int = 0
    book_changes: int = 0  # level changes applied to books (silver.book_updates rows)
    book_snapshots: int = 0
    book_resyncs: int = 0
    book_events_dropped: int = 0  # events a venue's sync rule drops (stale, repeated, overflow)
    book_events_buffered: int = 0  # kept by a venue's sync rule until the next snapshot
    batches: int = 0
    last_commit_seconds: float = 0.0


@dataclass
class CommitRecord:
    """Timing of one committed batch, kept for benchmarks (receipt -> committed)."""

    committed_ns: int
    recv_ns: array[int]


class Engine:
    def __init__(
        self,
        writer: LakeWriter,
        batch_interval: float,
        batch_max_frames: int,
        books: BookProcessor | None = None,
    ) -> None:
        self.writer = writer
        #: Level-2 books (None: `settings.books` is off, and no book work is done at all).
        self.books = books
        self.batch_interval = batch_interval
        self.batch_max_frames = batch_max_frames
        self.stats = EngineStats()
        #: Receipt times of committed batches, for benchmarks; None (the default) keeps none,
        #: as it would grow with every frame of a long run.
        self.commit_log: list[CommitRecord] | None = None
        self.next_version = writer.last_version + 1
        self.acceptor = ChunkAcceptor()
        self.listeners = self.acceptor.listeners
        self._trade_ids = self.acceptor.trade_ids
        self._ticker_marks = self.acceptor.ticker_marks
        self._book: dict[CandleKey, Candle] = {}  # complete candles, in memory
        self._partial: dict[CandleKey, Candle] = {}  # minutes whose stored row is unknown
        self._dirty: set[CandleKey] = set()
        self._newest_minute: dict[tuple[str, str], datetime] = {}
        self._generation = 0  # `forget` calls so far: a commit's result adopts only its own
        self._pending = _new_batch()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer")
        self._inflight: Future[CommitResult] | None = None
        self.on_commit: list[Callable[[Batch], None]] = []
        #: Called with each book break found live (a resync record): the venue can be asked
        #: for the book afresh (`Pipeline.request_book_resync`).
        self.on_book_break: list[Callable[[GapRecord], None]] = []
        self._rederiving = False  # feeding bronze through again at start (not new input)
        #: Whether batches carry their frames' bronze rows (False where bronze is the input:
        #: `sentinel rebuild`).
        self.keeps_bronze = True

    def load_state(self, reader: LakeReader, owns: Collection[str] | None = None) -> None:
        """Learn what the lake already holds so replays and reconnects never duplicate rows,
        and finish what an interrupted commit of the app ids in `owns` left (default: the
        writer's own app id; Kafka passes the partitions it was assigned)."""
        for key, ranges in reader.trade_id_ranges().items():
            ids = self._trade_ids.setdefault(key, IdRanges())
            for lo, hi in ranges:
                ids.add_range(lo, hi)
        for key, (sequence, when) in reader.ticker_high_water().items():
            self._ticker_marks[key] = (sequence, unix_us(when))
        unfinished = self.rederive({self.writer.app_id} if owns is None else owns)
        repair_candles(self.writer, reader, unfinished)
        log.info(
            "engine state loaded: %d products, %d books, next batch version %d",
            len(self._trade_ids),
            0 if self.books is None else len(self.books.registry.products()),
            self.next_version,
        )

    def rederive(self, owns: Collection[str]) -> set[CandleKey]:
        """Derive again the newest bronze batch of each owned app id (see engine/recovery.py);
        returns the candle minutes of those batches whose trades silver holds and gold lacks
        (engine/repair.py recomputes them)."""
        lake = self.writer.lake
        commits = recovery.in_doubt(lake, self.writer.tables[T.BRONZE.name], owns)
        in_doubt = [(commit, list(recovery.frames_of(lake, commit))) for commit in commits]
        unfinished: set[CandleKey] = set()
        for commit, frames in in_doubt:  # before this derivation records gold's transactions
            if lacks_candles(self.writer, commit.txns, owns):
                unfinished |= minutes_of(frames)
        if self.books is not None:
            self._restore_books([f for _, frames in in_doubt for f in frames])
        stats = replace(self.stats)  # counters describe the input, not the recovery
        self._rederiving = True  # ... and so do the metrics; no bronze rows: they came from it
        pending, self._pending = self._pending, _new_batch()
        try:
            for commit, frames in in_doubt:
                self.process_frames(frames)
                batch = self.cut(version=max(commit.txns.values()))
                if batch is None:
                    continue
                batch.txns = {app: v for app, v in commit.txns.items() if app in owns}
                result = self.writer.commit(batch)
                self.committed(batch, result)
                metrics.REDERIVED_BATCHES.inc()
        finally:
            self.stats = stats
            self._rederiving = False
            self._pending = pending
        return unfinished

    def _restore_books(self, in_doubt: Sequence[RawFrame]) -> None:
        """Continue the books the lake holds from where the stored rows end: before the
        product's first in-doubt frame (those are derived again next), or after everything
        stored."""
        assert self.books is not None
        history = BookHistory(self.writer.lake)
        first = first_book_frames(in_doubt)
        restored = 0
        window = 2 * self.books.settings.checkpoint_seconds
        for exchange, product_id in history.recent_products(window):
            found = history.book_before(exchange, product_id, first.get((exchange, product_id)))
            if found is not None:
                book, moment, conn_id = found
                view = book.view()
                self.books.restore(exchange, product_id, view, datetime_of(moment), conn_id)
                restored += 1
        if restored:
            log.info("books restored from the lake: %d", restored)

    def trade_id_ranges(self, exchange: str) -> dict[str, list[tuple[int, int]]]:
        """Trade ids known per product (start-up backfill fills the holes and the tail)."""
        return {p: ids.ranges for (ex, p), ids in self._trade_ids.items() if ex == exchange}

    def last_trade_id(self, exchange: str, product_id: str) -> int | None:
        ids = self._trade_ids.get((exchange, product_id))
        return ids.max if ids else None

    # --- per chunk of frames --------------------------------------------------------------

    def process(self, frame: RawFrame) -> None:
        """One frame (tests, tools); the loop hands over whole chunks."""
        self.process_frames([frame])

    def process_frames(self, frames: Sequence[RawFrame]) -> None:
        """Decode a chunk column-wise, drop duplicates, add to the batch, tell listeners.

        The lake gets the decoded Arrow rows as they are; Python objects are made only for
        what the hot path shows at once (`engine/chunks.py`).
        """
        if not frames:
            return
        pending = self._pending
        pending.frame_count += len(frames)
        logged = frames[0].offset >= 0 or frames[-1].offset >= 0
        if logged or (self.keeps_bronze and not self._rederiving):
            pending.frames.extend(frames)
        if logged:  # the writer checks each one's offset against what bronze holds
            positions, firsts = pending.positions, pending.first_positions
            assert firsts is not None  # the engine's batches know them
            for frame in frames:
                if (offset := frame.offset) >= 0:
                    key = (frame.exchange, frame.partition)
                    positions[key] = offset
                    if offset < firsts.get(key, offset + 1):
                        firsts[key] = offset
        elif len(pending.frames) >= BRONZE_BUILD_FRAMES and not pending.first_positions:
            pending.bronze_tables.append(bronze_table(pending.frames))
            pending.frames = []
        stats = self.stats
        stats.frames += len(frames)
        accepted = self.acceptor.accept(frames)
        for index, reason in accepted.rejected:
            frame = frames[index]
            pending.rejected.append(Rejected(frame, reason))
            metrics.QUARANTINED.labels(frame.exchange).inc()
        stats.quarantined += len(accepted.rejected)
        stats.backfill_pages += accepted.backfill_pages
        stats.duplicates += accepted.duplicates
        stats.gap_records += _add(accepted.gaps, pending.gaps, pending.gap_tables)
        stats.trades += _add(accepted.trades, pending.trades, pending.trade_tables)
        stats.tickers += _add(accepted.tickers, pending.tickers, pending.ticker_tables)
        if not self._rederiving:  # per chunk, one increment per exchange
            metrics.count_chunk(frames, accepted.trades)
        for candle in accepted.candles:
            self._add_to_book(candle)
        if self.books is not None:
            self._process_books(frames, {i for i, _ in accepted.rejected})

    def _process_books(self, frames: Sequence[RawFrame], rejected: set[int]) -> None:
        """The chunk's book frames through the live books; their rows join the batch."""
        assert self.books is not None
        out = self.books.process(frames)
        pending, stats = self._pending, self.stats
        for index, reason in out.rejected:
            if index in rejected:  # the frame's own codec quarantined it already
                continue
            frame = frames[index]
            pending.rejected.append(Rejected(frame, reason))
            metrics.QUARANTINED.labels(frame.exchange).inc()
            stats.quarantined += 1
        if out.updates is not None:
            pending.book_update_tables.append(out.updates)
            stats.book_changes += out.updates.num_rows
        if out.snapshots is not None:
            pending.book_snapshot_tables.append(out.snapshots)
            stats.book_snapshots += out.snapshots.num_rows
        pending.gaps.extend(out.gaps)
        stats.gap_records += len(out.gaps)
        stats.book_resyncs += len(out.gaps)
        stats.book_events_dropped += out.dropped
        stats.book_events_buffered += out.buffered
        if not self._rederiving:
            metrics.BOOK_DROPPED.inc(out.dropped)
            if out.updates is not None:
                metrics.BOOK_CHANGES.inc(out.updates.num_rows)
            for gap in out.gaps:
                metrics.BOOK_BREAKS.labels(gap.exchange).inc()
                for hook in self.on_book_break:
                    hook(gap)

    def _add_to_book(self, delta: Candle) -> None:
        """Merge a chunk's candle of a minute into the book (or keep it as partial while the
        stored row of that minute is unknown)."""
        key = delta.key
        candle = self._book.get(key)
        if candle is not None:
            candle.merge(delta)
            self._dirty.add(key)
            return
        partial = self._partial.get(key)
        if partial is not None:
            partial.merge(delta)
            return
        newest = self._newest_minute.get(key[:2])
        if newest is None or key[2] > newest:
            self._newest_minute[key[:2]] = key[2]
        self._partial[key] = replace(delta)

    # --- per batch -----------------------------------------------------------------------

    def cut(self, version: int | None = None) -> Batch | None:
        """Close the current batch (None if there is nothing to write); `version` re-uses
        the version of a batch derived again from bronze."""
        batch = self._pending
        if not (batch.frame_count or self._dirty or self._partial):
            return None
        if version is None:
            version = self.next_version
            self.next_version += 1
        batch.version = version
        batch.candles = [replace(self._book[k]) for k in self._dirty]
        batch.partial_candles = list(self._partial.values())
        self._dirty = set()
        self._partial = {}
        self._pending = _new_batch()
        return batch

    def committed(self, batch: Batch, result: CommitResult, adopt: bool = True) -> None:
        """Adopt the lake's view of merged candles (unless the state was relearnt from the
        lake since the batch was cut: `adopt` False) and keep the in-memory book bounded."""
        for merged in result.merged_candles if adopt else ():
            late = self._partial.pop(merged.key, None)
            if late is not None:  # trades for this minute arrived while it was committing
                merged.merge(late)
                self._dirty.add(merged.key)
            self._book[merged.key] = merged
        self._evict()
        now = time.time_ns()
        self.stats.batches += 1
        self.stats.last_commit_seconds = result.seconds
        metrics.BATCHES.inc()
        metrics.COMMIT_SECONDS.observe(result.seconds)
        first = _first_receipt(batch)
        if first is not None:
            metrics.FRAME_TO_LAKE_SECONDS.observe((now - first) / 1e9)
            if self.commit_log is not None:
                self.commit_log.append(CommitRecord(now, _receipts(batch)))

    def _evict(self) -> None:
        stale = [
            key
            for key in self._book
            if key not in self._dirty and key[2] < self._newest_minute[key[:2]] - CANDLE_HORIZON
        ]
        for key in stale:
            del self._book[key]

    def submit(self, batch: Batch) -> asyncio.Task[None]:
        """Hand the batch to the writer thread now (not when a task first runs), so that
        `flush_now` always sees it in flight; the task adopts the result when it lands."""
        future = self._inflight = self._executor.submit(self.writer.commit, batch)
        generation = self._generation

        async def finish() -> None:
            result = await asyncio.wrap_future(future)
            # After a `forget` (a Kafka rebalance) its candles are no longer this book's: the
            # products may be another processor's now, and the book was relearnt without them.
            self.committed(batch, result, adopt=generation == self._generation)
            for hook in self.on_commit:
                hook(batch)

        return asyncio.create_task(finish())

    def flush_now(self) -> None:
        """Commit everything pending before returning (blocking; used when Kafka partitions
        are about to move to another processor, so it never re-reads uncommitted work)."""
        if self._inflight is not None and self._inflight.exception() is not None:
            return  # the engine stops on that failure; nothing after it may commit
        batch = self.cut()
        if batch is not None:
            result = self._executor.submit(self.writer.commit, batch).result()
            self.committed(batch, result)
            for hook in self.on_commit:
                hook(batch)

    def forget(self, reader: LakeReader, owns: Collection[str]) -> None:
        """Drop per-product state and relearn it from the lake (after a Kafka rebalance,
        another processor may have written these products meanwhile); finish what a crashed
        owner of the app ids in `owns` left half committed."""
        self._generation += 1
        self._trade_ids.clear()
        self._ticker_marks.clear()
        self._book.clear()
        self._newest_minute.clear()
        self.load_state(reader, owns)

    # --- the loop ------------------------------------------------------------------------

    async def run(self, bus: FrameSource, stop: asyncio.Event) -> None:
        """Consume until `stop` is set and the bus is drained, then commit what is left."""
        writing: asyncio.Task[None] | None = None
        deadline = time.monotonic() + self.batch_interval
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            room = self.batch_max_frames - self._pending.frame_count  # a batch stays in bounds
            frames = await bus.take(max(1, min(CHUNK_FRAMES, room)), min(timeout, 0.05))
            self.process_frames(frames)
            metrics.BUS_DEPTH.set(bus.depth())
            if writing is not None and writing.done():
                writing.result()  # surface writer errors
                writing = None
            draining = stop.is_set() and bus.depth() == 0 and not frames
            full = self._pending.frame_count >= self.batch_max_frames
            if time.monotonic() >= deadline or full or draining:
                if writing is not None and (full or draining):
                    await writing
                    writing = None
                if writing is None:
                    batch = self.cut()
                    if batch is not None:
                        writing = self.submit(batch)
                    deadline = time.monotonic() + self.batch_interval
            if draining and writing is None and self.cut_is_empty():
                return
            if draining and writing is not None:
                await writing
                writing = None

    def cut_is_empty(self) -> bool:
        return not (self._pending.frame_count or self._dirty or self._partial)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.writer.close()
