"""What every venue's sync rule shares: writing an event's levels into a book, the
reconnect rule and the crossed-book check.

Each venue's `BookSync` (sources/<venue>/book.py) adds its own ordering rule on top; the
conventions here are the same for all of them, so the engine reads every `Verdict` alike:

- a book belongs to the connection of its snapshot: an update from another connection (a
  reconnect) makes it invalid ("reconnect") until a snapshot of the new connection;
- while a book is invalid, updates are not applied (`Verdict(applied=False)`, counted by the
  engine), except where the venue's rule buffers them (Binance);
- a valid book is never crossed: when applying leaves it crossed, it turns invalid
  ("crossed book").
"""

from __future__ import annotations

from crypto_sentinel.books.events import BookEvent, Verdict
from crypto_sentinel.books.orderbook import OrderBook

RECONNECT = "reconnect"
SEQUENCE_BREAK = "sequence break"
CROSSED = "crossed book"
CHECKSUM_MISMATCH = "checksum mismatch"
BUFFER_OVERFLOW = "buffer overflow"
#: Breaks the feed cannot see from the frames it passes on (it sees sequence breaks and its
#: own reconnects): the engine asks it for the book afresh.
ENGINE_ONLY_BREAKS = frozenset({CROSSED, CHECKSUM_MISMATCH, BUFFER_OVERFLOW})

DROPPED = Verdict(applied=False)


def apply_levels(book: OrderBook, event: BookEvent) -> None:
    """Write an update's absolute sizes (0 removes) and its ids/time into the book."""
    book.apply_many("bid", event.bids)
    book.apply_many("ask", event.asks)
    if event.update_id is not None:
        book.update_id = event.update_id
    if event.time is not None:
        book.time = event.time
    book.version += 1  # the ids and time are part of what a reader caches by version


def load(book: OrderBook, event: BookEvent) -> None:
    book.load_snapshot(event.bids, event.asks, event.update_id, event.time)


def break_book(book: OrderBook, reason: str, applied: bool = False) -> Verdict:
    book.mark_invalid(reason)
    return Verdict(applied=applied, resync=reason)


def settle(book: OrderBook) -> Verdict:
    """The verdict of an event just applied: fine, or a break when it left the book
    crossed."""
    if book.crossed():
        return break_book(book, CROSSED, applied=True)
    return Verdict(applied=True)


def same_levels(a: BookEvent, b: BookEvent | None) -> bool:
    """A repeated message (venues without update ids): same kind, levels, checksum, time and
    connection as the previous one."""
    return (
        b is not None
        and a.kind == b.kind
        and a.conn_id == b.conn_id
        and a.time == b.time
        and a.checksum == b.checksum
        and a.bids == b.bids
        and a.asks == b.asks
    )


class SnapshotSync:
    """The rule of venues whose only ordering guarantee is the connection (Coinbase Exchange
    level2), and the base of those that add one: a snapshot loads, updates of the same
    connection apply, an exact repeat of the previous message is dropped."""

    def __init__(self) -> None:
        self.conn_id: str | None = None  # connection of the current snapshot
        self.last: BookEvent | None = None
        self.dropped = 0  # updates not applied (invalid book, stale, repeated)

    def accept(self, event: BookEvent, book: OrderBook) -> Verdict:
        if event.kind == "snapshot":
            self.conn_id = event.conn_id
            self.last = event
            load(book, event)
            return self.after_snapshot(event, book)
        if book.valid and event.conn_id != self.conn_id:
            self.dropped += 1
            return break_book(book, RECONNECT)
        if not book.valid or event.conn_id != self.conn_id or same_levels(event, self.last):
            self.dropped += 1
            return DROPPED
        verdict = self.check(event, book)
        if verdict is not None:
            self.dropped += 1
            return verdict
        self.last = event
        apply_levels(book, event)
        return self.after_update(event, book)

    def check(self, event: BookEvent, book: OrderBook) -> Verdict | None:
        """A venue's ordering rule before an update applies: None to apply it, or the
        verdict of not applying it."""
        return None

    def after_snapshot(self, event: BookEvent, book: OrderBook) -> Verdict:
        return settle(book)

    def after_update(self, event: BookEvent, book: OrderBook) -> Verdict:
        return settle(book)
