"""`/v1/products...`: products with 24 h stats, ticker, trades and candles.

Memory answers what it covers; the lake (in a worker thread) answers the rest of a request.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from crypto_sentinel.api.asof import as_of_items
from crypto_sentinel.api.candles import DAY, CandleService, WindowError, page_window
from crypto_sentinel.api.context import ApiContext, bad_parameter, not_found
from crypto_sentinel.api.render import (
    TradeRowItems,
    candle_item,
    iso,
    stats_item,
    ticker_from_trade,
    ticker_item,
    ticker_row_item,
    trade_item,
    trade_row_item,
)
from crypto_sentinel.api.responses import JSONResponse
from crypto_sentinel.api.routes.latest import ExchangeParam, ProductPath
from crypto_sentinel.api.schemas import (
    CandlesPage,
    Exchanges,
    Products,
    Stats,
    TickerOut,
    TradesPage,
    errors,
)
from crypto_sentinel.api.state import MINUTE
from crypto_sentinel.completeness import mark_page
from crypto_sentinel.engine.candles import Candle
from crypto_sentinel.lake.query import TRADE_PAGE_COLUMNS
from crypto_sentinel.sources.venues import DISPLAY_NAMES, venue_of, venue_symbol

#: A time as ISO 8601 (2024-01-01T00:00:00Z) or Unix seconds.
Instant = datetime | float


def instant(value: Instant | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(value, UTC)


class Granularity(IntEnum):
    """Candle sizes in seconds, as the exchanges offer them."""

    ONE_MINUTE = 60
    FIVE_MINUTES = 300
    FIFTEEN_MINUTES = 900
    ONE_HOUR = 3600
    SIX_HOURS = 21600
    ONE_DAY = 86400


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/v1")
    state = ctx.state
    rendered = TradeRowItems()  # trade pages from the lake

    @api.get(
        "/exchanges",
        summary="Exchanges with a running source or data, and their source status",
        response_class=JSONResponse,
        responses={200: {"model": Exchanges}},
    )
    async def exchanges() -> JSONResponse:
        sources = {s["exchange"]: s for s in ctx.status().get("sources") or []}
        pairs = ctx.state.pairs() | await ctx.lake_pairs()
        items = []
        for exchange in await ctx.exchanges():
            venue = venue_of(exchange)
            src = sources.get(exchange)
            items.append(
                {
                    "exchange": exchange,
                    "venue": venue,
                    "name": DISPLAY_NAMES.get(venue or ""),
                    "simulated": exchange.startswith("simulator"),
                    "source": None if src is None else {
                        key: src.get(key) for key in
                        ("kind", "connected", "simulated", "frames", "last_frame_age_seconds")
                    },
                    "products": sorted(p for ex, p in pairs if ex == exchange),
                }
            )  # fmt: skip
        return JSONResponse({"data": items})

    @api.get(
        "/products",
        summary="Products with last price and 24 h open, high, low, volume and change",
        response_class=JSONResponse,
        responses={200: {"model": Products}, **errors(404, 422)},
    )
    async def products(exchange: ExchangeParam = None) -> JSONResponse:
        if exchange is None:  # every venue with data: one row per venue and product
            listed = await ctx.products_by_exchange()
        else:
            ex = await ctx.exchange(exchange)
            listed = [(ex, await ctx.product_ids(ex))]
        items = []
        for ex, ids in listed:
            items += await day_stats(ex, ids)
        for item in items:
            base, _, quote = item["product_id"].partition("-")
            item["base_currency"], item["quote_currency"] = base, quote
            item["venue_symbol"] = venue_symbol(item["exchange"], item["product_id"])
        return JSONResponse({"data": items, "exchange": exchange})

    @api.get(
        "/products/{product_id}/stats",
        summary="24 h statistics up to the last trade",
        response_class=JSONResponse,
        responses={200: {"model": Stats}, **errors(404, 422)},
    )
    async def stats(product_id: ProductPath, exchange: ExchangeParam = None) -> JSONResponse:
        await ctx.check_product(product_id)
        ex = await ctx.exchange(exchange, product_id)
        return JSONResponse((await day_stats(ex, [product_id]))[0])

    @api.get(
        "/products/{product_id}/ticker",
        summary="Current ticker: last trade, best bid and ask",
        response_class=JSONResponse,
        responses={200: {"model": TickerOut}, **errors(404, 422)},
    )
    async def ticker(product_id: ProductPath, exchange: ExchangeParam = None) -> JSONResponse:
        await ctx.check_product(product_id)
        ex = await ctx.exchange(exchange, product_id)
        key = (ex, product_id)
        current = state.tickers.get(key)
        last = state.last_trade(ex, product_id)
        if current is not None and (last is None or current.time >= last.time):
            return JSONResponse(ticker_item(current))
        if last is not None:
            return JSONResponse(ticker_from_trade(product_id, trade_item(last)))
        row = await ctx.in_thread(ctx.reader.newest_ticker, ex, product_id)
        if row is not None:
            return JSONResponse(ticker_row_item(row))
        rows = await ctx.in_thread(ctx.reader.newest_trades, ex, product_id, 1)
        if rows:
            return JSONResponse(ticker_from_trade(product_id, trade_row_item(rows[0])))
        not_found(f"no market data yet for {product_id!r} on {ex!r}")

    @api.get(
        "/products/{product_id}/trades",
        summary="Trades, newest first; page with the trade_id cursor `before`",
        response_class=JSONResponse,
        responses={200: {"model": TradesPage}, **errors(404, 422)},
    )
    async def trades(
        product_id: ProductPath,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[
            int | None, Query(ge=1, le=2**62, description="trade_id cursor (exclusive)")
        ] = None,
        exchange: ExchangeParam = None,
    ) -> JSONResponse:
        await ctx.check_product(product_id)
        ex = await ctx.exchange(exchange, product_id)
        ring = state.ring(ex, product_id)
        items: list[dict[str, Any]] = []
        lake_before = before
        if ring:
            for seen in ring.below(before, limit):
                if seen.rest is None:
                    seen.rest = trade_item(seen.trade)
                items.append(seen.rest)
            floor = ring.complete_from
            lake_before = floor if before is None else min(before, floor)
        if len(items) < limit:
            page = (ex, product_id, lake_before, limit - len(items), TRADE_PAGE_COLUMNS)
            rows = ctx.reader.kept_trades(*page)  # no thread when kept
            if rows is None:
                rows = await ctx.in_thread(ctx.reader.trades, *page)
            items += [rendered(product_id, r) for r in rows]
        headers = {}
        if items:
            headers = {
                "CB-BEFORE": str(items[0]["trade_id"]),
                "CB-AFTER": str(items[-1]["trade_id"]),
            }
        next_before = items[-1]["trade_id"] if len(items) == limit else None
        body = {"data": items, "next_before": next_before, "product_id": product_id}
        return JSONResponse(body, headers=headers)

    @api.get(
        "/products/{product_id}/candles",
        summary="OHLCV candles, newest first; at most 300 per request",
        response_class=JSONResponse,
        responses={200: {"model": CandlesPage}, **errors(404, 422)},
    )
    async def candles(
        product_id: ProductPath,
        granularity: Annotated[
            Granularity, Query(description="bucket size in seconds")
        ] = Granularity.ONE_MINUTE,
        start: Annotated[Instant | None, Query(description="default: end - 300 buckets")] = None,
        end: Annotated[Instant | None, Query(description="default: now")] = None,
        exchange: ExchangeParam = None,
        as_of: Annotated[
            Instant | None,
            Query(description="answer as the lake knew it then (Delta time travel)"),
        ] = None,
    ) -> Response:
        await ctx.check_product(product_id)
        ex = await ctx.exchange(exchange, product_id)
        now = datetime.now(UTC)
        g = int(granularity)
        try:
            lo, hi = page_window(g, instant(start), instant(end), now)
        except WindowError as exc:
            bad_parameter(exc.field, str(exc))
        except (OverflowError, OSError, ValueError):
            bad_parameter("start", "date out of range")
        if as_of is not None:  # the lake alone, at its version of that time
            try:
                when = instant(as_of)
                assert when is not None
                past = await ctx.in_thread(
                    as_of_items, ctx.reader.lake, ex, product_id, g, lo, hi, when
                )
            except (OverflowError, OSError, ValueError) as exc:  # AsOfError: before the log
                bad_parameter("as_of", str(exc))
            mark_page(past, g, None, None, await ctx.gap_spans(ex, product_id))
            return JSONResponse({"data": past, "granularity": g, "product_id": product_id,
                                 "exchange": ex, "start": iso(lo), "end": iso(hi),
                                 "as_of": iso(when)})  # fmt: skip
        service = ctx.candles
        book = service.book(ex, product_id)
        cut = CandleService.cut(book, lo, hi)
        hot = service.hot(book, g, cut, hi) if book is not None else {}
        if not hot and cut > lo and hi <= now:  # history from the lake alone: kept rendered
            page = await old_lake_page(ex, product_id, g, lo, hi, cut)
            return Response(page, media_type="application/json")
        lake: dict[datetime, dict[str, Any]] = {}
        if cut > lo:  # rendered in the thread, whole columns at once
            lake = await ctx.in_thread(service.lake_items, ex, product_id, g, lo, cut)
        step = timedelta(seconds=g)
        items = []
        for start in sorted(hot.keys() | lake.keys(), reverse=True):
            forming = start <= now < start + step
            mem, old = hot.get(start), lake.get(start)
            if mem is None and old is not None:
                old["forming"] = forming
                items.append(old)
            elif old is not None and mem is not None:  # a bucket straddling the cut
                both = await ctx.in_thread(service.lake_part, ex, product_id, g, start, cut)
                assert both is not None
                both = replace(both)
                both.merge(mem)
                items.append(candle_item(both, g, forming))
            elif mem is not None and book is not None:
                key = (g, start)
                hit = book.rendered.get(key)
                if hit is None or hit[0] != mem.trade_count or hit[1] != forming:
                    hit = (mem.trade_count, forming, candle_item(mem, g, forming))
                    book.rendered[key] = hit
                items.append(hit[2])
        spans = await ctx.gap_spans(ex, product_id)
        before = after = None
        if items:  # the stored trades just outside the page, for `complete` at its edges
            oldest, newest = (datetime.fromisoformat(items[i]["start"]) for i in (-1, 0))
            before, after = await ctx.trade_neighbors(ex, product_id, oldest, newest + step)
        mark_page(items, g, before, after, spans)
        body = {
            "data": items,
            "granularity": g,
            "product_id": product_id,
            "exchange": ex,
            "start": iso(lo),
            "end": iso(hi),
        }
        return JSONResponse(body)

    old_pages: dict[tuple[Any, ...], tuple[object, tuple[Any, ...], bytes]] = {}

    async def old_lake_page(
        ex: str, product_id: str, g: int, lo: datetime, hi: datetime, cut: datetime
    ) -> bytes:
        """A candle page of the past from the lake alone, rendered once for as long as its
        files, the product's gap spans and the trade ids next to it stay the same (replicas
        are asked the same history pages again and again)."""
        token, kept = await ctx.in_thread(ctx.candles.lake_page, ex, product_id, g, lo, cut)
        spans = await ctx.gap_spans(ex, product_id)
        before = after = None
        if kept:  # the stored trades just outside the page, for `complete` at its edges
            step = timedelta(seconds=g)
            before, after = await ctx.trade_neighbors(ex, product_id, min(kept), max(kept) + step)
        key, marks = (ex, product_id, g, lo, hi), (spans, before, after)
        hit = old_pages.get(key)
        if hit is not None and hit[0] is token and hit[1] == marks:
            return hit[2]
        items = [{**kept[start], "forming": False} for start in sorted(kept, reverse=True)]
        mark_page(items, g, before, after, spans)
        body = {"data": items, "granularity": g, "product_id": product_id, "exchange": ex,
                "start": iso(lo), "end": iso(hi)}  # fmt: skip
        page = bytes(JSONResponse(body).body)
        if len(old_pages) >= 256:
            old_pages.clear()
        old_pages[key] = (token, marks, page)
        return page

    async def day_stats(exchange: str, product_ids: list[str]) -> list[dict[str, Any]]:
        """24 h stats per product: memory where it covers the window, else (partly) the lake."""
        found: dict[str, tuple[Candle | None, datetime, datetime]] = {}
        lake_windows: dict[str, tuple[datetime, datetime]] = {}
        unknown: list[str] = []
        for product in product_ids:
            book = ctx.candles.book(exchange, product)
            window = CandleService.day_window(book)
            if book is None or window is None:
                unknown.append(product)
                continue
            lo, hi = window
            if book.covers(lo):
                found[product] = (book.span(lo, hi), lo, hi)
            else:
                assert book.since is not None
                found[product] = (book.span(book.since, hi), lo, hi)
                lake_windows[product] = (lo, book.since)
        if unknown:
            newest = await ctx.in_thread(ctx.reader.newest_minutes, exchange)
            for product in unknown:
                if product in newest:
                    hi = newest[product] + MINUTE
                    found[product] = (None, hi - DAY, hi)
                    lake_windows[product] = (hi - DAY, hi)
        if lake_windows:
            spans = await ctx.in_thread(ctx.candles.lake_spans, exchange, lake_windows)
            for product, old in spans.items():
                mem, lo, hi = found[product]
                if mem is not None:
                    old.merge(mem)
                found[product] = (old, lo, hi)
        out = []
        for product in product_ids:
            last_trade = state.last_trade(exchange, product)
            last = (last_trade.price, last_trade.time) if last_trade else None
            span, start, end = found.get(product, (None, None, None))
            if last is None and span is not None:
                last = (span.close, span.last_trade_time)
            out.append(stats_item(product, exchange, span, last, start, end))
        return out

    return api
