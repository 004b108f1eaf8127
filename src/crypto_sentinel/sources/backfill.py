"""REST backfill: fetch the trades a gap skipped and send them down the normal path.

Each REST page goes on the bus as one raw frame of its own kind
(``{"type":"rest_trades","product_id":..,"trades":<the response body, byte for byte>}``), so
bronze keeps it, Kafka carries it, and the engine decodes and deduplicates its trades exactly
like streamed ones. When a gap is done, a ``gap`` frame with the outcome follows; the engine
writes it to ``bronze.gaps``.

Pagination is Coinbase's cursor scheme: ``after=<trade_id>`` returns the (up to 1000) trades
just older than the cursor, newest first, and the ``CB-AFTER`` header is the next cursor.
A gap waits a short grace period first: a reordered frame that turns up late is not missing.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import orjson

from crypto_sentinel import metrics
from crypto_sentinel.model import RawFrame, iso_time, utc_from_ns
from crypto_sentinel.sources.base import Gap, GapTracker, Publish, SourceStatus, new_conn_id
from crypto_sentinel.sources.ratelimit import TokenBucket

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000  # Coinbase's maximum page size
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)


class Backfiller:
    def __init__(
        self,
        rest_url: str,
        status: SourceStatus,
        tracker: GapTracker,
        bucket: TokenBucket | None = None,
        grace: float = 1.0,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.status = status
        self.tracker = tracker
        self.bucket = bucket or TokenBucket()
        self.grace = grace
        self.timeout = timeout
        self.transport = transport  # tests answer REST in-process
        self.queue: asyncio.Queue[Gap] = asyncio.Queue()
        self.conn_id = f"rest-{new_conn_id()}"
        self._seq = 0
        tracker.on_gap = self.queue.put_nowait

    async def run(self, publish: Publish) -> None:
        """Work through gaps one at a time, forever (until cancelled)."""
        async with httpx.AsyncClient(
            base_url=self.rest_url, timeout=self.timeout, transport=self.transport
        ) as client:
            while True:
                gap = await self.queue.get()
                wait = gap.detected_ns / 1e9 + self.grace - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    await self.fill(client, gap, publish)
                except Exception:  # one bad gap must not end backfilling for good
                    log.exception("backfill of %s failed", gap)

    async def fill(self, client: httpx.AsyncClient, gap: Gap, publish: Publish) -> None:
        self.tracker.closed(gap)
        exchange = self.status.exchange
        late = {i for i in gap.arrived if gap.first <= i <= gap.last}
        missing = max(0, gap.last - gap.first + 1) - len(late)
        if missing == 0 and gap.kind in ("trade_id", "heartbeat"):
            return  # every "missing" frame turned up late: it was reordering, not a gap
        recovered = 0
        if missing:
            self.status.gaps += 1
            self.status.missing_trades += missing
            metrics.GAPS.labels(exchange, gap.product_id).inc()
            metrics.MISSING.labels(exchange).inc(missing)
            recovered = await self._fetch(
                client, gap.product_id, gap.first, gap.last, late, publish
            )
            self.status.backfilled_trades += recovered
            self.status.unfilled_trades += missing - recovered
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

    async def _fetch(
        self,
        client: httpx.AsyncClient,
        product: str,
        first: int,
        last: int,
        late: set[int],
        publish: Publish,
    ) -> int:
        """Page backwards from `last` to `first`; returns how many missing ids REST gave.
        Pages never overlap (the cursor only falls), so counting needs no id set."""
        got = 0
        cursor = last + 1
        while cursor > first:
            params = {"after": cursor, "limit": min(PAGE_LIMIT, cursor - first)}
            response = await self._get(client, f"/products/{product}/trades", params)
            if response is None:
                break
            body = response.text
            await publish(
                self._frame(f'{{"type":"rest_trades","product_id":"{product}","trades":{body}}}')
            )
            try:
                ids = [int(t["trade_id"]) for t in orjson.loads(body)]
            except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
                log.error("%s: unusable REST trades page (quarantined)", product)
                break
            got += sum(1 for i in ids if first <= i <= last and i not in late)
            if not ids or min(ids) <= first:
                break
            following = int(response.headers.get("CB-AFTER", min(ids)))
            if following >= cursor:
                break
            cursor = following
        return got

    async def _get(
        self, client: httpx.AsyncClient, path: str, params: dict[str, int]
    ) -> httpx.Response | None:
        """One rate-limited GET, retried on 429, 5xx and network errors."""
        for delay in (*RETRY_DELAYS, None):
            await self.bucket.take()
            self.status.backfill_requests += 1
            try:
                response = await client.get(path, params=params)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code != 429 and response.status_code < 500:
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
