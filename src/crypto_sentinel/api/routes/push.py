"""Live push: WebSocket `/v1/stream` and Server-Sent Events `/v1/stream/sse`.

WebSocket protocol (JSON text frames):
  client: {"type": "subscribe" | "unsubscribe", "product_ids": [...], "channels": [...],
           "exchange": optional, "depth": optional}
           channels: trades, ticker, candles:<granularity>, book
           depth: levels per side of the book channel, 1 to MAX_BOOK_DEPTH (50), default 10
          {"type": "ping"}
  server: {"type": "subscriptions", "channels": [{"name", "exchange", "product_ids"}]}
          {"type": "trade" | "ticker" | "candle" | "book", "product_id", ...}   (REST shapes;
           a book: exchange, bids, asks ([[price, size]] best first), update_id, time, valid,
           invalid_reason, spread, mid)
          {"type": "heartbeat", "time", "sequence"}   at least every heartbeat interval
          {"type": "pong"} | {"type": "error", "message"}
A subscribe to ticker, candles or book sends the current value at once. Trades are never
conflated; a client that falls `api_stream_queue` trade messages behind is sent an error and
closed (code 1013). Tickers, candles and books are conflated: a slow reader gets the newest
value (a book is rendered when the client is ready for it, never queued).
SSE carries the same messages as events named by their type, for the products and channels
given in the query (`depth` for the book channel).

Limits (each named in the error that crossing it gets): at most MAX_SUBSCRIPTIONS (200)
entries per list and subscriptions per connection, ids and exchange names of 1 to 40
characters, messages of at most 64 KiB (larger frames close the socket with 1009).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, WebSocket
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect

from crypto_sentinel.api.candles import CandleService, floor_time
from crypto_sentinel.api.context import ApiContext, bad_parameter, not_found
from crypto_sentinel.api.render import book_item, candle_item, dec
from crypto_sentinel.api.routes.latest import MAX_PRODUCT_ID, ExchangeParam
from crypto_sentinel.api.schemas import errors
from crypto_sentinel.api.security import PROTOCOL
from crypto_sentinel.api.stream import (
    BOOK_DEPTH,
    CHANNELS,
    MAX_BOOK_DEPTH,
    BookRef,
    CandleRef,
    Client,
    Hub,
    Key,
    observe_push,
)
from crypto_sentinel.completeness import contiguous
from crypto_sentinel.gapflags import overlaps

#: Subscriptions (product x channel) per connection, and entries per list in one message.
MAX_SUBSCRIPTIONS = 200
#: Longest client message (uvicorn closes the socket with 1009 past ws_max_size, 64 KiB).
MAX_MESSAGE = 64 * 1024
#: Longest product id, channel or exchange name.
MAX_ID = MAX_PRODUCT_ID
CLOSE_TRY_AGAIN = 1013  # slow consumer, or too many clients


class ProtocolError(ValueError):
    pass


def _error(message: str) -> bytes:
    return orjson.dumps({"type": "error", "message": message})


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/v1")
    hub = ctx.hub
    rendered: dict[tuple[Any, ...], tuple[int, bool, bool, bool, bytes]] = {}
    books_rendered: dict[tuple[str, str, int], tuple[int, bytes]] = {}  # by depth: version

    async def keys_for(
        product_ids: list[str], channels: list[str], exchange: str | None
    ) -> set[Key]:
        bad = [c for c in channels if c not in CHANNELS]
        if bad:
            raise ProtocolError(f"unknown channel(s) {bad}; use {', '.join(CHANNELS)}")
        for product in product_ids:
            if not await ctx.is_known(product):
                raise LookupError(f"unknown product {product!r}")
        if exchange is None:  # each product from the first exchange with data for it
            venue = {p: await ctx.exchange_with(p) for p in product_ids}
            return {(venue[p], p, c) for p in product_ids for c in channels}
        ex = await ctx.known_exchange(exchange)
        if ex is None:
            raise LookupError(f"unknown exchange {exchange!r}")
        return {(ex, p, c) for p in product_ids for c in channels}

    def snapshot(client: Client, keys: set[Key]) -> None:
        """Current ticker and forming candles right after subscribing."""
        for ex, product, channel in keys:
            if channel == "ticker":
                current = ctx.state.tickers.get((ex, product))
                if current is not None:
                    client.put((ex, product, channel), Hub.ticker_message(current))
            elif channel == "book":
                if ctx.books.get(ex, product) is not None:
                    book_ref = BookRef(ex, product)
                    client.put(book_ref, book_ref)
            elif channel.startswith("candles:"):
                book = ctx.candles.book(ex, product)
                if book is not None and book.newest is not None:
                    g = int(channel.partition(":")[2])
                    ref = CandleRef(ex, product, g, floor_time(book.newest, g))
                    client.put(ref, ref)

    def subscriptions(client: Client) -> bytes:
        groups: dict[tuple[str, str], list[str]] = {}
        for ex, product, channel in sorted(client.subs):
            groups.setdefault((channel, ex), []).append(product)
        channels = [
            {"name": name, "exchange": ex, "product_ids": products}
            for (name, ex), products in sorted(groups.items())
        ]
        return orjson.dumps({"type": "subscriptions", "channels": channels})

    async def candle_message(ref: CandleRef) -> tuple[bytes, bool, CandleRef | None] | None:
        """The candle's message, its `complete`, and the bucket of the stored trade before it
        when the two are not contiguous (that bucket was pushed as complete while no trade
        had come after it yet: the client must hear it is not)."""
        service = ctx.candles
        book = service.book(ref.exchange, ref.product_id)
        if book is None:
            return None
        g, lo = ref.granularity, ref.start
        hi = lo + timedelta(seconds=g)
        cut = CandleService.cut(book, lo, hi)
        candle = service.hot(book, g, cut, hi).get(lo)
        if cut > lo:
            old = await ctx.in_thread(service.lake_part, ref.exchange, ref.product_id, g, lo, cut)
            if old is not None:
                merged = replace(old)
                if candle is not None:
                    merged.merge(candle)
                candle = merged
        if candle is None:
            return None
        forming = lo <= datetime.now(UTC) < hi
        spans = await ctx.gap_spans(ref.exchange, ref.product_id)
        gap = bool(spans) and overlaps(spans, lo, g)
        before, after = await ctx.trade_neighbors(ref.exchange, ref.product_id, lo, hi)
        complete = not gap and contiguous(
            candle.first_trade_id, candle.last_trade_id, candle.trade_count, before, after
        )
        key = (ref.exchange, ref.product_id, g, lo)
        previous = None
        if before is not None and before != candle.first_trade_id - 1:
            known, minute = CandleService.memory_minute_before(book, lo)
            if known and minute is not None:
                previous = CandleRef(ref.exchange, ref.product_id, g, floor_time(minute, g))
        hit = rendered.get(key)
        if hit is None or hit[:4] != (candle.trade_count, forming, gap, complete):
            item = {
                "type": "candle",
                "product_id": ref.product_id,
                "exchange": ref.exchange,
                **candle_item(candle, g, forming),
                "gap": gap,
                "complete": complete,
            }
            if len(rendered) > 10_000:
                rendered.clear()
            hit = rendered[key] = (
                candle.trade_count, forming, gap, complete, orjson.dumps(item)
            )  # fmt: skip
        return hit[4], complete, previous

    def book_message(client: Client, ref: BookRef) -> bytes | None:
        """The book's newest top levels at the client's depth (rendered once per version and
        depth, shared by every client)."""
        book = ctx.books.get(ref.exchange, ref.product_id)
        if book is None:
            return None
        depth = client.book_depth.get((ref.exchange, ref.product_id), BOOK_DEPTH)
        key = (ref.exchange, ref.product_id, depth)
        hit = books_rendered.get(key)
        if hit is None or hit[0] != book.version:
            item = {"type": "book", **book_item(book.view(depth))}
            spread, mid = (book.spread(), book.mid()) if book.valid else (None, None)
            item["spread"] = dec(spread)
            item["mid"] = dec(mid)
            if len(books_rendered) > 10_000:
                books_rendered.clear()
            hit = books_rendered[key] = (book.version, orjson.dumps(item))
        return hit[1]

    async def outgoing(client: Client) -> AsyncIterator[bytes]:
        """Messages for one client as they come, heartbeats, and a last error if dropped."""
        beat_at = time.monotonic() + hub.heartbeat
        beats = 0
        told: dict[CandleRef, bool] = {}  # `complete` of the candles this client was sent
        while True:
            await client.wait(max(0.0, beat_at - time.monotonic()))
            if client.dropped:
                yield _error("slow consumer: fell too far behind and was disconnected")
                return
            out, oldest = client.take()
            sent = 0
            for item in out:
                if isinstance(item, bytes):
                    yield item
                    sent += 1
                    continue
                if isinstance(item, BookRef):
                    message = book_message(client, item)
                    if message is not None:
                        yield message
                        sent += 1
                    continue
                ref: CandleRef | None = item
                while ref is not None:  # the candle, then the one before it if it changed
                    found = await candle_message(ref)
                    if found is None:
                        break
                    data, complete, previous = found
                    yield data
                    sent += 1
                    if len(told) > 10_000:
                        told.clear()
                    told[ref] = complete
                    told_before = None if previous is None else told.get(previous)
                    ref = previous if previous is not None and told_before is not False else None
            if sent:
                observe_push(client.transport, sent, oldest)
            if time.monotonic() >= beat_at:
                beats += 1
                yield Hub.heartbeat_message(beats)
                beat_at = time.monotonic() + hub.heartbeat

    async def handle(client: Client, text: str) -> None:
        """One client message; replies go through the client's queue (in order)."""
        if len(text) > MAX_MESSAGE:
            client.push(_error(f"message too large: at most {MAX_MESSAGE} characters"))
            return
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            client.push(_error("not JSON"))
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "ping":
            client.push(b'{"type":"pong"}')
            return
        if kind not in ("subscribe", "unsubscribe"):
            client.push(_error("type must be subscribe, unsubscribe or ping"))
            return
        products, channels, exchange = (
            msg.get("product_ids"), msg.get("channels"), msg.get("exchange")
        )  # fmt: skip
        problem = _list_problem("product_ids", products) or _list_problem("channels", channels)
        if problem:
            client.push(_error(problem))
            return
        depth = msg.get("depth", BOOK_DEPTH)
        if type(depth) is not int or not 1 <= depth <= MAX_BOOK_DEPTH:
            client.push(_error(f"depth must be an integer from 1 to {MAX_BOOK_DEPTH}"))
            return
        if exchange is not None and (
            not isinstance(exchange, str) or not 0 < len(exchange) <= MAX_ID
        ):
            client.push(_error(f"exchange must be a string of 1 to {MAX_ID} characters"))
            return
        try:
            keys = await keys_for(products, channels, exchange)
        except (ProtocolError, LookupError) as exc:
            client.push(_error(str(exc)))
            return
        if kind == "subscribe":
            if len(client.subs | keys) > MAX_SUBSCRIPTIONS:
                client.push(_error(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection"))
                return
            new = keys - client.subs
            books = {key for key in keys if key[2] == "book"}
            for ex, product, _ in books:  # a new depth applies from the next message on
                client.book_depth[(ex, product)] = depth
            hub.subscribe(client, keys)
            client.push(subscriptions(client))
            snapshot(client, new | books)
        else:
            hub.unsubscribe(client, keys)
            for ex, product, channel in keys:
                if channel == "book":
                    client.book_depth.pop((ex, product), None)
            client.push(subscriptions(client))

    @api.websocket("/stream")
    async def stream(ws: WebSocket) -> None:
        # a client that offers our subprotocol (with its token, see api/security.py) gets it
        offered = ws.scope.get("subprotocols") or ()
        await ws.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
        client = hub.connect("websocket")
        if client is None:
            await ws.close(CLOSE_TRY_AGAIN, "too many stream clients")
            return

        async def receive() -> None:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    text = (message.get("bytes") or b"").decode("utf-8", "replace")
                await handle(client, text)

        async def send() -> None:
            async for data in outgoing(client):
                await ws.send_text(data.decode())
            await ws.close(CLOSE_TRY_AGAIN, "slow consumer")

        tasks = {asyncio.create_task(receive()), asyncio.create_task(send())}
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                    await task
        finally:
            hub.disconnect(client)

    @api.get(
        "/stream/sse",
        summary="Server-Sent Events: trades, tickers, candles and order books as they happen",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "an endless text/event-stream; events named by message type",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **errors(404, 422, 503),
        },
    )
    async def sse(
        product_ids: Annotated[
            str, Query(max_length=2000, description="comma separated, e.g. BTC-USD,ETH-USD")
        ],
        channels: Annotated[
            str,
            Query(max_length=2000, description="comma separated: trades, ticker, candles:60, book"),
        ] = "trades,ticker",
        exchange: ExchangeParam = None,
        depth: Annotated[
            int, Query(ge=1, le=MAX_BOOK_DEPTH, description="levels per side of the book channel")
        ] = BOOK_DEPTH,
    ) -> StreamingResponse:
        products = [p for p in product_ids.split(",") if p]
        wanted = [c for c in channels.split(",") if c]
        if not products:
            bad_parameter("product_ids", "at least one product id")
        if not wanted:
            bad_parameter("channels", "at least one channel")
        for name, values in (("product_ids", products), ("channels", wanted)):
            problem = _list_problem(name, values)
            if problem:
                bad_parameter(name, problem)
        try:
            keys = await keys_for(products, wanted, exchange)
        except ProtocolError as exc:
            bad_parameter("channels", str(exc))
        except LookupError as exc:
            not_found(str(exc))
        if len(keys) > MAX_SUBSCRIPTIONS:
            bad_parameter("product_ids", f"at most {MAX_SUBSCRIPTIONS} subscriptions")
        client = hub.connect("sse")
        if client is None:
            raise HTTPException(503, "too many stream clients")
        for ex, product, channel in keys:
            if channel == "book":
                client.book_depth[(ex, product)] = depth
        hub.subscribe(client, keys)
        client.push(subscriptions(client))
        snapshot(client, keys)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                async for data in outgoing(client):
                    name = data[9 : data.index(b'"', 9)]  # every message starts {"type":"
                    yield b"event: " + name + b"\ndata: " + data + b"\n\n"
            finally:
                hub.disconnect(client)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return api


def _list_problem(name: str, value: Any) -> str | None:
    """What is wrong with a list of product ids or channels, naming the limit; None: fine."""
    if not isinstance(value, list) or not value:
        return f"{name} must be a non-empty list of strings"
    if len(value) > MAX_SUBSCRIPTIONS:
        return f"{name}: at most {MAX_SUBSCRIPTIONS} entries per message (got {len(value)})"
    for v in value:
        if not isinstance(v, str) or not v:
            return f"{name} must be a non-empty list of strings"
        if len(v) > MAX_ID:
            return f"{name}: each entry at most {MAX_ID} characters (got {len(v)})"
    return None
