"""The live book route's rendered answers: one rendering per book version, and any change a
reader can see (a level, the update id or time, validity) renders afresh."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson

from crypto_sentinel.api.routes.book import RenderedBooks, body
from crypto_sentinel.books.events import BookEvent
from crypto_sentinel.books.orderbook import OrderBook
from crypto_sentinel.books.sync import apply_levels

D = Decimal


def _book() -> OrderBook:
    book = OrderBook("binance", "ETH-USDT")
    book.load_snapshot([(D("100.5"), D("2"))], [(D("101"), D("1.5"))], 7, None)
    return book


def test_an_unchanged_book_is_rendered_once() -> None:
    book, rendered = _book(), RenderedBooks()
    first = rendered.render(book, 10, 10)
    assert rendered.render(book, 10, 10) is first
    answer = orjson.loads(first)
    assert answer["bids"] == [["100.5", "2"]] and answer["asks"] == [["101", "1.5"]]
    assert answer == orjson.loads(orjson.dumps(body(book, 10, 10, None), default=str))


def test_every_visible_change_renders_afresh() -> None:
    book, rendered = _book(), RenderedBooks()
    before = orjson.loads(rendered.render(book, 10, 10))
    book.apply("bid", D("100.5"), D("3"))
    assert orjson.loads(rendered.render(book, 10, 10))["bids"] == [["100.5", "3"]]
    # an update without levels still moves the update id and the time
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    apply_levels(book, BookEvent("binance", "ETH-USDT", "update", update_id=9, time=when))
    now = orjson.loads(rendered.render(book, 10, 10))
    assert (now["update_id"], now["time"]) == (9, "2026-01-02T03:04:05.000000Z") != (
        before["update_id"], before["time"],
    )  # fmt: skip
    book.mark_invalid("sequence break")
    broken = orjson.loads(rendered.render(book, 10, 10))
    assert broken["valid"] is False and broken["bids"] == [] and broken["spread"] is None


def test_depth_and_bps_are_answers_of_their_own() -> None:
    book, rendered = _book(), RenderedBooks()
    book.apply("bid", D("99"), D("1"))
    one, two = rendered.render(book, 1, 10), rendered.render(book, 2, 10)
    assert len(orjson.loads(one)["bids"]) == 1 and len(orjson.loads(two)["bids"]) == 2
    wide = orjson.loads(rendered.render(book, 2, 10_000))["depth_within_bps"]
    assert wide["bps"] == 10_000 and wide["bids"] == "3"
