"""Health of the processes that have no API (`ingest`, `process`): a heartbeat file and a verb.

Each pipeline process rewrites `<data dir>/health/<role>.json` every few seconds with its
readiness and status (the same as `/health`). `sentinel health ROLE` reads it and exits 0 only
if the file is fresh and the process says it is ready, so a container healthcheck notices a
stuck event loop, a lost broker or a disconnected source, not just a live PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEARTBEAT_SECONDS = 5.0
ROLES = ("up", "ingest", "process")


def heartbeat_path(data_dir: Path, role: str) -> Path:
    return data_dir / "health" / f"{role}.json"


def write_heartbeat(path: Path, ready: bool, status: dict[str, Any]) -> None:
    """Replace the file atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"time": time.time(), "ready": ready, "status": status}, default=str))
    tmp.replace(path)


async def heartbeats(
    path: Path, ready: Callable[[], bool], status: Callable[[], dict[str, Any]], stop: asyncio.Event
) -> None:
    """Write the heartbeat until `stop` is set (a task of the pipeline)."""
    while not stop.is_set():
        with contextlib.suppress(OSError):  # a full or read-only disk must not stop anything
            write_heartbeat(path, ready(), status())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_SECONDS)


def check(path: Path, max_age: float, now: float | None = None) -> tuple[bool, str]:
    """(healthy, reason) from a heartbeat file."""
    try:
        beat = json.loads(path.read_text())
        age = (time.time() if now is None else now) - float(beat["time"])
        ready = bool(beat["ready"])
    except FileNotFoundError:
        return False, f"no heartbeat at {path}: is the process running with this data dir?"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"unreadable heartbeat {path}: {exc}"
    if age > max_age:
        return False, f"heartbeat is {age:.0f} s old (limit {max_age:.0f} s): process stuck or gone"
    if not ready:
        return False, "process is running but not ready (source or broker unavailable)"
    return True, f"ok: heartbeat {age:.1f} s old, ready"


def cmd_health(args: argparse.Namespace) -> int:
    from crypto_sentinel.config import ConfigError, load_settings

    try:
        data_dir = args.data_dir or load_settings().data_dir
    except ConfigError as exc:
        print(f"sentinel health: {exc}", file=sys.stderr)
        return 2
    healthy, reason = check(heartbeat_path(Path(data_dir), args.role), args.max_age)
    print(f"{args.role}: {reason}", file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "health",
        help="exit 0 if a local pipeline process is alive and ready (container healthchecks)",
        description="Reads the heartbeat that `sentinel up|ingest|process` write every"
        f" {HEARTBEAT_SECONDS:.0f} s to <data dir>/health/<role>.json.",
    )
    p.add_argument("role", choices=ROLES, help="which process")
    p.add_argument("--max-age", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("--data-dir", type=Path, help="data folder (default from settings)")
    p.set_defaults(func=cmd_health)
