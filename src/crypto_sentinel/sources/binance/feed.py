"""Binance Spot public WebSocket feed: combined `aggTrade` and 24 h `ticker` streams.

The streams are named in the URL (`/stream?streams=btcusdt@aggTrade/btcusdt@ticker`); the
server pings and the client library answers. Binance ends every connection after 24 h, so
the source reconnects a little before (the disconnect gap and its backfill cover the switch).
Missed aggregate trades come back from `GET /api/v3/aggTrades?fromId=`. The same code serves
Binance.US by URL.

Symbols: `GET /api/v3/exchangeInfo` (read once, at the first connect that reaches it) names
each symbol's base and quote asset, so `BTC-USDT` is subscribed and asked for as the symbol
Binance lists for BTC and USDT, a product Binance does not list is reported, and a symbol
whose split the codec would read differently is reported too. Decoding stays with the codec's
pure rule (longest known quote asset at the end, `binance.codec.product_of`): rows must come
out the same when bronze is decoded again offline (replay, rebuild, Spark), where no
exchangeInfo is at hand. Unreachable exchangeInfo: one log line, and the same rule names the
symbols (`BTC-USDT` -> `BTCUSDT`).

Books (`use_books`): `<symbol>@depth@100ms` joins the URL; after a product's first depth event
on a connection, and whenever its `U` is not the previous `u` + 1, the feed fetches
`GET /api/v3/depth` and publishes it in the connection as our own `depthSnapshot` frame (the
engine applies Binance's documented sync rule to the frame sequence).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import msgspec

from crypto_sentinel.sources.backfill import RestTrades
from crypto_sentinel.sources.binance.codec import product_of, symbol_of
from crypto_sentinel.sources.bookfeed import BookSubscriber
from crypto_sentinel.sources.codec import FrameError
from crypto_sentinel.sources.ratelimit import TokenBucket

log = logging.getLogger(__name__)

#: aggTrades answers at most 1,000 per request and weighs 2 of the 6,000 weight a minute an
#: IP may spend (developers.binance.com, spot REST limits); 5 requests/s stays far below.
REST_PAGE_SIZE = 1000
REST_RATE = 5.0
REST_BURST = 10
LIFETIME_SECONDS = 23.5 * 3600
#: A depth snapshot of 1,000 levels weighs 50 of the 6,000 a minute: at most 2 a second
#: (tokens taken without waiting: a snapshot not yet allowed is fetched at a later frame).
DEPTH_RATE = 2.0
DEPTH_BURST = 5
DEPTH_MAX_LIMIT = 5000
_DEPTH = re.compile(r'"s":"([A-Z0-9]+)","U":(\d+),"u":(\d+)')
KLINES_PER_REQUEST = 1000


class _Symbol(msgspec.Struct):
    symbol: str
    baseAsset: str  # Binance's field names
    quoteAsset: str


class _ExchangeInfo(msgspec.Struct):
    symbols: list[_Symbol]


_exchange_info = msgspec.json.Decoder(_ExchangeInfo)


class BinanceSymbols:
    """Product -> Binance symbol, from exchangeInfo once loaded, else the codec's rule."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.transport = transport  # tests answer REST in-process
        self.by_product: dict[str, str] = {}
        self.tried = False  # one attempt: a venue without it must not slow every reconnect

    def symbol(self, product: str) -> str:
        return self.by_product.get(product) or symbol_of(product)

    async def load(self, rest_url: str, products: list[str], timeout: float = 3.0) -> None:
        """Read exchangeInfo (once: a loaded mapping is kept); on failure log one line."""
        if self.tried:
            return
        self.tried = True
        try:
            async with httpx.AsyncClient(
                base_url=rest_url, timeout=timeout, transport=self.transport
            ) as client:
                response = await client.get("/api/v3/exchangeInfo")
            response.raise_for_status()
            info = _exchange_info.decode(response.content)
        except (httpx.HTTPError, msgspec.DecodeError) as exc:
            log.warning("binance exchangeInfo unavailable (%s); symbols by the quote rule", exc)
            return
        listed = {f"{s.baseAsset}-{s.quoteAsset}": s.symbol for s in info.symbols}
        self.by_product = {p: listed[p] for p in products if p in listed}
        for product in products:
            symbol = self.by_product.get(product)
            if symbol is None:
                log.error("binance lists no symbol for %s (exchangeInfo): no trades", product)
                continue
            try:
                read = product_of(symbol)
            except FrameError as exc:
                read = f"nothing ({exc})"
            if read != product:
                log.error(
                    "binance symbol %s is %s per exchangeInfo, but stored frames read as %s",
                    symbol, product, read,
                )  # fmt: skip


class BinanceConnector(BookSubscriber):
    keepalive: tuple[float, str] | None = None  # the server pings; websockets answers
    lifetime: float | None = LIFETIME_SECONDS

    def __init__(self) -> None:
        self.symbols = BinanceSymbols()
        self.last_u: dict[str, int] = {}  # symbol -> `u` of its last depth event
        self.pending: dict[str, None] = {}  # symbols owed a REST snapshot, in order
        self.bucket = TokenBucket(DEPTH_RATE, DEPTH_BURST)
        self.rest: RestTrades | None = RestTrades(
            request=self._trades_request,
            ids=lambda body: [int(t["a"]) for t in body],
            page_size=REST_PAGE_SIZE,
            rate=REST_RATE,
            burst=REST_BURST,
            asks_forward=True,
        )

    def _trades_request(self, product: str, lo: int, hi: int) -> tuple[str, dict[str, Any]]:
        params = {"symbol": self.symbols.symbol(product), "fromId": lo, "limit": hi - lo + 1}
        return "/api/v3/aggTrades", params

    def streams(self, products: list[str]) -> list[str]:
        out = []
        for product in products:
            symbol = self.symbols.symbol(product).lower()
            out += [f"{symbol}@aggTrade", f"{symbol}@ticker"]
            if self.books is not None:
                out.append(f"{symbol}@depth@100ms")
        return out

    async def prepare(self, rest_url: str | None, products: list[str]) -> None:
        if rest_url:
            await self.symbols.load(rest_url, products)

    def url(self, base: str, products: list[str]) -> str:
        return f"{base.rstrip('/')}/stream?streams={'/'.join(self.streams(products))}"

    def subscribe(self, products: list[str]) -> list[str]:
        return []

    def check(self, text: str) -> list[str]:
        if self.books is None or "@depth@" not in text[:48]:
            return []
        m = _DEPTH.search(text)
        if m is None:
            return []
        symbol, first, final = m.group(1), int(m.group(2)), int(m.group(3))
        last = self.last_u.get(symbol)
        if last is not None and final <= last:
            return []  # an old or repeated event: the engine's rule drops it
        if last is None:
            self.pending[symbol] = None  # first event here: the book starts from REST
        elif first != last + 1:
            self.pending[symbol] = None
            log.info("binance %s: U %d after u %d", symbol, first, last)
            self.books.on_resync(self._product(symbol), "gap")
        self.last_u[symbol] = final
        return []

    def _product(self, symbol: str) -> str:
        for product, known in self.symbols.by_product.items():
            if known == symbol:
                return product
        try:
            return product_of(symbol)
        except FrameError:
            return symbol

    def new_connection(self) -> None:
        self.last_u.clear()
        self.pending.clear()

    def resync_book(self, product: str) -> list[str]:
        self.pending[self.symbols.symbol(product)] = None  # fetched at the next frame
        return []

    async def own_frames(self) -> list[str]:
        """REST snapshots owed, as `depthSnapshot` frames; one not allowed yet by the rate
        limit, or whose request fails (one log line), stays owed for a later frame."""
        options = self.books
        if not self.pending or options is None or not options.rest_url:
            return []
        frames = []
        for symbol in list(self.pending):
            if self.bucket.try_take() > 0:
                break
            limit = min(options.depth, DEPTH_MAX_LIMIT)
            try:
                async with httpx.AsyncClient(
                    base_url=options.rest_url, timeout=3.0, transport=self.symbols.transport
                ) as client:
                    response = await client.get(
                        "/api/v3/depth", params={"symbol": symbol, "limit": limit}
                    )
                response.raise_for_status()
                body = json.loads(response.text)
                data = {"e": "depthSnapshot", "s": symbol, "lastUpdateId": body["lastUpdateId"],
                        "bids": body["bids"], "asks": body["asks"]}  # fmt: skip
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.warning("binance depth snapshot of %s failed (%s); retried", symbol, exc)
                break
            del self.pending[symbol]
            stream = f"{symbol.lower()}@depthSnapshot"
            frames.append(json.dumps({"stream": stream, "data": data}, separators=(",", ":")))
        return frames


async def rest_candles(
    client: httpx.AsyncClient,
    take: Callable[[], Awaitable[None]],
    product: str,
    first: int,
    last: int,
) -> dict[int, list[Decimal]]:
    """1-minute klines in [first, last] (unix seconds) as [low, high, open, close, volume]."""
    out: dict[int, list[Decimal]] = {}
    start = first
    while start <= last:
        await take()
        response = await client.get(
            "/api/v3/klines",
            params={
                "symbol": symbol_of(product), "interval": "1m", "startTime": start * 1000,
                "endTime": last * 1000 + 59_999, "limit": KLINES_PER_REQUEST,
            },
        )  # fmt: skip
        response.raise_for_status()
        rows = json.loads(response.text)
        for row in rows:  # [open time ms, open, high, low, close, volume, ...]
            minute = int(row[0]) // 1000
            if first <= minute <= last:
                out[minute] = [Decimal(row[3]), Decimal(row[2]), Decimal(row[1]),
                               Decimal(row[4]), Decimal(row[5])]  # fmt: skip
        if len(rows) < KLINES_PER_REQUEST:
            break
        start = int(rows[-1][0]) // 1000 + 60
    return out
