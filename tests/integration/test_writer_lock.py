"""One writer per lake and app id, with real `sentinel` processes: a second writer under the same
app id is refused at start with one line naming the holder (local folder and S3 on moto), a
writer killed with SIGKILL does not block the next, and two writers with their own app ids on
one lake lose nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import storage_options
from crypto_sentinel.lake.lock import LOCK_DIR, LakeLocked, S3Lease, lock_for
from crypto_sentinel.simulator import write_recording
from tests.conftest import free_port, read_table
from tests.helpers import assert_candles_match_silver
from tests.s3server import BUCKET, S3, moto_s3

pytestmark = pytest.mark.integration

HOST = re.escape(socket.gethostname())
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
Trades = dict[tuple[str, str, int], tuple[Decimal, Decimal, str]]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3() as server:
        yield server


def recording(path: Path, products: list[str], trades: int, seed: int, rate: float) -> Path:
    write_recording(path, products, trades, seed=seed, rate=rate)
    return path


def recorded_trades(path: Path, exchange: str) -> Trades:
    """What the recording holds, read with plain json and Decimal (taker = not maker)."""
    out: Trades = {}
    for line in path.read_text().splitlines():
        msg = json.loads(json.loads(line)["raw"], parse_float=Decimal)
        if msg["type"] in ("match", "last_match"):
            taker = "buy" if msg["side"] == "sell" else "sell"
            key = (exchange, msg["product_id"], msg["trade_id"])
            out[key] = (Decimal(msg["price"]), Decimal(msg["size"]), taker)
    return out


def silver(dt: DeltaTable) -> Trades:
    rows = dt.to_pyarrow_table().to_pylist()
    out = {
        (r["exchange"], r["product_id"], r["trade_id"]): (r["price"], r["size"], r["side"])
        for r in rows
    }
    assert len(out) == len(rows), "duplicate trades in silver"
    return out


def local_silver(lake: Path) -> Trades:
    path = str(T.TRADES.path(lake))
    return silver(DeltaTable(path)) if DeltaTable.is_deltatable(path) else {}


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "AWS_"))}
    return {**env, **extra}


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "crypto_sentinel.cli", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crypto_sentinel.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def wait_until(
    condition: Callable[[], Any], seconds: float, what: str, alive: list[subprocess.Popen[bytes]]
) -> Any:
    """Poll `condition` until it is truthy; the processes in `alive` must keep running."""
    deadline = time.monotonic() + seconds
    while True:
        for proc in alive:
            assert proc.poll() is None, f"{proc.args} exited with {proc.returncode} ({what})"
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")[-3000:]


def assert_refused(result: subprocess.CompletedProcess[str], lake: str, pid: int, s3: bool) -> None:
    """Exit 2 and exactly one line on stderr naming the holder; no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    beat = r", last heartbeat \d+ s ago" if s3 else ""
    assert re.fullmatch(
        rf"sentinel: the lake {re.escape(lake)} is already written by app id 'sentinel-embedded'"
        rf" \(pid {pid} on host {HOST} since {ISO}{beat}\); stop it first or give this process"
        r" another app id \(SENTINEL_APP_ID\)\n",
        result.stderr,
    ), result.stderr


def local_holder(lake: Path, app_id: str = "sentinel-embedded") -> dict[str, Any]:
    try:
        holder = json.loads((lake / LOCK_DIR / f"{app_id}.lock").read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def test_second_writer_on_a_local_lake_is_refused_and_the_first_loses_nothing(
    tmp_path: Path,
) -> None:
    rec = recording(tmp_path / "a.ndjson", ["BTC-USD", "ETH-USD"], 2_000, seed=5, rate=500)
    want = recorded_trades(rec, "coinbase")
    lake = tmp_path / "lake"
    env = cli_env()
    log = tmp_path / "first.log"
    first_args = ["up", "--source", f"replay:{rec}", "--lake", str(lake)]
    first = start([*first_args, "--port", str(free_port())], env, log)
    try:
        wait_until(lambda: local_holder(lake).get("pid") == first.pid, 60, "lock", [first])
        # The easy mistake (a second `up`) and a `replay` into the same lake are both refused.
        for args in (
            ["up", "--source", "simulator", "--port", str(free_port())],
            ["replay", str(rec), "--speed", "max"],
        ):
            assert_refused(run([*args, "--lake", str(lake)], env), str(lake), first.pid, s3=False)
        assert first.poll() is None
        wait_until(lambda: local_silver(lake) == want, 90, "first writer's trades", [first])
    finally:
        if first.poll() is None:
            stop(first, log)
    assert local_silver(lake) == want  # exact, nothing lost, no duplicate
    assert assert_candles_match_silver(lake) > 0
    with lock_for(lake, "sentinel-embedded"):  # released on exit
        pass


def s3_holder(s3: S3, key: str) -> dict[str, Any]:
    try:
        body = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except Exception:
        return {}
    holder = json.loads(body)
    return holder if isinstance(holder, dict) else {}


def test_second_writer_on_an_s3_lake_is_refused_and_a_killed_one_does_not_block(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.env.items():  # for delta-rs in this process
        monkeypatch.setenv(name, value)
    prefix = f"{uuid.uuid4().hex}/lake"
    lake = f"s3://{BUCKET}/{prefix}"
    lease = f"{prefix}/{LOCK_DIR}/sentinel-embedded.json"
    rec = recording(tmp_path / "a.ndjson", ["BTC-USD"], 500, seed=6, rate=500)
    want = recorded_trades(rec, "coinbase")
    env = cli_env(**s3.env)

    def stored() -> Trades:
        uri = T.TRADES.uri(lake)
        if not DeltaTable.is_deltatable(uri, storage_options=storage_options(lake)):
            return {}
        return silver(DeltaTable(uri, storage_options=storage_options(lake)))

    log = tmp_path / "first.log"
    first_args = ["up", "--source", f"replay:{rec}", "--lake", lake]
    first = start([*first_args, "--port", str(free_port())], env, log)
    try:
        wait_until(lambda: s3_holder(s3, lease).get("pid") == first.pid, 60, "lease", [first])
        up = ["up", "--source", "simulator", "--lake", lake, "--port", str(free_port())]
        assert_refused(run(up, env), lake, first.pid, s3=True)
        wait_until(lambda: stored() == want, 90, "first writer's trades", [first])
    finally:
        if first.poll() is None:
            stop(first, log)
    assert s3_holder(s3, lease) == {}, "the lease is deleted on exit"

    # A writer killed with SIGKILL leaves its lease behind; on its own host its pid is gone,
    # so the next start takes the lease over at once (elsewhere it waits for staleness).
    victim = start([*first_args, "--port", str(free_port())], env, tmp_path / "victim.log")
    wait_until(lambda: s3_holder(s3, lease).get("pid") == victim.pid, 60, "lease", [victim])
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    result = run(["replay", str(rec), "--lake", lake], env)
    assert result.returncode == 0, result.stderr
    assert stored() == want
    assert s3_holder(s3, lease) == {}


HOLD_S3 = """
import socket, sys, time
socket.gethostname = lambda: "another-host"  # a holder whose pid cannot be checked from here
from crypto_sentinel.lake.lock import S3Lease
S3Lease(sys.argv[1], "sentinel-embedded", refresh=0.3, stale_after=2).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_s3_lease_is_kept_by_its_heartbeat_and_taken_over_when_silent(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    lake = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_S3, lake],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        time.sleep(3)  # longer than stale_after: only the heartbeat keeps it
        with pytest.raises(LakeLocked) as refused:
            S3Lease(lake, "sentinel-embedded", refresh=0.3, stale_after=2).acquire()
        assert refused.value.holder["pid"] == child.pid
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    killed = time.monotonic()
    lease = S3Lease(lake, "sentinel-embedded", refresh=0.3, stale_after=2)

    def taken() -> bool:
        try:
            lease.acquire()
        except LakeLocked:
            return False
        return True

    deadline = time.monotonic() + 10
    while not taken():
        assert time.monotonic() < deadline, "the silent lease was never taken over"
        time.sleep(0.2)
    # Not before it went stale: 2 s after the last heartbeat (at most 0.3 s before the kill),
    # judged by S3's Last-Modified, which has whole seconds (up to 1 s older than the write).
    assert time.monotonic() - killed >= 2 - 0.3 - 1
    try:
        holder = json.loads(s3.client().get_object(Bucket=BUCKET, Key=lease.key)["Body"].read())
        assert holder["pid"] == os.getpid()
    finally:
        lease.release()
    assert s3_holder(s3, lease.key) == {}


def test_s3_lease_lost_to_another_process_stops_its_holder(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    lake = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    lease = S3Lease(lake, "sentinel-embedded", refresh=0.3, stale_after=2)
    lost = threading.Event()
    lease.on_lost = lost.set
    lease.acquire()
    with pytest.raises(LakeLocked):  # a second one while it is held
        S3Lease(lake, "sentinel-embedded").acquire()
    with S3Lease(lake, "another-app-id"):  # other app ids are free
        pass
    other = json.dumps({"pid": 1, "host": "elsewhere", "since": "2026-01-01T00:00:00Z"})
    s3.client().put_object(Bucket=BUCKET, Key=lease.key, Body=other.encode())  # taken over
    assert lost.wait(10), "the holder did not notice it lost the lease"
    assert lease.lost
    lease.release()
    assert s3_holder(s3, lease.key)["host"] == "elsewhere", "release deleted the new holder's"


def test_two_writers_with_their_own_app_ids_on_one_lake_lose_nothing(tmp_path: Path) -> None:
    """Two `sentinel replay`s at once, each with its own app id, exchange and recording: every
    trade of both is in silver exactly once and the candles agree with silver."""
    lake = tmp_path / "lake"
    runs = {
        "coinbase": recording(tmp_path / "coinbase.ndjson", ["BTC-USD", "ETH-USD"], 3_000, 21, 300),
        "simulator": recording(
            tmp_path / "simulator.ndjson", ["ETH-USD", "SOL-USD"], 3_000, 22, 300
        ),
    }
    want: Trades = {}
    for exchange, rec in runs.items():
        want |= recorded_trades(rec, exchange)
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for exchange, rec in runs.items():
        env = cli_env(SENTINEL_APP_ID=f"writer-{exchange}", SENTINEL_BATCH_INTERVAL_MS="100")
        args = ["replay", str(rec), "--exchange", exchange, "--speed", "2", "--lake", str(lake)]
        log = tmp_path / f"{exchange}.log"
        procs[exchange] = (start(args, env, log), log)
    alive = [proc for proc, _ in procs.values()]
    try:
        # Both write at the same time: each holds its lock and both exchanges reach silver
        # while both are still running (each replay lasts about 5 s).
        def both_writing() -> bool:
            held = all(local_holder(lake, f"writer-{ex}").get("pid") == p.pid
                       for ex, (p, _) in procs.items())  # fmt: skip
            return held and {k[0] for k in local_silver(lake)} == set(runs)

        wait_until(both_writing, 60, "both writers committing at once", alive)
        for proc, log in procs.values():
            assert proc.wait(timeout=120) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stored = local_silver(lake)
    assert len(stored) == len(want) > 6_000
    assert stored == want  # every trade of both, once, with its exact values
    assert assert_candles_match_silver(lake) > 0
    frames = sum(len(rec.read_text().splitlines()) for rec in runs.values())
    assert read_table(lake, T.BRONZE).num_rows == frames
