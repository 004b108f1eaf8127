"""API token, rate limit and input bounds against a real `sentinel up` (its own process, so
everything it logs can be searched for the token)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from crypto_sentinel.api.routes.push import MAX_SUBSCRIPTIONS
from crypto_sentinel.api.security import MAX_PATH, MAX_QUERY
from tests.apiproc import ApiProcess, sentinel_up

TOKEN = "s3cr3t-T0ken-for-tests-8c1f4e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """A token, DEBUG logging (everything that could leak is logged), and a small rate limit
    that loopback clients are exempt from (the default)."""
    work = tmp_path_factory.mktemp("guarded")
    with sentinel_up(
        work, api_token=TOKEN, log_level="DEBUG", api_rate_limit="2", api_rate_burst="5"
    ) as api:
        yield api


def receive(ws: ClientConnection, kind: str) -> dict:
    while True:
        msg = json.loads(ws.recv(timeout=10))
        if msg["type"] == kind:
            return dict(msg)


def sse_status(base: str, **params: str) -> tuple[int, str, httpx.Headers]:
    """Status, first chunk and headers of an SSE request (the stream is left at once)."""
    with (
        httpx.Client(base_url=base, timeout=10) as client,
        client.stream("GET", "/v1/stream/sse", params=params, headers=params.pop("_h", None))
        as r,
    ):  # fmt: skip
        first = next(r.iter_text(), "")
        return r.status_code, first, r.headers


def test_token_guards_every_route_but_the_probes(guarded: ApiProcess) -> None:
    seen: list[str] = []  # every response body and header: none may carry the token
    with httpx.Client(base_url=guarded.base, timeout=10) as client:

        def get(path: str, **kwargs: object) -> httpx.Response:
            r = client.get(path, **kwargs)  # type: ignore[arg-type]
            seen.append(r.text + repr(r.headers))
            return r

        for path in ("/health", "/ready", "/docs", "/redoc", "/openapi.json", "/"):
            assert get(path).status_code == 200, path
        for path in ("/v1/products", "/latest", "/latest?symbol=BTC-USD", "/metrics",
                     "/v1/products/BTC-USD/trades", "/v1/products/NOPE-USD/ticker"):  # fmt: skip
            missing = get(path)
            assert missing.status_code == 401, path
            assert missing.json()["error"].startswith("API token required")
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = get(path, headers={"Authorization": f"Bearer {TOKEN[:-1]}x"})
            assert wrong.status_code == 401 and wrong.json()["error"] == "invalid API token"
            basic = get(path, headers={"Authorization": f"Basic {TOKEN}"})
            assert basic.status_code == 401 and "Bearer" in basic.json()["error"]
        assert get("/v1/products", headers=AUTH).status_code == 200
        assert get("/latest", headers=AUTH).status_code == 200
        assert get("/metrics", headers=AUTH).status_code == 200
        # the query parameter is for the push routes only (browsers cannot set headers there)
        assert get("/v1/products", params={"access_token": TOKEN}).status_code == 401
        assert "bearer" in get("/openapi.json").json()["components"]["securitySchemes"]

    # WebSocket: refused with 401 without the token, served with the header or the query
    for url, headers in ((guarded.ws, None), (f"{guarded.ws}?access_token=wrong-token", None)):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers=headers, open_timeout=10).close()
        assert refused.value.response.status_code == 401
        seen.append(refused.value.response.body.decode() + repr(refused.value.response.headers))
    for url, headers in ((guarded.ws, AUTH), (f"{guarded.ws}?access_token={TOKEN}", None)):
        with connect(url, additional_headers=headers, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "ping"}))
            assert receive(ws, "pong") == {"type": "pong"}
    # or as a subprotocol next to sentinel.v1, which the server picks (the token is not echoed)
    offer: list[Any] = ["sentinel.v1", f"bearer.{TOKEN}"]
    with connect(guarded.ws, subprotocols=offer, open_timeout=10) as ws:
        assert ws.subprotocol == "sentinel.v1"
        ws.send(json.dumps({"type": "ping"}))
        assert receive(ws, "pong") == {"type": "pong"}
    with pytest.raises(InvalidStatus) as refused:
        connect(guarded.ws, subprotocols=[offer[0], "bearer.wrong-one"]).close()
    assert refused.value.response.status_code == 401

    # SSE: the same
    base, products = guarded.base, "BTC-USD"
    status, body, headers = sse_status(base, product_ids=products)
    assert status == 401 and "API token required" in body
    seen.append(body + repr(headers))
    status, body, headers = sse_status(base, product_ids=products, access_token="nope-nope")
    assert status == 401 and "invalid API token" in body
    seen.append(body + repr(headers))
    assert sse_status(base, product_ids=products, access_token=TOKEN)[0] == 200
    assert sse_status(base, product_ids=products, _h=AUTH)[0] == 200  # type: ignore[arg-type]

    assert guarded.alive()
    assert all(TOKEN not in text for text in seen)
    assert TOKEN[:12] not in guarded.output(), "the token (or part of it) was logged"
    assert "Traceback" not in guarded.output()


def test_rate_limit_answers_429_with_retry_after(guarded: ApiProcess) -> None:
    """2 requests/s, bursts of 5, per client IP: a client behind the (loopback) proxy is
    limited; loopback itself is exempt by default, so the dashboard and load tests are not."""
    remote = {**AUTH, "X-Forwarded-For": "198.51.100.7"}  # uvicorn trusts 127.0.0.1's proxy
    with httpx.Client(base_url=guarded.base, timeout=10) as client:
        answers = [client.get("/v1/products", headers=remote) for _ in range(12)]
        codes = [r.status_code for r in answers]
        assert codes[:5] == [200] * 5 and 429 in codes, codes
        limited = next(r for r in answers if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1
        body = limited.json()
        assert body["status"] == 429
        assert "at most 2 requests per second per client (bursts of 5)" in body["error"]
        # another client has its own bucket; loopback has none
        other = {**AUTH, "X-Forwarded-For": "198.51.100.8"}
        assert client.get("/v1/products", headers=other).status_code == 200
        local = [client.get("/v1/products", headers=AUTH).status_code for _ in range(30)]
        assert local == [200] * 30


def test_bad_tokens_stop_start_up_without_showing_them(tmp_path: Path) -> None:
    short = "tiny-secret"
    with pytest.raises(AssertionError) as exited, sentinel_up(tmp_path, api_token=short):
        pass
    text = str(exited.value)
    assert "api_token" in text and "16 to 512 characters" in text
    assert short not in text


# --- input bounds (issue 5) -------------------------------------------------------------------


def test_product_id_in_the_path_has_a_length_limit(guarded: ApiProcess) -> None:
    """Before: a 60 KB id was echoed back in a 60 KB 404."""
    with httpx.Client(base_url=guarded.base, timeout=10, headers=AUTH) as client:
        huge = client.get(f"/v1/products/{'A' * 60_000}/stats")
        assert huge.status_code == 414 and len(huge.content) < 200
        assert huge.json()["error"] == f"path too long: at most {MAX_PATH} bytes"
        for route in ("stats", "ticker", "trades", "candles"):
            long = client.get(f"/v1/products/{'B' * 41}/{route}")
            assert long.status_code == 422, route
            assert long.json()["detail"] == [
                {"field": "product_id", "message": "String should have at most 40 characters"}
            ]
        assert client.get(f"/v1/products/{'B' * 40}/stats").status_code == 404
        query = client.get("/v1/products", params={"exchange": "x" * 5000})
        assert query.status_code == 414
        assert query.json()["error"] == f"query string too long: at most {MAX_QUERY} bytes"
        symbol = client.get("/latest", params={"symbol": "C" * 41})
        assert symbol.status_code == 422 and "at most 40 characters" in symbol.text


def test_push_subscriptions_name_the_limit_they_cross(guarded: ApiProcess) -> None:
    """Before: 5,000 product ids got "must be non-empty lists of strings"."""
    with connect(guarded.ws, additional_headers=AUTH, open_timeout=10) as ws:

        def error_for(**message: object) -> str:
            ws.send(json.dumps({"type": "subscribe", **message}))
            return str(receive(ws, "error")["message"])

        many = [f"P{i}-USD" for i in range(5000)]
        assert error_for(product_ids=many, channels=["trades"]) == (
            f"product_ids: at most {MAX_SUBSCRIPTIONS} entries per message (got 5000)"
        )
        assert error_for(product_ids=["BTC-USD"], channels=["trades"] * 201) == (
            f"channels: at most {MAX_SUBSCRIPTIONS} entries per message (got 201)"
        )
        assert error_for(product_ids=["X" * 41], channels=["trades"]) == (
            "product_ids: each entry at most 40 characters (got 41)"
        )
        assert error_for(product_ids=[], channels=["trades"]) == (
            "product_ids must be a non-empty list of strings"
        )
        assert error_for(product_ids=["BTC-USD"], channels=["ticker"], exchange="e" * 41) == (
            "exchange must be a string of 1 to 40 characters"
        )
        ws.send("x" * 70_000)  # over uvicorn's 64 KiB frame limit: closed with 1009
        with pytest.raises(Exception) as closed:
            receive(ws, "never")
        assert "1009" in str(closed.value)
    # SSE: the same limits as 422s naming them
    status, body, _ = sse_status(
        guarded.base, product_ids=",".join(f"P{i}" for i in range(300)), access_token=TOKEN
    )
    assert status == 422
    assert json.loads(body)["detail"] == [
        {"field": "product_ids",
         "message": f"product_ids: at most {MAX_SUBSCRIPTIONS} entries per message (got 300)"}
    ]  # fmt: skip
    status, body, _ = sse_status(guarded.base, product_ids="Y" * 41, access_token=TOKEN)
    assert status == 422 and "each entry at most 40 characters" in body
    assert guarded.alive()


def test_open_api_on_all_interfaces_warns_once(tmp_path: Path) -> None:
    with sentinel_up(tmp_path, host="0.0.0.0") as api:
        assert httpx.get(f"{api.base}/v1/products", timeout=10).status_code == 200  # no token
    assert api.output().count("without an API token") == 1, api.output()[-3000:]
    assert "0.0.0.0" in api.output()


ascii_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(
    scheme=st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  "]),
    credentials=ascii_text | st.just(TOKEN) | st.just(TOKEN[:-1]) | st.just(TOKEN + "x"),
    query=st.none() | ascii_text,
    path=st.sampled_from(["/v1/products", "/latest", "/v1/stream/sse", "/metrics", "/health"]),
)
def test_any_authorization_gets_200_or_a_clear_401(
    guarded: ApiProcess, scheme: str, credentials: str, query: str | None, path: str
) -> None:
    value = (scheme + credentials).strip()  # h11 sends no header with outer whitespace
    headers = {"Authorization": value} if value else {}
    params = {"product_ids": "BTC-USD"} if path.endswith("/sse") else {}
    if query is not None:
        params["access_token"] = query
    if path == "/health":
        allowed = True
    elif value:  # the header decides, whatever the query says
        kind, _, given = value.partition(" ")
        allowed = kind.lower() == "bearer" and given.strip() == TOKEN
    else:
        allowed = path == "/v1/stream/sse" and query == TOKEN
    with (
        httpx.Client(base_url=guarded.base, timeout=10) as client,
        client.stream("GET", path, headers=headers, params=params) as r,
    ):
        if allowed:
            assert r.status_code == 200
            return
        assert r.status_code == 401  # before reading: a 200 here may be an endless stream
        body = json.loads(r.read())
    assert body["error"] in (
        "invalid API token",
        "the Authorization header must be: Bearer <API token>",
    ) or body["error"].startswith("API token required"), body
    assert TOKEN not in json.dumps(body) and TOKEN not in repr(r.headers)
