"""What every route needs: hot state, the lake reader, the push hub, the live order books, and
which products exist.

Hot-state reads run on the event loop (the engine writes there too, so no locks); lake reads
go to a worker thread so a slow DuckDB query never stalls the stream or other requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from crypto_sentinel.api.candles import CandleService
from crypto_sentinel.api.state import HotState, MinuteBook
from crypto_sentinel.api.stream import Hub
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.gapflags import GapFlags, Span
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.sources.venues import venue_of

T = TypeVar("T")
log = logging.getLogger("crypto_sentinel.api")

#: How long the lake's product list is trusted before it is read again (at most once per TTL,
#: however many unknown products are asked for).
CATALOG_TTL = 60.0
#: How long the lake's answer to "which trade is stored next to this window" is reused (the
#: lake changes there only when a late or backfilled trade lands in an older minute).
NEIGHBOR_TTL = 2.0


def not_found(message: str) -> NoReturn:
    raise HTTPException(404, message)


def bad_parameter(name: str, message: str) -> NoReturn:
    raise RequestValidationError([{"loc": ("query", name), "msg": message, "type": "value_error"}])


@dataclass
class ApiContext:
    state: HotState
    reader: LakeReader
    hub: Hub
    default_exchange: Callable[[], str]
    products: list[str]
    status: Callable[[], dict[str, Any]]
    ready: Callable[[], bool]
    books: BookRegistry = field(default_factory=BookRegistry)  # filled by the engine
    candles: CandleService = field(init=False)
    gap_flags: GapFlags = field(init=False)
    _lake_pairs: set[tuple[str, str]] = field(default_factory=set, init=False)
    _lake_checked: float = field(default=float("-inf"), init=False)
    _neighbors: dict[tuple[Any, ...], tuple[float, tuple[int | None, int | None]]] = field(
        default_factory=dict, init=False
    )
    _refreshing: dict[Any, asyncio.Future[Any]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.candles = CandleService(self.state, self.reader)
        self.gap_flags = GapFlags(self.reader)

    async def exchanges(self) -> list[str]:
        """Exchanges the API can answer for: each running source, and any with data in
        memory or in the lake."""
        names = dict.fromkeys([self.default_exchange()])
        for source in self.status().get("sources") or []:
            names.setdefault(source["exchange"])
        pairs = self.state.pairs() | await self.lake_pairs() | set(self.books.products())
        for exchange, _ in sorted(pairs):
            names.setdefault(exchange)
        return list(names)

    async def known_exchange(self, given: str | None) -> str | None:
        """The exchange to answer for (the live one if none is asked), None if unknown."""
        if given is None or given == self.default_exchange():
            return self.default_exchange()
        if venue_of(given) is not None:  # a name the pipeline stores (data may come later)
            return given
        return given if given in await self.exchanges() else None

    async def exchange(self, given: str | None, product_id: str | None = None) -> str:
        """`known_exchange`, or a 404 naming the exchanges there are.

        Without `given`, a product is answered from the first exchange with data for it
        (`exchange_with`), so a process whose data is stored under another name than its
        configured default (a simulated twin, a `serve` replica) still answers with it."""
        if given is None and product_id is not None:
            return await self.exchange_with(product_id)
        found = await self.known_exchange(given)
        if found is None:
            known = ", ".join(await self.exchanges())
            not_found(f"unknown exchange {given!r}; known: {known}")
        return found

    async def exchange_with(self, product_id: str) -> str:
        """The first exchange (the live ones first) that has data (trades or a live book) for
        the product; the default one when none has yet."""
        pairs = self.state.pairs() | await self.lake_pairs() | set(self.books.products())
        for exchange in await self.exchanges():
            if (exchange, product_id) in pairs:
                return exchange
        return self.default_exchange()

    async def exchanges_with_data(self, product_id: str | None = None) -> list[str]:
        """Exchanges memory or the lake has trades of (of the product, if given)."""
        pairs = self.state.pairs() | await self.lake_pairs()
        return [
            exchange
            for exchange in await self.exchanges()
            if any(ex == exchange and product_id in (None, p) for ex, p in pairs)
        ]

    async def products_by_exchange(self) -> list[tuple[str, list[str]]]:
        """What a route asked without `exchange` lists: each exchange with its products,
        those with data and, for a running source, its configured ones (never a fixed
        default that has neither)."""
        running = {source["exchange"] for source in self.status().get("sources") or []}
        out = []
        for exchange in await self.exchanges():
            ids = await self.product_ids(exchange)
            if exchange not in running:
                pairs = self.state.pairs() | await self.lake_pairs()
                ids = [p for p in ids if (exchange, p) in pairs]
            if ids:
                out.append((exchange, ids))
        return out

    async def gap_spans(self, exchange: str, product_id: str) -> list[Span]:
        """Unfilled-gap spans of a product, shared by REST and pushed candles. Once loaded,
        a stale set is re-read by one task while requests go on with the set before (as
        old as one re-read), instead of every request waiting for it."""
        flags = self.gap_flags
        if not flags.fresh():
            refresh = self._refreshing.get("gaps")
            if refresh is None:
                refresh = self._refresh("gaps", self.in_thread(flags.load))
            if not flags.loaded:
                await asyncio.shield(refresh)
        return flags.spans(exchange, product_id)

    def _refresh(self, key: Any, work: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run `work` once for `key` (later askers of the same key share it)."""
        task = asyncio.ensure_future(work)
        self._refreshing[key] = task

        def done(finished: asyncio.Future[Any]) -> None:
            self._refreshing.pop(key, None)
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("lake read for the API failed: %s", finished.exception())

        task.add_done_callback(done)
        return task

    async def trade_neighbors(
        self, exchange: str, product_id: str, lo: datetime, hi: datetime
    ) -> tuple[int | None, int | None]:
        """The last stored trade id before `lo` and the first at or after `hi` (None: nothing
        stored on that side): from memory, the lake (in a thread) only for what it lacks."""
        book = self.candles.book(exchange, product_id)
        known_before, before = CandleService.memory_before(book, lo)
        known_after, after = CandleService.memory_after(book, hi)
        if known_before and known_after:
            return before, after
        # Memory holds nothing in [since, lo): the lake's answer before `since` serves every
        # window from there on (live pushes of a new product ask it often), so it is cached.
        if not known_before and book is not None and book.since is not None:
            lo = min(lo, book.since)
        key = (exchange, product_id, None if known_before else lo, None if known_after else hi)
        hit = self._neighbors.get(key)
        if hit is None or time.monotonic() - hit[0] > NEIGHBOR_TTL:
            # one lake read per window at a time; others go on with the answer before
            refresh = self._refreshing.get(key)
            if refresh is None:
                refresh = self._refresh(key, self._read_neighbors(key, book))
            if hit is None:
                hit = await asyncio.shield(refresh)
        assert hit is not None
        lake_before, lake_after = hit[1]
        return (
            before if known_before else lake_before,
            after if known_after else lake_after,
        )

    async def _read_neighbors(
        self, key: tuple[Any, ...], book: MinuteBook | None
    ) -> tuple[float, tuple[int | None, int | None]]:
        started = time.monotonic()
        exchange, product_id, lo, hi = key
        found = await self.in_thread(
            self.candles.lake_neighbors, exchange, product_id, lo, hi, book
        )
        if len(self._neighbors) > 4096:
            self._neighbors.clear()
        hit = self._neighbors[key] = (started, found)
        return hit

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in_threadpool(fn, *args)

    async def lake_pairs(self) -> set[tuple[str, str]]:
        """(exchange, product) pairs with trades in the lake, re-read at most once per TTL.

        After a warm-up hot state already knows them (and learns new ones from the stream).
        """
        if self.state.warm:
            return self.state.lake_pairs
        now = time.monotonic()
        if now - self._lake_checked > CATALOG_TTL:
            self._lake_checked = now
            self._lake_pairs = set(await self.in_thread(self.reader.products))
        return self._lake_pairs

    async def is_known(self, product_id: str) -> bool:
        if product_id in self.products:
            return True
        if any(p == product_id for _, p in self.state.pairs()):
            return True
        if any(p == product_id for _, p in self.books.products()):
            return True
        return any(p == product_id for _, p in await self.lake_pairs())

    async def check_product(self, product_id: str) -> None:
        if not await self.is_known(product_id):
            not_found(f"unknown product {product_id!r}")

    async def product_ids(self, exchange: str) -> list[str]:
        """Configured products first (those of the default exchange), then any other product
        memory or the lake has for the exchange."""
        seen = dict.fromkeys(self.products if exchange == self.default_exchange() else [])
        pairs = self.state.pairs() | await self.lake_pairs()
        for ex, product in sorted(pairs):
            if ex == exchange:
                seen.setdefault(product)
        return list(seen)
