"""Gap detection, REST backfill, the token bucket, fault plans and the new frame kinds."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from crypto_sentinel.model import GapRecord, RawFrame
from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec
from crypto_sentinel.sources import backfill as backfill_module
from crypto_sentinel.sources.backfill import Backfiller
from crypto_sentinel.sources.base import Gap, GapTracker, SourceStatus
from crypto_sentinel.sources.coinbase_codec import FrameError, decode
from crypto_sentinel.sources.ratelimit import TokenBucket

NOW = "2026-01-01T00:00:00.000000Z"


def match(trade_id: int, product: str = "BTC-USD") -> str:
    return orjson.dumps(
        {"type": "match", "trade_id": trade_id, "product_id": product, "side": "buy",
         "size": "1", "price": "2", "time": NOW}
    ).decode()  # fmt: skip


def heartbeat(last: int, product: str = "BTC-USD") -> str:
    return orjson.dumps(
        {"type": "heartbeat", "last_trade_id": last, "product_id": product, "sequence": 1,
         "time": NOW}
    ).decode()  # fmt: skip


def tracker() -> tuple[GapTracker, list[Gap]]:
    found: list[Gap] = []
    gaps = GapTracker(SourceStatus("simulator", "simulator", "ws://x"))
    gaps.on_gap = found.append
    return gaps, found


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=15, clock=lambda: now[0])
    assert [bucket.try_take() for _ in range(15)] == [0.0] * 15
    assert bucket.try_take() == pytest.approx(0.1)
    now[0] += 0.25  # 2.5 tokens come back
    assert [bucket.try_take() == 0 for _ in range(3)] == [True, True, False]


def test_trade_id_gap_and_heartbeat_gap_are_found_not_sequence() -> None:
    gaps, found = tracker()
    for text in (match(10), match(11), match(15), heartbeat(15), heartbeat(18)):
        gaps.observe(text)
    assert [(g.kind, g.first, g.last) for g in found] == [
        ("trade_id", 12, 14),
        ("heartbeat", 16, 18),
    ]


def test_late_frames_are_remembered_in_their_gap() -> None:
    gaps, found = tracker()
    for text in (match(1), match(3), match(2)):
        gaps.observe(text)
    assert found[0].arrived == {2} and found[0].missing() == []


def test_reconnect_and_startup_always_leave_a_gap_record() -> None:
    gaps, found = tracker()
    gaps.seed("BTC-USD", [(1, 5), (8, 10)])  # 6..7 missing in the lake
    gaps.status.connections = 1
    gaps.new_connection(["BTC-USD"])
    gaps.observe(match(11))  # the stream continues where the lake ends: an empty record
    gaps.status.connections = 2
    gaps.new_connection(["BTC-USD"])
    gaps.observe(match(20))
    assert [(g.kind, g.first, g.last) for g in found] == [
        ("startup", 6, 7),
        ("startup", 11, 10),
        ("disconnect", 12, 19),
    ]


def test_rest_page_decodes_to_trades_with_the_taker_side() -> None:
    body = rest_body("10.50000000")
    frame = RawFrame("coinbase", "rest-1", 1, time.time_ns(), make_page("BTC-USD", body))
    (trade,) = decode(frame)  # type: ignore[misc]
    assert trade.side == "buy"  # REST side is the maker's
    assert trade.price == Decimal("10.5") and trade.trade_id == 7


def test_bad_rest_page_is_rejected_with_a_reason() -> None:
    body = rest_body("0")
    frame = RawFrame("coinbase", "rest-1", 1, time.time_ns(), make_page("BTC-USD", body))
    with pytest.raises(FrameError, match="trade 7 of the REST page: price must be > 0"):
        decode(frame)


def rest_body(price: str) -> str:
    trade = {"time": NOW, "trade_id": 7, "price": price, "size": "0.1", "side": "sell"}
    return orjson.dumps([trade]).decode()


def make_page(product: str, body: str) -> str:
    return f'{{"type":"rest_trades","product_id":"{product}","trades":{body}}}'


class FakeExchange:
    """REST trades of ids 1..100, newest first, cursor-paginated like Coinbase."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.requests.append(params)
        if self.fail:
            return httpx.Response(503, text="down")
        after, limit = int(params["after"]), int(params["limit"])
        ids = list(range(min(after, 101) - 1, 0, -1))[:limit]
        body = [{"time": NOW, "trade_id": i, "price": "1", "size": "1", "side": "buy"} for i in ids]
        headers = {"CB-AFTER": str(ids[-1])} if ids else {}
        return httpx.Response(200, json=body, headers=headers)


async def run_fill(exchange: FakeExchange, gap: Gap) -> list[RawFrame]:
    gaps, _ = tracker()
    filler = Backfiller("http://x", gaps.status, gaps, bucket=TokenBucket(1000, 1000))
    published: list[RawFrame] = []

    async def publish(frame: RawFrame) -> None:
        published.append(frame)

    async with httpx.AsyncClient(
        base_url="http://x", transport=httpx.MockTransport(exchange)
    ) as client:
        await filler.fill(client, gap, publish)
    return published


async def test_backfill_pages_through_the_gap_then_records_it_filled() -> None:
    exchange = FakeExchange()
    frames = await run_fill(exchange, Gap("BTC-USD", "trade_id", 20, 45))
    pages = [decode(f) for f in frames[:-1]]
    ids = sorted(t.trade_id for page in pages for t in page)  # type: ignore[union-attr]
    assert ids == list(range(20, 46))
    record = decode(frames[-1])
    assert isinstance(record, GapRecord)
    assert (record.outcome, record.missing, record.backfilled) == ("filled", 26, 26)
    assert (record.first_missing_id, record.last_missing_id) == (20, 45)


async def test_backfill_that_keeps_failing_is_recorded_unfilled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backfill_module, "RETRY_DELAYS", (0.0, 0.0))
    exchange = FakeExchange(fail=True)
    frames = await run_fill(exchange, Gap("BTC-USD", "disconnect", 5, 9))
    record = decode(frames[-1])
    assert isinstance(record, GapRecord)
    assert (record.outcome, record.backfilled, record.missing) == ("unfilled", 0, 5)
    assert len(exchange.requests) == 3  # first try and two retries


def test_fault_plan_is_deterministic_by_seed() -> None:
    spec = FaultSpec.parse("drop=0.1,duplicate=0.1,reorder=0.1,malformed=0.1,seed=5")

    def run() -> list[str | bytes]:
        plan = FaultPlan(spec)
        session = object()
        return [out for i in range(1, 500) for out in plan.outbound(session, match(i))]

    first, second = run(), run()
    assert first == second
    assert len(first) != 499  # something was injected


def test_fault_spec_rejects_unknown_names_and_bad_rates() -> None:
    with pytest.raises(ValueError, match="bad fault"):
        FaultSpec.parse("explode=1")
    with pytest.raises(ValueError, match="out of range"):
        FaultSpec.parse("drop=2")
    assert FaultSpec.parse("disconnect_every=3,seed=9").disconnect_every == 3.0


class BlockingExchange(FakeExchange):
    """REST like FakeExchange, but requests for `held` products wait for `release`."""

    def __init__(self, held: set[str]) -> None:
        super().__init__()
        self.held = held
        self.release = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.split("/")[2] in self.held:
            await self.release.wait()
        return self(request)


async def wait_for(condition: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def gap_records(frames: list[RawFrame]) -> list[GapRecord]:
    return [r for f in frames if f.text.startswith('{"type":"gap"') for r in [decode(f)]]  # type: ignore[misc]


async def test_repeated_heartbeat_does_not_hide_a_gap_while_the_backfill_is_busy() -> None:
    """Issue 16: a heartbeat-only gap, the backfill busy for > 1 s (the grace period) with
    another product, the next heartbeat repeating the same last_trade_id. The trade must
    still be fetched and the gap recorded."""
    gaps, _ = tracker()
    exchange = BlockingExchange(held={"ETH-USD"})
    filler = Backfiller(
        "http://x", gaps.status, gaps, bucket=TokenBucket(1000, 1000),
        transport=httpx.MockTransport(exchange.handle),
    )  # fmt: skip
    published: list[RawFrame] = []

    async def publish(frame: RawFrame) -> None:
        published.append(frame)

    task = asyncio.create_task(filler.run(publish))
    try:
        for text in (match(5, "ETH-USD"), match(8, "ETH-USD")):  # the busy one: 6..7
            gaps.observe(text)
        for text in (match(14), match(15), heartbeat(16)):  # 16 only shown by a heartbeat
            gaps.observe(text)
        reported = time.monotonic()
        # Heartbeats come every second; the one after the grace period repeats the id.
        await wait_for(lambda: time.monotonic() > reported + 1.2)
        gaps.observe(heartbeat(16))
        exchange.release.set()
        await wait_for(lambda: len(gap_records(published)) == 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    btc = [r for r in gap_records(published) if r.product_id == "BTC-USD"]
    assert [(r.kind, r.first_missing_id, r.last_missing_id) for r in btc] == [("heartbeat", 16, 16)]
    assert (btc[0].missing, btc[0].backfilled, btc[0].outcome) == (1, 1, "filled")
    pages = [decode(f) for f in published if f.text.startswith('{"type":"rest_trades"')]
    fetched = {t.trade_id for page in pages for t in page if t.product_id == "BTC-USD"}  # type: ignore[union-attr]
    assert 16 in fetched
