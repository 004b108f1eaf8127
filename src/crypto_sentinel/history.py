"""`sentinel history`: fill the lake's past from the venue's REST trade history.

Pages go backwards from the newest trade (Coinbase `GET /products/{id}/trades?after=<id>`,
Binance `GET /api/v3/aggTrades?fromId=`; 1,000 a page, within the venue's public rate, a few
pages in flight per product) and take the normal path: each page is a
`rest_trades` frame on the in-process bus, the same engine and writer as streamed trades
commit it (bronze first, dedupe, candles, exactly-once batches under their own app id), so
`sentinel up` may run at the same time.

Resumable: the trade ids the lake holds (islands of contiguous ids) are skipped by moving the
cursor below them, so a rerun after a kill asks only for what is missing, and dedupe keeps
anything asked twice from being stored twice. A page REST refuses (after retries with
backoff on 429, 5xx and network errors), or answers with a body that is not a page of
trades, ends that product's walk with a gap record (kind
`trade_id`, outcome `unfilled`, its `conn_id` starting `history-`) naming the ids it would
have held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from crypto_sentinel import history_forward as forward
from crypto_sentinel.bus.memory import MemoryBus
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.gapflags import NOT_CLOSED, TRADE_GAP
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot
from crypto_sentinel.lake.lock import lock_for
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import LakeWriter
from crypto_sentinel.model import RawFrame, iso_time
from crypto_sentinel.sources.ratelimit import TokenBucket
from crypto_sentinel.sources.venues import venue_of

log = logging.getLogger(__name__)

PAGE_SIZE = 1000  # the largest page of both venues
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
BATCH_SECONDS = 0.5  # engine micro-batches: ~5 pages each at the public rate
WINDOW = 4  # requests in flight per product: the rate limit, not round trips, sets the pace
Request = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class RestHistory:
    """How a venue serves its past trades by id: a request that tells whether a product
    exists, the request for the page of ids just below a cursor (None: the newest page), and
    a page item's trade id and time."""

    check: Callable[[str], Request]
    known: Callable[[httpx.Response], bool]
    below: Callable[[str, int | None, int], Request | None]  # None: nothing is below
    trade_id: Callable[[dict[str, Any]], int]
    time: Callable[[dict[str, Any]], datetime]
    rate: float  # requests/s within the venue's public limit
    #: Venues that page forward by a time cursor instead (`history_forward`): the request
    #: of the page after a nanosecond cursor.
    after: Callable[[str, int, int], Request] | None = None


def _coinbase_below(product: str, cursor: int | None, page: int) -> Request:
    params: dict[str, Any] = {"limit": page}
    if cursor is not None:
        params["after"] = cursor  # Coinbase: `after` pages to older trades (ids below it)
    return f"/products/{product}/trades", params


def _binance_below(product: str, cursor: int | None, page: int) -> Request | None:
    symbol = _binance_symbol(product)
    if cursor is None:
        return "/api/v3/aggTrades", {"symbol": symbol, "limit": page}
    lo = max(0, cursor - page)  # aggregate ids are contiguous: the page below by `fromId`
    if lo >= cursor:
        return None
    return "/api/v3/aggTrades", {"symbol": symbol, "fromId": lo, "limit": cursor - lo}


def _binance_check(product: str) -> Request:
    return "/api/v3/exchangeInfo", {"symbol": _binance_symbol(product)}


def _binance_symbol(product: str) -> str:
    from crypto_sentinel.sources.venues import venue_symbol

    return venue_symbol("binance", product) or product


VENUES = {
    "coinbase": RestHistory(
        check=lambda product: (f"/products/{product}", {}),
        known=lambda response: response.status_code == 200,
        below=_coinbase_below,
        trade_id=lambda item: int(item["trade_id"]),
        time=lambda item: _time(item["time"]),
        rate=10.0,  # public REST: 10 requests/s (PROTOCOLS.md section 2)
    ),
    "binance": RestHistory(
        check=_binance_check,
        known=lambda response: response.status_code == 200 and bool(response.json().get("symbols")),
        below=_binance_below,
        trade_id=lambda item: int(item["a"]),
        time=lambda item: datetime.fromtimestamp(int(item["T"]) / 1000, UTC),
        rate=5.0,  # aggTrades weighs 2 of 6,000 a minute; the backfill's pace (sources/binance)
    ),
}


def _kraken_after(product: str, cursor: int, page: int) -> Request:
    from crypto_sentinel.sources.kraken.rest import TRADES_PATH, fallback_pair

    return TRADES_PATH, {"pair": fallback_pair(product), "since": cursor, "count": page}


def _kraken_known(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return response.status_code == 200 and not body.get("error") and bool(body.get("result"))


def _unused(*_args: Any) -> Any:
    raise AssertionError("a forward venue pages by time")


VENUES["kraken"] = RestHistory(
    check=lambda product: ("/0/public/Trades", {**_kraken_after(product, 0, 1)[1]}),
    known=_kraken_known,
    below=_unused,
    trade_id=_unused,
    time=_unused,
    rate=1.0,  # public REST: about one call a second (PROTOCOLS.md; `kraken_rest_rate`)
    after=_kraken_after,
)
SUPPORTED = tuple(VENUES)


class HistoryError(ValueError):
    """A history run that cannot start (unknown product, unsupported exchange); one line."""


@dataclass
class ProductRun:
    """What the walk of one product did (the progress bar and the summary show it)."""

    product_id: str
    pages: int = 0
    trades: int = 0  # in [since, until), sent down the normal path
    skipped_ids: int = 0  # held by the lake already: not asked for
    newest: datetime | None = None
    oldest: datetime | None = None  # the oldest trade time seen so far
    outcome: str = "running"  # done | refused
    end: datetime | None = None  # where a forward walk stops (until, or when it started)
    last_id: int | None = None  # a forward walk's newest trade id sent

    def covered(self, since: datetime) -> float:
        """Seconds of [since, newest] walked so far (progress)."""
        if self.newest is None or self.oldest is None:
            return 0.0
        return (self.newest - max(self.oldest, since)).total_seconds()


@dataclass
class Summary:
    exchange: str
    products: list[ProductRun] = field(default_factory=list)
    seconds: float = 0.0
    requests: int = 0
    duplicates: int = 0  # trades the engine found stored already

    @property
    def trades(self) -> int:
        return sum(p.trades for p in self.products)

    def render(self) -> str:
        lines = []
        for p in self.products:
            span = f" {iso_time(p.oldest)} .. {iso_time(p.newest)}" if p.oldest and p.newest else ""
            lines.append(
                f"{self.exchange} {p.product_id}: {p.outcome}, {p.trades} trades in"
                f" {p.pages} pages,{span} ({p.skipped_ids} ids already stored, skipped)"
            )
        rate = self.trades / self.seconds if self.seconds else 0.0
        lines.append(
            f"{self.trades} trades, {self.requests} requests in {self.seconds:.1f} s"
            f" ({rate:,.0f} trades/s); {self.duplicates} already stored"
        )
        return "\n".join(lines)


def _skip(cursor: int, islands: list[tuple[int, int]]) -> tuple[int, int]:
    """The cursor moved below the ids just under it that the lake holds (islands of
    contiguous stored ids), and how many ids that skips."""
    for lo, hi in islands:
        if lo < cursor <= hi + 1:
            return lo, cursor - lo
    return cursor, 0


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class History:
    """One run of `sentinel history` over some products of one exchange."""

    def __init__(
        self,
        lake: LakeRoot,
        exchange: str,
        rest_url: str,
        products: list[str],
        since: datetime,
        until: datetime | None = None,
        rate: float | None = None,
        page_size: int = PAGE_SIZE,
        on_page: Callable[[ProductRun], None] | None = None,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
        window: int = WINDOW,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        venue = VENUES.get(venue_of(exchange) or "")
        if venue is None:
            raise HistoryError(
                f"no REST trade history for exchange {exchange!r} (supported: coinbase,"
                " binance, kraken and their simulated twins)"
            )
        self.venue = venue
        if until is not None and until <= since:
            raise HistoryError("--since must be before --until")
        if not products:
            raise HistoryError("at least one --product is needed")
        self.lake = lake
        self.exchange = exchange
        self.rest_url = rest_url.rstrip("/")
        self.products = list(dict.fromkeys(products))
        self.since = since
        self.until = until
        self.page_size = page_size
        rate = venue.rate if rate is None else rate
        self.bucket = TokenBucket(rate, max(1, int(rate)))
        self.on_page = on_page or (lambda run: None)
        self.retry_delays = retry_delays
        self.window = max(1, window)
        self.transport = transport  # tests: a venue answered in process
        self.app_id = f"history-{exchange}"
        self.summary = Summary(exchange, [ProductRun(p) for p in self.products])
        self._seq = 0
        self._conn = f"history-{time.time_ns()}"

    async def run(self) -> Summary:
        """Check the products, then walk them all (sharing the rate limit) and commit."""
        started = time.monotonic()
        async with httpx.AsyncClient(
            base_url=self.rest_url, timeout=30.0, transport=self.transport
        ) as client:
            for product in self.products:  # before anything is written: one line, exit 2
                response = await self._get(client, *self.venue.check(product))
                if response is None:
                    raise HistoryError(f"no answer from {self.rest_url} (is the URL right?)")
                if not self.venue.known(response):
                    raise HistoryError(f"unknown product {product!r} on {self.rest_url}")
            lock = lock_for(self.lake, self.app_id).acquire()
            try:
                writer = LakeWriter(self.lake, self.app_id)
                engine = Engine(writer, BATCH_SECONDS, 50)
                engine.load_state(LakeReader(self.lake))
                bus = MemoryBus(16)
                stop = asyncio.Event()
                committing = asyncio.create_task(engine.run(bus, stop))
                try:
                    islands = engine.trade_id_ranges(self.exchange)
                    walk = self._walk if self.venue.after is None else self._walk_forward
                    walks = [
                        walk(client, run, islands.get(run.product_id, []), bus.publish)
                        for run in self.summary.products
                    ]
                    await asyncio.gather(*walks)
                    while bus.depth():  # taken frames are processed at once: ids all known
                        await asyncio.sleep(0.02)
                    for record in self._filled_since(engine):
                        await bus.publish(record)
                finally:
                    stop.set()
                    await committing
                    engine.close()
                self.summary.duplicates = engine.stats.duplicates
            finally:
                lock.release()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    async def _walk(
        self,
        client: httpx.AsyncClient,
        run: ProductRun,
        islands: list[tuple[int, int]],
        publish: Callable[[RawFrame], Any],
    ) -> None:
        """Page one product backwards from its newest trade until `since`.

        Trade ids being contiguous, the cursors of the next pages are known before they
        arrive (each `page` below the last): up to `window` requests per product are in flight
        (they share the rate limit). A guess can only overlap the page above it (where the
        venue skipped ids), never leave a hole: a page holds the ids just below its cursor.
        """
        product, venue, page = run.product_id, self.venue, self.page_size
        cursor: int | None = None
        while True:
            plan: list[tuple[int | None, int]] = [(cursor, 0)]  # (cursor, ids skipped to it)
            while cursor is not None and len(plan) < self.window:
                last = plan[-1][0]
                assert last is not None
                guess, skipped = _skip(last - page, islands)
                if guess <= 0:
                    break
                plan.append((guess, skipped))
            requests = []
            for c, _ in plan:
                request = venue.below(product, c, page)
                if request is None:  # the first id: the start of the venue's history
                    break
                requests.append(request)
            if not requests:
                break
            answers = await asyncio.gather(*(self._get(client, *r) for r in requests))
            finished = len(requests) < len(plan)
            lowest = None
            for (c, skipped), response in zip(plan, answers, strict=False):
                if response is None or response.status_code != 200:
                    await publish(self._refused(product, c))
                    run.outcome = "refused"
                    return
                run.skipped_ids += skipped
                try:
                    lowest, end = await self._page(run, response.text, publish)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    log.error("history: %s: not a page of trades (%s)", product, exc)
                    await publish(self._refused(product, c))
                    run.outcome = "refused"
                    return
                if end:
                    finished = True
                    break
            if finished or lowest is None:
                break
            cursor, skipped = _skip(lowest, islands)
            run.skipped_ids += skipped
        run.outcome = "done"
        self.on_page(run)

    async def _walk_forward(
        self,
        client: httpx.AsyncClient,
        run: ProductRun,
        islands: list[tuple[int, int]],
        publish: Callable[[RawFrame], Any],
    ) -> None:
        """Page one product forward by the venue's time cursor from `since` to `until` or
        the present (`history_forward`)."""
        after = self.venue.after
        assert after is not None
        product = run.product_id
        cursor = forward.as_ns(self.since) - 1
        run.end = self.until or datetime.now(UTC)
        while True:
            response = await self._get(client, *after(product, cursor, self.page_size))
            try:
                if response is None or response.status_code != 200:
                    raise ValueError("refused")
                page = forward.kraken_page(response.text)
            except ValueError as exc:
                log.error("history: %s: no usable page after %d (%s)", product, cursor, exc)
                await publish(self._refused_after(product, run))
                run.outcome = "refused"
                return
            run.pages += 1
            keep = [
                r for r in page.rows
                if r.time >= self.since and (self.until is None or r.time < self.until)
            ]  # fmt: skip
            if keep:
                run.trades += len(keep)
                run.oldest = run.oldest or keep[0].time
                run.newest = keep[-1].time
                run.last_id = keep[-1].trade_id
                await publish(self._frame(forward.rest_trades_frame(product, page, keep)))
            self.on_page(run)
            beyond = self.until is not None and any(r.time >= self.until for r in page.rows)
            if beyond or len(page.rows) < self.page_size or page.last - 1 <= cursor:
                break
            cursor = page.last - 1  # the last trade again: others may share its nanosecond
            skip = forward.jump(
                page.rows, islands,
                lambda i: forward.stored_time(self.lake, self.exchange, product, i),
            )  # fmt: skip
            if skip is not None and skip[0] > cursor:
                cursor, skipped = skip
                run.skipped_ids += skipped
        run.outcome = "done"
        self.on_page(run)

    def _refused_after(self, product: str, run: ProductRun) -> RawFrame:
        """The gap record of a forward page REST would not give: the ids after the last one
        sent are missing, how many is unknown (the walk pages by time)."""
        first = None if run.last_id is None else run.last_id + 1
        record = {
            "type": "gap",
            "product_id": product,
            "kind": "trade_id",
            "detected_at": iso_time(datetime.now(UTC)),
            "first_missing_id": first,
            "last_missing_id": None,
            "missing": 0,
            "backfilled": 0,
            "outcome": "unfilled",
        }
        return self._frame(orjson.dumps(record).decode())

    async def _page(
        self, run: ProductRun, body: str, publish: Callable[[RawFrame], Any]
    ) -> tuple[int | None, bool]:
        """Send one page's trades in [since, until) down the normal path: (its lowest trade
        id, whether the walk ends here: an empty page or one reaching below `since`)."""
        venue = self.venue
        items = orjson.loads(body)
        run.pages += 1
        if not items:  # the start of the venue's history
            return None, True
        # the ends bound the page (ids rise with time); each trade's time is read only on a
        # page that crosses `since` or `until` (a page inside the range goes as received)
        ends = sorted((venue.time(items[0]), venue.time(items[-1])))
        if ends[0] >= self.since and (self.until is None or ends[1] < self.until):
            keep = items
        else:
            keep = [
                item
                for item in items
                if (t := venue.time(item)) >= self.since and (self.until is None or t < self.until)
            ]
            times = [venue.time(item) for item in items]
            ends = [min(times), max(times)]
        if keep:
            run.trades += len(keep)
            text = body if len(keep) == len(items) else orjson.dumps(keep).decode()
            product = run.product_id
            await publish(
                self._frame(f'{{"type":"rest_trades","product_id":"{product}","trades":{text}}}')
            )
        run.newest = run.newest or min(ends[1], self.until or ends[1])
        run.oldest = ends[0] if run.oldest is None else min(run.oldest, ends[0])
        self.on_page(run)
        return min(venue.trade_id(item) for item in items), ends[0] < self.since

    async def _get(
        self, client: httpx.AsyncClient, path: str, params: dict[str, Any]
    ) -> httpx.Response | None:
        """One rate-limited GET, retried with backoff on 429, 5xx and network errors; the
        last response (a refusal) or None when the venue never answered."""
        response = None
        for delay in (*self.retry_delays, None):
            await self.bucket.take()
            self.summary.requests += 1
            try:
                response = await client.get(path, params=params)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                code = response.status_code
                if code < 500 and code != 429:
                    return response
                problem = f"HTTP {code}"
            if delay is None:
                log.error("history: %s %s refused: %s", path, params, problem)
                return response
            log.warning("history: %s failed (%s); retrying in %.1f s", path, problem, delay)
            await asyncio.sleep(delay)
        return response

    def _filled_since(self, engine: Engine) -> list[RawFrame]:
        """A `filled` gap record for each open gap of a walked product whose ids the lake
        now holds (a rerun fetched what REST refused before): the refusal stays on record,
        and readers (candle flags, verify) see the range closed by this later record."""
        done = [p.product_id for p in self.summary.products if p.outcome == "done"]
        if not done:
            return []
        gaps = LakeReader(self.lake).query(
            T.GAPS,
            "SELECT product_id, first_missing_id AS lo, last_missing_id AS hi FROM t AS g"
            " WHERE g.exchange = ? AND list_contains(?, g.product_id)"
            f" AND g.outcome <> 'filled' AND {TRADE_GAP} AND {NOT_CLOSED}",
            [self.exchange, done],
        )
        islands = engine.trade_id_ranges(self.exchange)
        records = []
        for gap in gaps:
            lo, hi = gap["lo"], gap["hi"]
            held = islands.get(gap["product_id"], [])
            if lo is not None and hi is None:  # a forward walk's: filled as far as now held
                hi = next((b for a, b in held if a <= lo <= b), None)
            if lo is None or hi is None or not any(a <= lo and hi <= b for a, b in held):
                continue
            record = {
                "type": "gap",
                "product_id": gap["product_id"],
                "kind": "trade_id",
                "detected_at": iso_time(datetime.now(UTC)),
                "first_missing_id": lo,
                "last_missing_id": hi,
                "missing": hi - lo + 1,
                "backfilled": hi - lo + 1,
                "outcome": "filled",
            }
            records.append(self._frame(orjson.dumps(record).decode()))
        return records

    def _refused(self, product: str, cursor: int | None) -> RawFrame:
        """The gap record of a page REST would not give: the ids below `cursor` it held."""
        first = None if cursor is None else max(1, cursor - self.page_size)
        last = None if cursor is None else cursor - 1
        record = {
            "type": "gap",
            "product_id": product,
            "kind": "trade_id",  # a range of trade ids REST did not give (GAP_KINDS)
            "detected_at": iso_time(datetime.now(UTC)),
            "first_missing_id": first,
            "last_missing_id": last,
            "missing": 0 if first is None or last is None else last - first + 1,
            "backfilled": 0,
            "outcome": "unfilled",
        }
        return self._frame(orjson.dumps(record).decode())

    def _frame(self, text: str) -> RawFrame:
        self._seq += 1
        return RawFrame(self.exchange, self._conn, self._seq, time.time_ns(), text)
