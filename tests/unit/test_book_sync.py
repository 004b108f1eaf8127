"""Each venue's book sync rule on hand-made events: snapshots, contiguous updates, stale and
repeated events, breaks (sequence, checksum, reconnect, crossed, buffer overflow) and the
recovery at the next snapshot."""

from __future__ import annotations

from decimal import Decimal

from crypto_sentinel.books.events import BookEvent, EventKind, Verdict
from crypto_sentinel.books.orderbook import LevelPair, OrderBook, kraken_checksum
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.binance.book import BookSync as BinanceSync
from crypto_sentinel.sources.coinbase.book import BookSync as ExchangeSync
from crypto_sentinel.sources.coinbase_advanced.book import BookSync as AdvancedSync
from crypto_sentinel.sources.coinbase_advanced.book import Sequences, note_frame
from crypto_sentinel.sources.kraken.book import BookSync as KrakenSync


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
    assert book.invalid_reason == "buffer overflow"
    assert sync.dropped == 1 and [e.update_id for e in sync.buffer] == [2, 3]
    # a snapshot older than the dropped update cannot sync with what is left
    verdict = sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, u=0), book)
    assert verdict == Verdict(True, "sequence break") and not book.valid


def test_binance_snapshot_behind_a_valid_book_is_dropped_a_newer_one_loads() -> None:
    sync, book = binance_book()
    sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, u=10), book)
    sync.accept(ev("update", lv(("100", "2")), u=12, first=11), book)
    lagging = ev("snapshot", lv(("100", "7")), SNAP_ASKS, u=12)
    assert sync.accept(lagging, book) == Verdict(False) and sync.dropped == 1
    assert book.bids[Decimal("100")] == Decimal("2") and book.update_id == 12
    newer = ev("snapshot", lv(("100", "7")), SNAP_ASKS, u=20)
    assert sync.accept(newer, book) == Verdict(True) and book.update_id == 20
    assert sync.accept(ev("update", lv(("99", "1")), u=22, first=19), book) == Verdict(True)
    assert levels(book)[0] == [("100", "7"), ("99", "1")]


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


# --- Kraken v2 -----------------------------------------------------------------------------


def checksum_after(bids: list[LevelPair], asks: list[LevelPair], depth: int) -> int:
    """The checksum Kraken would send for a book of these levels at this depth."""
    book = OrderBook("kraken", "x")
    book.load_snapshot(bids, asks)
    book.truncate(depth)
    return kraken_checksum(book)


def test_kraken_truncates_to_depth_and_verifies_every_checksum() -> None:
    sync, book = KrakenSync(depth=2), OrderBook("kraken", "BTC-USD")
    snap = ev("snapshot", SNAP_BIDS, SNAP_ASKS, exchange="kraken")
    snap.checksum = checksum_after(SNAP_BIDS, SNAP_ASKS, 2)
    assert sync.accept(snap, book) == Verdict(True)
    # a better bid pushes 99 out of the depth-2 window: Kraken sends no delete for it
    up = ev("update", lv(("100.5", "0.50")), exchange="kraken")
    up.checksum = checksum_after(lv(("100.5", "0.50"), ("100", "1")), SNAP_ASKS, 2)
    assert sync.accept(up, book) == Verdict(True)
    assert levels(book)[0] == [("100.5", "0.50"), ("100", "1")] and sync.verified == 2
    assert sync.accept(up, book) == Verdict(False)  # the same message again: dropped


def test_kraken_checksum_mismatch_invalidates_until_the_next_snapshot() -> None:
    sync, book = KrakenSync(depth=10), OrderBook("kraken", "BTC-USD")
    snap = ev("snapshot", SNAP_BIDS, SNAP_ASKS, exchange="kraken")
    snap.checksum = checksum_after(SNAP_BIDS, SNAP_ASKS, 10)
    sync.accept(snap, book)
    wrong = ev("update", lv(("99", "3")), exchange="kraken", checksum=12345)
    assert sync.accept(wrong, book) == Verdict(True, "checksum mismatch")
    assert not book.valid and book.invalid_reason == "checksum mismatch"
    later = ev("update", lv(("98", "1")), exchange="kraken")
    assert sync.accept(later, book) == Verdict(False)
    assert Decimal("98") not in book.bids
    assert sync.accept(snap, book) == Verdict(True) and book.valid


def test_kraken_a_deeper_snapshot_than_configured_sets_the_depth() -> None:
    sync, book = KrakenSync(depth=10), OrderBook("kraken", "BTC-USD")
    bids = lv(*((str(1000 - i), "1") for i in range(25)))
    asks = lv(*((str(1001 + i), "1") for i in range(25)))
    assert sync.accept(ev("snapshot", bids, asks, exchange="kraken"), book).applied
    assert sync.depth == 25 and len(book) == 50


def test_kraken_reconnect_and_crossed_book() -> None:
    sync, book = KrakenSync(), OrderBook("kraken", "BTC-USD")
    sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, exchange="kraken"), book)
    moved = ev("update", lv(("99", "3")), exchange="kraken", conn="c2")
    assert sync.accept(moved, book) == Verdict(False, "reconnect")
    assert book.invalid_reason == "reconnect" and book.bids[Decimal("99")] == Decimal("2")
    sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, exchange="kraken", conn="c2"), book)
    crossing = ev("update", asks=lv(("99.5", "1")), exchange="kraken", conn="c2")
    assert sync.accept(crossing, book) == Verdict(True, "crossed book")
    assert book.invalid_reason == "crossed book"


# --- Coinbase Advanced Trade -----------------------------------------------------------------


def adv(
    kind: EventKind, seq: int, bids: list[LevelPair] | None = None, conn: str = "c1"
) -> BookEvent:
    return ev(kind, bids, SNAP_ASKS if kind == "snapshot" else [], u=seq, conn=conn,
              exchange="coinbase-advanced")  # fmt: skip


def adv_frame(seq: int, conn: str = "c1") -> RawFrame:
    text = f'{{"channel":"market_trades","timestamp":"2026-01-01T00:00:00Z","sequence_num":{seq}}}'
    return RawFrame("coinbase-advanced", conn, seq, 0, text)


def test_advanced_sequence_counts_every_message_of_the_connection() -> None:
    seqs = Sequences()
    sync, book = AdvancedSync(seqs), OrderBook("coinbase-advanced", "BTC-USD")
    other = AdvancedSync(seqs), OrderBook("coinbase-advanced", "ETH-USD")
    assert sync.accept(adv("snapshot", 0, SNAP_BIDS), book) == Verdict(True)
    assert other[0].accept(adv("snapshot", 1, SNAP_BIDS), other[1]) == Verdict(True)
    note_frame(adv_frame(2), seqs)  # a trade message between two book messages
    assert sync.accept(adv("update", 3, lv(("99", "5"))), book) == Verdict(True)
    assert book.update_id == 3 and book.bids[Decimal("99")] == Decimal("5")
    assert sync.accept(adv("update", 3, lv(("99", "6"))), book) == Verdict(False)  # repeat
    assert sync.accept(adv("update", 2, lv(("99", "6"))), book) == Verdict(False)  # older
    assert book.bids[Decimal("99")] == Decimal("5") and sync.dropped == 2
    # 4 never arrives: both books of the connection break, whichever product it was for
    assert sync.accept(adv("update", 5, lv(("98", "1"))), book) == Verdict(False, "sequence break")
    assert not book.valid and Decimal("98") not in book.bids
    assert other[0].accept(adv("update", 6), other[1]) == Verdict(False, "sequence break")
    assert sync.accept(adv("snapshot", 7, SNAP_BIDS), book) == Verdict(True) and book.valid
    assert sync.accept(adv("update", 8, lv(("98", "1"))), book) == Verdict(True)


def test_advanced_unnoted_frames_break_rather_than_hide_a_loss() -> None:
    seqs = Sequences()
    sync, book = AdvancedSync(seqs), OrderBook("coinbase-advanced", "BTC-USD")
    sync.accept(adv("snapshot", 10, SNAP_BIDS), book)
    assert sync.accept(adv("update", 12), book) == Verdict(False, "sequence break")


def test_advanced_reconnect_starts_a_new_numbering() -> None:
    seqs = Sequences()
    sync, book = AdvancedSync(seqs), OrderBook("coinbase-advanced", "BTC-USD")
    sync.accept(adv("snapshot", 10, SNAP_BIDS), book)
    assert sync.accept(adv("update", 0, conn="c2"), book) == Verdict(False, "reconnect")
    assert sync.accept(adv("snapshot", 1, SNAP_BIDS, conn="c2"), book) == Verdict(True)
    assert sync.accept(adv("update", 2, lv(("99", "9")), conn="c2"), book) == Verdict(True)


def test_sequences_remember_bounded_ranges_and_err_towards_a_break() -> None:
    seqs = Sequences(connections=1, ranges=2)
    for seq in (0, 2, 4, 6):  # 1, 3 and 5 are lost; the range of 1 is forgotten
        seqs.note("c1", seq)
    assert seqs.lost_between("c1", 1, 3) is False  # 2 arrived
    assert seqs.lost_between("c1", 0, 2) is True  # 1 forgotten: told as a loss
    assert seqs.lost_between("c1", 4, 6) is True and seqs.lost_between("c1", 6, 7) is False
    seqs.note("c2", 0)  # only one connection is kept: c1 is forgotten
    assert seqs.lost_between("c1", 6, 7) is False and seqs.lost_between("c1", 6, 8) is True


# --- Coinbase Exchange level2 ----------------------------------------------------------------


def test_exchange_level2_snapshot_updates_reconnect_and_crossed() -> None:
    sync, book = ExchangeSync(), OrderBook("coinbase", "BTC-USD")
    assert sync.accept(ev("update", lv(("99", "1")), exchange="coinbase"), book) == Verdict(False)
    assert book.invalid_reason == "no snapshot yet" and sync.dropped == 1
    assert sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, exchange="coinbase"), book).applied
    up = ev("update", lv(("99", "0")), lv(("101.5", "2")), exchange="coinbase")
    assert sync.accept(up, book) == Verdict(True)
    assert levels(book) == ([("100", "1")], [("101", "1"), ("101.5", "2"), ("102", "3")])
    moved = ev("update", lv(("99", "4")), exchange="coinbase", conn="c2")
    assert sync.accept(moved, book) == Verdict(False, "reconnect")
    assert sync.accept(moved, book) == Verdict(False) and Decimal("99") not in book.bids
    sync.accept(ev("snapshot", SNAP_BIDS, SNAP_ASKS, exchange="coinbase", conn="c2"), book)
    crossing = ev("update", lv(("101", "1")), exchange="coinbase", conn="c2")
    assert sync.accept(crossing, book) == Verdict(True, "crossed book") and not book.valid
