"""What a venue's book frame says, in venue-neutral terms.

Each venue's `sources/<venue>/book.py` turns its frames into `BookEvent`s (`decode_book`) and
keeps its documented sync rule (`BookSync`); everything after (engine, lake, API) sees only
these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from crypto_sentinel.books.orderbook import LevelPair, OrderBook

EventKind = Literal["snapshot", "update"]


@dataclass(slots=True)
class BookEvent:
    """One book message of one product: a full snapshot or a set of level changes."""

    exchange: str
    product_id: str
    kind: EventKind
    bids: list[LevelPair] = field(default_factory=list)  # (price, size); size 0 removes
    asks: list[LevelPair] = field(default_factory=list)
    update_id: int | None = None  # Binance `u` (snapshot: lastUpdateId), Advanced sequence_num
    first_update_id: int | None = None  # Binance `U`
    checksum: int | None = None  # Kraken CRC32 of the top 10 levels after this message
    time: datetime | None = None  # exchange time, when the venue sends one
    conn_id: str = ""  # the connection it came on: a new one makes the old book stale


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the sync rule made of one event: applied to the book, dropped as stale or
    duplicate, or a break that makes the book invalid until the next snapshot."""

    applied: bool  # its levels were written into the book (a later check may still fail)
    resync: str = ""  # reason of a break ("" when none): sequence break, checksum mismatch...
    buffered: bool = False  # kept for after the next snapshot (Binance), not dropped
    replayed: int = 0  # buffered updates applied together with this snapshot (Binance)


class BookSync(Protocol):
    """A venue's documented rule for keeping a correct book from its messages."""

    def accept(self, event: BookEvent, book: OrderBook) -> Verdict: ...
