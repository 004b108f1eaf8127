"""The heartbeat behind `sentinel health` (container healthchecks of ingest and process)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from crypto_sentinel.health import check, heartbeat_path, heartbeats, write_heartbeat


def test_fresh_ready_heartbeat_is_healthy(tmp_path: Path) -> None:
    path = heartbeat_path(tmp_path, "ingest")
    write_heartbeat(path, True, {"source": {"connected": True}})
    healthy, reason = check(path, max_age=30)
    assert healthy, reason


def test_stale_not_ready_missing_or_corrupt_heartbeats_are_unhealthy(tmp_path: Path) -> None:
    path = heartbeat_path(tmp_path, "process")
    assert check(path, 30) == (
        False,
        f"no heartbeat at {path}: is the process running with this data dir?",
    )
    write_heartbeat(path, True, {})
    healthy, reason = check(path, max_age=30, now=time.time() + 60)
    assert not healthy and "old" in reason
    write_heartbeat(path, False, {})
    healthy, reason = check(path, max_age=30)
    assert not healthy and "not ready" in reason
    path.write_text("{not json")
    healthy, reason = check(path, max_age=30)
    assert not healthy and "unreadable" in reason


async def test_heartbeat_task_writes_until_stopped(tmp_path: Path) -> None:
    path = heartbeat_path(tmp_path, "up")
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeats(path, lambda: True, lambda: {"n": 1}, stop))
    for _ in range(100):
        if path.exists():
            break
        await asyncio.sleep(0.01)
    assert check(path, 30)[0]
    stop.set()
    await asyncio.wait_for(task, 5)


def test_cli_exit_codes(tmp_path: Path) -> None:
    sentinel = str(Path(sys.executable).with_name("sentinel"))
    args = [sentinel, "health", "ingest", "--data-dir", str(tmp_path)]
    missing = subprocess.run(args, capture_output=True, text=True)
    assert missing.returncode == 1 and "no heartbeat" in missing.stderr
    write_heartbeat(heartbeat_path(tmp_path, "ingest"), True, {})
    ok = subprocess.run(args, capture_output=True, text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout
