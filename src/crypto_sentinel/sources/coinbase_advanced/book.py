"""Coinbase Advanced Trade `level2` channel (`l2_data` messages), and its sync rule.

Each message is `{channel, timestamp, sequence_num, events}`; an event is a `snapshot` or an
`update` of one product with `updates` of `{side: bid|offer, price_level, new_quantity}`
(absolute sizes, 0 removes). The event's `update_id` is the message's `sequence_num`.

Why the rule needs more than the book's own messages: `sequence_num` numbers every message
of a connection (trades, tickers, heartbeats too), so a jump between two `l2_data` messages is
not by itself a loss. The connection's numbers are kept in one shared `Sequences` object per
process (`SEQUENCES`, bounded to the newest connections): the engine's book processor calls
`note_frame` (the venue's `BookCodec.note`) for every non-book frame of the venue, in frame
order, and each product's `BookSync` notes its own messages and asks whether any number
between its previous message and this one was never seen. A shared object rather than a
method on each `BookSync` because one missing number breaks every book of the connection,
whichever product it was for, and a sync instance only knows its own product. An engine
that never calls `note_frame` sees a break at the first non-book message: the book turns
invalid with a reason, never silently wrong.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from datetime import datetime

import msgspec

from crypto_sentinel.books.events import BookEvent, EventKind, Verdict
from crypto_sentinel.books.levels import level
from crypto_sentinel.books.orderbook import OrderBook
from crypto_sentinel.books.sync import DROPPED, SEQUENCE_BREAK, SnapshotSync, break_book
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.codec import FrameError, check_product, check_time

_SIDES = {"bid": "bid", "offer": "ask"}


def is_book(text: str) -> bool:
    return '"channel":"l2_data"' in text


class _Update(msgspec.Struct):
    side: str
    price_level: str
    new_quantity: str
    event_time: datetime | None = None


class _Event(msgspec.Struct):
    type: str
    product_id: str
    updates: list[_Update]


class _Message(msgspec.Struct):
    channel: str
    timestamp: datetime
    sequence_num: int
    events: list[_Event]


_decoder = msgspec.json.Decoder(_Message)


def decode_book(frame: RawFrame) -> list[BookEvent]:
    """An `l2_data` message -> its events; consecutive events of one product and kind are
    merged (they share the message's sequence number, which a sync rule sees once)."""
    try:
        msg = _decoder.decode(frame.text)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad l2_data message: {exc}") from None
    if msg.channel != "l2_data":
        raise FrameError(f"not a level2 message: channel {msg.channel!r}")
    if msg.sequence_num < 0:
        raise FrameError(f"sequence_num must be >= 0, got {msg.sequence_num}")
    check_time(frame, msg.timestamp)
    out: list[BookEvent] = []
    for e in msg.events:
        if e.type not in ("snapshot", "update"):
            raise FrameError(f"level2 event type must be snapshot or update, got {e.type!r}")
        kind: EventKind = "snapshot" if e.type == "snapshot" else "update"
        check_product(e.product_id)
        if out and out[-1].product_id == e.product_id and out[-1].kind == kind:
            event = out[-1]
        else:
            event = BookEvent(
                frame.exchange, e.product_id, kind, update_id=msg.sequence_num,
                time=msg.timestamp, conn_id=frame.conn_id,
            )  # fmt: skip
            out.append(event)
        for u in e.updates:
            side = _SIDES.get(u.side)
            if side is None:
                raise FrameError(f"side must be 'bid' or 'offer', got {u.side!r}")
            pair = level(u.price_level, u.new_quantity)
            (event.bids if side == "bid" else event.asks).append(pair)
    return out


class _Seq(msgspec.Struct):
    sequence_num: int | None = None


_seq_decoder = msgspec.json.Decoder(_Seq)


def sequence_of(text: str) -> int | None:
    """The `sequence_num` of any Advanced Trade message (None: it has none, or is not
    JSON: the trade codec quarantines such a frame)."""
    if '"sequence_num"' not in text:
        return None
    try:
        return _seq_decoder.decode(text).sequence_num
    except msgspec.DecodeError:
        return None


class _Connection:
    __slots__ = ("forgotten_below", "his", "last", "los")

    def __init__(self) -> None:
        self.last: int | None = None  # highest number seen
        self.los: list[int] = []  # skipped ranges [lo, hi], ascending and disjoint
        self.his: list[int] = []
        self.forgotten_below = -1  # ranges ending below this were dropped (bounded memory)


class Sequences:
    """The `sequence_num`s seen on each connection, and the ranges that never came."""

    def __init__(self, connections: int = 64, ranges: int = 4096) -> None:
        self._conns: OrderedDict[str, _Connection] = OrderedDict()
        self._max_conns = connections
        self._max_ranges = ranges

    def _conn(self, conn_id: str) -> _Connection:
        conn = self._conns.get(conn_id)
        if conn is None:
            conn = self._conns[conn_id] = _Connection()
            if len(self._conns) > self._max_conns:
                self._conns.popitem(last=False)
        else:
            self._conns.move_to_end(conn_id)
        return conn

    def note(self, conn_id: str, seq: int) -> None:
        """A message numbered `seq` arrived (repeats and older numbers change nothing)."""
        conn = self._conn(conn_id)
        if conn.last is not None and seq > conn.last + 1:
            conn.los.append(conn.last + 1)
            conn.his.append(seq - 1)
            if len(conn.his) > self._max_ranges:
                conn.forgotten_below = conn.his[0] + 1
                del conn.los[0], conn.his[0]
        if conn.last is None or seq > conn.last:
            conn.last = seq

    def lost_between(self, conn_id: str, after: int, before: int) -> bool:
        """Whether any number strictly between `after` and `before` never arrived (or is
        too old to tell: then it errs towards a break)."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.last is None or conn.last < before - 1:
            return before > after + 1
        if after + 1 < conn.forgotten_below and before > after + 1:
            return True
        i = bisect_right(conn.his, after)  # the first skipped range ending after `after`
        return i < len(conn.his) and conn.los[i] < before


#: The process-wide record the engine feeds through `note_frame`.
SEQUENCES = Sequences()


def note_frame(frame: RawFrame, sequences: Sequences = SEQUENCES) -> None:
    """Tell the sync rules a non-book message of a connection arrived (module docstring)."""
    seq = sequence_of(frame.text)
    if seq is not None:
        sequences.note(frame.conn_id, seq)


class BookSync(SnapshotSync):
    """One product's book: a snapshot loads, updates apply while the connection lost no
    message since this product's previous one."""

    def __init__(self, sequences: Sequences = SEQUENCES) -> None:
        super().__init__()
        self.sequences = sequences
        self.seq: int | None = None  # sequence_num of this book's last message

    def accept(self, event: BookEvent, book: OrderBook) -> Verdict:
        if event.update_id is not None:
            self.sequences.note(event.conn_id, event.update_id)
        verdict = super().accept(event, book)
        if event.kind == "snapshot" or verdict.applied:
            self.seq = event.update_id
        return verdict

    def check(self, event: BookEvent, book: OrderBook) -> Verdict | None:
        seq = event.update_id
        if seq is None or self.seq is None:
            return break_book(book, SEQUENCE_BREAK)
        if seq <= self.seq:  # a repeat, or older than the book
            return DROPPED
        if self.sequences.lost_between(event.conn_id, self.seq, seq):
            return break_book(book, SEQUENCE_BREAK)
        return None
