"""Several venues in one process: `up --source coinbase,binance,kraken` against a simulator
per venue (each speaking its own protocol) stores each under its own exchange name; the API
lists them at /v1/exchanges, answers per exchange, and refuses an unknown exchange with 404."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx
import websockets

from crypto_sentinel.config import load_settings
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.simulator import SimulatorServer
from tests.conftest import free_port

PRODUCTS = {"coinbase": ["BTC-USD"], "binance": ["BTC-USDT"], "kraken": ["ETH-USD"]}


async def test_three_venues_in_one_process(lake: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        sims = {
            venue: await stack.enter_async_context(
                SimulatorServer(products, rate=30, seed=5, venue=venue)
            )
            for venue, products in PRODUCTS.items()
        }
        port = free_port()
        settings = load_settings(
            source="coinbase,binance,kraken",
            products=PRODUCTS["coinbase"],
            coinbase_ws_url=sims["coinbase"].ws_url,
            coinbase_rest_url=sims["coinbase"].rest_url,
            binance_products=PRODUCTS["binance"],
            binance_ws_url=sims["binance"].ws_url,
            binance_rest_url=sims["binance"].rest_url,
            kraken_products=PRODUCTS["kraken"],
            kraken_ws_url=sims["kraken"].ws_url,
            kraken_rest_url=sims["kraken"].rest_url,
            lake_dir=lake,
            port=port,
            batch_interval_ms=100,
            fallback_to_simulator=False,
        )
        pipeline = Pipeline(settings)
        task = asyncio.create_task(pipeline.run(with_api=True, install_signals=False))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                listed = await wait_for_all(client, task)
                by_name = {item["exchange"]: item for item in listed}
                assert set(by_name) == {"coinbase", "binance", "kraken"}
                for venue, item in by_name.items():
                    assert item["venue"] == venue and item["simulated"] is False
                    assert item["source"]["connected"] is True
                    assert item["products"] == PRODUCTS[venue]
                for venue, (product,) in PRODUCTS.items():
                    r = await client.get(
                        f"/v1/products/{product}/trades", params={"exchange": venue}
                    )
                    assert r.status_code == 200, r.text
                    trades = r.json()["data"]
                    assert trades and all(t["exchange"] == venue for t in trades)
                    r = await client.get(
                        f"/v1/products/{product}/candles", params={"exchange": venue}
                    )
                    assert r.status_code == 200 and r.json()["data"], r.text
                latest = (await client.get("/latest", params={"exchange": "kraken"})).json()
                assert {t["exchange"] for t in latest["data"]} == {"kraken"}
                await check_without_exchange(client)
                for path in ("/latest", "/v1/products", "/v1/products/BTC-USD/candles"):
                    r = await client.get(path, params={"exchange": "nope"})
                    assert r.status_code == 404, (path, r.text)
                    assert "unknown exchange 'nope'" in r.json()["error"]
                health = (await client.get("/health")).json()
                assert {s["exchange"] for s in health["sources"]} == set(PRODUCTS)
            async with websockets.connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
                await ws.send(
                    json.dumps(
                        {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["trades"],
                         "exchange": "nope"}
                    )
                )  # fmt: skip
                answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert answer["type"] == "error" and "unknown exchange" in answer["message"]
        finally:
            pipeline.stop_event.set()
            await asyncio.wait_for(task, 60)


async def check_without_exchange(client: httpx.AsyncClient) -> None:
    """No `exchange`: every venue with data, never one fixed default."""
    rows = (await client.get("/v1/products")).json()["data"]
    listed = {(r["exchange"], r["product_id"]) for r in rows}
    assert listed == {(venue, p) for venue, (p,) in PRODUCTS.items()}, rows
    assert all(r["last"] is not None for r in rows), rows
    symbols = {r["exchange"]: r["venue_symbol"] for r in rows}
    assert symbols == {"coinbase": "BTC-USD", "binance": "BTCUSDT", "kraken": "ETH/USD"}
    for venue, (product,) in PRODUCTS.items():  # each product from the venue that has it
        latest = (await client.get("/latest", params={"symbol": product})).json()["data"]
        assert latest and {t["exchange"] for t in latest} == {venue}, latest
        r = await client.get(f"/v1/products/{product}/candles")
        assert r.status_code == 200 and r.json()["exchange"] == venue, r.text
    for _ in range(80):  # bounded (20 s): until 50 trades of several venues are in memory
        newest = (await client.get("/latest")).json()["data"]
        if len(newest) == 50 and len({t["exchange"] for t in newest}) >= 2:
            break
        await asyncio.sleep(0.25)
    arrived = [t["processing_time"] for t in newest]  # newest received first, as one venue's
    assert arrived == sorted(arrived, reverse=True) and len(newest) == 50
    assert len({t["exchange"] for t in newest}) >= 2, newest  # ~30 trades/s per venue
    async with websockets.connect(f"ws://127.0.0.1:{client.base_url.port}/v1/stream") as ws:
        await ws.send(
            json.dumps({"type": "subscribe", "product_ids": ["BTC-USDT"], "channels": ["trades"]})
        )
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer["type"] == "subscriptions", answer
        assert answer["channels"] == [
            {"name": "trades", "exchange": "binance", "product_ids": ["BTC-USDT"]}
        ]


async def wait_for_all(client: httpx.AsyncClient, task: asyncio.Task[None]) -> list[dict]:
    """Until every venue's source is connected and has stored trades (bounded: 60 s)."""
    listed: list[dict] = []
    for _ in range(240):
        assert not task.done(), task
        try:
            listed = (await client.get("/v1/exchanges")).json()["data"]
        except httpx.TransportError:
            listed = []
        ready = [i for i in listed if i["products"] and (i["source"] or {}).get("connected")]
        if len(ready) == len(PRODUCTS):
            return listed
        await asyncio.sleep(0.25)
    raise AssertionError(f"not every venue delivered: {listed}")
