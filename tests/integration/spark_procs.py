"""Processes of a Spark run, found in the process table by a marker in their environment,
which the CLI, the JVM, the Python driver and workers, the daemons and the executors all
inherit (test_spark_processes.py, test_spark_conformance.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

MARK = "SPARK_PROCS_MARK"


def marked(mark: str) -> list[str]:
    """`pid command` of every living process that carries the marker (the command's start
    and its main class or script: a JVM's class path comes in between)."""
    found = []
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if state not in ("Z", "X"):
            main = [a for a in args if a.endswith(".py") or a.startswith("org.apache.spark")]
            found.append(f"{entry.name} {args[0]} {' '.join(main)}")
    return found


def wait_until_none(mark: str, deadline_s: float = 60) -> list[str]:
    """Processes of the run still there after the deadline (ending can take a moment when
    it does not go through the CLI, e.g. after a cluster stop)."""
    deadline = time.monotonic() + deadline_s
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left
