"""Binance Spot level-2 book: `<symbol>@depth` diff events and our REST snapshot frame, and
the documented way to keep a local book from them.

A `depthUpdate` carries absolute quantities for the update ids `U`..`u`. Our feed publishes
the REST snapshot (`GET /api/v3/depth`) in its own connection as a `depthSnapshot` event
(`lastUpdateId`, bids, asks), so the rule below runs on the frame sequence alone (a rebuild
from bronze sees exactly what the live engine saw).

The rule ("How to manage a local order book correctly", PROTOCOLS.md section 8): buffer
updates until a snapshot; drop those with `u` <= `lastUpdateId`; the first one applied must
have `U` <= `lastUpdateId` + 1 <= `u`, every later one `U` == previous `u` + 1. Anything else
is a sequence break: the book is invalid and updates are buffered again until the next
snapshot. The buffer is bounded: when full, its oldest update is dropped and the verdict says
"buffer overflow" (a snapshot can then only sync if it is newer than what was dropped). A
snapshot no newer than a valid book of its connection is dropped (a REST answer that lagged
the stream would move the book back).
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta

import msgspec

from crypto_sentinel.books.events import BookEvent, Verdict
from crypto_sentinel.books.levels import levels
from crypto_sentinel.books.orderbook import OrderBook
from crypto_sentinel.books.sync import (
    BUFFER_OVERFLOW,
    DROPPED,
    RECONNECT,
    SEQUENCE_BREAK,
    apply_levels,
    break_book,
    load,
    settle,
)
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.binance.codec import product_of
from crypto_sentinel.sources.codec import FrameError

#: Updates kept while waiting for a snapshot: 100 s of one symbol at 100 ms.
BUFFER_LIMIT = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_book(text: str) -> bool:
    return '"depthUpdate"' in text or '"depthSnapshot"' in text


class _Update(msgspec.Struct, tag_field="e", tag="depthUpdate"):
    s: str
    U: int
    u: int
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]
    E: int | None = None


class _Snapshot(msgspec.Struct, tag_field="e", tag="depthSnapshot"):
    s: str
    lastUpdateId: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


class _Combined(msgspec.Struct):
    stream: str
    data: msgspec.Raw


_combined = msgspec.json.Decoder(_Combined)
_event = msgspec.json.Decoder(_Update | _Snapshot)


def decode_book(frame: RawFrame) -> list[BookEvent]:
    """A `depthUpdate` or `depthSnapshot` frame (combined stream or raw) -> one event."""
    text = frame.text
    payload: msgspec.Raw | str = text
    if text.startswith('{"stream"'):
        try:
            payload = _combined.decode(text).data
        except msgspec.DecodeError as exc:
            raise FrameError(f"bad depth message: {exc}") from None
    try:
        msg = _event.decode(payload)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad depth message: {exc}") from None
    product = product_of(msg.s)
    if isinstance(msg, _Snapshot):
        if msg.lastUpdateId < 0:
            raise FrameError(f"lastUpdateId must be >= 0, got {msg.lastUpdateId}")
        return [
            BookEvent(
                frame.exchange, product, "snapshot", levels(msg.bids), levels(msg.asks),
                update_id=msg.lastUpdateId, conn_id=frame.conn_id,
            )
        ]  # fmt: skip
    if msg.U < 0 or msg.u < msg.U:
        raise FrameError(f"update ids must be 0 <= U <= u, got U={msg.U} u={msg.u}")
    time = None if msg.E is None else _EPOCH + timedelta(milliseconds=msg.E)
    return [
        BookEvent(
            frame.exchange, product, "update", levels(msg.b), levels(msg.a), update_id=msg.u,
            first_update_id=msg.U, time=time, conn_id=frame.conn_id,
        )
    ]  # fmt: skip


class BookSync:
    """One symbol's book kept by Binance's documented rule (module docstring)."""

    def __init__(self, buffer_limit: int = BUFFER_LIMIT) -> None:
        self.buffer: deque[BookEvent] = deque()
        self.buffer_limit = buffer_limit
        self.conn_id: str | None = None  # connection of the current snapshot
        self.last_u: int | None = None  # `u` of the last applied update (or lastUpdateId)
        self.first_pending = False  # the next update is the first after the snapshot
        self.dropped = 0  # updates dropped: stale, repeated, or pushed out of the buffer

    def accept(self, event: BookEvent, book: OrderBook) -> Verdict:
        if event.kind == "snapshot":
            if self._behind(event, book):
                self.dropped += 1
                return DROPPED
            return self._snapshot(event, book)
        if book.valid and event.conn_id != self.conn_id:
            self.buffer.clear()  # updates of the old connection can never apply again
            book.mark_invalid(RECONNECT)
            return self._buffer(event, book, RECONNECT)
        if not book.valid:
            return self._buffer(event, book, "")
        verdict = self._update(event, book)
        if verdict.resync == SEQUENCE_BREAK:
            return self._buffer(event, book, SEQUENCE_BREAK)
        return verdict

    def _behind(self, event: BookEvent, book: OrderBook) -> bool:
        """A snapshot of the book's connection no newer than what a valid book already holds
        (a REST answer that lagged the stream): loading it would move the book back."""
        return (
            book.valid
            and event.conn_id == self.conn_id
            and event.update_id is not None
            and self.last_u is not None
            and event.update_id <= self.last_u
        )

    def _snapshot(self, event: BookEvent, book: OrderBook) -> Verdict:
        load(book, event)
        self.conn_id = event.conn_id
        self.last_u = event.update_id
        self.first_pending = True
        waiting = [e for e in self.buffer if e.conn_id == event.conn_id]
        self.dropped += len(self.buffer) - len(waiting)
        self.buffer.clear()
        verdict = settle(book)
        replayed = 0
        for i, pending in enumerate(waiting):
            if not book.valid:  # a break while replaying: the rest waits for a snapshot
                self.buffer.extend(waiting[i:])
                break
            step = self._update(pending, book)
            replayed += step.applied
            if step.resync:
                verdict = step
                if step.resync == SEQUENCE_BREAK:
                    self.buffer.extend(waiting[i:])
                    break
        return Verdict(True, verdict.resync, replayed=replayed)

    def _update(self, event: BookEvent, book: OrderBook) -> Verdict:
        """Apply one update to a valid book of its connection, or say why not."""
        u, first = event.update_id, event.first_update_id
        if u is None or first is None or self.last_u is None:
            return break_book(book, SEQUENCE_BREAK)
        if u <= self.last_u:  # older than the book, or a repeat
            self.dropped += 1
            return DROPPED
        if self.first_pending:
            if first > self.last_u + 1:
                return break_book(book, SEQUENCE_BREAK)
        elif first != self.last_u + 1:
            return break_book(book, SEQUENCE_BREAK)
        self.first_pending = False
        self.last_u = u
        apply_levels(book, event)
        return settle(book)

    def _buffer(self, event: BookEvent, book: OrderBook, reason: str) -> Verdict:
        self.buffer.append(event)
        if len(self.buffer) > self.buffer_limit:
            self.buffer.popleft()
            self.dropped += 1
            book.mark_invalid(BUFFER_OVERFLOW)
            reason = reason or BUFFER_OVERFLOW
        return Verdict(False, reason, buffered=True)
