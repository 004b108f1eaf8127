"""Every API route over a real pipeline (replayed Coinbase frames -> lake -> HTTP)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from crypto_sentinel.runtime import Pipeline
from tests.served import REPLAYED_SESSION, SESSION, served_pipeline


def recorded_matches() -> list[dict]:
    out = []
    for line in SESSION.read_text().splitlines():
        msg = json.loads(json.loads(line)["raw"])
        if msg["type"] in ("match", "last_match"):
            out.append(msg)
    return out


@pytest.fixture
async def api(lake: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Pipeline]]:
    async for served in served_pipeline(lake, replayed=True, **REPLAYED_SESSION):
        yield served  # every replayed frame committed (served_pipeline waits for it)


async def test_latest_keeps_the_seed_contract(api: tuple[httpx.AsyncClient, Pipeline]) -> None:
    client, _ = api
    r = await client.get("/latest")
    assert r.status_code == 200
    data = r.json()["data"]
    matches = recorded_matches()
    assert len(data) == len(matches) == 27
    for item in data:
        assert {"symbol", "price", "side", "timestamp", "processing_time"} <= item.keys()
        assert isinstance(item["price"], str)
    by_id = {(m["product_id"], m["trade_id"]): m for m in matches}
    first = data[0]
    src = by_id[(first["symbol"], first["trade_id"])]
    assert Decimal(first["price"]) == Decimal(src["price"])
    assert first["side"] != src["side"]  # taker side
    r = await client.get("/latest", params={"symbol": "NU-GBP", "limit": 2})
    items = r.json()["data"]
    assert len(items) == 2 and {i["symbol"] for i in items} == {"NU-GBP"}
    assert items[0]["trade_id"] > items[1]["trade_id"]  # newest first


async def test_latest_rejects_bad_parameters(api: tuple[httpx.AsyncClient, Pipeline]) -> None:
    client, _ = api
    for params in ({"limit": 0}, {"limit": 51}, {"limit": "x"}):
        r = await client.get("/latest", params=params)
        assert r.status_code == 422
        assert r.json()["error"] == "invalid request parameters"
    r = await client.get("/latest", params={"symbol": "NOPE-USD"})
    assert r.status_code == 404 and "unknown product" in r.json()["error"]


async def test_trades_paginate_by_trade_id(api: tuple[httpx.AsyncClient, Pipeline]) -> None:
    client, _ = api
    want = sorted((m["trade_id"] for m in recorded_matches() if m["product_id"] == "SKL-BTC"),
                  reverse=True)  # fmt: skip
    got: list[int] = []
    params: dict[str, int] = {"limit": 2}
    while True:
        r = await client.get("/v1/products/SKL-BTC/trades", params=params)
        assert r.status_code == 200
        body = r.json()
        got += [t["trade_id"] for t in body["data"]]
        if body["next_before"] is None:
            break
        assert r.headers["CB-AFTER"] == str(body["next_before"])
        params = {"limit": 2, "before": body["next_before"]}
    assert got == want
    r = await client.get("/v1/products/SKL-BTC/trades", params={"limit": 1001})
    assert r.status_code == 422
    r = await client.get("/v1/products/XXX-YYY/trades")
    assert r.status_code == 404


async def test_trades_beyond_hot_state_come_from_the_lake(
    api: tuple[httpx.AsyncClient, Pipeline],
) -> None:
    client, pipeline = api
    pipeline.state.trades.clear()  # forget memory: only the lake can answer now
    want = sorted((m["trade_id"] for m in recorded_matches() if m["product_id"] == "NU-GBP"),
                  reverse=True)  # fmt: skip
    ids: list[int] = []
    for _ in range(40):  # the reader refreshes the table at most every 0.25 s (TRADES_MAX_AGE)
        r = await client.get("/v1/products/NU-GBP/trades", params={"limit": 1000})
        ids = [t["trade_id"] for t in r.json()["data"]]
        if ids == want:
            break
        await asyncio.sleep(0.05)
    assert ids == want


async def test_candles(api: tuple[httpx.AsyncClient, Pipeline]) -> None:
    client, pipeline = api
    params = {"granularity": 60, "start": "2021-04-17T16:40:00Z", "end": "2021-04-17T16:50:00Z"}
    pipeline.state.candles.clear()  # answer from the lake
    trades = [m for m in recorded_matches() if m["product_id"] == "NU-GBP"]
    data: list[dict] = []
    for _ in range(40):  # the reader refreshes candle files at most every 0.25 s
        r = await client.get("/v1/products/NU-GBP/candles", params=params)
        assert r.status_code == 200
        data = r.json()["data"]
        if sum(c["trade_count"] for c in data) == len(trades):
            break
        await asyncio.sleep(0.05)
    assert sum(c["trade_count"] for c in data) == len(trades)
    assert all(c["forming"] is False for c in data)
    starts = [datetime.fromisoformat(c["start"].replace("Z", "+00:00")) for c in data]
    assert starts == sorted(starts, reverse=True)
    assert all(s.tzinfo == UTC and s.second == 0 for s in starts)
    high = max(Decimal(m["price"]) for m in trades)
    assert max(Decimal(c["high"]) for c in data) == high
    bad = {**params, "granularity": 7}
    assert (await client.get("/v1/products/NU-GBP/candles", params=bad)).status_code == 422
    wide = {**params, "start": "2021-04-01T00:00:00Z"}
    assert (await client.get("/v1/products/NU-GBP/candles", params=wide)).status_code == 422
    back = {**params, "start": params["end"], "end": params["start"]}
    assert (await client.get("/v1/products/NU-GBP/candles", params=back)).status_code == 422


async def test_health_ready_metrics(api: tuple[httpx.AsyncClient, Pipeline]) -> None:
    client, _ = api
    health = (await client.get("/health")).json()
    assert health["status"] == "ok"
    assert health["source"]["kind"] == "replay" and health["source"]["finished"] is True
    assert health["engine"]["trades"] == 27
    assert (await client.get("/ready")).status_code == 200
    text = (await client.get("/metrics")).text
    assert "sentinel_commit_seconds_bucket" in text and "sentinel_api_request_seconds" in text
    r = await client.get("/no/such/route")
    assert r.status_code == 404 and "error" in r.json()
