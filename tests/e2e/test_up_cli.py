"""`sentinel up` as users run it: a real process, real ports, stopped and restarted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from crypto_sentinel.lake import tables as T
from crypto_sentinel.simulator import SimTrade, write_recording
from tests.conftest import free_port, read_table
from tests.helpers import assert_candles_match_emitted

pytestmark = pytest.mark.e2e
SENTINEL = [sys.executable, "-m", "crypto_sentinel.cli"]


def start_up(lake: Path, port: int, *extra: str, env: dict[str, str] | None = None):
    cmd = [*SENTINEL, "up", "--lake", str(lake), "--port", str(port), *extra]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_trades(port: int, timeout: float, minimum: int = 1) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"http://127.0.0.1:{port}/latest", timeout=1).json()
            if len(body["data"]) >= minimum:
                return body
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no trades at /latest within {timeout} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"sentinel up did not stop on signal {sig}:\n{out[-4000:]}") from None
    return out


def test_up_falls_back_to_the_simulator_and_serves_latest_within_10s(lake: Path) -> None:
    port = free_port()
    # An address where no exchange answers: the fallback must kick in by itself.
    proc = start_up(lake, port, env={"SENTINEL_COINBASE_WS_URL": "ws://127.0.0.1:9/"})
    try:
        started = time.monotonic()
        body = wait_for_trades(port, timeout=10)
        assert time.monotonic() - started <= 10
        assert body["data"][0]["exchange"] == "simulator"
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert health["source"]["kind"] == "simulator" and health["source"]["simulated"] is True
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "Could not connect to Coinbase" in out and "Falling back" in out
    assert "SIMULATED DATA" in out
    rows = read_table(lake, T.TRADES)
    assert rows.num_rows > 0 and set(rows.column("exchange").to_pylist()) == {"simulator"}


def coinbase_reachable() -> bool:
    """Whether this machine can open a TCP connection to Coinbase's feed at all (observed
    independently of the process under test)."""
    try:
        with socket.create_connection(("ws-feed.exchange.coinbase.com", 443), timeout=3):
            return True
    except OSError:
        return False


def test_default_up_command_serves_trades_within_10s(lake: Path) -> None:
    """Exactly the README's `sentinel up`: live Coinbase when it can be reached, otherwise
    the labelled fallback; which one happened is checked against an independent probe."""
    port = free_port()
    reachable = coinbase_reachable()
    proc = start_up(lake, port)
    try:
        body = wait_for_trades(port, timeout=10)
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    kind = health["source"]["kind"]
    fell_back = "Could not connect to Coinbase" in out and "Falling back" in out
    if reachable:
        assert (kind, fell_back) in (("coinbase", False), ("simulator", True)), (kind, out[-2000:])
    else:  # no route to Coinbase (as on the build machine): the fallback must have happened
        assert kind == "simulator" and fell_back, (kind, out[-2000:])
        assert "SIMULATED DATA" in out
    assert body["data"][0]["exchange"] == health["source"]["exchange"]
    assert health["source"]["simulated"] == (kind == "simulator")
    assert [s["kind"] for s in health["sources"]] == [kind]


def duplicates(lake: Path, spec: T.TableSpec) -> list:
    rows = read_table(lake, spec).select(list(spec.key)).to_pylist()
    counts = Counter(tuple(r.values()) for r in rows)
    return [k for k, n in counts.items() if n > 1]


Stored = dict[tuple[str, int], tuple[Decimal, Decimal, str]]


def recorded_trades(path: Path) -> list[SimTrade]:
    """The trades a recording holds, decoded with plain json (not the pipeline's codec)."""
    trades = []
    for line in path.read_text().splitlines():
        frame = json.loads(json.loads(line)["raw"])
        if frame.get("type") not in ("match", "last_match"):
            continue
        fields = (frame["product_id"], frame["trade_id"], frame["price"], frame["size"])
        when = datetime.fromisoformat(frame["time"])
        orders = (frame["maker_order_id"], frame["taker_order_id"])
        trades.append(SimTrade(*fields, frame["side"], when, frame["sequence"], *orders))
    return trades


def as_stored(trades: list[SimTrade]) -> Stored:
    """What silver must hold of `trades`: the taker's side, the opposite of the maker's."""
    taker = {"buy": "sell", "sell": "buy"}
    return {
        (t.product_id, t.trade_id): (Decimal(t.price), Decimal(t.size), taker[t.maker_side])
        for t in trades
    }


def stored_trades(lake: Path) -> Stored:
    rows = read_table(lake, T.TRADES).to_pylist()
    out = {(r["product_id"], r["trade_id"]): (r["price"], r["size"], r["side"]) for r in rows}
    assert len(out) == len(rows), "a trade stored twice"
    return out


def assert_recorded_prefix(stored: Stored, recorded: Stored) -> None:
    """Per product, the lake holds the recording's trades up to its newest stored one, with
    no hole: a trade missing below the newest stored id was lost (e.g. to a SIGKILL)."""
    for product in {p for p, _ in recorded}:
        ids = sorted(i for p, i in recorded if p == product)
        held = sorted(i for p, i in stored if p == product)
        assert held == ids[: len(held)], f"{product}: trades lost below the newest stored one"
    assert all(recorded.get(k) == v for k, v in stored.items()), "a stored trade differs"


def wait_for_health(port: int, done: Callable[[dict[str, Any]], bool], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
            if done(health):
                return health
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s; last /health: {health}")


def test_restarts_resend_stored_trades_and_lose_none(lake: Path, tmp_path: Path) -> None:
    """Three runs over one seeded recording (replayed at recorded speed, so every restart
    sends again every trade already stored): stopped, SIGKILLed mid-stream, then run to the
    end. The lake must end with each recorded trade exactly once, with its recorded values."""
    recording = tmp_path / "session.ndjson"
    write_recording(recording, ["BTC-USD", "ETH-USD"], 8000, seed=7, rate=400)  # 20 s
    emitted = recorded_trades(recording)
    recorded = as_stored(emitted)
    port = free_port()
    args = ("--source", f"replay:{recording}", "--speed", "1")  # recorded pace: 20 s

    first = start_up(lake, port, *args)
    wait_for_health(port, lambda h: h["engine"]["trades"] >= 1000, timeout=30)
    out = stop(first)  # graceful: drains the bus and commits
    assert first.returncode == 0, out
    after_first = stored_trades(lake)
    assert 1000 <= len(after_first) < len(recorded), "the first run must stop mid-stream"
    assert_recorded_prefix(after_first, recorded)

    second = start_up(lake, port, *args)
    # Past every trade the first run stored (each one sent again and dropped as a
    # duplicate) and 1000 new ones further, then a hard kill.
    health = wait_for_health(
        port,
        lambda h: h["engine"]["duplicates"] >= len(after_first) and h["engine"]["trades"] >= 1000,
        timeout=30,
    )
    stop(second, signal.SIGKILL)
    assert health["source"]["finished"] is False, "the kill must land mid-stream"
    after_kill = stored_trades(lake)
    assert len(after_kill) > len(after_first), "the killed run committed nothing"
    assert_recorded_prefix(after_kill, recorded)

    third = start_up(lake, port, "--source", f"replay:{recording}", "--speed", "max")
    health = wait_for_health(
        port, lambda h: h["source"]["finished"] and h["engine"]["bus_depth"] == 0, timeout=60
    )
    out = stop(third)
    assert third.returncode == 0, out
    # Every trade the lake already held came again and was dropped, none counted twice.
    # Every trade the lake held was sent again and dropped (those the kill left in bronze
    # only are derived again at start, so they count too); every other one was new.
    engine = health["engine"]
    assert engine["duplicates"] >= len(after_kill)
    assert engine["duplicates"] + engine["trades"] == len(recorded)

    assert stored_trades(lake) == recorded
    for spec in (T.BRONZE, T.TRADES, T.TICKERS, T.CANDLES_1M):
        assert duplicates(lake, spec) == [], spec.name
    assert assert_candles_match_emitted(lake, emitted, exchange="coinbase") >= 1
