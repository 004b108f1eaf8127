"""Background daemons we start and later stop by a recorded pid (Kafka nodes, Spark's master
and workers).

A pid file outlives its process: after a crash or a reboot the same number can belong to
anything. So a pid counts as ours only while its command line still holds the arguments we
started it with (`marks`), and nothing is ever signalled otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "alive", "end_group", "exit_code", "group", "locked", "spawn", "stop_group", "tail",
    "terminate", "wait_dead",
]  # fmt: skip

#: Daemons this process started: polled instead of /proc so they are reaped, never zombies.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    cmd: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `cmd` in a session of its own (it outlives the CLI and its terminal's SIGINT),
    stdout and stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )  # fmt: skip
    _CHILDREN[proc.pid] = proc
    return proc


def exit_code(pid: int) -> int | None:
    """The exit status of a daemon this process started and saw end, else None."""
    child = _CHILDREN.get(pid)
    return child.returncode if child is not None else None


def alive(pid: int, marks: Sequence[str]) -> bool:
    """True only if `pid` runs (not a zombie) and every one of `marks` is an argument of its
    command line. Without procfs (not Linux) the existence of the pid has to do."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists but belongs to someone else: the command line decides
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, IndexError):
        return not proc.parent.is_dir()
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return all(mark in args for mark in marks)


def wait_dead(pid: int, marks: Sequence[str], timeout: float) -> bool:
    """Wait until `pid` is no longer ours and alive; False if it still is after `timeout`."""
    deadline = time.monotonic() + timeout
    while alive(pid, marks):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def terminate(pid: int, marks: Sequence[str], timeout: float = 20) -> bool:
    """SIGTERM, then SIGKILL after `timeout`, each only while `pid` is still ours (`alive`).
    False if it survived both."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if not alive(pid, marks):
            return True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        if wait_dead(pid, marks, wait):
            return True
    return False


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group(pgid: int) -> list[int]:
    """Living processes of a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X") and int(stat[2]) == pgid:
                found.append(int(entry.name))
    return found


def end_group(pgid: int, grace: float) -> None:
    """SIGTERM every process left in the group, SIGKILL what is still there after `grace`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not group(pgid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace
        while group(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)


def stop_group(pid: int, marks: Sequence[str], grace: float = 20) -> None:
    """Stop a daemon that leads its own process group, and the group (a Spark worker's
    executors). The group is ours while its leader is (`alive`), or when the leader is gone
    and members remain: a group's id is not given to a new process while it has members."""
    if alive(pid, marks) or (_stat(pid) is None and group(pid)):
        end_group(pid, grace)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise installs and starts on one folder across processes (CLI, tests, services)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log (read from its last 64 KiB)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
