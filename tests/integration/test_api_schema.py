"""schemathesis against `/openapi.json` of the real app, served by uvicorn over a real lake:
no server errors, every response matches the documented schema and status codes, and
schema-violating requests are rejected with a 4xx."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from crypto_sentinel.config import load_settings
from crypto_sentinel.runtime import Pipeline
from tests.conftest import COINBASE_DATA, free_port

SESSION = COINBASE_DATA / "session.recv_ts.ndjson"
PRODUCTS = "NU-GBP,SKL-BTC,BAND-GBP,YFI-BTC,SKL-USD,DASH-BTC"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
)


@pytest.fixture
async def base_url(lake: Path) -> AsyncIterator[str]:
    port = free_port()
    settings = load_settings(
        source=f"replay:{SESSION}", lake_dir=lake, port=port, products=PRODUCTS,
        batch_interval_ms=50,
    )  # fmt: skip
    pipeline = Pipeline(settings)
    task = asyncio.create_task(pipeline.run(with_api=True, install_signals=False))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(200):
            await asyncio.sleep(0.05)
            if task.done():
                task.result()
            src = pipeline.source
            if src is not None and src.status.finished and pipeline.engine.stats.batches:
                try:
                    if (await client.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    continue
        else:
            raise AssertionError("pipeline did not become ready")
    yield url
    pipeline.stop_event.set()
    await asyncio.wait_for(task, 20)


async def test_openapi_contract_holds_under_schemathesis(base_url: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
        "--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing",
        "--max-examples", "40", "--seed", "7", "--generation-database", "none",
        # the SSE stream never ends by design; tests/integration/test_stream.py covers it
        "--exclude-path", "/v1/stream/sse",
        "--request-timeout", "20", "--no-color",
        "--report", "json", "--report-json-path", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    text = out.decode()
    assert proc.returncode == 0, text[-6000:]
    summary = json.loads(report.read_text())
    assert summary["complete"] is True and summary["exit_code"] == 0
    # every operation but the endless SSE stream (tests/integration/test_stream.py has it)
    assert summary["operations"]["tested"] == summary["operations"]["total"] - 1 == 9
    cases = summary["test_cases"]
    assert cases["generated"] > 300
    assert cases["unique_failures"] == cases["with_failures"] == cases["errored"] == 0
    assert summary["failures"] == [] and summary["errors"] == []
