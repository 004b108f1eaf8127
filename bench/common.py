"""Helpers shared by the benchmarks: numbers, child processes, ports and Delta commit times.

Every measured side runs as its own child process, so its peak RSS is its own: children
are reaped with `os.wait4`, which returns that one child's resource usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from crypto_sentinel.ops.ports import free_port as free_port
from crypto_sentinel.ops.ports import free_port_run as free_port_run

#: Products of every simulated recording and feed.
PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]

# --- numbers -------------------------------------------------------------------------------


def percentiles(values_ns: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles in milliseconds."""
    if not values_ns:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    ordered = sorted(values_ns)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)

    return {"p50_ms": rank(0.50), "p99_ms": rank(0.99), "max_ms": rank(1.0), "n": len(ordered)}


def peak_rss_mb() -> float:
    """Peak RSS of this process since it started its program (`VmHWM`; `ru_maxrss` may carry
    the RSS of the process it was forked from)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb(pid: int) -> float:
    """Current RSS of a process from /proc (psutil is not a dependency); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def rss_parts_mb(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) resident MB of a process; (0, 0) once it is gone.

    Why both: the file-backed part is shared-library code mapped from the page cache, and its
    size depends on how the kernel holds those files, not on the process (on this machine's
    kernel, libraries freshly written by pip map about 50 MB more than the same files read
    back from disk). The anonymous part is the process's own memory."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile"):
                fields[name] = round(int(value.split()[0]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return fields.get("RssAnon", 0.0), fields.get("RssFile", 0.0)


def machine() -> str:
    load = os.getloadavg()[0]
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {load:.1f} at the start"
    )


# --- ports ---------------------------------------------------------------------------------


# --- child processes -----------------------------------------------------------------------


def sentinel_env(lake: Path, data: Path, port: int = 0, **settings: str) -> dict[str, str]:
    """Environment of a `sentinel` child: only the given settings, none from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    values = {"LAKE_DIR": str(lake), "DATA_DIR": str(data), "PRODUCTS": ",".join(PRODUCTS),
              "LOG_LEVEL": "WARNING", **settings}  # fmt: skip
    if port:
        values["PORT"] = str(port)
    env.update({f"SENTINEL_{k}": v for k, v in values.items()})
    return env


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python <args>` with stdout and stderr into `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=out, stderr=out)


class RssPeak(threading.Thread):
    """The highest RSS of a process, read from /proc every `interval` seconds until it ends.

    The kernel's mark that `os.wait4` returns (`ru_maxrss`) alone is not enough: on this
    machine it was seen below the RSS read from /proc while the process ran (188 MB against
    203 MB sampled for a short `sentinel up`), so `finish` takes the higher of both.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0.0

    def run(self) -> None:
        seen = False
        while True:
            mb = rss_mb(self.pid)  # 0: not exec'd yet, gone, or a zombie waiting to be reaped
            if mb > 0:
                seen = True
                self.peak = max(self.peak, mb)
            elif seen or not os.path.exists(f"/proc/{self.pid}"):
                return
            time.sleep(self.interval)


def watch(proc: subprocess.Popen[bytes]) -> RssPeak:
    """Start sampling a child's RSS; pass the result to `finish`."""
    peak = RssPeak(proc.pid)
    peak.start()
    return peak


def _stat_cpu(path: str) -> tuple[str, float]:
    """(command name, user + system CPU seconds) of a /proc stat file."""
    with open(path) as fh:
        head, _, tail = fh.read().rpartition(")")  # the name may hold spaces and brackets
    fields = tail.split()
    return head.partition("(")[2], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (Linux /proc)."""
    return _stat_cpu(f"/proc/{pid}/stat")[1]


#: How `thread_cpu` groups a process's threads: its first thread runs the event loop,
#: deltalake's Rust runtime names its threads `tokio-rt-worker`.
THREAD_GROUPS = ("event loop", "deltalake runtime", "other threads")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds each live thread of a process has used so far, by thread id, with its
    group (`THREAD_GROUPS`)."""
    out = {}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        try:
            name, seconds = _stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        group = THREAD_GROUPS[0 if tid == pid else 1 if name.startswith("tokio") else 2]
        out[tid] = (group, seconds)
    return out


def thread_cpu_since(pid: int, before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per thread group since `before` (a `thread_cpu`); threads that ended in
    between are not counted (the process's own total has them)."""
    groups = dict.fromkeys(THREAD_GROUPS, 0.0)
    for tid, (group, seconds) in thread_cpu(pid).items():
        groups[group] += seconds - before.get(tid, (group, 0.0))[1]
    return {group: round(seconds, 2) for group, seconds in groups.items()}


def finish(
    proc: subprocess.Popen[bytes],
    sig: int = signal.SIGINT,
    timeout: float = 60,
    grace: float = 0,
    peak: RssPeak | None = None,
) -> float:
    """Reap a child and return its peak RSS (MB): after `grace` seconds of waiting for it to
    end by itself, send `sig`, and SIGKILL it `timeout` seconds later.

    The peak is what `peak` (see `watch`) sampled from /proc. The kernel's mark (`ru_maxrss`
    from `os.wait4`) is used only without a sampler: it carries over across fork and exec
    (measured: 567 MB for a process that never exceeded 190 MB, spawned from a large parent).
    """
    if proc.returncode is not None:
        raise RuntimeError("child already reaped; its peak RSS is lost")
    signal_at = time.monotonic() + grace
    kill_at = signal_at + timeout
    sent = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            if peak is not None:  # the kernel's mark can include the parent's RSS at fork
                return peak.peak
            return round(usage.ru_maxrss / 1024, 1)
        now = time.monotonic()
        if (sent == 0 and now >= signal_at) or (sent == sig and now >= kill_at):
            sent = sig if sent == 0 else signal.SIGKILL
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sent)
        time.sleep(0.05)


def result_of(log: Path) -> dict[str, Any]:
    """The `RESULT {json}` line a bench child printed."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line.removeprefix("RESULT ")))
    raise RuntimeError(f"{log} has no result:\n{log.read_text(errors='replace')[-3000:]}")


def wait_ready(port: int, proc: subprocess.Popen[bytes], path: str = "/ready") -> None:
    """Until the child's API answers 200 on `path` (120 s at most)."""
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"child exited with {proc.returncode} before it was ready")
            with contextlib.suppress(httpx.TransportError):
                if client.get(path).status_code == 200:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"API on port {port} not ready in 120 s")


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until something listens on 127.0.0.1:`port` (60 s at most)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"child exited with {proc.returncode} before it listened")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after 60 s")


def health(port: int) -> dict[str, Any]:
    """`/health` of a running pipeline, or {} if it does not answer."""
    try:
        return dict(httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json())
    except (httpx.HTTPError, ValueError):
        return {}


def loop_lag(port: int) -> dict[str, Any]:
    """The event-loop lag a running pipeline recorded (`sentinel_event_loop_lag_seconds` at
    /metrics): probes, those later than 5 and 10 ms, and the bucket bound its p99 is under."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        if family.name == "sentinel_event_loop_lag_seconds":
            buckets = sorted(
                (float(s.labels["le"]), s.value)
                for s in family.samples
                if s.name.endswith("_bucket")
            )
    if not buckets or not buckets[-1][1]:
        return {}
    total = buckets[-1][1]
    within = dict(buckets)
    p99 = next(bound for bound, count in buckets if count >= 0.99 * total)
    return {
        "probes": int(total),
        "over_5ms": int(total - within[0.005]),
        "over_10ms": int(total - within[0.01]),
        "p99_at_most_ms": p99 * 1000,
    }


#: HTTP clients the `/latest` pollers can use (`sentinel bench ingest --poller`).
POLLERS = ("lean", "httpx")


class LeanHttp:
    """A keep-alive HTTP/1.1 GET client on asyncio streams, for the `/latest` pollers.

    Why: httpx costs about a millisecond of Python per request. Polling every millisecond it
    took 43 % of a core on this 2-core machine (docs/benchmarks.md, session 23), from the
    process it measures, and its own parsing delay counted as latency. This one writes the
    request line and reads `Content-Length` bytes: what any lean client of the API does."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> bytes:
        """The body of a 200 answer; OSError (and reconnect next time) on anything else."""
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._streams
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status, *fields = head.split(b"\r\n")
            length = next(
                (int(f[15:]) for f in fields if f[:15].lower() == b"content-length:"), None
            )
            if length is None:
                raise OSError(f"no Content-Length in the answer to {path}")
            body = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise OSError(str(exc)) from exc
        if status.split(b" ", 2)[1:2] != [b"200"]:
            raise OSError(f"{path}: {status.decode(errors='replace')}")
        return body

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def poll_latest(
    port: int,
    running: Callable[[], bool],
    out: list[int],
    interval: float = 0.005,
    client: str = "lean",
) -> None:
    """An HTTP client polling /latest: when did each trade become visible to it?

    A trade's latency is counted up to when the poll that first shows it has been answered,
    so it includes up to `interval` of sampling delay, and the client's own time per request
    (`client`: one of POLLERS)."""
    seen: set[tuple[str, int]] = set()

    def note(body: dict[str, Any]) -> None:
        now = time.time_ns()
        for item in body["data"]:
            key = (item["symbol"], item["trade_id"])
            if key not in seen:
                seen.add(key)
                recv = datetime.fromisoformat(item["recv_time"].replace("Z", "+00:00"))
                out.append(now - int(recv.timestamp() * 1e9))

    if client == "httpx":
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while running():
                try:
                    note((await http.get("/latest")).json())
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
                    continue
                await asyncio.sleep(interval)
        return
    lean = LeanHttp(port)
    try:
        while running():
            try:
                note(orjson.loads(await lean.get("/latest")))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            await asyncio.sleep(interval)
    finally:
        lean.close()


# --- recordings ----------------------------------------------------------------------------


#: Products of the simulated recordings per venue, in the lake's normalised form.
VENUE_PRODUCTS = {"binance": [p.replace("-USD", "-USDT") for p in PRODUCTS]}


def recording(workdir: Path, trades: int, exchange: str = "coinbase") -> Path:
    """The simulated recording of `trades` trades in `exchange`'s protocol (written once,
    reused by every phase)."""
    from crypto_sentinel.simulator import write_recording

    suffix = "" if exchange == "coinbase" else f"-{exchange}"
    path = workdir / f"sim-{trades}{suffix}.ndjson"
    if not path.exists():
        print(f"writing a recording of {trades:,} simulated trades to {path}", flush=True)
        products = VENUE_PRODUCTS.get(exchange, PRODUCTS)
        write_recording(path, products, trades, seed=7, venue=exchange)
    return path


def frames_and_trades(path: Path, exchange: str = "simulator") -> tuple[int, int]:
    """(frames, distinct trades) of a recording of `exchange` (a lake name; the codec is its
    venue's): what a lossless pipeline stores (cached)."""
    cache = path.with_suffix(".counts.json")
    if cache.exists() and cache.stat().st_mtime >= path.stat().st_mtime:
        counts = json.loads(cache.read_text())
        return int(counts["frames"]), int(counts["trades"])
    from crypto_sentinel.model import RawFrame, Trade
    from crypto_sentinel.sources.codec import FrameError
    from crypto_sentinel.sources.replay import parse_line
    from crypto_sentinel.sources.venues import decode_frame

    frames, trades = 0, set()
    with path.open() as fh:
        for seq, line in enumerate(fh):
            _, text = parse_line(line.rstrip("\n"))
            frames += 1
            with contextlib.suppress(FrameError):
                decoded = decode_frame(RawFrame(exchange, "bench", seq, time.time_ns(), text))
                for record in decoded if isinstance(decoded, list) else [decoded]:
                    if isinstance(record, Trade):
                        trades.add((record.product_id, record.trade_id))
    cache.write_text(json.dumps({"frames": frames, "trades": len(trades)}))
    return frames, len(trades)


# --- Delta commit times ---------------------------------------------------------------------


class CommitTail:
    """Follows one Delta table's log during a run: for every row a commit adds, the time from
    the row's `recv_time` (frame receipt) to the commit, read from outside the pipeline.

    The commit time is the mtime of `_delta_log/<version>.json`: the moment the commit became
    visible to readers. Only `add` actions with `dataChange` count, so compaction rewriting
    old rows does not. Poll often: the writers trim the log after a few minutes.
    """

    def __init__(self, table: Path) -> None:
        self.table = table
        self.version = 0
        self.rows = 0
        self.commits = 0
        self.skipped_versions = 0
        self.latency_us: array[int] = array("q")
        self.first_recv_us: int | None = None
        self.last_recv_us = 0
        self.first_commit_ns = 0
        self.first_commit_rows = 0
        self.last_commit_ns = 0

    def poll(self) -> int:
        """Read every commit written since the last call; return the rows seen so far."""
        log = self.table / "_delta_log"
        while True:
            entry = log / f"{self.version:020d}.json"
            try:
                text = entry.read_text()
                mtime_ns = entry.stat().st_mtime_ns
            except FileNotFoundError:
                if not self._skip_trimmed(log):
                    return self.rows
                continue
            self._commit(text, mtime_ns)
            self.version += 1

    def _skip_trimmed(self, log: Path) -> bool:
        """Jump over versions removed from the log before they were read."""
        with contextlib.suppress(FileNotFoundError):
            later = [int(p.name[:20]) for p in log.glob("*.json") if p.name[:20].isdigit()]
            later = [v for v in later if v > self.version]
            if later:
                self.skipped_versions += min(later) - self.version
                self.version = min(later)
                return True
        return False

    def _commit(self, text: str, mtime_ns: int) -> None:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        adds = [json.loads(line).get("add") for line in text.splitlines() if '"add"' in line]
        paths = [a["path"] for a in adds if a and a.get("dataChange", True)]
        first = paths and not self.commits
        if paths:
            self.commits += 1
            self.first_commit_ns = self.first_commit_ns or mtime_ns
            self.last_commit_ns = max(self.last_commit_ns, mtime_ns)
        for path in paths:
            recv = pq.read_table(self.table / unquote(path), columns=["recv_time"])
            us = recv.column("recv_time").cast("int64")
            if len(us) == 0:
                continue
            self.rows += len(us)
            if first:
                self.first_commit_rows += len(us)
            low, high = pc.min(us).as_py(), pc.max(us).as_py()
            if self.first_recv_us is None or low < self.first_recv_us:
                self.first_recv_us = low
            self.last_recv_us = max(self.last_recv_us, high)
            self.latency_us.extend(pc.subtract(mtime_ns // 1000, us).to_pylist())

    def latencies(self) -> dict[str, float]:
        return percentiles([us * 1000 for us in self.latency_us])

    def received_per_s(self) -> float:
        """Rows per second of receive time, first to last row."""
        if self.first_recv_us is None or self.last_recv_us <= self.first_recv_us:
            return float("nan")
        return round(self.rows / ((self.last_recv_us - self.first_recv_us) / 1e6), 1)


def delta_rows(table: Path) -> int:
    """Rows of a Delta table now (0 if it does not exist)."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(str(table)):
        return 0
    return int(DeltaTable(str(table)).to_pyarrow_dataset().count_rows())


def kill_all(*procs: subprocess.Popen[bytes] | None) -> None:
    """After a failure: no child of a phase outlives it."""
    for proc in procs:
        if proc is not None and proc.returncode is None and proc.poll() is None:
            proc.kill()
            proc.wait()


def discard(*paths: Path) -> None:
    """Remove what a finished run wrote besides its logs and results: its lake, local state and
    broker log (about 0.1-0.3 GB a run, kept after every run, filled the disk over weeks)."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
