"""`/v1/products/{id}/book`: a product's order book, live or as it was at a past time, and
`/book/series`: spread, mid and depth over time from the lake's book snapshots.

The live book comes from the process's `BookRegistry` (the engine keeps it); `at=` rebuilds
the book from the lake (`books.history.book_at`) in a worker thread.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from crypto_sentinel.api.bookseries import MAX_SERIES_WINDOW, book_series
from crypto_sentinel.api.context import ApiContext, bad_parameter, not_found
from crypto_sentinel.api.render import book_item, dec, iso
from crypto_sentinel.api.responses import JSONResponse
from crypto_sentinel.api.routes.latest import ExchangeParam, ProductPath
from crypto_sentinel.api.routes.market import Instant, instant
from crypto_sentinel.api.schemas import BookOut, BookSeries, errors
from crypto_sentinel.books.orderbook import BookView, OrderBook

#: Levels per side a book response has by default, and at most.
BOOK_DEPTH = 50
MAX_BOOK_DEPTH = 1000
#: Default reach of `depth_within_bps` (basis points of the mid), and its bounds.
BPS = 10
MAX_BPS = 10_000
#: What a book series covers when `start` is not given.
SERIES_DEFAULT = timedelta(minutes=15)

Depth = Annotated[
    int, Query(ge=1, le=MAX_BOOK_DEPTH, description="levels per side (1 to 1000), best first")
]
Bps = Annotated[
    int, Query(ge=1, le=MAX_BPS, description="basis points of the mid (1 to 10000) for depth")
]


def stats(book: OrderBook, bps: int) -> dict[str, Any]:
    """Spread, mid and the bid and ask sizes within `bps` of the mid (null: not valid)."""
    if not book.valid:
        return {"spread": None, "mid": None, "depth_within_bps": None}
    bid, ask = book.depth_within(bps)
    return {
        "spread": dec(book.spread()),
        "mid": dec(book.mid()),
        "depth_within_bps": {"bps": bps, "bids": dec(bid), "asks": dec(ask)},
    }


def rebuilt(view: BookView) -> OrderBook:
    """An `OrderBook` holding a past view, for the same spread and depth arithmetic."""
    book = OrderBook(view.exchange, view.product_id)
    book.load_snapshot(view.bids, view.asks, view.update_id, view.time)
    if not view.valid:
        book.mark_invalid(view.invalid_reason)
    return book


def body(book: OrderBook, depth: int, bps: int, at: datetime | None) -> dict[str, Any]:
    """The one answer of the book route, live (`at` None) or rebuilt from the lake."""
    shown = None if at is None else iso(at)
    return {**book_item(book.view(depth)), **stats(book, bps), "at": shown}


class RenderedBooks:
    """Live answers rendered once per book version: at hundreds of requests a second a book
    changes far less often than it is asked for, and rendering 2 x depth decimals and the
    depth near the mid is most of a request's work. A hit needs the book's version to be
    the one the answer was rendered at, so no answer is older than the book."""

    LIMIT = 4096  # (exchange, product, depth, bps) answers kept

    def __init__(self) -> None:
        self._held: dict[tuple[str, str, int, int], tuple[int, bytes]] = {}

    def render(self, book: OrderBook, depth: int, bps: int) -> bytes:
        key = (book.exchange, book.product_id, depth, bps)
        version = book.version  # read first: a change while rendering makes the next a miss
        hit = self._held.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        rendered = bytes(JSONResponse(body(book, depth, bps, None)).body)
        if len(self._held) >= self.LIMIT:
            self._held.clear()
        self._held[key] = (version, rendered)
        return rendered


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/v1")
    rendered = RenderedBooks()

    @api.get(
        "/products/{product_id}/book",
        summary="Order book: top levels best first, spread, mid and depth near the mid",
        response_class=JSONResponse,
        responses={200: {"model": BookOut}, **errors(404, 422)},
    )
    async def book(
        product_id: ProductPath,
        depth: Depth = BOOK_DEPTH,
        bps: Bps = BPS,
        exchange: ExchangeParam = None,
        at: Annotated[
            Instant | None,
            Query(description="the book as it was then (ISO 8601 or Unix seconds), from the lake"),
        ] = None,
    ) -> Response:
        ex = await ctx.exchange(exchange, product_id)
        if at is not None:
            return await past_book(ex, product_id, at, depth, bps)
        live = ctx.books.get(ex, product_id)
        if live is None:
            not_found(
                f"no order book for {product_id!r} on {ex!r}: order books are off"
                " (SENTINEL_BOOKS=false) or none has been received yet"
            )
        return Response(rendered.render(live, depth, bps), media_type="application/json")

    async def past_book(ex: str, product_id: str, at: Instant, depth: int, bps: int) -> Any:
        try:
            when = instant(at)
        except (OverflowError, OSError, ValueError):
            bad_parameter("at", "date out of range")
        assert when is not None
        if when.tzinfo is None:  # an ISO time without offset is UTC, as everywhere here
            when = when.replace(tzinfo=UTC)
        if when > datetime.now(UTC):
            bad_parameter("at", f"{iso(when)} is in the future")
        try:
            from crypto_sentinel.books.history import book_at
        except ImportError:  # a build without the lake's book history
            not_found("book history (at=) is not available in this build")
        found = await ctx.in_thread(book_at, ctx.reader.lake, ex, product_id, when, None)
        if found is None:
            not_found(
                f"no book data in the lake for {product_id!r} on {ex!r} at or before {iso(when)}"
            )
        return JSONResponse(body(rebuilt(found), depth, bps, when))

    @api.get(
        "/products/{product_id}/book/series",
        summary="Best bid and ask, spread, mid and depth near the mid per stored book snapshot",
        response_class=JSONResponse,
        responses={200: {"model": BookSeries}, **errors(404, 422)},
    )
    async def series(
        product_id: ProductPath,
        start: Annotated[Instant | None, Query(description="default: end - 15 minutes")] = None,
        end: Annotated[Instant | None, Query(description="default: now")] = None,
        bps: Bps = BPS,
        exchange: ExchangeParam = None,
    ) -> JSONResponse:
        ex = await ctx.exchange(exchange, product_id)
        try:
            hi = instant(end) or datetime.now(UTC)
            lo = instant(start) or hi - SERIES_DEFAULT
        except (OverflowError, OSError, ValueError):
            bad_parameter("start", "date out of range")
        # UTC throughout: the lake's date partitions are UTC dates
        hi, lo = (t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC) for t in (hi, lo))
        if lo >= hi:
            bad_parameter("start", "start must be before end")
        if hi - lo > MAX_SERIES_WINDOW:
            limit = int(MAX_SERIES_WINDOW.total_seconds())
            bad_parameter("start", f"at most {limit} seconds from start to end")
        points = await ctx.in_thread(book_series, ctx.reader, ex, product_id, lo, hi, bps)
        body = {
            "data": points,
            "exchange": ex,
            "product_id": product_id,
            "start": iso(lo),
            "end": iso(hi),
            "bps": bps,
        }
        return JSONResponse(body)

    return api
