"""The dashboard with several venues: `sentinel up --source coinbase,binance` against a
simulator per venue (real processes); the page offers an exchange switcher and, switched to
Binance, shows Binance's products, trades and candles (Chromium, headless)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.browser.test_dashboard import (
    SENTINEL,
    TAPE_ROWS,
    child_env,
    eventually,
    open_dashboard,
)
from tests.conftest import free_port

VENUES = {"coinbase": "BTC-USD,ETH-USD", "binance": "BTC-USDT,ETH-USDT"}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def two_venues(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("venues")
    procs = []
    env = child_env()
    try:
        urls = {}
        for venue, products in VENUES.items():
            port = free_port()
            log = (work / f"sim-{venue}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [*SENTINEL, "simulate", "--venue", venue, "--sim-port", str(port),
                     "--products", products, "--rate", "20", "--fresh"],
                    env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
            urls[venue] = port
        port = free_port()
        up_env = {
            **env,
            "SENTINEL_SOURCE": "coinbase,binance",
            "SENTINEL_PRODUCTS": VENUES["coinbase"],
            "SENTINEL_COINBASE_WS_URL": f"ws://127.0.0.1:{urls['coinbase']}",
            "SENTINEL_COINBASE_REST_URL": f"http://127.0.0.1:{urls['coinbase']}",
            "SENTINEL_BINANCE_PRODUCTS": VENUES["binance"],
            "SENTINEL_BINANCE_WS_URL": f"ws://127.0.0.1:{urls['binance']}",
            "SENTINEL_BINANCE_REST_URL": f"http://127.0.0.1:{urls['binance']}",
            "SENTINEL_FALLBACK_TO_SIMULATOR": "false",
        }
        log = (work / "up.log").open("wb")
        up = subprocess.Popen(
            [*SENTINEL, "up", "--lake", str(work / "lake"), "--port", str(port)],
            env=up_env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(up)
        base = f"http://127.0.0.1:{port}"

        def both_live() -> bool | None:
            assert up.poll() is None, (work / "up.log").read_text()[-4000:]
            try:
                items = httpx.get(f"{base}/v1/exchanges", timeout=2).json()["data"]
            except (httpx.TransportError, ValueError):
                return None
            return len([i for i in items if i["products"]]) == 2

        eventually(both_live, "both venues to store trades", timeout=90)
        yield base
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_exchange_switcher_shows_the_chosen_venue(browser: Browser, two_venues: str) -> None:
    with open_dashboard(browser, two_venues, viewport={"width": 1280, "height": 860}) as board:
        page = board.page
        switcher = page.get_by_label("Exchange")
        expect(switcher).to_be_visible()
        options = page.locator("#exchange option")
        expect(options).to_have_text(["Coinbase", "Binance"])
        expect(page.locator("#product option")).to_have_text(["BTC-USD", "ETH-USD"])

        switcher.select_option("binance")
        expect(page.locator("#product option")).to_have_text(["BTC-USDT", "ETH-USDT"])
        expect(page.locator("#ticker-product")).to_have_text("BTC-USDT")
        rest = board.api("/v1/products/BTC-USDT/trades", exchange="binance", limit=200)["data"]
        binance = {str(t["trade_id"]): t["price"] for t in rest}

        def binance_on_tape() -> bool:
            rows = board.js(TAPE_ROWS)
            known = [(row[0], row[1]) for row in rows if row[0] in binance]
            return len(known) >= 3 and all(binance[i] == price for i, price in known)

        eventually(binance_on_tape, "the tape to show Binance BTC-USDT trades", timeout=30)
        candles = board.api("/v1/products/BTC-USDT/candles", exchange="binance")["data"]
        closes = board.js("() => document.getElementById('chart').data[0].close")
        assert candles and {float(c["close"]) for c in candles[1:]} <= set(closes)
        assert "exchange=binance" in page.url
        board.assert_clean()


def test_switcher_fits_a_phone_width(browser: Browser, two_venues: str) -> None:
    with open_dashboard(browser, two_venues, viewport={"width": 390, "height": 800}) as board:
        assert board.page.locator("#exchange").is_visible()
        width = board.js("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at 390 px with the switcher ({width})"
        board.assert_clean()
