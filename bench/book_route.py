"""The book route from memory under load: `GET /v1/products/{id}/book?depth=N` at a fixed
rate (open loop) against a running pipeline that keeps books.

A `sentinel simulate --venue binance` child serves the book feed (diff updates and the REST
snapshot, as Binance does), a `sentinel up --source binance` child with books on keeps the
book live; once the route answers a valid book, `bench.api.open_loop` offers RATE requests/s
for `seconds` over CONNECTIONS keep-alive connections. Latency counts from each request's
scheduled time, so a server falling behind shows in p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.api import open_loop
from bench.common import kill_all, sentinel_env, spawn, wait_port, wait_ready
from crypto_sentinel.ops.ports import free_port

PRODUCT = "ETH-USDT"
RATE = 500  # requests/s offered
SECONDS = 20.0
DEPTH = 50
CONNECTIONS = 16
SIM_RATE = "50"  # trades/s of the simulated market: each moves the book


def path(depth: int = DEPTH) -> str:
    return f"/v1/products/{PRODUCT}/book?depth={depth}&exchange=binance"


def _wait_valid_book(port: int, seconds: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    last = ""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        while time.monotonic() < deadline:
            answer = client.get(path())
            if answer.status_code == 200 and answer.json().get("valid"):
                return dict(answer.json())
            last = f"{answer.status_code} {answer.text[:200]}"
            time.sleep(0.2)
    raise RuntimeError(f"no valid book at {path()} after {seconds} s: {last}")


def _usable(port: int) -> int:
    """`port` when it is free (the CLI's default may be taken on a shared machine)."""
    if port:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    return free_port()


def main(workdir: Path, port: int, seconds: float = SECONDS) -> dict[str, Any]:
    """Start the simulator and the pipeline, load the route, stop both."""
    run = workdir / "book-route"
    sim_port, api_port = free_port(), _usable(port)
    logs = run / "logs"
    sim = up = None
    try:
        sim = spawn(
            ["-m", "crypto_sentinel.cli", "simulate", "--venue", "binance", "--sim-port",
             str(sim_port), "--rate", SIM_RATE, "--seed", "3", "--fresh"],
            logs / "simulate.log", sentinel_env(run / "sim-lake", run, PRODUCTS=PRODUCT),
        )  # fmt: skip
        wait_port(sim_port, sim)
        url = f"127.0.0.1:{sim_port}"
        env = sentinel_env(
            run / "lake", run, api_port, SOURCE="binance", BOOKS="true",
            BINANCE_PRODUCTS=PRODUCT, BINANCE_WS_URL=f"ws://{url}",
            BINANCE_REST_URL=f"http://{url}", FALLBACK_TO_SIMULATOR="false",
            MAINTENANCE_ENABLED="false", API_RATE_LIMIT="0",
        )  # fmt: skip
        up = spawn(["-m", "crypto_sentinel.cli", "up"], logs / "up.log", env)
        wait_ready(api_port, up)
        first = _wait_valid_book(api_port)
        load = asyncio.run(open_loop(api_port, [path()], RATE, seconds, CONNECTIONS))
        last = _wait_valid_book(api_port)
    finally:
        for proc in (up, sim):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):  # killed below
                    proc.wait(30)
        kill_all(up, sim)
    return {
        "path": path(),
        "rate": RATE,
        "seconds": seconds,
        "connections": CONNECTIONS,
        "levels": [len(first["bids"]), len(first["asks"])],
        "book_moved": first.get("update_id") != last.get("update_id"),
        **load,
    }
