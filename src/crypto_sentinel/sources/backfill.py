"""REST backfill: fetch the trades gaps skipped, coalesced into pages, and send them down
the normal path.

Each REST page goes on the bus as one raw frame of its own kind
(``{"type":"rest_trades","product_id":..,"trades":<the response body, byte for byte>}``), so
bronze keeps it, Kafka carries it, and the engine decodes and deduplicates its trades exactly
like streamed ones. When a gap is done, a ``gap`` frame with its outcome follows; the engine
writes it to ``bronze.gaps``. Every gap the tracker reports ends in such a record (only a gap
whose every id turned up late on the stream, i.e. reordering, is dropped), however long it
waited.

A venue that cannot ask by id (Kraken pages by time, Coinbase Advanced serves only recent
trades) gives a pager (`RestTrades.pages`) that fetches the pages a window needs; each page
counts only for the trades the venue's codec accepts from it.

Coalescing: the pending gaps of a product are one set of missing ids. A request asks for a
window of at most one page (``after=<hi + 1>&limit=<hi - lo + 1>``, Coinbase's cursor scheme)
and serves every missing id the window covers, whichever gap it belongs to; already stored
ids in the page are dropped by the engine's deduplication. Windows are taken from the oldest
missing id up, so a backlog spanning S ids costs at most ceil(S / page) requests (plus one
where the alternation below splits a page).

When a window is fetched: once it is full (the missing ids of the product reach a page's
span), or its oldest id has waited ``linger`` seconds, or the product's stream has gone
quiet (no newer trade id, not even in a heartbeat, for ``quiet`` seconds; heartbeats come
every second), or it holds a disconnect or start-up gap. A gap waits ``grace`` seconds first: a
reordered frame that turns up late is not missing.

Priority: products take turns, one request each; within a product whose backlog holds a
gap longer than a page (an outage, a long start-up hole), requests alternate between that
oldest work and the gaps after it, so recent gaps are not starved by an old long one.

The backlog (gaps and trades pending, age of the oldest) is kept on the source status
(``/health``) and in gauges (``/metrics``).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from crypto_sentinel import metrics
from crypto_sentinel.model import RawFrame, iso_time, utc_from_ns
from crypto_sentinel.sources.base import Gap, GapTracker, Publish, SourceStatus, new_conn_id
from crypto_sentinel.sources.codec import FrameError
from crypto_sentinel.sources.ratelimit import TokenBucket
from crypto_sentinel.sources.venues import codec_for

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
POLL_SECONDS = 0.1  # how often the scheduler looks at waiting gaps when nothing is due
BACKLOG_REFRESH_SECONDS = 0.5


#: A rate-limited, retried GET of (path, params): the response body, or None when the venue
#: did not answer usably (the failure is logged; the ids it would have brought stay unfilled).
Get = Callable[[str, dict[str, Any]], Awaitable[str | None]]
#: Fetches the pages that cover the ids [lo, hi] of a product, one body at a time.
Pages = Callable[[Get, str, int, int], AsyncIterator[str]]


@dataclass(frozen=True)
class RestTrades:
    """How a venue serves trades by id over REST: the request for the ids [lo, hi] of a
    product (None: the venue has no such request, so its gaps are recorded unfilled), the
    trade ids in a response body, and the page size and rate limit it allows."""

    request: Callable[[str, int, int], tuple[str, dict[str, Any]] | None]
    ids: Callable[[Any], list[int]]  # the parsed JSON body -> its trade ids
    page_size: int
    rate: float
    burst: int
    #: `request(product, n + 1, n + page)` returns the trades after n (ids ascending), so a
    #: product that stays quiet after a reconnect can be asked what it missed (`probe_after`).
    asks_forward: bool = False
    #: For a venue whose REST cannot serve an id range in one request by id (Kraken pages by
    #: time, Coinbase Advanced serves only its most recent trades): it finds the pages
    #: itself, and every page it yields goes on the bus and counts like a `request` page.
    pages: Pages | None = None


#: For a venue whose REST cannot serve trades by id: its gaps are still recorded, unfilled
#: unless the missing trades turn up on the stream (a resubscribe snapshot).
NO_REST = RestTrades(
    request=lambda product, lo, hi: None, ids=lambda body: [], page_size=1000, rate=1, burst=1
)


@dataclass(frozen=True)
class Window:
    """One request's worth of trade ids of one product: [lo, hi]."""

    product: str
    lo: int
    hi: int


def _ranges_minus(first: int, last: int, taken: list[tuple[int, int]]) -> Iterator[list[int]]:
    """[first, last] without the sorted, disjoint ranges `taken`, as [lo, hi] pieces."""
    lo = first
    for a, b in taken:
        if b < lo:
            continue
        if a > last:
            break
        if a > lo:
            yield [lo, a - 1]
        lo = max(lo, b + 1)
        if lo > last:
            return
    if lo <= last:
        yield [lo, last]


class Backfiller:
    def __init__(
        self,
        rest_url: str,
        status: SourceStatus,
        tracker: GapTracker,
        bucket: TokenBucket,
        rest: RestTrades,
        page_size: int | None = None,
        grace: float = 1.0,
        linger: float = 5.0,
        quiet: float = 1.5,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        page_size = rest.page_size if page_size is None else page_size
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.rest_url = rest_url.rstrip("/")
        self.status = status
        self.tracker = tracker
        self.bucket = bucket
        self.page_size = page_size
        self.rest = rest
        self.grace = grace
        self.linger = max(linger, grace)
        self.quiet = quiet  # no newer trade id for this long: the product's stream is quiet
        self.timeout = timeout
        self.transport = transport  # tests answer REST in-process
        self.pending: dict[str, list[Gap]] = {}  # product -> its unfinished gaps, by first id
        self.conn_id = f"rest-{new_conn_id()}"
        self._seq = 0
        self._turns: list[str] = []  # products in the order they get the next request
        self._recent_next: dict[str, bool] = {}  # product -> serve the gaps after a long one
        self._probes: dict[str, tuple[int, int]] = {}  # product -> (last id, due at ns)
        tracker.on_gap = self.add

    # --- the backlog ---------------------------------------------------------------------

    def add(self, gap: Gap) -> None:
        """A new gap (called by the tracker on the stream's path: no I/O, no waiting)."""
        gaps = self.pending.setdefault(gap.product_id, [])
        if not gaps or gaps[-1].first <= gap.first:
            gaps.append(gap)
        else:
            bisect.insort(gaps, gap, key=lambda g: g.first)
        if gap.product_id not in self._turns:
            self._turns.append(gap.product_id)

    def empty(self) -> bool:
        """No gap is waiting or being fetched."""
        return not any(self.pending.values())

    @property
    def queue(self) -> Backfiller:
        """The backlog as the former one-gap-at-a-time queue was read (`queue.empty()`)."""
        return self

    def _todo(self, gap: Gap) -> Iterator[list[int]]:
        """Ids of `gap` no request has covered yet, without those that arrived late."""
        if not gap.arrived and gap.asked.max is None:  # the common case, in O(1)
            if gap.first <= gap.last:
                yield [gap.first, gap.last]
            return
        late = sorted(i for i in gap.arrived if gap.first <= i <= gap.last)
        for lo, hi in _ranges_minus(gap.first, gap.last, gap.asked.ranges):
            yield from _ranges_minus(lo, hi, [(i, i) for i in late])

    def _has_todo(self, gap: Gap) -> bool:
        return next(self._todo(gap), None) is not None

    def backlog(self) -> tuple[int, int, int]:
        """(gaps pending, trades pending, when the oldest id not yet fetched went missing
        in ns; 0 if none)."""
        gaps = trades = 0
        oldest = 0
        for product_gaps in self.pending.values():
            for gap in product_gaps:
                gaps += 1
                for lo, hi in self._todo(gap):
                    trades += hi - lo + 1
                    seen = gap.seen_ns(lo)
                    oldest = seen if not oldest else min(oldest, seen)
        return gaps, trades, oldest

    def show_backlog(self) -> None:
        """Refresh the backlog on the status (/health) and in the gauges (/metrics)."""
        gaps, trades, oldest = self.backlog()
        st = self.status
        st.backfill_pending_gaps, st.backfill_pending_trades = gaps, trades
        st.backfill_oldest_pending_ns = oldest
        age = (time.time_ns() - oldest) / 1e9 if oldest else 0.0
        exchange = st.exchange
        metrics.BACKFILL_PENDING_GAPS.labels(exchange).set(gaps)
        metrics.BACKFILL_PENDING_TRADES.labels(exchange).set(trades)
        metrics.BACKFILL_OLDEST_PENDING.labels(exchange).set(age)

    async def _watch_backlog(self) -> None:
        """Keep the backlog current while a slow request is in flight."""
        while True:
            self.show_backlog()
            await asyncio.sleep(BACKLOG_REFRESH_SECONDS)

    # --- scheduling ----------------------------------------------------------------------

    def _confirmed(
        self, gaps: list[Gap], start: int, now_ns: int
    ) -> Iterator[tuple[int, int, Gap]]:
        """Missing ids past their grace period of `gaps[start:]`, in id order, as (lo, hi,
        gap) pieces. Stops at the first id still in its grace period (ids are reported in
        order). Lazy: a window reads only the pieces it covers."""
        limit_ns = now_ns - int(self.grace * 1e9)
        for gap in itertools.islice(gaps, start, None):
            for lo, hi in self._todo(gap):
                for end, at in gap.pieces:
                    if end < lo:
                        continue
                    if at > limit_ns:
                        return
                    top = min(hi, end)
                    yield lo, top, gap
                    lo = top + 1
                    if lo > hi:
                        break

    def _window(self, product: str, now_ns: int) -> Window | None:
        """The next request for `product`, if one is due."""
        gaps = self.pending.get(product)
        if not gaps:
            return None
        recent = self._recent_next.get(product, False)
        long_gaps = [g for g in gaps if g.size > self.page_size and self._has_todo(g)]
        starts = [0]
        if long_gaps and recent:  # this turn: the gaps after the newest long one first
            after = bisect.bisect_right(gaps, long_gaps[-1].last, key=lambda g: g.first)
            starts.insert(0, after)
        for start in starts:
            pieces = self._confirmed(gaps, start, now_ns)
            first = next(pieces, None)
            if first is not None:
                break
        else:
            return None
        lo, top, gap = first
        end = lo + self.page_size - 1
        hi, full = min(end, top), top >= end
        urgent = gap.kind in ("disconnect", "startup")
        waited = now_ns - gap.seen_ns(lo) >= self.linger * 1e9
        for piece_lo, piece_hi, piece_gap in pieces:
            if piece_lo > end:
                full = True
                break
            hi = min(end, piece_hi)
            urgent = urgent or piece_gap.kind in ("disconnect", "startup")
            if piece_hi >= end:
                full = True
                break
        advanced = self.tracker.advanced_ns.get(product, 0)
        quiet = now_ns - advanced >= self.quiet * 1e9
        if full or waited or quiet or urgent:
            # Take turns between the oldest work and the recent gaps while a long gap lasts.
            self._recent_next[product] = bool(long_gaps) and not recent
            return Window(product, lo, hi)
        return None

    def _next(self, now_ns: int) -> Window | None:
        """Products take turns: the first one (in turn order) with a request due."""
        for i, product in enumerate(self._turns):
            window = self._window(product, now_ns)
            if window is not None:
                self._turns.append(self._turns.pop(i))
                return window
        return None

    # --- running -------------------------------------------------------------------------

    async def run(self, publish: Publish) -> None:
        """Fetch windows as they become due, forever (until cancelled)."""
        async with httpx.AsyncClient(
            base_url=self.rest_url, timeout=self.timeout, transport=self.transport
        ) as client:
            watcher = asyncio.create_task(self._watch_backlog(), name="backfill-backlog")
            try:
                while True:
                    try:
                        await self.step(client, publish)
                    except Exception:  # one bad window must not end backfilling for good
                        log.exception("backfill step failed")
                        await asyncio.sleep(POLL_SECONDS)
            finally:
                watcher.cancel()

    def probe_after(self, products: list[str], delay: float) -> None:
        """After a reconnect: a product whose stream shows no newer trade id within `delay`
        seconds is asked over REST for trades after its last id. Without this, trades missed
        during the disconnect of a product that then goes quiet stay unnoticed until its next
        trade (venues with a heartbeat naming the last id do not need it)."""
        if not self.rest.asks_forward:
            return
        due = time.time_ns() + int(delay * 1e9)
        for product in products:
            last = self.tracker.last_ids.get(product)
            if last is not None:
                self._probes[product] = (last, due)

    async def _probe_due(self, client: httpx.AsyncClient, now_ns: int) -> None:
        for product, (last, due) in list(self._probes.items()):
            if due > now_ns:
                continue
            del self._probes[product]
            if self.tracker.last_ids.get(product, last) > last:
                continue  # the stream moved on: the tracker saw any gap itself
            request = self.rest.request(product, last + 1, last + self.page_size)
            response = None if request is None else await self._get(client, *request)
            if response is None:
                continue
            try:
                ids = self.rest.ids(orjson.loads(response.text))
            except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError):
                continue
            newer = [i for i in ids if i > last]
            if newer:  # as a heartbeat would: these exist, so they should have arrived
                self.tracker.heard_of(product, max(newer))

    async def step(self, client: httpx.AsyncClient, publish: Publish) -> None:
        """Finish what is done, fetch one due window, or wait for a gap to come due."""
        now_ns = time.time_ns()
        if self._probes:
            await self._probe_due(client, now_ns)
        finished = await self._finish_done(publish, now_ns)
        window = self._next(now_ns)
        if window is None:
            if finished:
                self.show_backlog()
            await asyncio.sleep(POLL_SECONDS)  # a poll: gaps come due with time, not events
            return
        await self.fetch(client, window, publish)
        await self._finish_done(publish, time.time_ns())
        self.show_backlog()

    async def fetch(self, client: httpx.AsyncClient, window: Window, publish: Publish) -> None:
        """One request for `window`; every pending missing id in the page counts."""
        product, lo, hi = window.product, window.lo, window.hi
        ids: list[int] = []
        if self.rest.pages is not None:
            async for body in self.rest.pages(self._getter(client), product, lo, hi):
                ids += await self._publish_page(product, body, publish)
            ids = sorted(set(ids))  # pages may overlap (a cursor's edge, a search step)
        else:
            request = self.rest.request(product, lo, hi)
            response = None if request is None else await self._get(client, *request)
            if response is not None:
                ids = sorted(set(await self._publish_page(product, response.text, publish)))
        # What this request settled: the whole window, unless a shorter page ended early
        # (then the rest is asked for again in the next window).
        covered_lo = lo
        inside = ids[bisect.bisect_left(ids, lo) : bisect.bisect_right(ids, hi)]
        if self.rest.pages is None and inside and len(inside) < hi - lo + 1 and ids[0] > lo:
            covered_lo = ids[0]  # (a pager has done all it can for the window)
        for gap in self.pending.get(product, ()):
            a, b = max(gap.first, covered_lo), min(gap.last, hi)
            if a > b:
                continue
            todo = list(self._todo(gap))
            for i in inside[bisect.bisect_left(inside, a) : bisect.bisect_right(inside, b)]:
                if any(x <= i <= y for x, y in todo):
                    gap.recovered += 1
            gap.asked.add_range(a, b)

    async def _finish_done(self, publish: Publish, now_ns: int) -> int:
        """Record every gap with nothing left to fetch and past its grace period. They are
        closed before anything is awaited, so the tracker cannot grow a gap being recorded."""
        limit_ns = now_ns - int(self.grace * 1e9)
        quiet_ns = now_ns - int(self.quiet * 1e9)
        tracker = self.tracker
        done: list[Gap] = []
        for product, gaps in self.pending.items():
            newest = tracker.last_ids.get(product, 0)
            finished = [
                g
                for g in gaps
                if g.pieces[-1][1] <= limit_ns
                and not self._has_todo(g)
                # A gap that ends at the newest id may still grow while the stream skips ids.
                and not (g.last >= newest and tracker.advanced_ns.get(product, 0) > quiet_ns)
            ]
            if finished:
                gone = set(finished)
                gaps[:] = [g for g in gaps if g not in gone]
                tracker.closed_all(product, gone)
                done += finished
        for gap in done:
            await self._finish(gap, publish)
        return len(done)

    async def _finish(self, gap: Gap, publish: Publish) -> None:
        """Publish the record of a closed gap."""
        exchange = self.status.exchange
        missing = gap.missing_count()
        if missing == 0 and gap.kind in ("trade_id", "heartbeat"):
            return  # every "missing" frame turned up late: it was reordering, not a gap
        recovered = gap.recovered
        if missing:
            self.status.gaps += 1
            self.status.missing_trades += missing
            self.status.backfilled_trades += recovered
            self.status.unfilled_trades += missing - recovered
            metrics.GAPS.labels(exchange, gap.product_id).inc()
            metrics.MISSING.labels(exchange).inc(missing)
            metrics.BACKFILLED.labels(exchange).inc(recovered)
        outcome = "filled" if recovered == missing else "partial" if recovered else "unfilled"
        if outcome != "filled":
            log.error(
                "%s %s: backfill of trade ids %d..%d %s (%d of %d recovered)",
                exchange, gap.product_id, gap.first, gap.last, outcome, recovered, missing,
            )  # fmt: skip
        record = {
            "type": "gap",
            "product_id": gap.product_id,
            "kind": gap.kind,
            "detected_at": iso_time(utc_from_ns(gap.detected_ns)),
            "first_missing_id": gap.first if missing else None,
            "last_missing_id": gap.last if missing else None,
            "missing": missing,
            "backfilled": recovered,
            "outcome": outcome,
        }
        await publish(self._frame(orjson.dumps(record).decode()))
        self.status.gap_records += 1

    async def _publish_page(self, product: str, body: str, publish: Publish) -> list[int]:
        """Put one REST body on the bus (bronze keeps it; the engine decodes its trades) and
        return the ids of the trades the engine will store from it: the page is decoded here
        with the venue's own codec, so a page it quarantines recovers nothing."""
        frame = self._frame(f'{{"type":"rest_trades","product_id":"{product}","trades":{body}}}')
        await publish(frame)
        codec = codec_for(frame.exchange)
        try:
            decoded = codec.decode(frame) if codec is not None else None
        except FrameError as exc:
            log.error("%s: unusable REST trades page (quarantined): %s", product, exc)
            return []
        if not isinstance(decoded, list):
            return []
        return [t.trade_id for t in decoded if t.product_id == product]

    def _getter(self, client: httpx.AsyncClient) -> Get:
        async def get(path: str, params: dict[str, Any]) -> str | None:
            response = await self._get(client, path, params)
            return None if response is None else response.text

        return get

    async def _get(
        self, client: httpx.AsyncClient, path: str, params: dict[str, Any]
    ) -> httpx.Response | None:
        """One rate-limited GET, retried on 429, 5xx and network errors."""
        exchange = self.status.exchange
        for delay in (*RETRY_DELAYS, None):
            await self.bucket.take()
            self.status.backfill_requests += 1
            metrics.BACKFILL_REQUESTS.labels(exchange).inc()
            try:
                response = await client.get(path, params=params)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code == 429:
                    self.status.backfill_throttled += 1
                elif response.status_code < 500:
                    delay = None
            if delay is None:
                log.error("backfill request %s %s failed: %s", path, params, problem)
                return None
            log.warning("backfill request failed (%s); retrying in %.1f s", problem, delay)
            await asyncio.sleep(delay)
        return None

    def _frame(self, text: str) -> RawFrame:
        self._seq += 1
        return RawFrame(self.status.exchange, self.conn_id, self._seq, time.time_ns(), text)
