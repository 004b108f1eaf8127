"""`sentinel up --source simulator` in a child process, for synchronous tests that talk to its
API (hypothesis, Playwright) and read everything it logged."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port


@dataclass
class ApiProcess:
    base: str
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://", 1) + "/v1/stream"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def sentinel_up(work: Path, **settings: str) -> Iterator[ApiProcess]:
    """The pipeline on the built-in simulator with `SENTINEL_<NAME>` = value for each setting;
    yields once `/ready` answers 200. Its stdout and stderr go to `work/up.log`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    values = {"SOURCE": "simulator", "LAKE_DIR": str(work / "lake"), "PORT": str(port),
              "PRODUCTS": "BTC-USD,ETH-USD", "SIMULATOR_RATE": "50", **settings}  # fmt: skip
    env.update({f"SENTINEL_{k.upper()}": v for k, v in values.items()})
    log = work / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crypto_sentinel.cli", "up"], env=env, cwd=work,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    api = ApiProcess(f"http://127.0.0.1:{port}", log, proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"sentinel up exited: {api.output()[-4000:]}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{api.base}/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "sentinel up did not become ready"
            time.sleep(0.2)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
