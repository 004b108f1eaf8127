"""In a real browser (Playwright, Debian's Chromium): `/docs` and `/redoc` work offline and list
the routes, and the dashboard works against an API that wants a token."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.apiproc import ApiProcess, sentinel_up

pytestmark = pytest.mark.e2e

TOKEN = "dashboard-token-4f7a9c2e1b"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    with sentinel_up(tmp_path_factory.mktemp("token"), api_token=TOKEN) as served:
        yield served


@contextlib.contextmanager
def watched(browser: Browser, **options: Any) -> Iterator[tuple[Page, list[str], list[str]]]:
    """A page in a fresh profile, its console errors and every URL it asked for."""
    ctx = browser.new_context(**options)
    page = ctx.new_page()
    errors: list[str] = []
    urls: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("request", lambda r: urls.append(r.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    try:
        yield page, errors, urls
    finally:
        ctx.close()


def local_only(urls: list[str]) -> None:
    foreign = [u for u in urls if urlsplit(u.removeprefix("blob:")).hostname != "127.0.0.1"]
    assert foreign == [], f"requests left 127.0.0.1: {foreign}"


def test_swagger_ui_lists_the_routes_offline(browser: Browser, api: ApiProcess) -> None:
    with watched(browser) as (page, errors, urls):
        page.goto(f"{api.base}/docs")
        for path in ("/latest", "/v1/products", "/v1/products/{product_id}/candles",
                     "/v1/stream/sse", "/health", "/ready", "/metrics"):  # fmt: skip
            expect(page.locator(f'.opblock-summary-path[data-path="{path}"]')).to_be_visible()
        expect(page.get_by_role("button", name="Authorize")).to_be_visible()  # token in use
        assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in urls)
        local_only(urls)
        assert errors == []


def test_redoc_renders_offline(browser: Browser, api: ApiProcess) -> None:
    """ReDoc's bundle shows its vendor's logo from a CDN: the page's Content-Security-Policy
    stops that request in the browser (it never leaves); everything else is local."""
    with watched(browser) as (page, _, urls):
        blocked: list[str] = []
        page.on("requestfailed", lambda r: blocked.append(f"{r.url} {r.failure}"))
        page.goto(f"{api.base}/redoc")
        expect(page.get_by_text("Crypto Sentinel").first).to_be_visible()
        expect(page.get_by_text("OHLCV candles, newest first").first).to_be_visible()
        assert any(u.endswith("/docs/assets/redoc.standalone.js") for u in urls)
        foreign = [u for u in urls if urlsplit(u.removeprefix("blob:")).hostname != "127.0.0.1"]
        assert all(any(b == f"{u} csp" for b in blocked)
                   for u in foreign), (foreign, blocked)  # fmt: skip


def test_dashboard_takes_the_token_from_its_url_once(browser: Browser, api: ApiProcess) -> None:
    with watched(browser) as (page, errors, urls):
        page.goto(f"{api.base}/?token={TOKEN}&granularity=300")
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        page.wait_for_function("() => document.querySelectorAll('#tape tbody tr').length > 0")
        expect(page.locator("#chart")).to_have_attribute("data-state", "ready")
        assert TOKEN not in page.url and "granularity=300" in page.url  # out of the address bar
        expect(page.locator("#token-form")).to_be_hidden()
        # remembered: a plain reload works without the token in the URL
        page.goto(f"{api.base}/")
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        page.wait_for_function("() => document.querySelectorAll('#tape tbody tr').length > 0")
        sockets = [u for u in urls if u.startswith("ws://")]
        assert sockets and not any(TOKEN in u for u in sockets)  # a subprotocol, not the URL
        local_only(urls)
        assert errors == []


def test_dashboard_asks_for_the_token_when_it_has_none(browser: Browser, api: ApiProcess) -> None:
    with watched(browser) as (page, _, urls):
        page.goto(f"{api.base}/")
        form = page.locator("#token-form")
        expect(form).to_be_visible()
        expect(page.locator("#token-status")).to_contain_text("needs an access token")
        page.get_by_label("API token").fill("not-the-token-at-all")
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#token-status")).to_contain_text("refused the saved token")
        page.goto(f"{api.base}/?token=wrong-token-in-the-url&product=ETH-USD")
        expect(page.locator("#token-status")).to_contain_text("refused the saved token")
        assert "wrong-token" not in page.url and "product=ETH-USD" in page.url
        page.get_by_label("API token").fill(TOKEN)
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        page.wait_for_function("() => document.querySelectorAll('#tape tbody tr').length > 0")
        expect(form).to_be_hidden()
        local_only(urls)
