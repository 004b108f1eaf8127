"""Process hygiene for `sentinel spark submit`, the job's Python driver and the cluster daemons.

Why: spark-submit is a JVM that starts the job's Python driver as its own child. Signalling
both at once (a process-group kill) races: the driver calls into a JVM that is already shutting
down and can wait forever, orphaned once the JVM is gone. So the submit CLI runs spark-submit
in a process group of its own, tied to the CLI's life (a parent-death signal), asks the Python
driver first to stop the query, escalates to the whole group after a grace period, and ends
whatever is left of the group before it returns. The driver leaves when its JVM is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from crypto_sentinel.ops.procs import _stat, end_group

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: After a stop request: seconds for the driver to stop the query and Spark cleanly, then the
#: group gets SIGTERM, and SIGKILL after as long again.
STOP_GRACE_S = 30.0
DRIVER_STOP_S = 20.0  # the driver's own limit, inside the CLI's grace
KILL_GRACE_S = 15.0


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """`sig` to this process when the one that started it dies (even by SIGKILL); as a
    preexec_fn, for the child about to run."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Living children, grandchildren, ... of a process."""
    parents: dict[int, list[int]] = {}
    for child in _pids():
        stat = _stat(child)
        if stat is not None and stat[0] not in ("Z", "X"):
            parents.setdefault(int(stat[1]), []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop_driver(jvm: int, sig: int) -> None:
    """Ask the job's Python driver (a child of the spark-submit JVM) to stop the query; before
    it exists, the JVM itself."""
    drivers = [p for p in descendants(jvm) if _comm(p).startswith("python")]
    for pid in drivers or [jvm]:
        _kill(pid, sig)


def run_submit(cmd: list[str], env: dict[str, str]) -> int:
    """Run spark-submit in its own process group until it ends; SIGTERM/SIGINT stop it (the
    driver first, then the group); nothing of the group outlives this call."""
    proc = subprocess.Popen(cmd, env=env, process_group=0, preexec_fn=die_with_parent)
    requested: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        if not requested:
            requested.append(time.monotonic())
            stop_driver(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        escalated = 0
        while proc.poll() is None:
            if requested:
                waited = time.monotonic() - requested[0]
                if escalated == 0 and waited > STOP_GRACE_S:
                    escalated = 1
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                elif escalated == 1 and waited > STOP_GRACE_S + KILL_GRACE_S:
                    escalated = 2
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
        return proc.returncode
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        end_group(proc.pid, KILL_GRACE_S)
        proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_with_parent(interval: float = 1.0) -> None:
    """In the job's driver: exit when the process that started it (the JVM) is gone, instead of
    living on as an orphan that nothing will ever stop. The kernel's parent-death signal
    (SIGKILL: nothing is left to stop cleanly) needs no Python thread: a driver whose threads
    are stuck (a cluster test saw one wait on a lock for minutes) still ends; the polling
    thread is the fallback where prctl is not available."""
    parent = os.getppid()
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                log.error("the spark-submit JVM (pid %d) is gone: exiting", parent)
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def exit_after(seconds: float, code: int) -> threading.Timer:
    """Hard exit if a clean stop takes longer than `seconds` (a JVM that stopped answering)."""
    timer = threading.Timer(seconds, lambda: os._exit(code))
    timer.daemon = True
    timer.start()
    return timer
