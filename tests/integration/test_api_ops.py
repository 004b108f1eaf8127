"""Errors, CORS, metrics, health and readiness over a real pipeline and uvicorn server."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from crypto_sentinel.runtime import Pipeline
from tests.conftest import free_port
from tests.served import REPLAYED_SESSION, served_pipeline


def run_pipeline(
    lake: Path, ready_status: int = 200, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Pipeline]]:
    return served_pipeline(lake, ready_status=ready_status, **{**REPLAYED_SESSION, **overrides})


@pytest.fixture
async def api(lake: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Pipeline]]:
    async for served in run_pipeline(lake, replayed=True):
        yield served  # every replayed frame committed (served_pipeline waits for it)


def assert_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.request.url, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    return body


async def test_unknown_products_are_404_on_every_route(
    api: tuple[httpx.AsyncClient, Pipeline],
) -> None:
    client, _ = api
    for path, params in (
        ("/latest", {"symbol": "NOPE-USD"}),
        ("/v1/products/NOPE-USD/ticker", {}),
        ("/v1/products/NOPE-USD/trades", {}),
        ("/v1/products/NOPE-USD/candles", {}),
        ("/v1/products/NOPE-USD/stats", {}),
        ("/v1/products/not a product/stats", {}),
        ("/v1/stream/sse", {"product_ids": "NU-GBP,NOPE-USD"}),
    ):
        body = assert_error(await client.get(path, params=params), 404)
        assert "unknown product" in body["error"]


async def test_bad_parameters_are_422_with_a_message(
    api: tuple[httpx.AsyncClient, Pipeline],
) -> None:
    client, _ = api
    for path, params, field in (
        ("/latest", {"limit": 0}, "limit"),
        ("/v1/products/NU-GBP/trades", {"limit": 1001}, "limit"),
        ("/v1/products/NU-GBP/trades", {"limit": 10, "before": 0}, "before"),
        ("/v1/products/NU-GBP/trades", {"before": "x"}, "before"),
        ("/v1/products", {"exchange": "x" * 41}, "exchange"),
        ("/v1/products/NU-GBP/candles", {"granularity": 120}, "granularity"),
        ("/v1/stream/sse", {"product_ids": "NU-GBP", "channels": "trades,candles:7"}, "channels"),
        ("/v1/stream/sse", {}, "product_ids"),
    ):
        body = assert_error(await client.get(path, params=params), 422)
        assert body["error"] == "invalid request parameters"
        assert [d["field"] for d in body["detail"]] == [field], body
        assert all(d["message"] for d in body["detail"])


async def test_other_errors_are_json_too(api: tuple[httpx.AsyncClient, Pipeline]) -> None:
    client, _ = api
    assert_error(await client.get("/no/such/route"), 404)
    assert_error(await client.post("/latest"), 405)
    assert_error(await client.delete("/v1/products"), 405)


async def test_ticker_from_memory_last_trade_or_lake(
    api: tuple[httpx.AsyncClient, Pipeline],
) -> None:
    client, pipeline = api
    state = pipeline.state
    fresh = (await client.get("/v1/products/NU-GBP/ticker")).json()
    assert fresh["source"] == "ticker" and fresh["product_id"] == "NU-GBP"
    assert fresh["best_bid"] is not None and fresh["best_ask"] is not None
    state.tickers.clear()  # no ticker in memory: the last trade is the best it knows
    body = (await client.get("/v1/products/NU-GBP/ticker")).json()
    last = state.last_trade("coinbase", "NU-GBP")
    assert last is not None
    assert body["source"] == "trade" and body["trade_id"] == last.trade_id
    assert Decimal(body["price"]) == last.price and body["best_bid"] is None
    state.trades.clear()  # memory forgot everything: the lake has the same ticker
    assert (await client.get("/v1/products/NU-GBP/ticker")).json() == fresh


async def test_cors_is_off_by_default(api: tuple[httpx.AsyncClient, Pipeline]) -> None:
    """No other site's page may read the API unless api_cors_origins says so."""
    client, _ = api
    for path in ("/latest", "/latest?limit=5", "/health", "/v1/products"):
        r = await client.get(path, headers={"Origin": "https://evil.example"})
        assert r.status_code == 200
        assert not any(h.startswith("access-control-") for h in r.headers), (path, r.headers)
    preflight = {"Origin": "https://x.example", "Access-Control-Request-Method": "GET"}
    r = await client.options("/v1/products", headers=preflight)
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers


async def test_cors_origins_are_configurable(lake: Path) -> None:
    async for client, _ in run_pipeline(lake, api_cors_origins="https://ok.example"):
        r = await client.get("/latest", headers={"Origin": "https://ok.example"})
        assert r.headers["access-control-allow-origin"] == "https://ok.example"
        r = await client.get("/latest", headers={"Origin": "https://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = await client.get("/latest?limit=5", headers={"Origin": "https://ok.example"})
        assert r.headers["access-control-allow-origin"] == "https://ok.example"  # fast path
        preflight = {"Origin": "https://ok.example", "Access-Control-Request-Method": "GET"}
        assert (await client.options("/v1/products", headers=preflight)).status_code == 200
        preflight["Access-Control-Request-Method"] = "POST"
        assert (await client.options("/v1/products", headers=preflight)).status_code == 400


async def test_metrics_cover_ingest_lag_batches_api_and_push(
    api: tuple[httpx.AsyncClient, Pipeline],
) -> None:
    client, _ = api
    await client.get("/latest")
    await client.get("/v1/products/NOPE-USD/trades")
    text = (await client.get("/metrics")).text
    for family in (
        "sentinel_ingest_trades_per_second",
        "sentinel_trades_total",
        "sentinel_consumer_lag_seconds_bucket",
        "sentinel_bus_depth",
        "sentinel_commit_seconds_bucket",
        "sentinel_frame_to_lake_seconds_bucket",
        "sentinel_reconnects_total",
        "sentinel_trade_id_gaps_total",
        "sentinel_hot_state_warmup_seconds",
        "sentinel_push_clients",
        "sentinel_push_dropped_clients_total",
        'sentinel_api_request_seconds_bucket{le="0.001",route="/latest"}',
        'sentinel_api_responses_total{route="/latest",status="200"}',
        'sentinel_api_responses_total{route="/v1/products/{product_id}/trades",status="404"}',
    ):
        assert family in text, family


async def test_health_and_ready_say_what_is_wrong(lake: Path) -> None:
    """A source that cannot connect: not ready (503), health degraded with the reason."""
    dead = f"ws://127.0.0.1:{free_port()}"
    async for client, _ in run_pipeline(
        lake, ready_status=503, source="coinbase", coinbase_ws_url=dead,
        fallback_to_simulator=False, connect_timeout=0.5,
    ):  # fmt: skip
        r = await client.get("/ready")
        assert r.status_code == 503
        assert r.json()["ready"] is False and "source not live yet" in r.json()["reasons"]
        health = (await client.get("/health")).json()
        assert health["status"] == "degraded"
        assert any(reason.startswith("source not connected") for reason in health["reasons"])
        assert health["source"]["connected"] is False
        # The cause by kind; where it tried (address, port) stays in the log.
        port = dead.rsplit(":", 1)[1]
        for body in (r.text, (await client.get("/health")).text):
            assert "127.0.0.1" not in body and port not in body, body


async def test_health_is_ok_and_ready_when_live(
    api: tuple[httpx.AsyncClient, Pipeline],
) -> None:
    client, _ = api
    health = (await client.get("/health")).json()
    assert health["status"] == "ok" and health["reasons"] == []
    assert health["hot_state"]["warm"] is True and health["hot_state"]["products"] == 6
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}


async def test_latest_fast_path_answers_like_the_route(
    api: tuple[httpx.AsyncClient, Pipeline],
) -> None:
    """Memory answers well-formed /latest requests without FastAPI; a repeated parameter
    sends the same request through the FastAPI route: the answers are identical."""
    client, _ = api
    for params in ("limit=5", "symbol=SKL-BTC&limit=3", "", "exchange=coinbase&limit=50"):
        fast = await client.get(f"/latest?{params}")
        routed = await client.get(f"/latest?{params}&limit=7&" + (params or "limit=50"))
        assert fast.status_code == routed.status_code == 200
        assert fast.content == routed.content and fast.json()["data"]
        assert fast.headers["content-type"] == routed.headers["content-type"]


def get_routes(pipeline: Pipeline) -> list[str]:
    """Every GET route of the running app, with a product that exists in its path."""
    assert pipeline.server is not None
    app = pipeline.server.config.app
    documented = [p for p, ops in app.openapi()["paths"].items() if "get" in ops]
    paths = ["/", "/docs", "/redoc", "/openapi.json"]
    for path in map(lambda p: p.replace("{product_id}", "NU-GBP"), documented):
        paths.append(path + ("?product_ids=NU-GBP" if path.endswith("/sse") else ""))
    assert {"/", "/health", "/latest", "/v1/products"} <= set(paths), paths
    return paths


async def test_head_works_wherever_get_does(api: tuple[httpx.AsyncClient, Pipeline]) -> None:
    client, pipeline = api
    for path in get_routes(pipeline):
        head = await client.head(path)
        if "/sse" in path:  # a stream: HEAD gets its headers and ends
            assert head.status_code == 200 and head.content == b"", path
            assert head.headers["content-type"].startswith("text/event-stream")
            continue
        got = await client.get(path)
        expected = 404 if path.endswith("/book") else 200  # books are off here: none to show
        assert head.status_code == got.status_code == expected, (path, head.status_code)
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    assert (await client.head("/v1/products/NOPE-USD/ticker")).status_code == 404
    assert (await client.get("/health")).status_code == 200  # the server is still fine


async def test_public_responses_hold_no_paths_or_host_names(
    api: tuple[httpx.AsyncClient, Pipeline], lake: Path
) -> None:
    """Operator detail (the lake's folder, the source's address, this host) stays in logs."""
    client, pipeline = api
    secrets = {str(lake), str(lake.parent), socket.gethostname(), "127.0.0.1"}
    secrets |= {str(Path.cwd()), str(Path.home())} - {"/"}
    for path in get_routes(pipeline):
        if "/sse" in path:
            continue
        body = (await client.get(path)).text
        for secret in secrets:
            assert secret not in body, (path, secret)
    health = (await client.get("/health")).json()
    assert health["lake"] == "local folder" and "url" not in health["source"]
