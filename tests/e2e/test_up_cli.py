"""`sentinel up` as users run it: a real process, real ports, stopped and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from crypto_sentinel.lake import tables as T
from tests.conftest import free_port, read_table

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


def test_default_up_command_serves_trades_within_10s(lake: Path) -> None:
    """Exactly the README's `sentinel up` (live Coinbase, or the labelled fallback here)."""
    port = free_port()
    proc = start_up(lake, port)
    try:
        body = wait_for_trades(port, timeout=10)
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    kind = health["source"]["kind"]
    assert kind in ("coinbase", "simulator")
    assert body["data"][0]["exchange"] == health["source"]["exchange"]
    assert health["source"]["simulated"] == (kind == "simulator")


def duplicates(lake: Path, spec: T.TableSpec) -> list:
    rows = read_table(lake, spec).select(list(spec.key)).to_pylist()
    counts = Counter(tuple(r.values()) for r in rows)
    return [k for k, n in counts.items() if n > 1]


def test_stop_and_restart_mid_stream_leaves_no_duplicates(lake: Path) -> None:
    port = free_port()
    args = ("--source", "simulator", "--rate", "500")
    first = start_up(lake, port, *args)
    wait_for_trades(port, timeout=15, minimum=50)
    time.sleep(2)
    out = stop(first)  # graceful: drains the bus and commits
    assert first.returncode == 0, out
    after_first = read_table(lake, T.TRADES).num_rows
    assert after_first > 500

    second = start_up(lake, port, *args)
    wait_for_trades(port, timeout=15, minimum=50)
    time.sleep(2)
    stop(second, signal.SIGKILL)  # and a hard kill, mid-stream

    third = start_up(lake, port, *args)
    wait_for_trades(port, timeout=15, minimum=50)
    time.sleep(1)
    out = stop(third)
    assert third.returncode == 0, out

    for spec in (T.BRONZE, T.TRADES, T.TICKERS, T.CANDLES_1M):
        assert duplicates(lake, spec) == [], spec.name
    assert read_table(lake, T.TRADES).num_rows > after_first
