"""The completeness rule per candle, and the stored trades memory finds next to a window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from crypto_sentinel.api.candles import CandleService
from crypto_sentinel.api.state import MINUTE, MinuteBook
from crypto_sentinel.completeness import contiguous, mark_page, minute_flags
from crypto_sentinel.engine.candles import Candle

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def candle(minute: int, first: int, last: int, count: int | None = None) -> Candle:
    start = T0 + minute * MINUTE
    one = Decimal(1)
    return Candle(
        "x", "P", start, one, one, one, one, one, one, Decimal(0), one,
        last - first + 1 if count is None else count, first, last,
        start + timedelta(seconds=1), start + timedelta(seconds=59),
    )  # fmt: skip


def item(minute: int, first: int, last: int, count: int | None = None) -> dict:
    return {
        "start": (T0 + minute * MINUTE).isoformat(),
        "first_trade_id": first,
        "last_trade_id": last,
        "trade_count": last - first + 1 if count is None else count,
    }


def test_contiguous_inside_and_on_both_sides() -> None:
    assert contiguous(10, 19, 10, 9, 20)
    assert contiguous(10, 19, 10, None, None)  # nothing stored around: nothing missing
    assert not contiguous(10, 19, 9, 9, 20)  # an id inside never seen
    assert not contiguous(10, 19, 11, 9, 20)  # more trades than ids: a duplicate
    assert not contiguous(10, 19, 10, 8, 20)  # id 9 missing before
    assert not contiguous(10, 19, 10, 9, 22)  # ids 20, 21 missing after


def test_page_marks_exactly_the_buckets_next_to_missing_ids() -> None:
    # minutes 0..5 oldest first; id 31 missing between minute 2 and minute 4 (3 is empty);
    # minute 5 lacks one of its own ids.
    rows = [item(0, 1, 10), item(1, 11, 20), item(2, 21, 30), item(4, 32, 40),
            item(5, 41, 50, count=9)]  # fmt: skip
    page = list(reversed(rows))  # served newest first
    mark_page(page, 60, before=0, after=51, spans=[])
    assert [i["complete"] for i in rows] == [True, True, False, False, False]
    assert not any(i["gap"] for i in rows)
    mark_page(page, 60, before=None, after=None, spans=[])
    assert rows[0]["complete"]
    mark_page(page, 60, before=-5, after=None, spans=[])  # ids 1..-4 missing before the page
    assert not rows[0]["complete"]


def test_an_unfilled_gap_makes_its_buckets_incomplete_even_when_ids_are_contiguous() -> None:
    rows = [item(0, 1, 10), item(1, 11, 20), item(2, 21, 30)]
    page = list(reversed(rows))
    span = (T0 + MINUTE + timedelta(seconds=30), T0 + 2 * MINUTE + timedelta(seconds=5))
    mark_page(page, 60, before=None, after=None, spans=[span])
    assert [(i["gap"], i["complete"]) for i in rows] == [(False, True), (True, False),
                                                         (True, False)]  # fmt: skip


def test_minute_flags_over_a_whole_history() -> None:
    minutes = [(T0 + m * MINUTE, f, lo, n) for m, f, lo, n in
               [(0, 1, 10, 10), (1, 11, 20, 10), (2, 22, 30, 9), (3, 31, 40, 10)]]  # fmt: skip
    assert minute_flags(minutes, []) == [True, False, False, True]
    tail = [(T0 + 3 * MINUTE + timedelta(seconds=50), T0 + 4 * MINUTE)]  # ids after the last
    assert minute_flags(minutes, tail) == [True, False, False, False]


def test_memory_finds_the_stored_trades_next_to_a_window() -> None:
    book = MinuteBook(since=None, keep=100)
    for c in (candle(0, 1, 10), candle(3, 11, 20), candle(4, 21, 30), candle(9, 31, 40)):
        book.add(c)
    before, after = CandleService.memory_before, CandleService.memory_after
    assert book.since == T0 - 90 * MINUTE  # the book keeps 100 minutes
    assert before(book, T0) == (False, None)  # older than anything held: the lake knows
    assert before(book, T0 + 3 * MINUTE) == (True, 10)  # walks back over empty minutes
    assert before(book, T0 + 60 * MINUTE) == (True, 40)
    assert after(book, T0 + MINUTE) == (True, 11)
    assert after(book, T0 + 5 * MINUTE) == (True, 31)
    assert after(book, T0 + 10 * MINUTE) == (True, None)  # nothing newer yet
    partial = MinuteBook(since=T0 + 3 * MINUTE, keep=100)  # older minutes: only the lake
    for c in (candle(3, 11, 20), candle(4, 21, 30)):
        partial.add(c)
    assert before(partial, T0 + 4 * MINUTE) == (True, 20)
    assert before(partial, T0 + 3 * MINUTE) == (False, None)
    assert after(partial, T0 + 2 * MINUTE) == (False, None)
    assert after(partial, T0 + 3 * MINUTE) == (True, 11)
    assert before(None, T0) == (False, None) and after(None, T0) == (False, None)
