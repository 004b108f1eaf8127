"""The engine's book processor: a chunk's book frames, in order, into the live books and the
lake's rows.

Each frame is tested with its venue's cheap `is_book`; book frames are decoded into
`BookEvent`s (a `FrameError` quarantines the frame with its reason) and handed to the
product's sync rule, which applies them to the product's live book in the `BookRegistry`.
What was applied becomes silver.book_updates rows (one per level change, in the engine's
order: see `lake.tables.BOOK_UPDATES`); gold.book_snapshots gets the top levels each time a
product's book time enters a new `snapshot_seconds` bucket, the full book each time it enters
a new `checkpoint_seconds` bucket and after every snapshot or break ("resync"); every break
leaves a bronze.gaps row of kind "book" with its reason.

Snapshot timing depends only on the book times of consecutive changes, so a restart that
restores the books (`restore`) and derives a batch again writes the same rows.

Rows are gathered as flat column lists (levels) and per-event lists expanded by one `take`,
then built into Arrow once per chunk: no per-level Python objects beyond the decoded pairs.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from crypto_sentinel.books.events import BookEvent, BookSync, Verdict
from crypto_sentinel.books.orderbook import BookView, OrderBook
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.lake import tables as T
from crypto_sentinel.model import GapRecord, RawFrame
from crypto_sentinel.sources.codec import FrameError
from crypto_sentinel.sources.venues import BookCodec, book_codec_for

if TYPE_CHECKING:
    from crypto_sentinel.config import Settings

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def us_of(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MICRO


def datetime_of(us: int) -> datetime:
    return _EPOCH + us * _MICRO


@dataclass(frozen=True)
class BookSettings:
    """The few settings the processor needs (`Settings.book_*`)."""

    depth: int = 1000  # levels per side the engine keeps of every book
    snapshot_seconds: float = 1.0
    snapshot_levels: int = 50
    checkpoint_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BookSettings:
        return cls(
            settings.book_depth,
            settings.book_snapshot_seconds,
            settings.book_snapshot_levels,
            settings.book_checkpoint_seconds,
        )


@dataclass
class BookOutput:
    """What one chunk adds to the batch."""

    updates: pa.Table | None = None  # silver.book_updates rows
    snapshots: pa.Table | None = None  # gold.book_snapshots rows
    gaps: list[GapRecord] = field(default_factory=list)  # one per break
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (frame index, reason)
    dropped: int = 0  # events the sync rule dropped (stale, repeated, pushed out of a buffer)
    buffered: int = 0  # events the sync rule keeps for after the next snapshot (Binance)


@dataclass
class _Product:
    book: OrderBook
    sync: BookSync
    depth: int
    moment_us: int = -1  # book time of the last change (-1: none yet)
    last_break: str = ""  # reason of the newest break
    seen_us: int = -1  # newest exchange time of any of its events (applied or not)
    #: The events the sync rule buffered (a copy, to write the rows of those it replays
    #: when a snapshot comes: they change the book at the snapshot's frame).
    buffered: deque[BookEvent] = field(default_factory=deque)
    buffer_limit: int = 1000


class _Rows:
    """Column lists of one chunk's level changes and snapshots."""

    def __init__(self) -> None:
        # per event
        self.ev: dict[str, list[Any]] = {
            name: []
            for name in ("exchange", "product_id", "update_id", "first_update_id", "snapshot",
                         "time", "book_time", "recv_time", "conn_id", "recv_seq")
        }  # fmt: skip
        # per level
        self.event_of: list[int] = []
        self.side: list[bool] = []  # True: bid
        self.price: list[Decimal] = []
        self.size: list[Decimal] = []
        self.position: list[int] = []
        # snapshots
        self.snap: dict[str, list[Any]] = {name: [] for name in T.BOOK_SNAPSHOTS.schema.names}
        self.snap_levels: dict[str, tuple[list[int], list[Decimal], list[Decimal]]] = {
            "bids": ([0], [], []),
            "asks": ([0], [], []),
        }

    def event(self, event: BookEvent, frame: RawFrame, moment_us: int, position: int) -> int:
        """Add the event's level changes; returns the next position within the frame."""
        ev = self.ev
        index = len(ev["exchange"])
        ev["exchange"].append(event.exchange)
        ev["product_id"].append(event.product_id)
        ev["update_id"].append(event.update_id)
        ev["first_update_id"].append(event.first_update_id)
        ev["snapshot"].append(event.kind == "snapshot")
        ev["time"].append(None if event.time is None else us_of(event.time))
        ev["book_time"].append(moment_us)
        ev["recv_time"].append(frame.recv_ns // 1000)
        ev["conn_id"].append(frame.conn_id)
        ev["recv_seq"].append(frame.recv_seq)
        count = len(event.bids) + len(event.asks)
        self.event_of.extend([index] * count)
        self.side.extend([True] * len(event.bids))
        self.side.extend([False] * len(event.asks))
        for levels in (event.bids, event.asks):
            if levels:
                prices, sizes = zip(*levels, strict=True)
                self.price.extend(prices)
                self.size.extend(sizes)
        self.position.extend(range(position, position + count))
        return position + count

    def snapshot(
        self, view: BookView, frame: RawFrame, moment_us: int, position: int, reason: str,
        depth: int | None, max_depth: int,
    ) -> None:  # fmt: skip
        s = self.snap
        s["exchange"].append(view.exchange)
        s["product_id"].append(view.product_id)
        s["time"].append(moment_us)
        s["recv_time"].append(frame.recv_ns // 1000)
        s["conn_id"].append(frame.conn_id)
        s["recv_seq"].append(frame.recv_seq)
        s["position"].append(position)
        s["update_id"].append(view.update_id)
        s["exchange_time"].append(None if view.time is None else us_of(view.time))
        s["reason"].append(reason)
        s["depth"].append(depth)
        s["max_depth"].append(max_depth)
        s["valid"].append(view.valid)
        s["invalid_reason"].append(view.invalid_reason)
        for name, levels in (("bids", view.bids), ("asks", view.asks)):
            offsets, prices, sizes = self.snap_levels[name]
            if levels:
                p, z = zip(*levels, strict=True)
                prices.extend(p)
                sizes.extend(z)
            offsets.append(len(prices))

    def updates_table(self) -> pa.Table | None:
        if not self.event_of:
            return None
        ev = self.ev
        take = pa.array(self.event_of, pa.int32())
        book_time = pa.array(ev["book_time"], pa.int64()).cast(T.UTC_TS)
        columns = {
            "exchange": pa.array(ev["exchange"], pa.string()).take(take),
            "product_id": pa.array(ev["product_id"], pa.string()).take(take),
            "side": pa.array(["ask", "bid"], pa.string()).take(
                pa.array(self.side, pa.bool_()).cast(pa.int8())
            ),
            "price": pa.array(self.price, T.PRICE),
            "size": pa.array(self.size, T.PRICE),
            "update_id": pa.array(ev["update_id"], pa.int64()).take(take),
            "first_update_id": pa.array(ev["first_update_id"], pa.int64()).take(take),
            "snapshot": pa.array(ev["snapshot"], pa.bool_()).take(take),
            "time": pa.array(ev["time"], pa.int64()).cast(T.UTC_TS).take(take),
            "book_time": book_time.take(take),
            "recv_time": pa.array(ev["recv_time"], pa.int64()).cast(T.UTC_TS).take(take),
            "conn_id": pa.array(ev["conn_id"], pa.string()).take(take),
            "recv_seq": pa.array(ev["recv_seq"], pa.int64()).take(take),
            "position": pa.array(self.position, pa.int32()),
            "date": book_time.cast(pa.date32()).take(take),
        }
        return pa.table(columns, schema=T.BOOK_UPDATES.schema)

    def snapshots_table(self) -> pa.Table | None:
        s = self.snap
        if not s["exchange"]:
            return None
        columns: dict[str, Any] = {}
        for name in T.BOOK_SNAPSHOTS.schema.names:
            typ = T.BOOK_SNAPSHOTS.schema.field(name).type
            if name in ("bids", "asks"):
                offsets, prices, sizes = self.snap_levels[name]
                levels = pa.StructArray.from_arrays(
                    [pa.array(prices, T.PRICE), pa.array(sizes, T.PRICE)],
                    fields=list(T.BOOK_LEVEL),
                )
                columns[name] = pa.ListArray.from_arrays(
                    pa.array(offsets, pa.int32()), levels, type=typ
                )
            elif name in ("time", "recv_time", "exchange_time"):
                columns[name] = pa.array(s[name], pa.int64()).cast(typ)
            elif name == "date":
                columns[name] = pa.array(s["time"], pa.int64()).cast(T.UTC_TS).cast(typ)
            else:
                columns[name] = pa.array(s[name], typ)
        return pa.table(columns, schema=T.BOOK_SNAPSHOTS.schema)


def _remember(product: _Product, event: BookEvent) -> None:
    """Mirror the sync rule's buffer: bounded as it is, and (as it does on a reconnect)
    holding the updates of one connection only."""
    buffered = product.buffered
    if buffered and buffered[-1].conn_id != event.conn_id:
        kept = [e for e in buffered if e.conn_id == event.conn_id]
        buffered.clear()
        buffered.extend(kept)
    buffered.append(event)
    if len(buffered) > product.buffer_limit:
        buffered.popleft()


class BookProcessor:
    """Keeps the live books of one engine and turns its chunks into book rows."""

    def __init__(
        self,
        registry: BookRegistry,
        settings: BookSettings | None = None,
        codec_for: Callable[[str], BookCodec | None] = book_codec_for,
    ) -> None:
        self.registry = registry
        self.settings = settings or BookSettings()
        self.codec_for = codec_for
        self._products: dict[tuple[str, str], _Product] = {}
        self._snapshot_us = max(int(self.settings.snapshot_seconds * 1_000_000), 1)
        self._checkpoint_us = max(int(self.settings.checkpoint_seconds * 1_000_000), 1)

    def moment(self, exchange: str, product_id: str) -> datetime | None:
        """The book time of the product's last change (what `book_at` reads by)."""
        product = self._products.get((exchange, product_id))
        if product is None or product.moment_us < 0:
            return None
        return datetime_of(product.moment_us)

    def _product(self, event: BookEvent, codec: BookCodec) -> _Product:
        key = (event.exchange, event.product_id)
        product = self._products.get(key)
        if product is None:
            sync = codec.new_sync()
            book = self.registry.book(*key)
            product = self._products[key] = _Product(book, sync, self.settings.depth)
            product.depth = self._depth(product)
            limit = getattr(sync, "buffer_limit", None)
            product.buffer_limit = limit if isinstance(limit, int) and limit > 0 else 1000
        return product

    def process(self, frames: Sequence[RawFrame]) -> BookOutput:
        out = BookOutput()
        rows = _Rows()
        changed: dict[tuple[str, str], OrderBook] = {}
        codecs: dict[str, BookCodec | None] = {}
        for index, frame in enumerate(frames):
            exchange = frame.exchange
            if exchange in codecs:
                codec = codecs[exchange]
            else:
                codec = codecs[exchange] = self.codec_for(exchange)
            if codec is None:
                continue
            if not codec.is_book(frame.text):
                if codec.note is not None:  # the venue's rule counts every message
                    codec.note(frame)
                continue
            try:  # the venue's decode validates every amount (`check_amount`): they fit
                events = codec.decode(frame)
            except FrameError as exc:
                out.rejected.append((index, str(exc)))
                continue
            position = 0
            for event in events:
                position = self._event(event, frame, codec, position, rows, out, changed)
        out.updates = rows.updates_table()
        out.snapshots = rows.snapshots_table()
        for book in changed.values():
            self.registry.changed(book)
        return out

    def _event(
        self, event: BookEvent, frame: RawFrame, codec: BookCodec, position: int,
        rows: _Rows, out: BookOutput, changed: dict[tuple[str, str], OrderBook],
    ) -> int:  # fmt: skip
        product = self._product(event, codec)
        book = product.book
        was_update_id, was_valid, was_reason = book.update_id, book.valid, book.invalid_reason
        if event.time is not None:
            product.seen_us = max(product.seen_us, us_of(event.time))
        verdict = product.sync.accept(event, book)
        if event.kind == "snapshot":  # a venue's depth may follow its snapshot (Kraken)
            product.depth = self._depth(product)
        # a break is news once: repeats while the book is still invalid (Binance's buffer
        # overflowing at every update) are counted, not written again
        broke = bool(verdict.resync) and (was_valid or verdict.resync != product.last_break)
        flipped = book.valid != was_valid or book.invalid_reason != was_reason
        if not (verdict.applied or broke or flipped):
            if verdict.buffered:
                _remember(product, event)
            if verdict.buffered and not verdict.resync:
                out.buffered += 1
            else:
                out.dropped += 1
            return position
        if verdict.resync:
            product.last_break = verdict.resync
        if event.time is not None:
            when = us_of(event.time)
        else:  # (Binance's REST snapshot) the venue's clock as last seen, else ours
            when = product.seen_us if product.seen_us >= 0 else frame.recv_ns // 1000
        previous = product.moment_us
        moment = product.moment_us = max(previous, when)
        changed[(event.exchange, event.product_id)] = book
        if verdict.applied:  # the sync rule wrote the levels, ids and time into the book
            if len(book.bids) > product.depth or len(book.asks) > product.depth:
                book.truncate(product.depth)
            position = rows.event(event, frame, moment, position)
            if event.kind == "snapshot":
                position = self._replayed(product, event, verdict, frame, moment, position, rows)
        elif verdict.buffered:
            _remember(product, event)
        if broke:
            out.gaps.append(self._gap(event, frame, moment, was_update_id, verdict.resync))
        if broke or flipped or (verdict.applied and event.kind == "snapshot"):
            # the book was replaced, broken or (in)validated in ways no level row says
            self._snapshot(product, frame, rows, position, "resync", None)
        elif previous < 0 or moment // self._checkpoint_us > previous // self._checkpoint_us:
            self._snapshot(product, frame, rows, position, "checkpoint", None)
        elif moment // self._snapshot_us > previous // self._snapshot_us:
            levels = self.settings.snapshot_levels
            self._snapshot(product, frame, rows, position, "interval", levels)
        return position

    def _depth(self, product: _Product) -> int:
        """Levels a side the engine keeps: the setting, or less when the venue's sync rule
        truncates to its subscribed depth (`depth` attribute, Kraken)."""
        venue_depth = getattr(product.sync, "depth", None)
        if isinstance(venue_depth, int) and venue_depth > 0:
            return min(self.settings.depth, venue_depth)
        return self.settings.depth

    def _replayed(
        self, product: _Product, snapshot: BookEvent, verdict: Verdict, frame: RawFrame,
        moment: int, position: int, rows: _Rows,
    ) -> int:  # fmt: skip
        """Rows of the buffered updates the sync rule applied right after a snapshot: those of
        the snapshot's connection newer than it, in buffer order (`Verdict.replayed`)."""
        waiting = [
            e for e in product.buffered
            if e.conn_id == snapshot.conn_id
            and (e.update_id is None or snapshot.update_id is None
                 or e.update_id > snapshot.update_id)
        ]  # fmt: skip
        product.buffered.clear()
        for event in waiting[: verdict.replayed]:
            position = rows.event(event, frame, moment, position)
        if verdict.resync:
            product.buffered.extend(waiting[verdict.replayed :])
        return position

    def _snapshot(
        self, product: _Product, frame: RawFrame, rows: _Rows, position: int, reason: str,
        depth: int | None,
    ) -> None:  # fmt: skip
        view = product.book.view(depth)
        rows.snapshot(view, frame, product.moment_us, position, reason, depth, product.depth)

    def _gap(
        self, event: BookEvent, frame: RawFrame, moment: int, last_id: int | None, reason: str
    ) -> GapRecord:
        """A break: the ids known to be missing (Binance: after the last applied `u`, before
        this event's `U`), the reason in words."""
        first = last = None
        missing = 0
        following = event.first_update_id
        if last_id is not None and following is not None and following > last_id + 1:
            first, last = last_id + 1, following - 1
            missing = last - first + 1
        log.warning("%s %s book resync: %s", event.exchange, event.product_id, reason)
        return GapRecord(
            event.exchange, event.product_id, "book", datetime_of(moment), first, last,
            missing, 0, "unfilled", frame.recv_ns, frame.conn_id, reason,
        )  # fmt: skip

    def restore(
        self, exchange: str, product_id: str, view: BookView, moment: datetime, conn_id: str
    ) -> None:
        """Continue from a book read back from the lake (after a restart): the live book gets
        its levels, and a fresh sync rule is primed with it as a snapshot of its connection,
        so the updates that follow in the stream apply as they did before the restart (a
        venue's buffer of updates waiting for a snapshot is not restored)."""
        codec = self.codec_for(exchange)
        if codec is None:
            return
        event = BookEvent(
            exchange, product_id, "snapshot", list(view.bids), list(view.asks),
            view.update_id, None, None, view.time, conn_id,
        )  # fmt: skip
        product = self._product(event, codec)
        book = product.book
        if view.valid:
            product.sync.accept(event, book)
        else:
            book.load_snapshot(view.bids, view.asks, view.update_id, view.time)
            book.mark_invalid(view.invalid_reason)
            product.last_break = view.invalid_reason
        product.moment_us = product.seen_us = us_of(moment)


def first_book_frames(frames: Sequence[RawFrame]) -> dict[tuple[str, str], tuple[int, str, int]]:
    """Each product's first book frame among `frames` as a `BookHistory` frame key (receive
    time in us, connection, sequence): where a restarted engine continues that product's book
    from, when those frames are derived again. Per product, not one cut for all: frames from
    several Kafka partitions interleave, and one cut would hide another product's stored rows."""
    first: dict[tuple[str, str], tuple[int, str, int]] = {}
    for frame in frames:
        codec = book_codec_for(frame.exchange)
        if codec is None or not codec.is_book(frame.text):
            continue
        try:
            events = codec.decode(frame)
        except FrameError:
            continue
        key = (frame.recv_ns // 1000, frame.conn_id, frame.recv_seq)
        for event in events:
            product = (event.exchange, event.product_id)
            if product not in first or key < first[product]:
                first[product] = key
    return first
