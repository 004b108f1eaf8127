"""A live exchange WebSocket feed, whichever the venue: the connection code every venue shares.

It keeps each raw frame, reconnects with capped, jittered exponential backoff, forces a
reconnect when the feed goes quiet, refuses frames over a maximum size, finds trade-id gaps
per product (the venue's rule, through its codec) and has them backfilled from REST
(sources/backfill.py). What differs per venue is a `Connector`: the URL, the subscribe
messages, an application-level keep-alive, a check of each frame (a sequence break that calls
for a resubscribe; Kraken notes trade times there), what it reads from REST before connecting
(symbols, pair names), and how its REST serves missed trades (by id, or through a pager).
With books on, the connector also subscribes every product's book channel, may publish frames
of its own in the connection (Binance REST depth snapshots), and `request_book_resync` lets
the engine have a product's book sent afresh (sources/bookfeed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from typing import Protocol

from crypto_sentinel import metrics
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.backfill import NO_REST, Backfiller, RestTrades
from crypto_sentinel.sources.base import GapTracker, Publish, SourceStatus, new_conn_id
from crypto_sentinel.sources.bookfeed import BookOptions, Credentials
from crypto_sentinel.sources.ratelimit import TokenBucket
from crypto_sentinel.sources.wsclient import FeedConnection, WSError, connect

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 1 << 20
#: After a reconnect, a product with no newer trade id this long is asked over REST.
PROBE_SECONDS = 2.0


class Connector(Protocol):
    """What a venue's live feed needs beyond the shared connection code."""

    #: An application-level ping and how often to send it (None: the venue needs none).
    keepalive: tuple[float, str] | None
    #: Reconnect after this many seconds (the venue closes older connections), or None.
    lifetime: float | None
    #: How the venue's REST serves missed trades (None: not at all; gaps are recorded unfilled).
    rest: RestTrades | None
    #: Book subscription options once `use_books` took them (None: no books).
    books: BookOptions | None

    def url(self, base: str, products: list[str]) -> str:
        """The URL to connect to (some venues name the streams in it)."""
        ...

    def subscribe(self, products: list[str]) -> list[str]:
        """Messages to send after connecting."""
        ...

    def check(self, text: str) -> list[str]:
        """Look at a frame on the connection; messages to send in answer (a resubscribe
        after a sequence break), usually none."""
        ...

    def new_connection(self) -> None:
        """Per-connection state starts again (sequence numbers)."""
        ...

    async def prepare(self, rest_url: str | None, products: list[str]) -> None:
        """Before each connection: load what the venue's REST says about its symbols (once;
        cached). Never raises: a venue that cannot answer leaves the built-in rule in place."""
        ...

    def use_books(self, options: BookOptions) -> None:
        """Subscribe to the book channel of every product too (bookfeed.BookSubscriber)."""
        ...

    def resync_book(self, product: str) -> list[str]:
        """Messages that make the venue send the product's book afresh."""
        ...

    async def own_frames(self) -> list[str]:
        """Frames of our own to publish now, in this connection (Binance REST snapshots)."""
        ...


class FeedSource:
    def __init__(
        self,
        connector: Connector,
        products: list[str],
        url: str,
        exchange: str,
        kind: str,
        idle_timeout: float = 10.0,
        open_timeout: float = 5.0,
        backoff_cap: float = 30.0,
        backoff_base: float = 0.5,
        rest_url: str | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        backfill_grace: float = 1.0,
        backfill_linger: float = 5.0,
        rest_rate: float | None = None,
        books: bool = False,
        book_depth: int = 1000,
        book_rest_url: str | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.connector = connector
        self.products = products
        self.url = url
        self.idle_timeout = idle_timeout
        self.open_timeout = open_timeout
        self.backoff_cap = backoff_cap
        self.backoff_base = backoff_base
        self.max_frame_bytes = max_frame_bytes
        self.status = SourceStatus(
            kind=kind, exchange=exchange, url=url, simulated=kind.startswith("simulator")
        )
        self.gaps = GapTracker(self.status)
        self.backfill: Backfiller | None = None
        rest = connector.rest or NO_REST
        if rest_url:
            self.backfill = Backfiller(
                rest_url,
                self.status,
                self.gaps,
                bucket=TokenBucket(rest_rate or rest.rate, rest.burst),
                rest=rest,
                grace=backfill_grace,
                linger=backfill_linger,
            )
        self.rest_url = rest_url
        self.connected = asyncio.Event()
        self.books = books
        self._ws: FeedConnection | None = None
        self._sends: set[asyncio.Task[None]] = set()
        if books:
            options = BookOptions(book_depth, book_rest_url or rest_url, self._resync, credentials)
            connector.use_books(options)

    def _resync(self, product: str, reason: str) -> None:
        """Every book resync the feed starts: one log line and two counters."""
        self.status.book_resyncs += 1
        metrics.BOOK_RESYNCS.labels(self.status.exchange, reason).inc()
        log.info("%s %s book resync (%s)", self.status.exchange, product, reason)

    def request_book_resync(self, exchange: str, product_id: str) -> bool:
        """The engine's hook: have the venue send `product_id`'s book afresh (a
        re-subscription; Binance: a new REST snapshot). False when this source does not
        carry that book."""
        if self.connector.books is None or exchange != self.status.exchange:
            return False
        if product_id not in self.products:
            return False
        self._resync(product_id, "requested")
        messages = self.connector.resync_book(product_id)
        ws = self._ws
        if messages and ws is not None:
            task = asyncio.get_running_loop().create_task(self._send(ws, messages))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        return True

    @staticmethod
    async def _send(ws: FeedConnection, messages: list[str]) -> None:
        with contextlib.suppress(OSError):  # the reconnect resubscribes
            for message in messages:
                await ws.send(message)

    def seed(self, ranges: dict[str, list[tuple[int, int]]]) -> None:
        """Trade ids the lake holds per product: start-up backfill starts from them."""
        for product in self.products:
            self.gaps.seed(product, ranges.get(product, []))

    async def run(self, publish: Publish) -> None:
        """Stream forever (until cancelled), reconnecting after any failure."""
        backfill = None
        if self.backfill is not None:
            backfill = asyncio.create_task(self.backfill.run(publish), name="backfill")
        try:
            await self._stream(publish)
        finally:
            if backfill is not None:
                backfill.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await backfill

    async def _stream(self, publish: Publish) -> None:
        failures = 0
        while True:
            connections = self.status.connections
            try:
                await self._session(publish)
            except (OSError, TimeoutError, WSError) as exc:
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                self.status.last_disconnect = self.status.last_error
            finally:
                self.status.connected = False
            # A connection that worked resets the backoff; repeated failures grow it.
            failures = 1 if self.status.connections > connections else failures + 1
            self.status.reconnects += 1
            metrics.RECONNECTS.labels(self.status.exchange).inc()
            exp = self.backoff_base * 2 ** min(failures - 1, 16)
            delay = min(self.backoff_cap, exp) * random.uniform(0.5, 1)
            log.warning(
                "%s feed disconnected (%s); reconnecting in %.1fs",
                self.status.exchange,
                self.status.last_error or "closed",
                delay,
            )
            await asyncio.sleep(delay)

    async def _session(self, publish: Publish) -> None:
        connector = self.connector
        await connector.prepare(self.rest_url, self.products)
        async with connect(
            connector.url(self.url, self.products), self.max_frame_bytes, self.open_timeout
        ) as ws:
            connector.new_connection()
            for message in connector.subscribe(self.products):
                await ws.send(message)
            conn_id = new_conn_id()
            self.status.connected = True
            self.status.connections += 1
            self.gaps.new_connection(self.products)
            if self.backfill is not None and self.status.connections > 1:
                self.backfill.probe_after(self.products, PROBE_SECONDS)
            self.status.last_error = ""
            self.connected.set()
            log.info("connected to %s (%s), conn %s", self.url, self.status.exchange, conn_id)
            self._ws = ws
            keepalive = None
            if connector.keepalive is not None:
                keepalive = asyncio.create_task(self._keepalive(ws, *connector.keepalive))
            try:
                async with asyncio.timeout(connector.lifetime):
                    await self._receive(ws, conn_id, publish)
            except TimeoutError:
                if connector.lifetime is None or self.status.frames == 0:
                    raise
                raise TimeoutError("connection lifetime reached (the venue ends it)") from None
            finally:
                self._ws = None
                if keepalive is not None:
                    keepalive.cancel()

    async def _receive(self, ws: FeedConnection, conn_id: str, publish: Publish) -> None:
        """Hand every received frame on, in order. A frame leaves `received` only once the bus
        took it, and the gap tracker sees only what the bus took. When the session ends while
        the bus holds the feed back (a full bus outlasting the idle timer) or the socket
        closes, what was received is still handed on before the reconnect."""
        received: deque[str | bytes] = deque()
        seq = 0
        loop = asyncio.get_running_loop()
        check = self.connector.check
        own_frames = self.connector.own_frames if self.books else None
        # One idle timer for the session, moved on at most every `rearm` seconds: a timer
        # per frame cost more than the rest of receiving it. asyncio.timeout, not
        # wait_for: on 3.11 wait_for can swallow a cancellation that races with a frame
        # arriving, and the source would never stop.
        rearm = min(0.25, self.idle_timeout / 4)  # so idle is noticed within 75-100 %
        status, gaps, exchange = self.status, self.gaps, self.status.exchange
        try:
            async with asyncio.timeout(self.idle_timeout) as idle:
                armed = loop.time()
                while True:
                    received.extend(await ws.recv_many())
                    while received:
                        text = received[0]
                        if isinstance(text, bytes):
                            text = text.decode("utf-8", errors="replace")
                        now = time.time_ns()
                        await publish(RawFrame(exchange, conn_id, seq + 1, now, text))
                        received.popleft()  # taken: from here on it cannot be lost
                        seq += 1
                        status.frames += 1
                        status.last_frame_ns = now
                        gaps.observe(text)
                        for answer in check(text):
                            await ws.send(answer)
                        if own_frames is not None:
                            for own in await own_frames():  # received when the fetch answered
                                seq += 1
                                status.book_snapshots += 1
                                frame = RawFrame(exchange, conn_id, seq, time.time_ns(), own)
                                await publish(frame)
                    if loop.time() - armed > rearm:
                        armed = loop.time()
                        idle.reschedule(armed + self.idle_timeout)
        except Exception:
            while received:  # not a cancellation (shutdown): the bus will take them
                message = received.popleft()
                text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
                seq += 1
                now = time.time_ns()
                await publish(RawFrame(exchange, conn_id, seq, now, text))
                status.frames += 1
                status.last_frame_ns = now
                gaps.observe(text)
            raise

    @staticmethod
    async def _keepalive(ws: FeedConnection, every: float, message: str) -> None:
        with contextlib.suppress(OSError):
            while True:
                await asyncio.sleep(every)
                await ws.send(message)
