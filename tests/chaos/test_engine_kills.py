"""Chaos in the process: `sentinel up` (a real process, real sockets) is killed with SIGKILL
at random moments while the exchange keeps trading (20 times on Coinbase Exchange, fewer on
the other venues to keep the suite short), then restarted once more. The start-up backfill
must recover every trade received but never committed, and every trade emitted while nothing
was listening; the lake must equal the exchange, with no duplicate."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crypto_sentinel.lake import tables as T
from crypto_sentinel.simulator import SimulatorServer
from tests.conftest import free_port, read_table
from tests.helpers import (
    assert_candles_match_emitted,
    assert_silver_exact,
    compare_silver,
    connections_in_bronze,
    emitted_set,
    gap_rows,
    quarantine_reasons,
    write_report,
)

pytestmark = pytest.mark.chaos
PRODUCTS = ["BTC-USD", "ETH-USD"]
SEED = 21


@dataclass(frozen=True)
class Case:
    """One venue's run: kills, trades and rate. Advanced trades faster so that a restart
    misses more than its subscribe snapshot (100 trades a product) holds and REST must help."""

    kills: int
    trades: int
    rate: float
    #: Trades the exchange emits while the first two killed engines stay down: more than a
    #: resubscribe snapshot holds (Kraken 50 a product, Advanced 100), so that REST must
    #: fill the start-up gap however fast the restart is.
    outage: int = 0


CASES = {
    "coinbase": Case(kills=20, trades=3000, rate=40),
    "kraken": Case(kills=6, trades=1200, rate=40, outage=160),
    "coinbase-advanced": Case(kills=6, trades=2400, rate=80, outage=300),
}


def start_up(lake: Path, sim: SimulatorServer, log: Path, venue: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "crypto_sentinel.cli", "up", "--lake", str(lake),
        "--port", str(free_port()),
    ]  # fmt: skip
    env = {**os.environ, "SENTINEL_BATCH_INTERVAL_MS": "100", "SENTINEL_BACKOFF_CAP": "1"}
    if venue == "coinbase":
        cmd += ["--source", "simulator", "--simulator-url", sim.ws_url]
        cmd += ["--products", ",".join(PRODUCTS)]
    else:  # the venue's own source, its URLs pointed at the simulator
        key = "SENTINEL_" + venue.replace("-", "_").upper()
        cmd += ["--source", venue]
        env.update({f"{key}_WS_URL": sim.ws_url, f"{key}_REST_URL": sim.rest_url,
                    f"{key}_PRODUCTS": ",".join(PRODUCTS),
                    "SENTINEL_FALLBACK_TO_SIMULATOR": "false"})  # fmt: skip
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)


async def wait_connected(sim: SimulatorServer, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(300):
        if sim.connection_count > 0:
            return
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        await asyncio.sleep(0.1)
    raise AssertionError("sentinel up never connected\n" + log.read_text(errors="replace")[-3000:])


@pytest.mark.parametrize("venue", list(CASES))
async def test_random_kill_9_of_the_engine(tmp_path: Path, venue: str) -> None:
    case = CASES[venue]
    kills = case.kills
    exchange = "simulator" if venue == "coinbase" else venue
    name = "engine_kill_9" if venue == "coinbase" else f"engine_kill_9_{venue}"
    lake = tmp_path / "lake"
    log = tmp_path / "up.log"
    rng = random.Random(SEED)
    started = time.monotonic()
    report: dict[str, Any] = {"scenario": name, "faults": {"kills": kills, "seed": SEED}}
    killed = 0  # processes that really died of SIGKILL (measured, not planned)
    options: dict[str, Any] = {} if venue == "coinbase" else {"venue": venue}
    try:
        async with SimulatorServer(
            PRODUCTS, rate=case.rate, seed=SEED, max_trades=case.trades,
            wait_for_subscriber=True, **options,
        ) as sim:  # fmt: skip
            for round_ in range(kills):
                proc = start_up(lake, sim, log, venue)
                await wait_connected(sim, proc, log)
                await asyncio.sleep(rng.uniform(0.3, 2.0))  # anywhere: mid-batch, mid-commit
                proc.send_signal(signal.SIGKILL)
                killed += await asyncio.to_thread(proc.wait) == -signal.SIGKILL
                for _ in range(200):  # the exchange notices the dead socket (bounded: 10 s)
                    if not sim.connection_count:
                        break
                    await asyncio.sleep(0.05)
                if round_ < 2 and case.outage:
                    await stay_down(sim, case.outage)
            final = start_up(lake, sim, log, venue)
            try:
                await wait_connected(sim, final, log)  # signal handlers are installed by now
                emitted = await wait_all_stored(sim, final, lake, log)
            finally:
                final.send_signal(signal.SIGTERM)
                out = await asyncio.to_thread(final.wait, 60)
            assert out == 0, log.read_text(errors="replace")[-3000:]
        gaps = gap_rows(lake)
        result = compare_silver(lake, emitted)
        report.update(
            trades_emitted=result["emitted"],
            disconnects=connections_in_bronze(lake) - 1,
            gaps=sum(1 for g in gaps if g["missing"]),
            gap_records=len(gaps),
            trades_backfilled=sum(g["backfilled"] for g in gaps),
            frames_quarantined=len(quarantine_reasons(lake)),
            kills_survived=killed,
            lost=result["lost"],
            duplicated=result["duplicated"],
        )
        assert killed == kills, f"only {killed} of {kills} processes died of SIGKILL"
        assert_silver_exact(lake, emitted)
        report["candles_checked"] = assert_candles_match_emitted(
            lake, sim.market.emitted(), exchange
        )
        assert all(g["outcome"] == "filled" for g in gaps), gaps
        assert any(g["kind"] == "startup" and g["backfilled"] > 0 for g in gaps), gaps
        for spec in (T.BRONZE, T.TICKERS, T.CANDLES_1M):
            key = list(spec.key)
            rows = read_table(lake, spec).select(key).to_pylist()
            assert len({tuple(r.values()) for r in rows}) == len(rows), f"duplicates: {spec.name}"
        report["passed"] = True
    except BaseException as exc:
        report.update(passed=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        report["seconds"] = round(time.monotonic() - started, 1)
        write_report(name, report)


async def stay_down(sim: SimulatorServer, trades: int) -> None:
    """Until the exchange has emitted `trades` more (or all it will; bounded: 30 s)."""
    target = sim.emitted_count + trades
    for _ in range(600):
        if sim.emitted_count >= target or sim.done:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the exchange emitted {sim.emitted_count} of {target} trades")


async def wait_all_stored(
    sim: SimulatorServer, proc: subprocess.Popen[bytes], lake: Path, log: Path
) -> dict:
    """The emitted trades once the exchange is done and silver holds them all (bounded)."""
    emitted: dict = {}
    for _ in range(600):  # at most 5 minutes
        await asyncio.sleep(0.5)
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        if not sim.done:
            continue
        emitted = emitted_set(sim.market.emitted())
        result = await asyncio.to_thread(compare_silver, lake, emitted)
        if result["lost"] == 0:
            return emitted
    raise AssertionError(f"silver still misses trades: {compare_silver(lake, emitted)}")
