"""Protocol fuzzing of live push: random and mutated subscribe messages over the WebSocket
`/v1/stream`, random query strings on the SSE `/v1/stream/sse`. The server (a real
`sentinel up`, its own process) must stay up, never answer 5xx, keep each WebSocket open
and answer every message, and say what was wrong in a short, plain error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from crypto_sentinel.api.stream import CHANNELS
from tests.apiproc import ApiProcess, sentinel_up

PRODUCTS = ["BTC-USD", "ETH-USD"]
PUSHED = {"subscriptions", "error", "trade", "ticker", "candle", "heartbeat", "pong"}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    work = tmp_path_factory.mktemp("fuzz")
    with sentinel_up(work, api_heartbeat_seconds="0.5") as api:
        yield api
        assert api.alive(), "the server died under fuzzing"
        log = api.output()
        assert "Traceback" not in log and "unhandled error" not in log, log[-4000:]


# --- what is sent ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=25,
)
names = (
    st.sampled_from(PRODUCTS)
    | st.text(max_size=60)
    | st.sampled_from(
        ["", "btc-usd", "NOPE-USD", "X" * 41, "BTC-USD\x00", "../etc", "' OR 1=1 --", "🙂-USD"]
    )
)
channels = (
    st.sampled_from(list(CHANNELS))
    | st.text(max_size=20)
    | st.sampled_from(["candles:7", "candles:", "candles:60:60", "TRADES", "ticker "])
)


def lists(items: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(items, max_size=8) | st.lists(items, min_size=195, max_size=260) | json_values


messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "ping"]) | json_values},
    optional={
        "product_ids": lists(names),
        "channels": lists(channels),
        "exchange": st.sampled_from(["simulator", "coinbase", "e" * 41]) | json_values,
    },
)


@st.composite
def mutated(draw: st.DrawFn) -> str | bytes:
    """A valid subscribe message, then cut, spliced, or sent as (possibly invalid) bytes."""
    product, channel = draw(st.sampled_from(PRODUCTS)), draw(st.sampled_from(list(CHANNELS)))
    text = json.dumps({"type": "subscribe", "product_ids": [product], "channels": [channel]})
    at = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["cut", "insert", "replace", "bytes", "double"]))
    if how == "cut":
        return text[:at]
    if how == "insert":
        return text[:at] + draw(st.text(min_size=1, max_size=10)) + text[at:]
    if how == "replace":
        return text[:at] + draw(st.text(min_size=1, max_size=3)) + text[at + 3 :]
    if how == "double":
        return text + text
    raw = text.encode()
    return raw[:at] + draw(st.binary(min_size=1, max_size=6)) + raw[at:]


frames = (
    messages.map(json.dumps)
    | mutated()
    | st.text(max_size=200)
    | json_values.map(json.dumps)
    | st.binary(max_size=200)
)


# --- the tests ---------------------------------------------------------------------------


@FUZZ
@given(sent=st.lists(frames, min_size=1, max_size=5))
def test_websocket_survives_any_client_message(server: ApiProcess, sent: list[str | bytes]) -> None:
    with connect(server.ws, open_timeout=10, max_size=None) as ws:
        for frame in sent:
            ws.send(frame)
        ws.send('{"type": "ping"}')  # answered after every reply to what came before
        while True:
            msg = json.loads(ws.recv(timeout=10))
            assert msg["type"] in PUSHED, msg
            if msg["type"] == "error":
                text = msg["message"]
                assert isinstance(text, str) and 0 < len(text) <= 300, msg
                assert "Traceback" not in text and "internal" not in text, msg
            if msg["type"] == "pong":
                break
    assert httpx.get(f"{server.base}/health", timeout=10).status_code == 200


query_values = st.text(max_size=80) | st.sampled_from(
    ["BTC-USD", "BTC-USD,ETH-USD", ",,,", "trades,ticker", "candles:60", "candles:7", "X" * 41,
     ",".join(f"P{i}" for i in range(300)), "BTC-USD,,ETH-USD", "%00", "\u2028"]
)  # fmt: skip
sse_params = st.dictionaries(
    st.sampled_from(["product_ids", "channels", "exchange"]) | st.text(max_size=10),
    query_values,
    max_size=4,
)


@FUZZ
@given(params=sse_params)
def test_sse_answers_any_query_with_a_stream_or_a_clear_4xx(
    server: ApiProcess, params: dict[str, str]
) -> None:
    with (
        httpx.Client(base_url=server.base, timeout=10) as client,
        client.stream("GET", "/v1/stream/sse", params=params) as r,
    ):
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("text/event-stream")
            return  # the stream works; leave it
        body = json.loads(r.read())
    assert r.status_code in (404, 422), (r.status_code, body)
    assert body["status"] == r.status_code and body["error"], body
    if r.status_code == 422:
        for problem in body["detail"]:
            assert problem["field"] and 0 < len(problem["message"]) <= 300, body
    else:
        assert len(body["error"]) <= 120, body  # names the product, at most 40 characters


@FUZZ
@given(product=st.text(min_size=1, max_size=300), route=st.sampled_from(
    ["stats", "ticker", "trades", "candles"]))  # fmt: skip
def test_rest_product_paths_never_5xx(server: ApiProcess, product: str, route: str) -> None:
    r = httpx.get(f"{server.base}/v1/products/{quote(product, safe='')}/{route}", timeout=10)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert len(r.content) < 1000 and r.json()["error"]


def test_fuzz_left_the_server_serving(server: ApiProcess, tmp_path: Path) -> None:
    """After the fuzzing above (module order), ordinary clients still get live data."""
    with connect(server.ws, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"],
                            "channels": ["trades"]}))  # fmt: skip
        kinds = set()
        while "trade" not in kinds:
            kinds.add(json.loads(ws.recv(timeout=10))["type"])
    assert httpx.get(f"{server.base}/v1/products", timeout=10).status_code == 200
