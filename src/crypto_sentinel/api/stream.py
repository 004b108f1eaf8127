"""Live push fan-out: engine events to subscribed WebSocket and SSE clients.

The engine calls `Hub.on_chunk` synchronously on the event loop, so fan-out never waits on
a client: each client has a bounded queue of trade messages and one conflated slot per
ticker, candle and order book (a newer update replaces one not yet sent). A client whose trade queue
overflows is dropped, never waited for. Messages are rendered once per event and shared by
every client; candle and book messages are rendered when a client is ready to send them, so
a slow client gets the newest book, never a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from crypto_sentinel import metrics
from crypto_sentinel.api.candles import GRANULARITIES, floor_time
from crypto_sentinel.api.render import iso_ns, push_trade, ticker_item
from crypto_sentinel.books.orderbook import OrderBook
from crypto_sentinel.engine.chunks import ChunkNews
from crypto_sentinel.model import Ticker

#: (exchange, product_id, channel) where channel is trades, ticker, candles:<granularity> or
#: book.
Key = tuple[str, str, str]
CHANNELS = ("trades", "ticker", *(f"candles:{g}" for g in GRANULARITIES), "book")
#: Levels per side a book subscription gets by default, and at most.
BOOK_DEPTH = 10
MAX_BOOK_DEPTH = 50


@dataclass(frozen=True, slots=True)
class CandleRef:
    """A candle bucket that changed; rendered when the client is ready to send."""

    exchange: str
    product_id: str
    granularity: int
    start: datetime


@dataclass(frozen=True, slots=True)
class BookRef:
    """A book that changed; its newest top levels are rendered when the client is ready."""

    exchange: str
    product_id: str


Outgoing = bytes | CandleRef | BookRef


class Client:
    """One push subscriber: bounded trade queue plus conflated ticker/candle/book slots."""

    def __init__(self, hub: Hub, transport: str, limit: int) -> None:
        self.hub = hub
        self.transport = transport
        self.limit = limit
        self.subs: set[Key] = set()
        self.queue: deque[tuple[bytes, int]] = deque()  # message, frame receive ns
        self.slots: dict[Any, Outgoing] = {}
        self.book_depth: dict[tuple[str, str], int] = {}  # levels per side per book subscribed
        self.wake = asyncio.Event()
        self.dropped = False

    def push(self, message: bytes, recv_ns: int = 0) -> None:
        if self.dropped:
            return
        if len(self.queue) >= self.limit:
            self.hub.drop(self)
            return
        self.queue.append((message, recv_ns))
        self.wake.set()

    def put(self, slot: Any, message: Outgoing) -> None:
        """Conflated update: replaces the previous one for the same slot if still unsent."""
        if self.dropped:
            return
        if slot in self.slots:
            metrics.PUSH_CONFLATED.inc()
        self.slots[slot] = message
        self.wake.set()

    async def wait(self, timeout: float) -> None:
        """Until there is something to send, the client is dropped, or `timeout` passes."""
        if self.queue or self.slots or self.dropped:
            return
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)

    def take(self) -> tuple[list[Outgoing], int]:
        """Everything pending, trades first, and the oldest trade's frame receive time."""
        oldest = self.queue[0][1] if self.queue else 0
        out: list[Outgoing] = [m for m, _ in self.queue]
        self.queue.clear()
        if self.slots:
            out.extend(self.slots.values())
            self.slots.clear()
        return out, oldest


class Hub:
    """Subscriptions and fan-out; `on_chunk` is an engine listener."""

    def __init__(self, queue_limit: int, max_clients: int, heartbeat: float) -> None:
        self.queue_limit = queue_limit
        self.max_clients = max_clients
        self.heartbeat = heartbeat
        self.clients: set[Client] = set()
        self.subscribers: dict[Key, set[Client]] = {}
        self.watched: dict[tuple[str, str], int] = {}  # subscriptions per (exchange, product)
        self.dropped = 0

    # --- clients ---------------------------------------------------------------------

    def connect(self, transport: str) -> Client | None:
        """A new client, or None when the hub is full."""
        if len(self.clients) >= self.max_clients:
            return None
        client = Client(self, transport, self.queue_limit)
        self.clients.add(client)
        metrics.PUSH_CLIENTS.labels(transport).inc()
        return client

    def disconnect(self, client: Client) -> None:
        if client in self.clients:
            self.clients.discard(client)
            metrics.PUSH_CLIENTS.labels(client.transport).dec()
        self.unsubscribe(client, set(client.subs))

    def drop(self, client: Client) -> None:
        """A client too slow to keep up: stop feeding it; its sender closes the connection."""
        client.dropped = True
        client.queue.clear()
        client.slots.clear()
        self.unsubscribe(client, set(client.subs))
        self.dropped += 1
        metrics.PUSH_DROPPED.labels(client.transport).inc()
        client.wake.set()

    def subscribe(self, client: Client, keys: set[Key]) -> None:
        for key in keys - client.subs:
            client.subs.add(key)
            self.subscribers.setdefault(key, set()).add(client)
            pair = key[:2]
            self.watched[pair] = self.watched.get(pair, 0) + 1

    def unsubscribe(self, client: Client, keys: set[Key]) -> None:
        for key in keys & client.subs:
            client.subs.discard(key)
            subs = self.subscribers.get(key)
            if subs is not None:
                subs.discard(client)
                if not subs:
                    del self.subscribers[key]
            pair = (key[0], key[1])
            left = self.watched.get(pair, 0) - 1
            if left > 0:
                self.watched[pair] = left
            else:
                self.watched.pop(pair, None)

    # --- the engine listener -----------------------------------------------------------

    def on_chunk(self, news: ChunkNews) -> None:
        """A chunk's news: trades are made records only for products with trade subscribers."""
        watched = self.watched
        if not watched:
            return
        if len(news.trades):
            for (ex, product), part in news.trades.per_product().items():
                subs = self.subscribers.get((ex, product, "trades"))
                if subs:
                    for trade in part.records():
                        message = orjson.dumps(push_trade(trade))
                        for client in list(subs):
                            client.push(message, trade.recv_ns)
        for candle in news.candles:
            ex, product = candle.exchange, candle.product_id
            if (ex, product) not in watched:
                continue
            for g in GRANULARITIES:
                subs = self.subscribers.get((ex, product, f"candles:{g}"))
                if subs:
                    ref = CandleRef(ex, product, g, floor_time(candle.start, g))
                    for client in subs:
                        client.put(ref, ref)
        for ticker in news.tickers:
            if (ticker.exchange, ticker.product_id) in watched:
                self._ticker(ticker)

    def _ticker(self, ticker: Ticker) -> None:
        subs = self.subscribers.get((ticker.exchange, ticker.product_id, "ticker"))
        if subs:
            message = self.ticker_message(ticker)
            slot = (ticker.exchange, ticker.product_id, "ticker")
            for client in subs:
                client.put(slot, message)

    def on_book(self, book: OrderBook) -> None:
        """A `BookRegistry` listener (called on the event loop, like `on_chunk`): marks the
        book's slot of each subscriber; the send renders the book as it is then."""
        subs = self.subscribers.get((book.exchange, book.product_id, "book"))
        if subs:
            ref = BookRef(book.exchange, book.product_id)
            for client in subs:
                client.put(ref, ref)

    # --- messages ------------------------------------------------------------------------

    @staticmethod
    def ticker_message(ticker: Ticker) -> bytes:
        return orjson.dumps({"type": "ticker", **ticker_item(ticker)})

    @staticmethod
    def heartbeat_message(sequence: int) -> bytes:
        """`sequence` counts the heartbeats of one connection (1, 2, ...)."""
        return orjson.dumps(
            {"type": "heartbeat", "time": iso_ns(time.time_ns()), "sequence": sequence}
        )


def observe_push(transport: str, count: int, oldest_recv_ns: int) -> None:
    """Metrics for one send batch: messages, and receive -> handed to the socket."""
    metrics.PUSH_MESSAGES.labels(transport).inc(count)
    if oldest_recv_ns:
        metrics.PUSH_LATENCY.observe((time.time_ns() - oldest_recv_ns) / 1e9)
