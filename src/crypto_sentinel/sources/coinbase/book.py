"""Coinbase Exchange `level2` channel: a `snapshot`, then `l2update`s, and its sync rule.

`l2update` changes are `[side, price, size]` with absolute sizes (0 removes); `buy` is the bid
side, `sell` the ask side. The channel has no sequence numbers, so the only ordering guarantee
is the connection: a snapshot loads the book, updates of the same connection apply, and only
a new connection (a reconnect) makes the book stale until its own snapshot.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from crypto_sentinel.books.events import BookEvent, EventKind
from crypto_sentinel.books.levels import level, levels
from crypto_sentinel.books.sync import SnapshotSync
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.codec import FrameError, check_product, check_time

_SIDES = {"buy": "bid", "sell": "ask"}


def is_book(text: str) -> bool:
    return '"type":"l2update"' in text or '"type":"snapshot"' in text


class _Snapshot(msgspec.Struct, tag_field="type", tag="snapshot"):
    product_id: str
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    time: datetime | None = None


class _L2Update(msgspec.Struct, tag_field="type", tag="l2update"):
    product_id: str
    changes: list[tuple[str, str, str]]
    time: datetime | None = None


_decoder = msgspec.json.Decoder(_Snapshot | _L2Update)


def decode_book(frame: RawFrame) -> list[BookEvent]:
    try:
        msg = _decoder.decode(frame.text)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad level2 message: {exc}") from None
    check_product(msg.product_id)
    if msg.time is not None:
        check_time(frame, msg.time)
    kind: EventKind
    if isinstance(msg, _Snapshot):
        bids, asks = levels(msg.bids), levels(msg.asks)
        kind = "snapshot"
    else:
        bids, asks = [], []
        for side, price, size in msg.changes:
            book_side = _SIDES.get(side)
            if book_side is None:
                raise FrameError(f"side must be 'buy' or 'sell', got {side!r}")
            (bids if book_side == "bid" else asks).append(level(price, size))
        kind = "update"
    return [
        BookEvent(
            frame.exchange, msg.product_id, kind, bids, asks, time=msg.time,
            conn_id=frame.conn_id,
        )
    ]  # fmt: skip


class BookSync(SnapshotSync):
    """One product's level2 book: snapshot, then updates of its connection."""
