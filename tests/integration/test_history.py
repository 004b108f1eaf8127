"""`sentinel history` against the simulator's REST: the exact set of trades in the range, a
SIGKILL mid-run and a rerun still exact, candles equal to a recomputation from the trades,
refused pages as gap records, bad input as one line and exit 2."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from deltalake import DeltaTable

from crypto_sentinel.cli import main
from crypto_sentinel.gapflags import GapFlags
from crypto_sentinel.history import History
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.simulator.market import SimTrade
from crypto_sentinel.verify import contiguity
from tests.conftest import read_table
from tests.helpers import assert_candles_match_silver, assert_silver_exact, emitted_set, gap_rows
from tests.simthread import history_simulator

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
SEEDED = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)  # the simulator's past: 3 hours
SINCE, UNTIL = SEEDED + timedelta(minutes=30), SEEDED + timedelta(hours=2, minutes=30)
COUNT = 30_000


def _in_range(trades: list[SimTrade]) -> list[SimTrade]:
    return [t for t in trades if SINCE <= t.time < UNTIL]


def _stored(lake: Path) -> int:
    uri = str(T.TRADES.path(lake))
    if not DeltaTable.is_deltatable(uri):
        return 0
    actions = DeltaTable(uri).get_add_actions(flatten=True)
    return sum(n or 0 for n in actions.column("num_records").to_pylist())


def _history_argv(lake: Path, url: str, rate: float) -> list[str]:
    argv = ["history", "--exchange", "simulator", "--since", SINCE.isoformat(),
            "--until", UNTIL.isoformat(), "--rest-url", url, "--rate", str(rate), "--quiet",
            "--lake", str(lake)]  # fmt: skip
    for product in PRODUCTS:
        argv += ["--product", product]
    return argv


def _python_candles(trades: list[SimTrade]) -> dict[tuple[str, datetime], tuple[Any, ...]]:
    """1-minute OHLCV, count and id range per product, in plain Python (taker side aside)."""
    minutes: dict[tuple[str, datetime], list[SimTrade]] = defaultdict(list)
    for t in trades:
        minutes[(t.product_id, t.time.replace(second=0, microsecond=0))].append(t)
    out = {}
    for key, group in minutes.items():
        group.sort(key=lambda t: t.trade_id)
        prices = [Decimal(t.price) for t in group]
        out[key] = (prices[0], max(prices), min(prices), prices[-1],
                    sum(Decimal(t.size) for t in group), len(group), group[0].trade_id,
                    group[-1].trade_id)  # fmt: skip
    return out


def test_history_is_exact_after_sigkill_and_rerun(lake: Path) -> None:
    with history_simulator(PRODUCTS, COUNT, SEEDED, SEEDED + timedelta(hours=3)) as (sim, trades):
        want = _in_range(trades)
        assert 15_000 < len(want) < COUNT
        env = {**os.environ, "SENTINEL_LOG_LEVEL": "WARNING"}
        cmd = [sys.executable, "-m", "crypto_sentinel.cli", *_history_argv(lake, sim.rest_url, 4)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while _stored(lake) < 5000:  # killed once several pages are committed, before the end
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no commit within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        stored = _stored(lake)
        assert 0 < stored < len(want), stored  # the kill landed mid-run

        rerun = [
            sys.executable,
            "-m",
            "crypto_sentinel.cli",
            *_history_argv(lake, sim.rest_url, 50),
        ]
        done = subprocess.run(rerun, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "ids already stored, skipped" in done.stdout
        skipped = sum(int(line.split("(")[1].split()[0]) for line in done.stdout.splitlines()
                      if "skipped" in line)  # fmt: skip
        assert skipped > 0, done.stdout  # the rerun continued below what the lake held

        emitted = emitted_set(want)
        emitted = {("simulator", k[0], k[1]): v for k, v in emitted.items()}
        rows = read_table(lake, T.TRADES).to_pylist()
        assert {r["exchange"] for r in rows} == {"simulator"}
        assert_silver_exact(lake, {(k[1], k[2]): v for k, v in emitted.items()})
        assert assert_candles_match_silver(lake) > 100
        candles = {(c["product_id"], c["start"]): (c["open"], c["high"], c["low"], c["close"],
                    c["volume"], c["trade_count"], c["first_trade_id"], c["last_trade_id"])
                   for c in read_table(lake, T.CANDLES_1M).to_pylist()}  # fmt: skip
        assert candles == _python_candles(want)

        # a third run finds everything stored: a few requests, nothing new, still exact
        again = History(lake, "simulator", sim.rest_url, PRODUCTS, SINCE, UNTIL, rate=50)
        summary = asyncio.run(again.run())
        # per product: the check, the pages above `until`, one page below the stored ids
        assert summary.requests <= 6 * len(PRODUCTS), summary.render()
        assert_silver_exact(lake, {(k[1], k[2]): v for k, v in emitted.items()})
        assert gap_rows(lake) == []


class _RefuseAfter:
    """A fault plan for the simulator's REST: trade pages after the first `ok` answer 503."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.seen = 0

    def rest_fault(self) -> tuple[float, int | None]:
        self.seen += 1
        return 0.0, None if self.seen <= self.ok else 503


async def test_refused_page_is_a_gap_record_and_a_rerun_fills_it(lake: Path) -> None:
    since = SEEDED
    with history_simulator(["BTC-USD"], 5000, since, since + timedelta(hours=1)) as (sim, trades):
        sim.faults = _RefuseAfter(2)  # type: ignore[assignment]
        run = History(lake, "simulator", sim.rest_url, ["BTC-USD"], since, rate=100,
                      retry_delays=(0.01, 0.01))  # fmt: skip
        summary = await run.run()
        assert [p.outcome for p in summary.products] == ["refused"]
        gaps = gap_rows(lake)
        assert len(gaps) == 1 and gaps[0]["kind"] == "trade_id"
        assert gaps[0]["conn_id"].startswith("history-")
        assert gaps[0]["outcome"] == "unfilled"
        oldest_stored = min(r["trade_id"] for r in read_table(lake, T.TRADES).to_pylist())
        assert gaps[0]["last_missing_id"] == oldest_stored - 1  # the page below the cursor
        assert gaps[0]["first_missing_id"] == oldest_stored - 1000
        assert _stored(lake) == 2000

        reader = LakeReader(lake)
        assert contiguity(reader, "simulator", "BTC-USD").unfilled_gaps == 1
        flags = GapFlags(reader, ttl=0)
        flags.load()
        assert flags.spans("simulator", "BTC-USD") != []  # candles there are flagged

        sim.faults = None
        summary = await History(lake, "simulator", sim.rest_url, ["BTC-USD"], since).run()
        assert [p.outcome for p in summary.products] == ["done"], summary.render()
        assert_silver_exact(lake, emitted_set(trades))
        # The refusal stays on record; a later `filled` record of the same ids closes it.
        refused, filled = sorted(gap_rows(lake), key=lambda g: g["detected_at"])
        assert refused["outcome"] == "unfilled" and filled["outcome"] == "filled"
        ids = ("first_missing_id", "last_missing_id")
        assert [filled[k] for k in ids] == [refused[k] for k in ids]
        assert filled["backfilled"] == filled["missing"] == 1000
        reader = LakeReader(lake)
        assert contiguity(reader, "simulator", "BTC-USD").unfilled_gaps == 0
        flags = GapFlags(reader, ttl=0)
        flags.load()
        assert flags.spans("simulator", "BTC-USD") == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--exchange", "coinbase-advanced", "--product", "BTC-USD", "--since", "2026-11-01"],
         "no REST trade history for exchange 'coinbase-advanced'"),
        (["--exchange", "simulator", "--product", "DOGE-XYZ", "--since", "2026-11-01"],
         "unknown product 'DOGE-XYZ'"),
        (["--exchange", "simulator", "--product", "BTC-USD", "--since", "last week"],
         "not an ISO 8601 time"),
        (["--exchange", "simulator", "--product", "BTC-USD", "--since", "2026-11-02",
          "--until", "2026-11-01"], "--since must be before --until"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(
    lake: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with history_simulator(["BTC-USD"], 10, SEEDED, SEEDED + timedelta(minutes=1)) as (sim, _):
        code = main(["history", *argv, "--rest-url", sim.rest_url, "--lake", str(lake)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("sentinel history: ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)
    assert _stored(lake) == 0


async def test_binance_aggtrades_history_is_exact(lake: Path) -> None:
    """Binance pages by `fromId` below the cursor (ascending pages); the same walk, dedupe
    and resume hold."""
    products = ["BTC-USDT", "ETH-USDT"]
    with history_simulator(products, 6000, SEEDED, SEEDED + timedelta(hours=1),
                           venue="binance") as (sim, trades):  # fmt: skip
        since = SEEDED + timedelta(minutes=10)
        want = [t for t in trades if t.time >= since]
        first = await History(lake, "simulator-binance", sim.rest_url, products, since,
                              rate=100).run()  # fmt: skip
        assert [p.outcome for p in first.products] == ["done", "done"], first.render()
        again = await History(lake, "simulator-binance", sim.rest_url, products, since,
                              rate=100).run()  # fmt: skip
        assert sum(p.skipped_ids for p in again.products) > 0
    assert_silver_exact(lake, emitted_set(want))
    rows = read_table(lake, T.TRADES).to_pylist()
    assert {r["exchange"] for r in rows} == {"simulator-binance"}
    assert assert_candles_match_silver(lake) > 50


async def test_kraken_trades_history_pages_forward_by_time_and_is_exact(lake: Path) -> None:
    """Kraken pages forward by a nanosecond cursor (`history_forward`): [since, until) stored
    exactly; a rerun jumps over what the lake holds; a refused page is an unfilled gap that a
    later complete rerun closes."""
    products = ["BTC-USD", "ETH-USD"]
    with history_simulator(products, 6000, SEEDED, SEEDED + timedelta(hours=1),
                           venue="kraken") as (sim, trades):  # fmt: skip
        since, until = SEEDED + timedelta(minutes=10), SEEDED + timedelta(minutes=50)
        want = [t for t in trades if since <= t.time < until]
        sim.faults = _RefuseAfter(6)  # type: ignore[assignment]  (2 checks, 4 pages)
        cut = await History(lake, "simulator-kraken", sim.rest_url, products, since, until,
                            rate=100, retry_delays=(0.01,)).run()  # fmt: skip
        assert "refused" in [p.outcome for p in cut.products], cut.render()
        open_gaps = [g for g in gap_rows(lake) if g["outcome"] == "unfilled"]
        assert open_gaps and all(g["kind"] == "trade_id" for g in open_gaps)
        sim.faults = None
        again = await History(lake, "simulator-kraken", sim.rest_url, products, since, until,
                              rate=100).run()  # fmt: skip
        assert [p.outcome for p in again.products] == ["done", "done"], again.render()
        assert sum(p.skipped_ids for p in again.products) > 0  # it did not start over
    assert_silver_exact(lake, emitted_set(want))
    rows = read_table(lake, T.TRADES).to_pylist()
    assert {r["exchange"] for r in rows} == {"simulator-kraken"}
    reader = LakeReader(lake)
    assert all(contiguity(reader, "simulator-kraken", p).unfilled_gaps == 0 for p in products)
    assert assert_candles_match_silver(lake) > 50


async def test_pages_in_flight_lose_nothing_where_the_venue_skipped_ids(lake: Path) -> None:
    """Cursors of pages in flight are guessed (`cursor - 1000`); where the venue's ids have
    holes (below 6001: every 7th, and one long) a guessed page overlaps the one above it;
    where they are contiguous pages meet exactly. Nothing is lost or stored twice."""
    ids = [i for i in range(1, 9001) if (i % 7 or i > 6000) and not 3000 < i < 3400]
    t0 = SEEDED
    items = {i: {"trade_id": i, "side": "buy", "size": "0.01000000",
                 "price": f"{100 + i % 50}.00000000",
                 "time": (t0 + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
             for i in ids}  # fmt: skip
    asked: list[int | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/products/BTC-USD":
            return httpx.Response(200, json={"id": "BTC-USD"})
        after = request.url.params.get("after")
        asked.append(None if after is None else int(after))
        below = [i for i in ids if after is None or i < int(after)][-1000:]
        return httpx.Response(200, json=[items[i] for i in reversed(below)])

    run = History(lake, "simulator", "http://venue", ["BTC-USD"], t0, rate=1000,
                  transport=httpx.MockTransport(answer))  # fmt: skip
    summary = await run.run()
    assert [p.outcome for p in summary.products] == ["done"]
    assert len(asked) > 4 and len(set(asked)) == len(asked)
    rows = read_table(lake, T.TRADES).to_pylist()
    assert sorted(r["trade_id"] for r in rows) == ids


async def test_a_body_that_is_not_a_page_is_a_gap_record(lake: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/products/BTC-USD":
            return httpx.Response(200, json={"id": "BTC-USD"})
        if "after" not in request.url.params:
            now = (SEEDED + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            page = [{"trade_id": 5000 - i, "side": "buy", "size": "1", "price": "10",
                     "time": now} for i in range(1000)]  # fmt: skip
            return httpx.Response(200, json=page)
        return httpx.Response(200, text="<html>maintenance</html>")

    run = History(lake, "simulator", "http://venue", ["BTC-USD"], SEEDED, rate=1000,
                  transport=httpx.MockTransport(answer))  # fmt: skip
    summary = await run.run()
    assert [p.outcome for p in summary.products] == ["refused"]
    assert [(g["first_missing_id"], g["last_missing_id"], g["outcome"]) for g in gap_rows(lake)
            ] == [(3001, 4000, "unfilled")]  # fmt: skip
    assert _stored(lake) == 1000
