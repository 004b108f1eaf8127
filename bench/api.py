"""API benchmark: the serving layer under load on 127.0.0.1, next to the seed's method.

1. A simulated day of trades (N trades over the 24 h before now) is replayed into a fresh
   lake (`sentinel replay`), so there is a day of history and of 1-minute candles.
2. `sentinel up --source simulator` starts on that lake: hot state is rebuilt from the lake
   (warm-up), then the live simulator streams trades through the pipeline.
3. Measured, one phase at a time, with a bounded async load generator in this process
   (raw HTTP/1.1 keep-alive connections; open loop, latency counted from each request's
   scheduled time so a stalled server cannot hide queueing):
   - `/latest` at a fixed 1,000 requests/s, and a WebSocket client (own process) measuring
     frame receipt -> trade message received, at the same time;
   - `/latest` closed-loop throughput; other `/v1` routes at a fixed rate;
   - a day of 1-minute candles (5 pages of <= 300) from hot state, and from the lake
     through `sentinel serve` (no hot state: DuckDB over the Delta tables);
   - peak RSS of the pipeline process;
   - reads from the lake alone (`sentinel serve`, no hot state) with LAKE_CLIENTS clients
     at once, route by route, on the lake as the stream leaves it and again after
     `sentinel maintain compact --all`, ingestion running all along, next to the seed's
     newest-file `/latest` with as many clients;
   - a mixed load on `sentinel up`: LOAD_RATE requests/s for LOAD_SECONDS over every
     route (`load_mix`), p99 and statuses per route.
   `--phases` picks some of latest,routes,day,seed,lake,load (default all).
4. Baseline, same lake, same run, same load generator: the seed's `/latest` — list every
   Parquet file of the lake, read the newest trades file and answer its newest rows. The
   seed used pandas; pandas is not installed here, so the file is read with
   pyarrow.parquet (which is what pandas.read_parquet calls underneath).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.ingest import percentiles  # one definition of the percentiles we report

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
LIVE_RATE = 200  # live simulator trades/s while measuring
LATEST_RATE = 1000  # requests/s for the /latest target
LATEST_SECONDS = 10
CONNECTIONS = 32
DAY_REPEATS_HOT = 100
DAY_REPEATS_LAKE = 30
LAKE_CLIENTS = 16  # concurrent clients of `sentinel serve` reading from the lake
LAKE_SECONDS = 4.0  # per route, closed loop
LOAD_RATE = 2000  # mixed requests/s over every route of the pipeline's API
LOAD_SECONDS = 60
LOAD_CONNECTIONS = 64
PHASES = ("latest", "routes", "day", "seed", "lake", "load")

#: Connections of the closed-loop `/latest` throughput runs, ours and the seed's alike.
MAX_CONNECTIONS = 8


# --- numbers ---------------------------------------------------------------------------


# --- a small HTTP/1.1 load generator ----------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: GET, read status and body (Content-Length)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str) -> int:
        if self.writer is None or self.writer.is_closing():
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def open_loop(
    port: int,
    paths: list[str],
    rate: float,
    seconds: float,
    connections: int = CONNECTIONS,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """`rate` requests/s for `seconds` over a pool of connections, whatever the server does.

    Latency runs from the request's scheduled time, so time spent waiting for a free
    connection (the server falling behind) counts. Requests still unanswered 5 s after the
    last one was due are counted as timeouts. With `names` (one per path), the result also
    has percentiles and statuses per name (`per_route`).
    """
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        conn = Connection("127.0.0.1", port)
        await conn.open()
        pool.put_nowait(conn)
    latencies: list[int] = []
    statuses: Counter[int] = Counter()
    by_name: dict[str, list[int]] = {}
    name_statuses: dict[str, Counter[int]] = {}
    errors = 0
    total = int(rate * seconds)
    interval = 1e9 / rate
    start = time.perf_counter_ns() + 50_000_000

    async def one(i: int, due: int) -> None:
        nonlocal errors
        conn = await pool.get()
        try:
            status = await conn.get(paths[i % len(paths)])
            statuses[status] += 1
            took = time.perf_counter_ns() - due
            latencies.append(took)
            if names is not None:
                name = names[i % len(paths)]
                by_name.setdefault(name, []).append(took)
                name_statuses.setdefault(name, Counter())[status] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            conn.close()
            conn.writer = None
        finally:
            pool.put_nowait(conn)

    due_of: dict[asyncio.Task[None], int] = {}
    for i in range(total):
        due = start + int(i * interval)
        delay = (due - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        due_of[asyncio.create_task(one(i, due))] = due
    _, pending = await asyncio.wait(due_of, timeout=5)
    abandoned = time.perf_counter_ns()
    for task in pending:  # unanswered: counted as at least this slow
        task.cancel()
        latencies.append(abandoned - due_of[task])
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = (abandoned - start) / 1e9
    while not pool.empty():
        pool.get_nowait().close()
    answered = len(latencies) - len(pending)
    result = percentiles(latencies)
    if names is not None:
        result["per_route"] = {
            name: {**percentiles(by_name.get(name, [])),
                   "statuses": {str(k): v for k, v in name_statuses.get(name, {}).items()}}
            for name in dict.fromkeys(names)
        }  # fmt: skip
    return {
        **result,
        "offered_per_s": rate,
        "achieved_per_s": round(answered / elapsed, 1),
        "requests": total,
        "timeouts": len(pending),
        "errors": errors,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


async def closed_loop(
    port: int, path: str | list[str], connections: int, seconds: float
) -> dict[str, Any]:
    """Each connection sends its next request as soon as the previous answer arrived (the
    connections take the paths of a list in turn)."""
    paths = [path] if isinstance(path, str) else path
    latencies: list[int] = []
    statuses: Counter[int] = Counter()
    deadline = time.perf_counter() + seconds
    turn = 0

    async def worker() -> None:
        nonlocal turn
        conn = Connection("127.0.0.1", port)
        await conn.open()
        try:
            while time.perf_counter() < deadline:
                turn += 1
                t0 = time.perf_counter_ns()
                statuses[await conn.get(paths[turn % len(paths)])] += 1
                latencies.append(time.perf_counter_ns() - t0)
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return {**percentiles(latencies), "requests_per_s": round(len(latencies) / elapsed, 1),
            "statuses": {str(k): v for k, v in statuses.items()}}  # fmt: skip


async def day_of_candles(port: int, product: str, repeats: int, exchange: str) -> dict[str, Any]:
    """Fetch the last 24 h of 1-minute candles (5 pages of <= 300), `repeats` times."""
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    pages = []
    hi = end
    while hi > end - timedelta(days=1):
        lo = max(hi - timedelta(minutes=300), end - timedelta(days=1))
        pages.append(
            f"/v1/products/{product}/candles?granularity=60&exchange={exchange}"
            f"&start={lo.strftime('%Y-%m-%dT%H:%M:%SZ')}&end={hi.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        )
        hi = lo
    conn = Connection("127.0.0.1", port)
    await conn.open()
    days: list[int] = []
    page_ns: list[int] = []
    candles = 0
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for page in pages:  # one checked pass: how many candles a day holds
                r = await client.get(page)
                r.raise_for_status()
                candles += len(r.json()["data"])
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for page in pages:
                p0 = time.perf_counter_ns()
                status = await conn.get(page)
                page_ns.append(time.perf_counter_ns() - p0)
                assert status == 200, status
            days.append(time.perf_counter_ns() - t0)
    finally:
        conn.close()
    return {"day": percentiles(days), "page": percentiles(page_ns), "pages": len(pages),
            "candles": candles}  # fmt: skip


# --- reads from the lake (item 8) and the mixed load (issue 20) --------------------------


def old_trade_ids(lake: Path) -> dict[str, list[int]]:
    """Per product, the first trade id of the minutes 23, 18, 12, 6 and 2 hours ago (from
    the 1-minute candles): cursors far below what memory holds. By time, not by spreading
    over the id range: the simulator's live ids jump far above the replayed day's."""
    from crypto_sentinel.lake import tables as T
    from crypto_sentinel.lake.query import LakeReader

    now = datetime.now(UTC)
    out: dict[str, list[int]] = {}
    reader = LakeReader(lake)
    for hours in (23, 18, 12, 6, 2):
        rows = reader.query(
            T.CANDLES_1M,
            "SELECT product_id, arg_min(first_trade_id, start) AS id FROM t"
            " WHERE exchange = 'simulator' AND start >= ? GROUP BY product_id",
            [now - timedelta(hours=hours)],
        )
        for r in rows:
            out.setdefault(r["product_id"], []).append(r["id"])
    return {p: ids for p, ids in out.items() if len(ids) == 5}


def _at(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def lake_read_paths(old_ids: dict[str, list[int]]) -> dict[str, list[str]]:
    """What an API replica over the lake (`sentinel serve`) is asked, by route."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    old = now - timedelta(hours=20)
    return {
        "/latest": ["/latest"],
        "/latest?symbol=": [f"/latest?symbol={p}" for p in PRODUCTS],
        "trades?limit=100": [f"/v1/products/{p}/trades?limit=100" for p in PRODUCTS],
        "trades?before=<old id>&limit=100": [
            f"/v1/products/{p}/trades?limit=100&before={i}"
            for i_s in zip(*old_ids.values(), strict=True)
            for p, i in zip(old_ids, i_s, strict=True)
        ],
        "candles 60 s, 300 minutes from 20 h ago": [
            f"/v1/products/{p}/candles?granularity=60&start={_at(old)}"
            f"&end={_at(old + timedelta(minutes=300))}"
            for p in PRODUCTS
        ],
        "candles 900 s, 12 h from 22 h ago": [
            f"/v1/products/{p}/candles?granularity=900&start={_at(now - timedelta(hours=22))}"
            f"&end={_at(now - timedelta(hours=10))}"
            for p in PRODUCTS
        ],
        "candles 3600 s, default window": [
            f"/v1/products/{p}/candles?granularity=3600" for p in PRODUCTS
        ],
    }


#: Requests per round of the mixed load: every other route once, the rest `/latest` (the
#: route the seed's frontend polls) and `/latest?symbol=` (LOAD_SYMBOL_SHARE of them).
LOAD_ROUND = 250
LOAD_SYMBOL_SHARE = 10


def load_mix(old_ids: dict[str, list[int]]) -> list[tuple[str, str]]:
    """(route, path) of the mixed load, round after round: each round asks every route
    other than `/latest` once (the product and cursor change from round to round) and fills
    up to LOAD_ROUND requests with `/latest`, spread through the round."""
    reads = lake_read_paths(old_ids)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    week_ago, six_h = _at(now - timedelta(days=3)), _at(now - timedelta(hours=6))
    rounds = []
    olds = reads["trades?before=<old id>&limit=100"]
    for k, p in enumerate(PRODUCTS * 2):
        others = [
            ("/v1/products", "/v1/products"),
            ("ticker", f"/v1/products/{p}/ticker"),
            ("stats", f"/v1/products/{p}/stats"),
            ("trades?limit=100", f"/v1/products/{p}/trades?limit=100"),
            ("trades?before=<old id>&limit=100", olds[k % len(olds)]),
            ("candles 60 s, newest 300", f"/v1/products/{p}/candles?granularity=60"),
            ("candles 300 s, newest 300", f"/v1/products/{p}/candles?granularity=300"),
            ("candles 86400 s, newest 300", f"/v1/products/{p}/candles?granularity=86400"),
            ("candles 21600 s, 3 days to 6 h ago",
             f"/v1/products/{p}/candles?granularity=21600&start={week_ago}&end={six_h}"),
            *((name, reads[name][k % len(PRODUCTS)]) for name in (
                "candles 60 s, 300 minutes from 20 h ago", "candles 900 s, 12 h from 22 h ago",
                "candles 3600 s, default window")),
            ("/health", "/health"),
            ("/ready", "/ready"),
            ("/metrics", "/metrics"),
            ("/ (dashboard)", "/"),
        ]  # fmt: skip
        fill = LOAD_ROUND - len(others)
        latest = [
            ("/latest?symbol=", f"/latest?symbol={PRODUCTS[i % len(PRODUCTS)]}")
            if i % LOAD_SYMBOL_SHARE == 0 else ("/latest", "/latest")
            for i in range(fill)
        ]  # fmt: skip
        step = fill // len(others)
        one: list[tuple[str, str]] = []
        for i, other in enumerate(others):
            one += [other, *latest[i * step : (i + 1) * step]]
        one += latest[len(others) * step :]
        rounds += one
    return rounds


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


async def lake_reads(port: int, seed_port: int, paths: dict[str, list[str]]) -> dict[str, Any]:
    """Each route of `sentinel serve` from LAKE_CLIENTS clients at once (closed loop), then
    the seed's `/latest` (newest Parquet file) the same way: the baseline."""
    out: dict[str, Any] = {}
    for name, route_paths in paths.items():
        out[name] = {**await closed_loop(port, route_paths, LAKE_CLIENTS, LAKE_SECONDS),
                     "load_average": load_average()}  # fmt: skip
    out["seed /latest (baseline)"] = {
        **await closed_loop(seed_port, "/latest", LAKE_CLIENTS, LAKE_SECONDS),
        "load_average": load_average(),
    }
    return out


def trade_files(lake: Path) -> int:
    from deltalake import DeltaTable

    from crypto_sentinel.lake import tables as T

    return len(DeltaTable(str(T.TRADES.path(lake))).file_uris())


def compact(lake: Path, port: int) -> dict[str, Any]:
    """`sentinel maintain compact --all` of trades and 1-minute candles (ingestion goes on)."""
    before = trade_files(lake)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "crypto_sentinel.cli", "maintain", "compact", "--all",
         "--table", "silver.trades", "--table", "gold.candles_1m", "--lake", str(lake)],
        env=_env(lake, port), check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return {"trade_files_before": before, "trade_files_after": trade_files(lake),
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


async def mixed_load(port: int, mix: list[tuple[str, str]]) -> dict[str, Any]:
    """LOAD_RATE requests/s for LOAD_SECONDS, the mix's paths in turn (open loop)."""
    started = load_average()
    result = await open_loop(port, [p for _, p in mix], LOAD_RATE, LOAD_SECONDS,
                             LOAD_CONNECTIONS, names=[n for n, _ in mix])  # fmt: skip
    fives = sum(v for k, v in result["statuses"].items() if k.startswith("5"))
    return {**result, "server_errors": fives, "load_average": [started, load_average()]}


# --- children ------------------------------------------------------------------------------


def _env(lake: Path, port: int, **extra: str) -> dict[str, str]:
    from crypto_sentinel.config import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    settings = {"LAKE_DIR": str(lake), "PORT": str(port), "PRODUCTS": ",".join(PRODUCTS),
                "LOG_LEVEL": "WARNING", **extra}  # fmt: skip
    if "api_rate_limit" in Settings.model_fields:  # the load generator is one client: no limit
        settings["API_RATE_LIMIT"] = "0"
    env.update({f"SENTINEL_{k}": v for k, v in settings.items()})
    return env


#: Niceness of everything measured (children and this load generator): a shared machine's
#: other work then disturbs the measurement less. Lowering it needs root; otherwise the
#: benchmark runs at normal priority and says so in its result.
PRIORITY = -10


def _raise_priority() -> None:
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, PRIORITY)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=out, stderr=out, preexec_fn=_raise_priority
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rss_mb(pid: int) -> dict[str, float]:
    """Current and peak resident memory of a child (Linux /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields.get("VmRSS", 0.0), "peak_rss_mb": fields.get("VmHWM", 0.0)}


async def _wait_ready(port: int, proc: subprocess.Popen[bytes], path: str = "/ready") -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(1200):
            if proc.poll() is not None:
                raise RuntimeError(f"child exited with {proc.returncode}")
            try:
                if (await client.get(path)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("child did not become ready in 120 s")


async def _metric(port: int, name: str) -> float:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for line in (await client.get("/metrics")).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return float("nan")


def ws_probe(url: str, seconds: float) -> dict[str, Any]:
    """Child: subscribe to trades, measure frame receipt -> message received here."""
    from websockets.sync.client import connect

    latencies: list[int] = []
    deadline = time.monotonic() + seconds
    with connect(url, compression=None) as ws:
        ws.send(json.dumps({"type": "subscribe", "product_ids": PRODUCTS, "channels": ["trades"]}))
        while time.monotonic() < deadline:
            try:
                text = ws.recv(timeout=1)
            except TimeoutError:
                continue
            now = time.time_ns()
            msg = json.loads(text)
            if msg["type"] == "trade":
                recv = datetime.fromisoformat(msg["recv_time"].replace("Z", "+00:00"))
                epoch = recv - datetime(1970, 1, 1, tzinfo=UTC)
                latencies.append(now - epoch // timedelta(microseconds=1) * 1000)
    return percentiles(latencies)


def seed_app(lake: Path) -> Any:
    """The seed's `/latest` (bench/seed.py) as a FastAPI app."""
    from fastapi import FastAPI

    from bench.seed import seed_latest, seed_response

    app = FastAPI()

    @app.get("/latest")
    def latest(limit: int = 50) -> dict[str, Any]:
        return seed_response(seed_latest(lake, limit))

    return app


def child(kind: str, *args: str) -> None:
    if kind == "seed":
        import uvicorn

        uvicorn.run(seed_app(Path(args[0])), host="127.0.0.1", port=int(args[1]),
                    log_level="warning")  # fmt: skip
    elif kind == "wsprobe":
        print("RESULT " + json.dumps(ws_probe(args[0], float(args[1]))), flush=True)


# --- the run ----------------------------------------------------------------------------------


def _record(path: Path, trades: int) -> tuple[int, int]:
    """A simulated day up to now (heartbeat frames left out); returns (trades, frames)."""
    from crypto_sentinel.simulator import write_recording

    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1, minutes=1)
    raw = path.with_suffix(".full")
    write_recording(raw, PRODUCTS, trades, seed=7, rate=trades / 86_400, start=start)
    frames = 0
    with raw.open() as src, path.open("w") as out:
        for line in src:
            if '\\"heartbeat\\"' not in line:
                out.write(line)
                frames += 1
    raw.unlink()
    return trades, frames


async def _measure(
    workdir: Path, lake: Path, port: int, phases: tuple[str, ...] = PHASES
) -> dict[str, Any]:
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    lake_port, seed_port = port + 1, port + 2
    # no maintenance pass of its own: the lake phase measures the lake as the stream leaves
    # it, then compacted by `sentinel maintain compact`
    up = _start(["-m", "crypto_sentinel.cli", "up"],
                _env(lake, port, SOURCE="simulator", SIMULATOR_RATE=str(LIVE_RATE),
                     SIMULATOR_SEED="3", MAINTENANCE_ENABLED="false"),
                logs / "up.log")  # fmt: skip
    serve = _start(["-m", "crypto_sentinel.cli", "serve", "--exchange", "simulator"],
                   _env(lake, lake_port), logs / "serve.log")  # fmt: skip
    seed = _start(["-m", "bench.api", "seed", str(lake), str(seed_port)], dict(os.environ),
                  logs / "seed.log")  # fmt: skip
    out: dict[str, Any] = {}
    try:
        await _wait_ready(port, up)
        await _wait_ready(lake_port, serve, "/health")
        await _wait_ready(seed_port, seed, "/latest")
        await asyncio.sleep(3)  # live trades flowing, first batches committed
        out["warmup_seconds"] = await _metric(port, "sentinel_hot_state_warmup_seconds")
        out["rss_after_warmup"] = _rss_mb(up.pid)
        out["phases"] = list(phases)
        if "latest" in phases:
            await _latest_phases(out, port)
        if "routes" in phases:
            await _route_phases(out, port)
        if "day" in phases:
            print("a day of 1-minute candles: hot state, then the lake ...", flush=True)
            out["day_hot"] = await day_of_candles(port, "BTC-USD", DAY_REPEATS_HOT, "simulator")
            out["day_lake"] = await day_of_candles(lake_port, "BTC-USD", DAY_REPEATS_LAKE,
                                                   "simulator")  # fmt: skip
        if "seed" in phases:
            print("baseline: the seed's /latest on the same lake ...", flush=True)
            out["seed_one_client"] = await closed_loop(seed_port, "/latest", 1, 5)
            out["seed_max"] = await closed_loop(seed_port, "/latest", MAX_CONNECTIONS, 5)
            out["seed_1000"] = await open_loop(seed_port, ["/latest"], LATEST_RATE, 3)
            out["lake_latest_one_client"] = await closed_loop(lake_port, "/latest", 1, 3)
        out["seed_files"] = sum(1 for _ in lake.rglob("*.parquet"))
        old_ids = old_trade_ids(lake) if {"lake", "load"} & set(phases) else {}
        if "lake" in phases:
            paths = lake_read_paths(old_ids)
            print(f"lake reads, {LAKE_CLIENTS} clients, as the stream left the lake ...",
                  flush=True)  # fmt: skip
            out["lake_files_uncompacted"] = trade_files(lake)
            out["lake_uncompacted"] = await lake_reads(lake_port, seed_port, paths)
            print("compacting trades and candles (ingestion goes on) ...", flush=True)
            out["compaction"] = await asyncio.to_thread(compact, lake, port)
            await asyncio.sleep(1)
            print(f"lake reads, {LAKE_CLIENTS} clients, compacted ...", flush=True)
            out["lake_compacted"] = await lake_reads(lake_port, seed_port, paths)
        if "load" in phases:
            print(f"mixed load: {LOAD_RATE} requests/s for {LOAD_SECONDS} s ...", flush=True)
            out["load"] = await mixed_load(port, load_mix(old_ids))

        out["ingest_trades_per_s"] = await _metric(port, "sentinel_ingest_trades_per_second")
        out["pipeline_rss"] = _rss_mb(up.pid)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = (await client.get("/health")).json()
        out["engine"] = health["engine"]
        out["hot_state"] = health["hot_state"]
        out["push"] = health["push"]
    finally:
        for proc in (up, serve, seed):
            _stop(proc)
    return out


async def _latest_phases(out: dict[str, Any], port: int) -> None:
    print(f"/latest at {LATEST_RATE}/s + WebSocket probe ...", flush=True)
    probe = subprocess.Popen(
        [sys.executable, "-m", "bench.api", "wsprobe",
         f"ws://127.0.0.1:{port}/v1/stream", str(LATEST_SECONDS + 1)],
        stdout=subprocess.PIPE, text=True, preexec_fn=_raise_priority,
    )  # fmt: skip
    await asyncio.sleep(0.5)
    out["latest_1000"] = await open_loop(port, ["/latest"], LATEST_RATE, LATEST_SECONDS)
    probe_out, _ = probe.communicate(timeout=60)
    out["frame_to_ws_client"] = json.loads(probe_out.split("RESULT ", 1)[1])
    print("WebSocket probe alone ...", flush=True)
    alone, _ = subprocess.Popen(
        [sys.executable, "-m", "bench.api", "wsprobe", f"ws://127.0.0.1:{port}/v1/stream",
         "5"], stdout=subprocess.PIPE, text=True, preexec_fn=_raise_priority,
    ).communicate(timeout=60)  # fmt: skip
    out["frame_to_ws_client_idle"] = json.loads(alone.split("RESULT ", 1)[1])
    out["latest_max"] = await closed_loop(port, "/latest", MAX_CONNECTIONS, 5)
    out["latest_one_client"] = await closed_loop(port, "/latest", 1, 3)


async def _route_phases(out: dict[str, Any], port: int) -> None:
    print("other routes ...", flush=True)
    routes = {  # name: (path, requests/s)
        "products": ("/v1/products", 200),
        "ticker": ("/v1/products/BTC-USD/ticker", 200),
        "stats": ("/v1/products/BTC-USD/stats", 200),
        "trades?limit=100": ("/v1/products/BTC-USD/trades?limit=100", 200),
        "candles, 300 x 5 min (134 kB)": ("/v1/products/BTC-USD/candles?granularity=300", 50),
    }
    out["routes"] = {
        name: await open_loop(port, [path], rate, 5, 8) for name, (path, rate) in routes.items()
    }


def main(trades: int, workdir: Path, port: int, phases: str | None = None) -> dict[str, Any]:
    chosen = tuple(p.strip() for p in (phases or ",".join(PHASES)).split(",") if p.strip())
    unknown = set(chosen) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    load_at_start = os.getloadavg()[0]
    workdir.mkdir(parents=True, exist_ok=True)
    run = workdir / f"api-{int(time.time())}"
    run.mkdir()
    recording, lake = run / "day.ndjson", run / "lake"
    print(f"recording a simulated day of {trades:,} trades ...", flush=True)
    t0 = time.perf_counter()
    _, frames = _record(recording, trades)
    print(f"replaying it into {lake} ...", flush=True)
    t1 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "crypto_sentinel.cli", "replay", str(recording), "--speed", "max",
         "--exchange", "simulator"], env=_env(lake, port), check=True,
    )  # fmt: skip
    build = {"frames": frames, "record_seconds": round(t1 - t0, 1),
             "replay_seconds": round(time.perf_counter() - t1, 1)}  # fmt: skip
    build["replay_trades_per_s"] = round(trades / build["replay_seconds"])
    _raise_priority()
    measured = asyncio.run(_measure(run, lake, port, chosen))
    measured["niceness"] = os.getpriority(os.PRIO_PROCESS, 0)
    recording.unlink()
    return {
        "benchmark": "api",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average (shared machine) {load_at_start:.1f} at the"
        f" start, {os.getloadavg()[0]:.1f} at the end",
        "command": f"sentinel bench api --trades {trades} --port {port}"
        + (f" --phases {phases}" if phases else ""),
        "trades": trades,
        "live_rate": LIVE_RATE,
        "build": build,
        **measured,
    }


def markdown(result: dict[str, Any]) -> str:
    def pp(d: dict[str, Any]) -> str:
        return f"{d['p50_ms']} / {d['p99_ms']} ms"

    rows = [
        f"### API, a simulated day of {result['trades']:,} trades — {result['date']}",
        f"Machine: {result['machine']}. Command: `{result['command']}`. Live simulator at "
        f"{result['live_rate']} trades/s during all measurements; lake of "
        f"{result['seed_files']} Parquet files; processes measured at niceness "
        f"{result.get('niceness', 0)}.",
        "",
        "| measurement | Crypto Sentinel | seed method (baseline, same lake, same run) | target |",
        "|---|---|---|---|",
    ]
    if "latest_1000" in result:
        lat = result["latest_1000"]
        ws, idle = result["frame_to_ws_client"], result["frame_to_ws_client_idle"]
        seed = result.get("seed_1000")
        seed_one = result.get("seed_one_client")
        seed_max = result.get("seed_max")
        rows += [
            f"| `/latest` p50 / p99 at {lat['offered_per_s']:.0f} req/s (open loop, "
            f"{lat['requests']:,} requests) | {pp(lat)} (achieved {lat['achieved_per_s']} req/s)"
            + (f" | {pp(seed)} (achieved {seed['achieved_per_s']} req/s, {seed['timeouts']} "
               f"timeouts of {seed['requests']:,})" if seed else " | —")
            + " | p99 <= 5 ms |",
            f"| `/latest`, one client, p50 / p99 | {pp(result['latest_one_client'])} "
            f"| {pp(seed_one) if seed_one else '—'} | |",
            f"| `/latest` throughput ({MAX_CONNECTIONS} connections each) | "
            f"{result['latest_max']['requests_per_s']:,} req/s | "
            + (f"{seed_max['requests_per_s']} req/s" if seed_max else "—")
            + " | |",
            f"| frame in -> WebSocket client p50 / p99, during the {lat['offered_per_s']:.0f} "
            f"req/s load ({ws['n']:,} trades) | {pp(ws)} | — | p99 <= 20 ms |",
            f"| frame in -> WebSocket client p50 / p99, no HTTP load ({idle['n']:,} trades) "
            f"| {pp(idle)} | — | |",
        ]  # fmt: skip
    if "day_hot" in result:
        hot, lake = result["day_hot"], result["day_lake"]
        rows += [
            f"| a day of 1-minute candles ({hot['candles']:,} candles, {hot['pages']} pages), "
            f"memory, p50 / p99 | {pp(hot['day'])} (page {pp(hot['page'])}) | — | p99 <= 20 ms |",
            f"| a day of 1-minute candles from the lake (`sentinel serve`, no hot state), p50 / "
            f"p99 | {pp(lake['day'])} (page {pp(lake['page'])}) | — | p99 <= 100 ms |",
        ]
    if "seed_1000" in result and "latest_1000" not in result:
        seed, seed_one = result["seed_1000"], result["seed_one_client"]
        rows += [
            f"| `/latest` p50 / p99 at {seed['offered_per_s']:.0f} req/s (open loop) | — | "
            f"{pp(seed)} (achieved {seed['achieved_per_s']} req/s, {seed['timeouts']} timeouts "
            f"of {seed['requests']:,}) | |",
            f"| `/latest`, one client, p50 / p99 | — | {pp(seed_one)} | |",
        ]
    if "lake_latest_one_client" in result:
        rows.append(
            f"| `/latest` from the lake (`sentinel serve`), one client | "
            f"{pp(result['lake_latest_one_client'])} | | |"
        )
    for name, r in result.get("routes", {}).items():
        rows.append(f"| `{name}` at {r['offered_per_s']:.0f} req/s, p50 / p99 | {pp(r)} | — | |")
    if "pipeline_rss" in result:
        rss = result["pipeline_rss"]
        rows.append(
            f"| pipeline RSS after warm-up / at the end (peak) | "
            f"{result['rss_after_warmup']['rss_mb']} / {rss['rss_mb']} MB "
            f"({rss['peak_rss_mb']} MB) | | |"
        )
    rows += [
        f"| hot-state warm-up from the lake | {result['warmup_seconds']} s | | |",
        f"| replay of the day into the lake | {result['build']['replay_trades_per_s']:,} "
        f"trades/s ({result['build']['replay_seconds']} s) | | |",
        "",
    ]
    if "lake_uncompacted" in result:
        rows += _lake_rows(result)
    if "load" in result:
        rows += _load_rows(result["load"])
    return "\n".join(rows)


def _lake_rows(result: dict[str, Any]) -> list[str]:
    before, after = result["lake_uncompacted"], result["lake_compacted"]
    comp = result["compaction"]
    rows = [
        f"#### Reads from the lake: `sentinel serve` (no hot state), {LAKE_CLIENTS} clients at "
        f"once (closed loop, {LAKE_SECONDS:.0f} s per route), ingestion running",
        f"Lake as the stream left it: {result['lake_files_uncompacted']} live trade files; "
        f"compacted (`sentinel maintain compact --all`, {comp['seconds']} s while ingesting): "
        f"{comp['trade_files_after']} live trade files. Load average (1 min) after each route "
        "in brackets.",
        "",
        "| route | uncompacted p50 / p99 / max | compacted p50 / p99 / max | target p99 |",
        "|---|---|---|---|",
    ]
    for name in before:
        b, a = before[name], after[name]
        target = "<= 10 ms" if name.startswith("/latest") else "<= 50 ms"
        if name.startswith("seed"):
            target = "(baseline)"
        cells = [
            f"{r['p50_ms']} / {r['p99_ms']} / {r['max_ms']} ms, {r['requests_per_s']} req/s "
            f"({r['load_average']})" + _not_ok(r["statuses"])
            for r in (b, a)
        ]
        rows.append(f"| `{name}` | {cells[0]} | {cells[1]} | {target} |")
    return [*rows, ""]


def _not_ok(statuses: dict[str, int]) -> str:
    bad = {k: v for k, v in statuses.items() if k != "200"}
    return f", statuses {bad}" if bad else ""


def _load_rows(load: dict[str, Any]) -> list[str]:
    rows = [
        f"#### Mixed load on `sentinel up` (ingestion running): {load['offered_per_s']:.0f} "
        f"requests/s for {LOAD_SECONDS} s, open loop, {LOAD_CONNECTIONS} connections",
        f"{load['requests']:,} requests, achieved {load['achieved_per_s']} req/s; errors "
        f"{load['errors']}, timeouts {load['timeouts']}, 5xx {load['server_errors']}; statuses "
        f"{load['statuses']}; all routes p50 / p99 / max {load['p50_ms']} / {load['p99_ms']} / "
        f"{load['max_ms']} ms; load average {load['load_average'][0]} at the start, "
        f"{load['load_average'][1]} at the end.",
        "",
        "| route | requests | p50 / p99 / max | statuses |",
        "|---|---|---|---|",
    ]
    for name, r in load["per_route"].items():
        rows.append(
            f"| `{name}` | {r['n']:,} | {r['p50_ms']} / {r['p99_ms']} / {r['max_ms']} ms "
            f"| {r['statuses']} |"
        )
    return [*rows, ""]


if __name__ == "__main__":
    child(sys.argv[1], *sys.argv[2:])
