"""Kraken REST trade history for the backfill: `GET /0/public/Trades` pages by time, not by id.

A body is `{"error": [], "result": {<PAIR>: [[price, volume, time, side, type, misc,
trade_id], ...], "last": <cursor>}}`; `since` is an exclusive nanosecond cursor and `last`
is the next one. Trade ids are sequential per pair, so a WebSocket gap [lo, hi] is filled by
paging forward from just before the time of the newest trade seen below `lo` until `hi` is
covered. Those times come from the stream (`TradeTimes`, fed by the connector). When none is
known (a start-up gap: the trade before it is in the lake, not in memory) the first page is
searched for (`_Search`): step back from the first trade seen after the gap (or now), 4x
further each time, then halve the time between a page too late and one too early.

REST pair names are not the WebSocket v2 symbols (`XXBTZUSD` / `XBTUSD` vs `BTC/USD`):
`AssetPairs` is read once (its `wsname`), and Kraken's own XBT rule is the fallback.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import msgspec

from crypto_sentinel.sources.backfill import Get

log = logging.getLogger(__name__)

TRADES_PATH = "/0/public/Trades"
PAIRS_PATH = "/0/public/AssetPairs"
#: Trades answers at most 1,000 rows per request.
MAX_COUNT = 1000
#: Pages one window may take once it has found where to start (a window spans at most a
#: page of ids, so two usually do).
MAX_PAGES = 12
SEARCH_START_NS = 10 * 1_000_000_000
SEARCH_MAX_NS = 7 * 86_400 * 1_000_000_000
#: Requests a search for the first page may take (back-off steps, then halving).
MAX_SEARCH = 30
#: Kraken answers a rate-limited call with HTTP 200 and one of these in `error`.
_THROTTLED = ("EAPI:Rate limit exceeded", "EGeneral:Too many requests")
THROTTLE_DELAYS = (1.0, 2.0, 4.0)
#: Kraken's names for assets whose WebSocket v2 name differs (`wsname` still uses them).
_REST_NAMES = {"BTC": "XBT", "DOGE": "XDG"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def fallback_pair(product: str) -> str:
    """Without AssetPairs: `BTC-USD` -> `XBTUSD` (Kraken's altname rule)."""
    return "".join(_REST_NAMES.get(part, part) for part in product.split("-"))


def _ws_product(wsname: str) -> str:
    """A `wsname` (`XBT/USD` or `BTC/USD`) as our product id (`BTC-USD`)."""
    back = {v: k for k, v in _REST_NAMES.items()}
    return "-".join(back.get(part, part) for part in wsname.split("/"))


class _Pair(msgspec.Struct):
    wsname: str | None = None
    altname: str | None = None


class _Pairs(msgspec.Struct):
    error: list[str] = []
    result: dict[str, _Pair] = {}


class _Body(msgspec.Struct):
    error: list[str] = []
    result: dict[str, msgspec.Raw] = {}


_pairs = msgspec.json.Decoder(_Pairs)
_body = msgspec.json.Decoder(_Body)
_rows = msgspec.json.Decoder(list[tuple[msgspec.Raw, msgspec.Raw, msgspec.Raw, str, str, str, int]])
_cursor = msgspec.json.Decoder(str | int)


class PageError(ValueError):
    """A Trades body that cannot be paged on; the message says why."""


def read_page(body: str) -> tuple[list[int], int]:
    """(trade ids in the body, the `last` cursor). Only ids and the cursor: amounts are
    checked (as decimals) by the codec when the engine decodes the page."""
    try:
        page = _body.decode(body)
    except msgspec.DecodeError as exc:
        raise PageError(f"invalid Trades body: {exc}") from None
    if page.error:
        raise PageError(f"exchange error: {', '.join(page.error)}")
    if "last" not in page.result:
        raise PageError("Trades body without result.last")
    ids: list[int] = []
    try:
        last = _cursor.decode(page.result["last"])
        for key, raw in page.result.items():
            if key != "last":
                ids += [row[6] for row in _rows.decode(raw)]
    except msgspec.DecodeError as exc:
        raise PageError(f"bad Trades rows: {exc}") from None
    if isinstance(last, str) and not (last.isascii() and last.isdigit()):
        raise PageError(f"result.last is not a nanosecond cursor: {last!r}")
    return sorted(ids), int(last)


class TradeTimes:
    """When recent trades happened, by id, per product (from the stream), bounded."""

    def __init__(self, keep: int = 20_000) -> None:
        self.keep = keep
        self._ids: dict[str, list[int]] = {}
        self._ns: dict[str, list[int]] = {}

    def add(self, product: str, trade_id: int, ns: int) -> None:
        ids = self._ids.setdefault(product, [])
        times = self._ns.setdefault(product, [])
        if not ids or trade_id > ids[-1]:
            ids.append(trade_id)
            times.append(ns)
        else:
            at = bisect.bisect_left(ids, trade_id)
            if at < len(ids) and ids[at] == trade_id:
                return
            ids.insert(at, trade_id)
            times.insert(at, ns)
        if len(ids) > self.keep + self.keep // 4:
            del ids[: len(ids) - self.keep], times[: len(times) - self.keep]

    def before(self, product: str, trade_id: int) -> int | None:
        """The time of the newest known trade with an id below `trade_id`."""
        ids = self._ids.get(product, [])
        at = bisect.bisect_left(ids, trade_id)
        return self._ns[product][at - 1] if at else None

    def at_or_after(self, product: str, trade_id: int) -> int | None:
        """The time of the oldest known trade with an id of at least `trade_id`."""
        ids = self._ids.get(product, [])
        at = bisect.bisect_left(ids, trade_id)
        return self._ns[product][at] if at < len(ids) else None


class _TimeRow(msgspec.Struct):
    symbol: str
    trade_id: int
    timestamp: datetime


class _TimeMsg(msgspec.Struct):
    channel: str
    data: list[_TimeRow] = []


_times = msgspec.json.Decoder(_TimeMsg)


def trade_times(text: str) -> list[tuple[str, int, int]]:
    """(product, trade id, ns) of each trade a WebSocket `trade` frame carries; nothing for
    other or unusable frames (the engine quarantines those)."""
    if '"channel":"trade"' not in text[:64]:
        return []
    try:
        msg = _times.decode(text)
    except msgspec.DecodeError:
        return []
    out = []
    for row in msg.data:
        if row.timestamp.tzinfo is None:
            continue
        delta = row.timestamp - _EPOCH
        ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
        out.append((row.symbol.replace("/", "-"), row.trade_id, ns))
    return out


class _Search:
    """Where to start paging for a gap whose preceding trade's time is unknown: step back
    from the first trade known after it (10 s, then 4x further from the last page found too
    late) until a page starts at or before `lo`, then halve the time between the last page
    too late and the first too early until a page holds `lo` or ends within a page of it."""

    def __init__(self, times: TradeTimes, product: str, lo: int) -> None:
        self.lo = lo
        self.late = times.at_or_after(product, lo) or time.time_ns()  # pages from here: too late
        self.early: int | None = None  # pages from here end before lo
        self.step = SEARCH_START_NS
        self.probes = 0

    def next_probe(self) -> int | None:
        """The `since` to ask next, or None when the search gives up."""
        self.probes += 1
        if self.probes > MAX_SEARCH or (self.early is None and self.step > SEARCH_MAX_NS):
            return None
        if self.early is None:
            return self.late - self.step
        if self.late - self.early < 2:
            return None
        return (self.early + self.late) // 2

    def found(self, since: int, ids: list[int]) -> bool:
        """Does the page asked from `since` (its ids) start the paging?"""
        lo = self.lo
        if not ids or ids[0] > lo:  # nothing, or it starts after lo: too late
            self.late = since
            if self.early is None:
                self.step *= 4
            return False
        if ids[-1] + MAX_COUNT < lo:  # it ends more than a page before lo: too early
            self.early = since
            return False
        return True  # it holds lo, or the pages after it reach lo soon


class KrakenTrades:
    """The Trades pager and the pair names it asks for (one per connector)."""

    def __init__(
        self, times: TradeTimes, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.times = times
        self.transport = transport  # tests answer REST in-process
        self.pairs: dict[str, str] = {}  # product -> REST pair, once AssetPairs answered
        self.tried = False

    async def load_pairs(self, rest_url: str, timeout: float = 3.0) -> None:
        """Read AssetPairs once; on failure log one line and keep the XBT rule."""
        if self.tried:
            return
        self.tried = True  # one attempt: a venue without it must not slow every reconnect
        try:
            async with httpx.AsyncClient(
                base_url=rest_url, timeout=timeout, transport=self.transport
            ) as client:
                response = await client.get(PAIRS_PATH)
            response.raise_for_status()
            body = _pairs.decode(response.content)
            if body.error:
                raise ValueError(", ".join(body.error))
        except (httpx.HTTPError, msgspec.DecodeError, ValueError) as exc:
            log.warning("kraken AssetPairs unavailable (%s); REST pairs by the XBT rule", exc)
            return
        self.pairs = {_ws_product(p.wsname): key for key, p in body.result.items() if p.wsname}

    def pair(self, product: str) -> str:
        return self.pairs.get(product) or fallback_pair(product)

    async def pages(self, get: Get, product: str, lo: int, hi: int) -> AsyncIterator[str]:
        """Bodies covering the ids [lo, hi], oldest first. Stops at the first failed or
        unusable page: whatever it would have brought is left for the gap record."""
        anchor = self.times.before(product, lo)
        search = None if anchor is not None else _Search(self.times, product, lo)
        since = anchor - 1 if anchor is not None else 0  # (the trade before the gap comes too)
        count = min(MAX_COUNT, hi - lo + 2)
        params: dict[str, object] = {"pair": self.pair(product)}
        pages = 0
        while pages < MAX_PAGES:
            if search is not None:
                probe = search.next_probe()
                if probe is None:
                    log.error("kraken %s: no Trades page found holding id %d", product, lo)
                    return
                since, count = probe, MAX_COUNT
            else:
                pages += 1
            body = await self._get(get, {**params, "since": since, "count": count})
            if body is None:
                return
            try:
                ids, last = read_page(body)
            except PageError as exc:
                log.error("kraken %s: unusable Trades page (%s)", product, exc)
                yield body  # bronze keeps it and the engine quarantines it, with the reason
                return
            yield body
            if search is not None and not search.found(since, ids):
                continue
            search = None
            if not ids or ids[-1] >= hi or last <= since:
                return  # covered, or Kraken has nothing newer
            since, count = last, min(MAX_COUNT, hi - ids[-1] + 1)
        log.error("kraken %s: ids %d..%d not covered after %d pages", product, lo, hi, MAX_PAGES)

    @staticmethod
    async def _get(get: Get, params: dict[str, object]) -> str | None:
        """One Trades call; Kraken's in-body rate-limit errors are waited out, a few times."""
        for delay in (*THROTTLE_DELAYS, None):
            body = await get(TRADES_PATH, params)
            if body is None or not any(t in body[:200] for t in _THROTTLED) or delay is None:
                return body
            log.warning("kraken Trades throttled; retrying in %.0f s", delay)
            await asyncio.sleep(delay)
        return None
