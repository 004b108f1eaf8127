"""Kraken Spot WebSocket v2 `book` channel, and its documented sync rule.

A snapshot replaces the book; an update sets absolute quantities (0 removes). After every
message the book is truncated to the subscribed depth (Kraken sends no delete for a level
pushed out of it), then the CRC32 of the top 10 levels (`kraken_checksum`) must equal the
message's `checksum`; a mismatch makes the book invalid until the next snapshot.

Prices and quantities are JSON numbers parsed as Decimal so the exact text survives (the
checksum is computed from it), and held to the same rules as other venues' amounts. Symbols
`BTC/USD` become `BTC-USD`, as in the trade codec.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from crypto_sentinel.books.events import BookEvent, EventKind, Verdict
from crypto_sentinel.books.orderbook import LevelPair, OrderBook, kraken_checksum
from crypto_sentinel.books.sync import CHECKSUM_MISMATCH, SnapshotSync, break_book, settle
from crypto_sentinel.config import Settings
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.codec import FrameError, check_time, number_text
from crypto_sentinel.sources.kraken.codec import product_of

#: The depths Kraken offers; a snapshot deeper than the configured depth tells which one.
DEPTHS = (10, 25, 100, 500, 1000)
DEFAULT_DEPTH: int = Settings.model_fields["book_depth"].default


def is_book(text: str) -> bool:
    """A `book` channel message (a subscribe ack names the channel too, under `method`)."""
    return '"channel":"book"' in text and '"method"' not in text


class _Level(msgspec.Struct):
    price: Decimal
    qty: Decimal


class _Data(msgspec.Struct):
    symbol: str
    bids: list[_Level] = []
    asks: list[_Level] = []
    checksum: int | None = None
    timestamp: datetime | None = None


class _Message(msgspec.Struct):
    channel: str
    type: str
    data: list[_Data]


_decoder = msgspec.json.Decoder(_Message)


def decode_book(frame: RawFrame) -> list[BookEvent]:
    """A `book` message -> one event per symbol it carries."""
    try:
        msg = _decoder.decode(frame.text)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad book message: {exc}") from None
    if msg.channel != "book":
        raise FrameError(f"not a book message: channel {msg.channel!r}")
    if msg.type not in ("snapshot", "update"):
        raise FrameError(f"book message type must be snapshot or update, got {msg.type!r}")
    kind: EventKind = "snapshot" if msg.type == "snapshot" else "update"
    out = []
    for d in msg.data:
        if d.checksum is not None and not 0 <= d.checksum < 2**32:
            raise FrameError(f"checksum must be a 32-bit unsigned integer, got {d.checksum}")
        if d.timestamp is not None:
            check_time(frame, d.timestamp)
        out.append(
            BookEvent(
                frame.exchange, product_of(d.symbol), kind, _levels(d.bids), _levels(d.asks),
                checksum=d.checksum, time=d.timestamp, conn_id=frame.conn_id,
            )
        )  # fmt: skip
    return out


def _levels(rows: list[_Level]) -> list[LevelPair]:
    out = []
    for row in rows:
        number_text("price", row.price)
        number_text("size", row.qty, allow_zero=True)
        out.append((row.price, row.qty))
    return out


class BookSync(SnapshotSync):
    """One symbol's book kept by Kraken's rule: truncate to depth, then verify the checksum.

    `depth` is the subscribed depth (default: the `book_depth` setting's default); a snapshot
    with more levels on a side than that shows a deeper subscription, which then wins."""

    def __init__(self, depth: int | None = None) -> None:
        super().__init__()
        self.configured = DEFAULT_DEPTH if depth is None else depth
        self.depth = self.configured
        self.verified = 0  # checksums that matched
        #: The pair's price and size decimals, as the venue's messages show them.
        self.places: tuple[int, int] | None = None

    def after_snapshot(self, event: BookEvent, book: OrderBook) -> Verdict:
        deepest = max(len(event.bids), len(event.asks))
        if deepest > self.configured:
            self.depth = next((d for d in DEPTHS if d >= deepest), deepest)
        else:
            self.depth = self.configured
        return self._verify(event, book)

    def after_update(self, event: BookEvent, book: OrderBook) -> Verdict:
        return self._verify(event, book)

    def _verify(self, event: BookEvent, book: OrderBook) -> Verdict:
        book.truncate(self.depth)
        if event.checksum is not None:
            self.places = places_of(event) or self.places
            if kraken_checksum(book) != event.checksum and (
                self.places is None or kraken_checksum(book, self.places) != event.checksum
            ):
                return break_book(book, CHECKSUM_MISMATCH, applied=True)
            self.verified += 1
        return settle(book)


def places_of(event: BookEvent) -> tuple[int, int] | None:
    """The decimals of the message's prices and (non-zero) sizes: Kraken writes every value
    of a pair with the same places, so a book continued from the lake (whose decimals have
    the lake's scale) can be checked as Kraken wrote it (a removal's `0.00000000` shows them
    too). None when the message shows no size's places (only a bare `0`)."""
    levels = event.bids + event.asks
    sizes = [-int(s.as_tuple().exponent) for _, s in levels]
    sizes = [n for n in sizes if n > 0]
    if not sizes:
        return None
    return max(-int(p.as_tuple().exponent) for p, _ in levels), max(sizes)
