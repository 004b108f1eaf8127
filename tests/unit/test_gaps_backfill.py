"""Gap detection, REST backfill, the token bucket, fault plans and the new frame kinds."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import generate_latest

from crypto_sentinel.api.routes.ops import health_reasons
from crypto_sentinel.model import GapRecord, RawFrame
from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec
from crypto_sentinel.sources import backfill as backfill_module
from crypto_sentinel.sources.backfill import Backfiller
from crypto_sentinel.sources.base import Gap, GapTracker, SourceStatus
from crypto_sentinel.sources.coinbase.codec import FrameError, decode
from crypto_sentinel.sources.coinbase.feed import (
    COINBASE_TRADES,
    REST_BURST,
    REST_PAGE_SIZE,
    REST_RATE,
    CoinbaseSource,
)
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
    """REST trades of ids 1..newest per product, newest first, cursor-paginated like
    Coinbase (at most `page` per request); records every request."""

    def __init__(self, fail: bool = False, newest: int = 100, page: int = 1000) -> None:
        self.fail = fail
        self.newest = newest
        self.page = page
        self.requests: list[dict[str, Any]] = []
        self.release: asyncio.Event | None = None  # requests wait for it when set

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.requests.append({**params, "product": request.url.path.split("/")[2]})
        if self.fail:
            return httpx.Response(503, text="down")
        after, limit = int(params["after"]), min(int(params["limit"]), self.page)
        ids = list(range(min(after, self.newest + 1) - 1, 0, -1))[:limit]
        body = [{"time": NOW, "trade_id": i, "price": "1", "size": "1", "side": "buy"} for i in ids]
        headers = {"CB-AFTER": str(ids[-1])} if ids else {}
        return httpx.Response(200, json=body, headers=headers)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.release is not None:
            await self.release.wait()
        return self(request)


async def wait_for(condition: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def gap_records(frames: list[RawFrame]) -> list[GapRecord]:
    records = [decode(f) for f in frames if f.text.startswith('{"type":"gap"')]
    return [r for r in records if isinstance(r, GapRecord)]


def fetched_ids(frames: list[RawFrame], product: str = "BTC-USD") -> list[int]:
    pages = [decode(f) for f in frames if f.text.startswith('{"type":"rest_trades"')]
    return sorted(t.trade_id for p in pages for t in p if t.product_id == product)  # type: ignore[union-attr]


class Run:
    """A tracker and a Backfiller against a fake REST exchange, driven by its real loop."""

    def __init__(
        self, exchange: FakeExchange, page_size: int = 1000, grace: float = 0.0,
        linger: float = 0.0,
    ) -> None:  # fmt: skip
        self.exchange = exchange
        self.tracker, _ = tracker()
        self.status = self.tracker.status
        self.filler = Backfiller(
            "http://x", self.status, self.tracker, bucket=TokenBucket(1000, 1000),
            rest=COINBASE_TRADES, page_size=page_size, grace=grace, linger=linger, quiet=grace,
            transport=httpx.MockTransport(exchange.handle),
        )  # fmt: skip
        self.published: list[RawFrame] = []
        self.task: asyncio.Task[None] | None = None

    async def publish(self, frame: RawFrame) -> None:
        self.published.append(frame)

    def observe(self, *texts: str) -> None:
        for text in texts:
            self.tracker.observe(text)

    def start(self) -> None:
        self.task = asyncio.create_task(self.filler.run(self.publish))

    async def finish(self, limit: float = 10.0) -> list[GapRecord]:
        if self.task is None:
            self.start()
        try:
            await wait_for(self.filler.empty, limit)
        finally:
            assert self.task is not None
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        return gap_records(self.published)


async def test_backfill_pages_through_the_gap_then_records_it_filled() -> None:
    run = Run(FakeExchange())
    run.observe(match(19), match(46))
    (record,) = await run.finish()
    assert fetched_ids(run.published) == list(range(20, 46))
    assert (record.outcome, record.missing, record.backfilled) == ("filled", 26, 26)
    assert (record.first_missing_id, record.last_missing_id) == (20, 45)
    assert len(run.exchange.requests) == 1


async def test_backfill_that_keeps_failing_is_recorded_unfilled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backfill_module, "RETRY_DELAYS", (0.0, 0.0))
    run = Run(FakeExchange(fail=True))
    run.tracker.seed("BTC-USD", [(1, 4)])
    run.observe(match(10))  # start-up gap 5..9
    (record,) = await run.finish()
    assert (record.kind, record.outcome, record.backfilled, record.missing) == (
        "startup", "unfilled", 0, 5,
    )  # fmt: skip
    assert len(run.exchange.requests) == 3  # first try and two retries
    assert run.status.unfilled_trades == 5


async def test_every_tenth_trade_hidden_costs_one_request_per_page_not_per_gap() -> None:
    """Issue 16 item 2: 2 products x 2,500 trades, every 10th hidden -> 498 one-trade gaps;
    one request serves every missing id its page covers."""
    run = Run(FakeExchange(newest=2500))
    for product in ("BTC-USD", "ETH-USD"):
        run.observe(*(match(i, product) for i in range(1, 2501) if i % 10 or i == 2500))
    records = await run.finish()
    assert len(records) == 2 * 249
    assert all((r.outcome, r.missing, r.backfilled) == ("filled", 1, 1) for r in records)
    for product in ("BTC-USD", "ETH-USD"):
        assert set(range(10, 2500, 10)) <= set(fetched_ids(run.published, product))
        span = 2490 - 10 + 1
        sent = [r for r in run.exchange.requests if r["product"] == product]
        assert len(sent) <= -(-span // 1000) + 1  # ceil(span / page) + 1
    assert run.status.backfill_requests == len(run.exchange.requests) <= 6


async def test_a_gap_that_grows_while_it_waits_is_one_gap() -> None:
    """An outage of the matches channel: heartbeats reveal more missing ids every second."""
    run = Run(FakeExchange(), grace=30)  # nothing is fetched while the outage goes on
    run.observe(match(15), heartbeat(18), heartbeat(25), heartbeat(25), heartbeat(31), match(40))
    (gap,) = run.tracker.open_gaps["BTC-USD"]
    assert (gap.kind, gap.first, gap.last, gap.arrived) == ("heartbeat", 16, 39, set())
    run.filler.grace = run.filler.linger = 0.0
    (record,) = await run.finish()
    assert (record.first_missing_id, record.last_missing_id, record.missing) == (16, 39, 24)
    assert record.outcome == "filled" and len(run.exchange.requests) == 1


@pytest.mark.parametrize("seed", range(20))
async def test_requests_per_product_are_at_most_span_over_page_plus_one(seed: int) -> None:
    """Random backlogs (short gaps, long ones, late arrivals) with a small page: every
    missing id is fetched once counted, and requests <= ceil(span / page) + 1."""
    rng = random.Random(seed)
    page = rng.choice((7, 50, 100))
    run = Run(FakeExchange(newest=4000, page=page), page_size=page)
    sent, last, missing = [match(1)], 1, set()
    while last < 2900:
        skip = rng.choice((0, 0, 1, 1, 2, 5, rng.randint(10, 400)))
        missing |= set(range(last + 1, last + 1 + skip))
        last += skip + 1
        sent.append(match(last))
        if skip and rng.random() < 0.2:  # a skipped frame that turns up late
            late = rng.randint(last - skip, last - 1)
            sent.append(match(late))
            missing.discard(late)
    run.observe(*sent)
    records = await run.finish()
    assert sum(r.missing for r in records) == sum(r.backfilled for r in records) == len(missing)
    assert missing <= set(fetched_ids(run.published))
    span = max(missing) - min(missing) + 1
    assert len(run.exchange.requests) <= -(-span // page) + 1


async def test_recent_gaps_are_not_starved_by_an_old_long_one() -> None:
    run = Run(FakeExchange(newest=20_000, page=100), page_size=100)
    run.tracker.seed("BTC-USD", [(1, 10)])
    run.observe(match(10_001), match(10_003))  # start-up hole 11..10_000, then 10_002
    records = await run.finish()
    assert [(r.kind, r.outcome) for r in records] == [("trade_id", "filled"), ("startup", "filled")]
    assert len(run.exchange.requests) == 101
    # The recent gap was recorded after the second page, not after the hundred of the long one.
    kinds = [f.text[:22] for f in run.published]
    recent = next(i for i, f in enumerate(run.published) if '"last_missing_id":10002' in f.text)
    assert kinds[:recent].count('{"type":"rest_trades",') == 2


async def test_the_backlog_is_shown_while_rest_is_behind() -> None:
    exchange = FakeExchange(newest=2000)
    exchange.release = asyncio.Event()  # REST hangs until released
    run = Run(exchange)
    run.observe(match(1), match(5), match(9), match(1500))
    run.start()
    await wait_for(lambda: len(exchange.requests) == 0 and run.status.backfill_pending_gaps == 3)
    assert run.status.backfill_pending_trades == 3 + 3 + 1490
    assert run.status.backfill_pending_gaps == 3
    await wait_for(lambda: run.status.as_dict()["backfill_oldest_pending_seconds"] > 0.2)
    shown = run.status.as_dict()
    assert shown["backfill_pending_gaps"] == 3
    exposition = generate_latest().decode()
    assert 'sentinel_backfill_pending_trades{exchange="simulator"} 1496.0' in exposition
    assert 'sentinel_backfill_pending_gaps{exchange="simulator"} 3.0' in exposition
    assert health_reasons({"source": {**shown, "finished": True}}) == []
    # The stream goes on while REST hangs: new gaps join the backlog at once.
    run.observe(match(1502), match(1504))
    await wait_for(lambda: run.status.backfill_pending_gaps == 5)
    assert run.status.backfill_pending_trades == 3 + 3 + 1490 + 2
    late = {**shown, "finished": True, "backfill_oldest_pending_seconds": 90.0}
    assert health_reasons({"source": late}) == [
        "backfill behind: 1496 missing trades in 3 gaps, the oldest waiting 90 s"
    ]
    exchange.release.set()
    records = await run.finish()
    assert len(records) == 5 and len(exchange.requests) <= -(-1502 // 1000) + 1
    await wait_for(lambda: run.status.backfill_pending_gaps == 0)
    assert run.status.backfill_pending_trades == 0


async def test_a_trade_arriving_after_its_id_was_fetched_is_not_late() -> None:
    run = Run(FakeExchange())
    run.observe(match(1), match(5))
    (gap,) = run.tracker.open_gaps["BTC-USD"]
    gap.asked.add_range(2, 3)  # a request already covered 2..3: counted there if REST had them
    run.observe(match(3), match(4))  # 3 arrives after it was fetched, 4 before
    assert gap.arrived == {4}
    (record,) = await run.finish()
    assert (record.missing, record.backfilled) == (2, 0)  # 2 and 3; the fake request never ran


def test_the_connector_sets_page_size_and_rate_limit() -> None:
    source = CoinbaseSource(["BTC-USD"], "ws://x", rest_url="http://x")
    assert source.backfill is not None
    assert source.backfill.page_size == REST_PAGE_SIZE == 1000
    assert (source.backfill.bucket.rate, source.backfill.bucket.burst) == (REST_RATE, REST_BURST)


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
        self.gate = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.split("/")[2] in self.held:
            await self.gate.wait()
        return self(request)


async def test_repeated_heartbeat_does_not_hide_a_gap_while_the_backfill_is_busy() -> None:
    """Issue 16: a heartbeat-only gap, the backfill busy for > 1 s (the grace period) with
    another product, the next heartbeat repeating the same last_trade_id. The trade must
    still be fetched and the gap recorded."""
    gaps, _ = tracker()
    exchange = BlockingExchange(held={"ETH-USD"})
    filler = Backfiller(
        "http://x", gaps.status, gaps, bucket=TokenBucket(1000, 1000), rest=COINBASE_TRADES,
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
        exchange.gate.set()
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


def test_hidden_trades_and_rest_faults_are_decided_by_place_in_the_stream() -> None:
    spec = FaultSpec.parse("hide_every=10,hide_tail=3,hide_from=40,hide_count=5,rest_429_every=3")
    assert (spec.hide_every, spec.rest_429_every, spec.active) == (10, 3, True)
    plan = FaultPlan(spec)
    products = ["A"] * 9 + ["B"] + ["A"] * 50  # B's first (and only) trade is at place 10
    hidden = [i + 1 for i, p in enumerate(products) if plan.hides(i, p, len(products))]
    assert hidden == [20, 30, 40, 41, 42, 43, 44, 50, 58, 59, 60]  # not 10: B starts there
    assert plan.hidden == len(hidden)
    assert [plan.rest_fault()[1] for _ in range(6)] == [None, None, 429, None, None, 429]
    assert plan.rest_throttled == 2
    with pytest.raises(ValueError, match="not a number"):
        FaultSpec.parse("hide_every=0.5")
