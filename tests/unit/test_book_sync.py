"""Each venue's book sync rule on hand-made events: snapshots, contiguous updates, stale and
repeated events, breaks (sequence, checksum, reconnect, crossed, buffer overflow) and the
recovery at the next snapshot."""

from __future__ import annotations

from decimal import Decimal

from crypto_sentinel.books.events import BookEvent, EventKind, Verdict
from crypto_sentinel.books.orderbook import LevelPair, OrderBook
from crypto_sentinel.sources.binance.book import BookSync as BinanceSync


def lv(*pairs: tuple[str, str]) -> list[LevelPair]:
    return [(Decimal(p), Decimal(s)) for p, s in pairs]


def ev(
    kind: EventKind,
    bids: list[LevelPair] | None = None,
    asks: list[LevelPair] | None = None,
    u: int | None = None,
    first: int | None = None,
    conn: str = "c1",
    checksum: int | None = None,
    exchange: str = "binance",
) -> BookEvent:
    return BookEvent(
        exchange, "BTC-USDT", kind, bids or [], asks or [], update_id=u, first_update_id=first,
        checksum=checksum, conn_id=conn,
    )  # fmt: skip


def levels(book: OrderBook) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    bids, asks = book.top()
    return [(str(p), str(s)) for p, s in bids], [(str(p), str(s)) for p, s in asks]


SNAP_BIDS = lv(("100", "1"), ("99", "2"))
SNAP_ASKS = lv(("101", "1"), ("102", "3"))


# --- Binance -------------------------------------------------------------------------------


def binance_book() -> tuple[BinanceSync, OrderBook]:
    return BinanceSync(), OrderBook("binance", "BTC-USDT")


def test_binance_buffers_until_the_snapshot_then_drops_stale_and_checks_the_first() -> None:
    sync, book = binance_book()
    stale = ev("update", lv(("100", "9")), u=10, first=8)  # u <= lastUpdateId: dropped
    straddle = ev("update", lv(("99", "5")), u=13, first=10)  # U <= 11 <= u: first applied
    next_ = ev("update", asks=lv(("101", "0"), ("103", "4")), u=15, first=14)
    for e in (stale, straddle, next_):
        assert sync.accept(e, book) == Verdict(False, buffered=True)
    assert not book.valid and book.invalid_reason == "no snapshot yet"
    verdict = sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, u=10), book)
    assert verdict == Verdict(True, replayed=2)
    assert book.valid and book.update_id == 15 and sync.dropped == 1
    assert levels(book) == ([("100", "1"), ("99", "5")], [("102", "3"), ("103", "4")])
    # contiguous updates keep applying; a repeat (same u) is dropped, not applied twice
    up = ev("update", lv(("98", "1")), u=17, first=16)
    assert sync.accept(up, book) == Verdict(True)
    assert sync.accept(ev("update", lv(("98", "7")), u=17, first=16), book) == Verdict(False)
    assert book.bids[Decimal("98")] == Decimal("1") and sync.dropped == 2


def test_binance_first_update_must_straddle_the_snapshot() -> None:
    sync, book = binance_book()
    sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, u=10), book)
    late = ev("update", lv(("100", "2")), u=14, first=12)  # U = 12 > lastUpdateId + 1
    assert sync.accept(late, book) == Verdict(False, "sequence break", buffered=True)
    assert not book.valid and book.invalid_reason == "sequence break"
    assert book.bids[Decimal("100")] == Decimal("1")  # not applied


def test_binance_sequence_break_invalidates_until_the_next_snapshot() -> None:
    sync, book = binance_book()
    sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, u=10), book)
    assert sync.accept(ev("update", lv(("100", "2")), u=11, first=11), book).applied
    gap = ev("update", lv(("100", "3")), u=14, first=13)  # 12 is missing
    assert sync.accept(gap, book) == Verdict(False, "sequence break", buffered=True)
    assert not book.valid and book.invalid_reason == "sequence break"
    after = ev("update", lv(("99", "4")), u=15, first=15)
    assert sync.accept(after, book) == Verdict(False, buffered=True)  # buffered again
    assert book.bids[Decimal("100")] == Decimal("2")
    # the next snapshot (lastUpdateId 13) resyncs: the gap event is stale, 15 is too far
    snap = ev("snapshot", lv(("100", "8")), lv(("101", "1")), u=14)
    assert sync.accept(snap, book) == Verdict(True, replayed=1)
    assert book.valid and levels(book) == ([("100", "8"), ("99", "4")], [("101", "1")])


def test_binance_buffer_overflow_is_reported_never_silent() -> None:
    sync, book = BinanceSync(buffer_limit=2), OrderBook("binance", "BTC-USDT")
    for u in (1, 2):
        assert sync.accept(ev("update", u=u, first=u), book) == Verdict(False, buffered=True)
    over = sync.accept(ev("update", u=3, first=3), book)
    assert over == Verdict(False, "buffer overflow", buffered=True)
    assert sync.dropped == 1 and [e.update_id for e in sync.buffer] == [2, 3]
    # a snapshot older than the dropped update cannot sync with what is left
    verdict = sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, u=0), book)
    assert verdict == Verdict(True, "sequence break") and not book.valid


def test_binance_reconnect_invalidates_and_drops_the_old_connections_updates() -> None:
    sync, book = binance_book()
    sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, u=10), book)
    moved = ev("update", lv(("100", "5")), u=11, first=11, conn="c2")
    assert sync.accept(moved, book) == Verdict(False, "reconnect", buffered=True)
    assert not book.valid and book.invalid_reason == "reconnect"
    snap = ev("snapshot", SNAP_BIDS, SNAP_ASKS, u=10, conn="c2")
    assert sync.accept(snap, book) == Verdict(True, replayed=1)
    assert book.valid and book.bids[Decimal("100")] == Decimal("5")


def test_binance_crossed_book_is_a_break() -> None:
    sync, book = binance_book()
    sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, u=10), book)
    crossing = ev("update", lv(("101.5", "1")), u=11, first=11)
    assert sync.accept(crossing, book) == Verdict(True, "crossed book")
    assert not book.valid and book.invalid_reason == "crossed book"
    assert sync.accept(ev("update", u=12, first=12), book) == Verdict(False, buffered=True)
