"""A real pipeline with its API on a free port, for the tests that talk HTTP to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from crypto_sentinel.config import load_settings
from crypto_sentinel.lake.writer import Batch
from crypto_sentinel.runtime import Pipeline
from tests.conftest import COINBASE_DATA, free_port

SESSION = COINBASE_DATA / "session.recv_ts.ndjson"
SESSION_PRODUCTS = "NU-GBP,SKL-BTC,BAND-GBP,YFI-BTC,SKL-USD,DASH-BTC"
#: Settings replaying the recorded Coinbase session (27 trades) in small batches.
REPLAYED_SESSION: dict[str, Any] = {
    "source": f"replay:{SESSION}",
    "products": SESSION_PRODUCTS,
    "batch_interval_ms": 50,
}


async def served_pipeline(
    lake: Path, *, ready_status: int = 200, replayed: bool = False, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Pipeline]]:
    """Start `Pipeline.run(with_api=True)`; yield a client once `/ready` answers
    `ready_status` (and, with `replayed`, once the source finished and every frame it read
    was committed to the lake)."""
    port = free_port()
    pipeline = Pipeline(load_settings(lake_dir=lake, port=port, **settings))
    committed = [0]  # frames in committed batches

    def count(batch: Batch) -> None:
        committed[0] += batch.frame_count

    pipeline.engine.on_commit.append(count)
    task = asyncio.create_task(pipeline.run(with_api=True, install_signals=False))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(600):  # bounded: 30 s
                await asyncio.sleep(0.05)
                if task.done():
                    task.result()
                src = pipeline.source
                if replayed and not (
                    src is not None and src.status.finished and committed[0] >= src.status.frames
                ):
                    continue
                try:
                    if (await client.get("/ready")).status_code == ready_status:
                        break
                except httpx.TransportError:
                    continue
            else:
                raise AssertionError(f"API did not answer /ready with {ready_status}")
            yield client, pipeline
    finally:
        pipeline.stop_event.set()
        await asyncio.wait_for(task, 30)
