"""The writer lock of a local lake: one holder per (lake, app id), named when refused, and gone
with its process however that process ends."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crypto_sentinel.config import load_settings
from crypto_sentinel.lake.lock import (
    LOCK_DIR,
    LakeLocked,
    LocalLock,
    NoLock,
    describe,
    lock_for,
    writer_lock,
)

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_second_holder_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    lake = tmp_path / "not" / "yet" / "a" / "lake"  # created on demand
    with lock_for(lake, "sentinel-embedded"):
        with pytest.raises(LakeLocked) as refused:
            lock_for(lake, "sentinel-embedded").acquire()
        text = str(refused.value)
        assert "\n" not in text
        assert re.fullmatch(
            rf"the lake {re.escape(str(lake))} is already written by app id 'sentinel-embedded'"
            rf" \(pid {os.getpid()} on host {re.escape(socket.gethostname())} since {ISO}\);"
            r" stop it first or give this process another app id \(SENTINEL_APP_ID\)",
            text,
        ), text
    with lock_for(lake, "sentinel-embedded"):  # released: the next one gets it
        pass


def test_different_app_ids_do_not_block_each_other(tmp_path: Path) -> None:
    ids = ["sentinel-embedded", "writer-b", "group:coinbase:3", "a/b", "x" * 200]
    locks = [lock_for(tmp_path, app_id).acquire() for app_id in ids]
    try:
        files = sorted(p.name for p in (tmp_path / LOCK_DIR).iterdir())
        assert len(files) == len(ids)  # one flat, safe file name each (':' and '/' encoded)
        assert all(len(name) <= 130 and "/" not in name and ":" not in name for name in files)
        with pytest.raises(LakeLocked, match="'group:coinbase:3'"):
            lock_for(tmp_path, "group:coinbase:3").acquire()
    finally:
        for lock in locks:
            lock.release()


def test_other_lakes_do_not_block_each_other(tmp_path: Path) -> None:
    with (
        lock_for(tmp_path / "one", "sentinel-embedded"),
        lock_for(tmp_path / "two", "sentinel-embedded"),
    ):
        pass


HOLD = """
import sys, time
from pathlib import Path
from crypto_sentinel.lake.lock import lock_for
lock_for(Path(sys.argv[1]), "sentinel-embedded").acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_holder_killed_with_sigkill_does_not_block(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        with pytest.raises(LakeLocked) as refused:
            lock_for(tmp_path, "sentinel-embedded").acquire()
        assert refused.value.holder["pid"] == child.pid
        assert f"pid {child.pid} on host " in str(refused.value)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    started = time.monotonic()
    with lock_for(tmp_path, "sentinel-embedded") as lock:  # no stale file blocks it
        assert isinstance(lock, LocalLock) and lock.holder["pid"] == os.getpid()
    assert time.monotonic() - started < 1


def test_holder_text() -> None:
    assert describe({}) == "holder unknown"
    holder = {"pid": 7, "host": "h", "since": "2026-01-02T03:04:05Z"}
    assert describe(holder) == "pid 7 on host h since 2026-01-02T03:04:05Z"
    assert describe({**holder, "age": 4.4}).endswith(", last heartbeat 4 s ago")


def test_which_processes_take_the_lock(tmp_path: Path) -> None:
    """Stream writers under one app id do; ingest-only processes and Kafka processors (one app
    id per assigned partition, so two of one group must both start) do not."""
    local = load_settings(lake_dir=tmp_path)
    with writer_lock(local, writes=True) as lock:
        assert isinstance(lock, LocalLock)
        with pytest.raises(LakeLocked):
            writer_lock(local, writes=True)
        assert isinstance(writer_lock(local, writes=False), NoLock)
    kafka = load_settings(lake_dir=tmp_path, bus="kafka")
    first, second = writer_lock(kafka, writes=True), writer_lock(kafka, writes=True)
    assert isinstance(first, NoLock) and isinstance(second, NoLock)
