"""The dashboard in a real browser: Playwright drives Debian's Chromium against a real pipeline.

A simulated day of trades is replayed into a fresh Delta lake (history for every candle size),
then `sentinel up --source simulator` serves it and streams new trades live from the simulator
(the protocol-faithful local exchange) that this module runs. Its fault-injection hook lets a
test make the market trade at a chosen price. Every test checks that the page logged no console
error and that no request left 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from deltalake import DeltaTable
from playwright.sync_api import Browser, BrowserContext, Page, expect

from crypto_sentinel.lake import tables as LT
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import GapRecord
from crypto_sentinel.simulator import SimulatorServer, write_recording
from crypto_sentinel.simulator.server import Session
from tests.conftest import COINBASE_DATA, ROOT, free_port

pytestmark = pytest.mark.e2e

#: The README's picture is refreshed only on request (SENTINEL_UPDATE_SCREENSHOT=1); a plain
#: test run writes its screenshot to the test's own folder, never over the committed one.
README_SCREENSHOT = ROOT / "docs" / "dashboard.png"
PRODUCTS = ["BTC-USD", "ETH-USD"]
HISTORY_TRADES = 6000
SEED = 1  # history and the live simulator start at the same price: no jump between them
SENTINEL = [sys.executable, "-m", "crypto_sentinel.cli"]
T = TypeVar("T")
HOUR = timedelta(hours=1)
DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    """Poll `probe` until it returns something other than None/False.

    Playwright delivers page events only inside its own calls, so a probe about the page must
    ask the page (evaluate), not read lists that event handlers fill.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def child_env() -> dict[str, str]:
    """The caller's environment without any SENTINEL_* setting (tests choose their own)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    return {**keep, "SENTINEL_LOG_LEVEL": "WARNING", "SENTINEL_SIMULATOR_SEED": str(SEED)}


def record_day(path: Path) -> int:
    """A simulated day up to now, without heartbeat frames (they only make the file big), less
    one BTC-USD match ~3.5 h ago: a trade the feed lost and no gap record names. Returns its
    trade id."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)
    full = path.with_suffix(".full")
    write_recording(full, PRODUCTS, HISTORY_TRADES, seed=SEED, rate=HISTORY_TRADES / 86_400,
                    start=start)  # fmt: skip
    lines = [line for line in full.read_text().splitlines(keepends=True)
             if '\\"heartbeat\\"' not in line]  # fmt: skip
    lost_at = datetime.now(UTC) - timedelta(hours=3, minutes=30)
    matches = [(n, json.loads(json.loads(line)["raw"])) for n, line in enumerate(lines)
               if '\\"match\\"' in line and "BTC-USD" in line]  # fmt: skip
    n, lost = min(matches, key=lambda m: abs(datetime.fromisoformat(m[1]["time"]) - lost_at))
    path.write_text("".join(lines[:n] + lines[n + 1 :]))
    full.unlink()
    return int(lost["trade_id"])


def lost_trade_minutes(lake: Path, lost: int) -> set[str]:
    """The BTC-USD minutes from the stored trade before the lost id to the one after it."""
    trades = DeltaTable(str(LT.TRADES.path(lake))).to_pyarrow_table().to_pylist()
    times = {t["trade_id"]: t["time"] for t in trades if t["product_id"] == "BTC-USD"}
    assert lost not in times and lost - 1 in times and lost + 1 in times
    minute = times[lost - 1].replace(second=0, microsecond=0)
    minutes = set()
    while minute <= times[lost + 1]:
        minutes.add(minute.strftime("%Y-%m-%dT%H:%M:00.000000Z"))
        minute += timedelta(minutes=1)
    return minutes


class ForcedPrice:
    """Simulator fault hook: the next BTC-USD match goes out at a price the test chooses."""

    disconnect_every = 0.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.price: str | None = None
        self.sent: dict[str, Any] | None = None

    def force(self, price: str) -> None:
        with self.lock:
            self.price, self.sent = price, None

    def outbound(self, session: Session, frame: str) -> list[str]:
        with self.lock:
            if self.price is None or not frame.startswith('{"type":"match"'):
                return [frame]
            message = json.loads(frame)
            if message["product_id"] != "BTC-USD":
                return [frame]
            message["price"], self.price = self.price, None
            self.sent = message
            return [json.dumps(message, separators=(",", ":"))]

    def forget(self, session: Session) -> None:
        pass


@contextlib.contextmanager
def simulator(hook: ForcedPrice) -> Iterator[SimulatorServer]:
    """The local exchange on its own event loop thread, for a `sentinel up` child to use."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="simulator", daemon=True)
    thread.start()

    async def start() -> SimulatorServer:
        server = SimulatorServer(PRODUCTS, rate=20, seed=SEED, faults=hook,
                                 wait_for_subscriber=True)  # fmt: skip
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@dataclass
class Market:
    base: str  # the API's base URL
    prices: ForcedPrice
    gap_minutes: set[str]  # starts of the BTC-USD minutes an unfilled gap overlaps
    lost_minutes: set[str]  # starts of the BTC-USD minutes next to a lost trade (no record)


def record_unfilled_gap(lake: Path) -> set[str]:
    """An unfilled gap in bronze.gaps at a BTC-USD history trade ~2 h ago. Its trade's time is
    unknown, so the minutes from the trade before it to the trade after it are affected."""
    trades = DeltaTable(str(LT.TRADES.path(lake))).to_pyarrow_table().to_pylist()
    btc = sorted((t for t in trades if t["product_id"] == "BTC-USD"), key=lambda t: t["trade_id"])
    around = datetime.now(UTC) - timedelta(hours=2)
    at = min(range(1, len(btc) - 1), key=lambda i: abs(btc[i]["time"] - around))
    victim = btc[at]
    record = GapRecord(
        "simulator", "BTC-USD", "trade_id", victim["time"], victim["trade_id"],
        victim["trade_id"], 1, 0, "unfilled", time.time_ns(), "rest-test",
    )  # fmt: skip
    LakeWriter(lake, "gap-test").commit(Batch(version=1, gaps=[record]))
    minute = btc[at - 1]["time"].replace(second=0, microsecond=0)
    minutes = set()
    while minute <= btc[at + 1]["time"]:
        minutes.add(minute.strftime("%Y-%m-%dT%H:%M:00.000000Z"))
        minute += timedelta(minutes=1)
    return minutes


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    work = tmp_path_factory.mktemp("dashboard")
    lake, recording = work / "lake", work / "day.ndjson"
    lost = record_day(recording)
    replay = subprocess.run(
        [*SENTINEL, "replay", str(recording), "--speed", "max", "--exchange", "simulator",
         "--lake", str(lake)],
        env=child_env(), cwd=work, timeout=180, capture_output=True, text=True,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-4000:]
    gap_minutes = record_unfilled_gap(lake)
    lost_minutes = lost_trade_minutes(lake, lost)
    hook = ForcedPrice()
    with simulator(hook) as sim, (work / "up.log").open("w") as log:
        port = free_port()
        # No REST backfill: the live simulator's market is not the history's, so a start-up
        # backfill of the history's lost trade would only add a gap record (at a time of its
        # choosing); without it the lost trade stays what it is, ids never seen.
        proc = subprocess.Popen(
            [*SENTINEL, "up", "--source", "simulator", "--simulator-url", sim.ws_url,
             "--lake", str(lake), "--port", str(port), "--products", ",".join(PRODUCTS)],
            env={**child_env(), "SENTINEL_BACKFILL": "false"}, cwd=work, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:

            def serving() -> bool | None:
                assert proc.poll() is None, (work / "up.log").read_text()[-4000:]
                try:
                    latest = httpx.get(f"{base}/latest", params={"symbol": "BTC-USD"}, timeout=2)
                    ready = httpx.get(f"{base}/ready", timeout=2).status_code == 200
                except httpx.TransportError:
                    return None
                return ready and any(t["exchange"] == "simulator" for t in latest.json()["data"])

            eventually(serving, "sentinel up to serve live simulated trades", timeout=60)
            yield Market(base, hook, gap_minutes, lost_minutes)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def server(market: Market) -> str:
    return market.base


@dataclass
class Dashboard:
    """A page plus what it did: console errors, uncaught exceptions and every URL it asked."""

    page: Page
    base: str
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.base}{path}", params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def tape_ids(self) -> list[int]:
        return [int(i) for i in self.js(TAPE_IDS)]

    def chart_starts(self) -> list[str]:
        return list(self.js("() => (document.getElementById('chart').data || [{x: []}])[0].x"))

    def assert_clean(self) -> None:
        assert self.errors == [], f"console errors: {self.errors}"
        foreign = [u for u in self.urls if urlsplit(u).hostname != "127.0.0.1"]
        assert foreign == [], f"requests left 127.0.0.1: {foreign}"
        assert any(u.endswith("/dashboard/assets/plotly.min.js") for u in self.urls)


TAPE_IDS = "() => [...document.querySelectorAll('#tape tbody tr')].map(r => r.dataset.tradeId)"
TAPE_ROWS = (
    "() => [...document.querySelectorAll('#tape tbody tr')]"
    ".map(r => [r.dataset.tradeId, r.cells[2].textContent])"
)


@contextlib.contextmanager
def open_dashboard(
    browser: Browser, base: str, context: BrowserContext | None = None, **options: Any
) -> Iterator[Dashboard]:
    """The dashboard loaded (live, tape and chart filled) in a new page, watched throughout."""
    ctx = context or browser.new_context(**options)
    page = ctx.new_page()
    board = Dashboard(page, base)

    def console(message: Any) -> None:
        if message.type == "error":
            board.errors.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda exc: board.errors.append(f"uncaught: {exc}"))
    page.on("request", lambda request: board.urls.append(request.url))
    page.on("websocket", lambda ws: board.urls.append(ws.url))
    try:
        page.goto(f"{base}/")
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        page.wait_for_function("() => document.querySelectorAll('#tape tbody tr').length > 0")
        page.wait_for_function("() => (document.getElementById('chart').data || [])[0]?.x.length")
        yield board
    finally:
        if context is None:
            ctx.close()
        else:
            page.close()


@pytest.fixture(scope="module")
def desktop(browser: Browser) -> Iterator[BrowserContext]:
    """One browser profile for the desktop tests: its cache spares reloading Plotly each time."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def dashboard(browser: Browser, desktop: BrowserContext, server: str) -> Iterator[Dashboard]:
    with open_dashboard(browser, server, context=desktop) as board:
        yield board


def newest_trade_id(board: Dashboard, product: str) -> int:
    return int(board.api(f"/v1/products/{product}/trades", limit=1)["data"][0]["trade_id"])


def test_page_loads_history_with_no_console_errors(dashboard: Dashboard, tmp_path: Path) -> None:
    page = dashboard.page
    expect(page).to_have_title("Crypto Sentinel — live dashboard")
    for label in ("Product", "Candle size", "Alert price"):
        expect(page.get_by_label(label)).to_be_visible()
    for name in ("Freeze", "Dark theme", "Set alert", "Clear"):
        expect(page.get_by_role("button", name=name, exact=True)).to_be_visible()
    expect(page.get_by_label("Product")).to_have_value("BTC-USD")
    # The chart holds the candles the API has for BTC-USD at one minute.
    history = dashboard.api("/v1/products/BTC-USD/candles", granularity=60)["data"]
    assert len(history) > 100  # a simulated day: most of the last 300 minutes have trades
    shown = set(dashboard.chart_starts())
    assert {c["start"] for c in history[1:]} <= shown
    expect(page.locator("#source-banner")).to_contain_text("Simulated data")
    expect(page.locator("#source-banner")).to_have_attribute("data-source", "simulator")
    for exact in ("#last-price", "#high-24h", "#low-24h", "#vwap-24h", "#spread"):
        expect(page.locator(exact)).to_have_text(DECIMAL)
    expect(page.locator("#volatility")).to_contain_text("%")
    assert Decimal(page.inner_text("#volume-24h")) > 0  # exact decimal text from /stats
    sides = dashboard.js(
        "() => [...document.querySelectorAll('#tape tbody tr')]"
        ".map(r => [r.className, r.cells[1].textContent])"
    )
    assert sides and all(colour == side in ("buy", "sell") for colour, side in sides)
    page.wait_for_timeout(500)  # let the first live candles draw before the picture
    update = os.environ.get("SENTINEL_UPDATE_SCREENSHOT") == "1"
    shot = README_SCREENSHOT if update else tmp_path / "dashboard.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    dashboard.assert_clean()


def test_candle_over_an_unfilled_gap_is_marked(dashboard: Dashboard, market: Market) -> None:
    """The recorded gap's candles, and only they among their neighbours, are flagged
    (`gap`, not `complete`) and marked incomplete. (The jump from the history's trade ids to
    the live simulator's makes the first live minutes incomplete too, rightly.)"""
    history = dashboard.api("/v1/products/BTC-USD/candles", granularity=60)["data"]
    marked = dashboard.js(
        "() => document.getElementById('chart').data.find((t) => t.name === 'incomplete').x"
    )
    gap = datetime.fromisoformat(min(market.gap_minutes))
    near = {c["start"] for c in history if abs(datetime.fromisoformat(c["start"]) - gap) < HOUR}
    expected = market.gap_minutes & near  # the minutes of the span that have candles
    assert expected and len(near) > len(expected)
    assert {c["start"] for c in history if c["gap"]} & near == expected
    assert {c["start"] for c in history if not c["complete"]} & near == expected
    assert set(marked) & near == expected
    dashboard.assert_clean()


def test_candle_next_to_a_lost_trade_is_marked_incomplete(
    dashboard: Dashboard, market: Market
) -> None:
    """A trade the feed lost with no gap record: no `gap` flag, yet the candles holding the
    stored trades around it are not `complete`, and only they among their neighbours are
    marked, with a hover text that says ids are missing."""
    history = dashboard.api("/v1/products/BTC-USD/candles", granularity=60)["data"]
    trace = dashboard.js(
        "() => { const t = document.getElementById('chart').data"
        ".find((t) => t.name === 'incomplete'); return [t.x, t.hovertext]; }"
    )
    lost = datetime.fromisoformat(min(market.lost_minutes))
    near = {c["start"] for c in history if abs(datetime.fromisoformat(c["start"]) - lost) < HOUR}
    expected = market.lost_minutes & near  # the minutes of the span that have candles
    assert expected and len(near) > len(expected)
    assert not any(c["gap"] for c in history if c["start"] in near)
    assert {c["start"] for c in history if not c["complete"]} & near == expected
    marked = dict(zip(*trace, strict=True))
    assert set(marked) & near == expected
    assert all("trade ids missing" in marked[m] for m in expected)
    dashboard.assert_clean()


def test_tape_shows_new_trades_within_two_seconds(dashboard: Dashboard) -> None:
    top = dashboard.tape_ids()[0]
    newer = eventually(
        lambda: (i := newest_trade_id(dashboard, "BTC-USD")) > top and i, "a new BTC-USD trade"
    )
    # The API has the trade; the page must show it (pushed over /v1/stream) within 2 s.
    dashboard.page.wait_for_function(
        "id => [...document.querySelectorAll('#tape tbody tr')]"
        ".some(r => BigInt(r.dataset.tradeId) >= BigInt(id))",
        arg=str(newer),
        timeout=2000,
    )
    ids = dashboard.tape_ids()
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids)) <= 50
    rest = {
        t["trade_id"]: t for t in dashboard.api("/v1/products/BTC-USD/trades", limit=100)["data"]
    }
    row = dashboard.page.locator(f'#tape tr[data-trade-id="{newer}"]')
    assert row.locator("td").nth(2).inner_text() == rest[newer]["price"]
    assert row.get_attribute("class") == rest[newer]["side"]
    dashboard.assert_clean()


def test_switching_product_and_candle_size_changes_the_data(dashboard: Dashboard) -> None:
    page = dashboard.page
    page.get_by_label("Product").select_option("ETH-USD")
    expect(page.locator("#ticker-product")).to_have_text("ETH-USD")
    rest = dashboard.api("/v1/products/ETH-USD/trades", limit=200)["data"]
    eth = {str(t["trade_id"]): t["price"] for t in rest}  # trade ids are per product

    def eth_on_tape() -> bool:
        rows = dashboard.js(TAPE_ROWS)
        known = [(row[0], row[1]) for row in rows if row[0] in eth]
        return len(known) > 10 and all(eth[i] == price for i, price in known)

    eventually(eth_on_tape, "the tape to show ETH-USD trades")
    eth_candles = dashboard.api("/v1/products/ETH-USD/candles", granularity=60)["data"]
    closes = dashboard.js("() => document.getElementById('chart').data[0].close")
    assert {float(c["close"]) for c in eth_candles[1:]} <= set(closes)
    assert "product=ETH-USD" in page.url

    page.get_by_label("Candle size").select_option("3600")
    hourly = dashboard.api("/v1/products/ETH-USD/candles", granularity=3600)["data"]
    want = {c["start"] for c in hourly}

    def hourly_chart() -> bool:
        starts = set(dashboard.chart_starts())
        return starts == want or starts == want | {s for s in starts if s > max(want)}

    eventually(hourly_chart, "the chart to show hourly ETH-USD candles")
    assert all(s[14:19] == "00:00" for s in dashboard.chart_starts())  # whole hours
    assert 20 <= len(want) <= 26  # a day of history, by the hour
    expect(page.locator("#volatility-unit")).to_have_text("(per 1h)")
    assert "granularity=3600" in page.url
    dashboard.assert_clean()


def test_freeze_stops_updates_until_resumed(dashboard: Dashboard) -> None:
    page = dashboard.page
    freeze = page.get_by_role("button", name="Freeze")
    freeze.click()
    expect(freeze).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#frozen-banner")).to_be_visible()
    tape, last = dashboard.tape_ids(), page.inner_text("#last-price")
    candles = dashboard.js("() => JSON.stringify(document.getElementById('chart').data[0])")
    top = max(tape)
    # Several newer trades reach the API (and the stream), none reaches the frozen display.
    newer = eventually(
        lambda: (i := newest_trade_id(dashboard, "BTC-USD")) > top + 2 and i, "newer trades"
    )
    page.wait_for_timeout(1000)
    assert dashboard.tape_ids() == tape
    assert page.inner_text("#last-price") == last
    assert dashboard.js("() => JSON.stringify(document.getElementById('chart').data[0])") == candles
    freeze.click()
    expect(freeze).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#frozen-banner")).to_be_hidden()
    eventually(lambda: dashboard.tape_ids()[0] >= newer, "the tape to catch up after resuming")
    dashboard.assert_clean()


def test_price_alert_fires_when_the_threshold_is_crossed(
    dashboard: Dashboard, market: Market
) -> None:
    page = dashboard.page
    price = page.get_by_label("Alert price")
    set_alert = page.get_by_role("button", name="Set alert")
    price.fill("12,5 USD")
    set_alert.click()
    expect(price).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#alert-status")).to_contain_text("Enter a positive price")
    # A level 2 % above the market: the random walk does not get there by itself ...
    last = Decimal(page.inner_text("#last-price"))
    threshold = (last * Decimal("1.02")).quantize(Decimal("0.000001"))
    price.fill(str(threshold))
    set_alert.click()
    expect(price).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#alert-status")).to_contain_text(f"crossing {threshold} (now ")
    expect(page.locator("#alert-status")).to_contain_text("waiting for a rise")
    top = dashboard.tape_ids()[0]
    eventually(lambda: dashboard.tape_ids()[0] > top + 5, "a few more trades on the tape")
    toast = page.locator("#alert-toast")
    expect(toast).to_be_hidden()
    # ... until the exchange trades exactly at it: reaching the level counts as crossing.
    market.prices.force(str(threshold))
    expect(toast).to_be_visible()
    sent = market.prices.sent
    assert sent is not None and Decimal(sent["price"]) == threshold
    assert toast.get_attribute("data-trade-id") == str(sent["trade_id"])
    fired = toast.get_attribute("data-price") or ""
    assert Decimal(fired) == threshold  # the API sends it without trailing zeros
    assert toast.get_attribute("data-direction") == "up"
    expect(toast).to_contain_text(f"BTC-USD rose to {fired}, crossing your alert at {threshold}")
    expect(page.locator("#alert-status")).to_contain_text("Alert fired")
    dashboard.assert_clean()


def test_connection_status_shows_reconnecting_and_recovers(browser: Browser, server: str) -> None:
    sockets: list[Any] = []

    def through(ws: Any) -> None:  # pass the stream through, keeping a handle to cut it
        ws.connect_to_server()
        sockets.append(ws)

    ctx = browser.new_context()
    try:
        ctx.route_web_socket(re.compile(r"/v1/stream$"), through)
        with open_dashboard(browser, server, context=ctx) as board:
            page = board.page
            page.evaluate(WATCH_CONNECTION)
            # Cut the stream: the page says so, reconnects and reloads what it may have missed.
            with page.expect_request(lambda r: "/candles" in r.url, timeout=15_000):
                sockets[0].close(code=1001, reason="going away")
                page.wait_for_function(
                    "() => window.connectionStates.includes('reconnecting')"
                    " && document.getElementById('connection').dataset.state === 'live'"
                )
            assert len(sockets) == 2
            top = board.tape_ids()[0]
            eventually(lambda: board.tape_ids()[0] > top, "live trades after the reconnect")
            board.assert_clean()
    finally:
        ctx.close()


WATCH_CONNECTION = """() => {
    window.connectionStates = [];
    const element = document.getElementById('connection');
    new MutationObserver(() => window.connectionStates.push(element.dataset.state))
        .observe(element, {attributes: true, attributeFilter: ['data-state']});
}"""


def test_replay_source_is_bannered_and_its_history_charted(
    browser: Browser, tmp_path: Path
) -> None:
    recording = COINBASE_DATA / "session.recv_ts.ndjson"
    products = "NU-GBP,SKL-BTC,BAND-GBP,YFI-BTC,SKL-USD,DASH-BTC"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "replay.log").open("w") as log:
        proc = subprocess.Popen(
            [*SENTINEL, "replay", str(recording), "--serve", "--port", str(port),
             "--lake", str(tmp_path / "lake"), "--products", products],
            env=child_env(), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def replayed() -> bool | None:
            assert proc.poll() is None, (tmp_path / "replay.log").read_text()[-4000:]
            try:
                source = httpx.get(f"{base}/health", timeout=2).json()["source"]
            except (httpx.TransportError, ValueError):
                return None
            return source["kind"] == "replay" and source["finished"]

        eventually(replayed, "the recorded session to be replayed", timeout=60)
        with open_dashboard(browser, base) as board:
            page = board.page
            banner = page.locator("#source-banner")
            expect(banner).to_contain_text("Replay source: recorded exchange frames")
            expect(banner).to_have_attribute("data-source", "replay")
            product = page.get_by_label("Product").input_value()
            stats = board.api(f"/v1/products/{product}/stats")
            assert stats["last_trade_time"].startswith("2021-04-17")  # years before now
            # The chart pages back to the recording's time instead of an empty "now".
            starts = board.chart_starts()
            assert starts and all(s.startswith("2021-04-17") for s in starts)
            assert max(starts) <= stats["last_trade_time"]
            board.assert_clean()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: Anything drawn past the right edge of the window (a page must not scroll sideways), and the
#: gap between the chart's drawing and the bottom of its panel.
LAYOUT = """() => {
    const width = document.documentElement.clientWidth;
    const sticking = [...document.querySelectorAll('body *')]
        .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > width + 0.5)
        .map((e) => `${e.tagName}#${e.id} ${Math.round(e.getBoundingClientRect().right)}`);
    const panel = document.querySelector('.chart').getBoundingClientRect();
    const drawing = document.querySelector('#chart .main-svg').getBoundingClientRect();
    const pad = parseFloat(getComputedStyle(document.querySelector('.chart')).paddingBottom);
    return {scroll: document.documentElement.scrollWidth, width, sticking,
            unused: Math.round(panel.bottom - pad - drawing.bottom),
            chartRight: drawing.right, panelRight: panel.right};
}"""


@pytest.mark.parametrize("width", [360, 390, 414])
def test_phone_widths_fit_without_sideways_scrolling(
    browser: Browser, server: str, width: int
) -> None:
    with open_dashboard(
        browser, server, viewport={"width": width, "height": 800}, is_mobile=True, has_touch=True
    ) as board:
        page = board.page
        page.wait_for_timeout(300)  # the live candles' redraws
        layout = board.js(LAYOUT)
        assert layout["scroll"] <= width and layout["sticking"] == [], layout
        assert layout["chartRight"] <= layout["panelRight"], layout
        assert 0 <= layout["unused"] <= 2, layout  # the chart fills its panel
        # One column: ticker above chart above tape, each inside the screen.
        boxes = [page.locator(s).bounding_box() for s in (".ticker", ".chart", ".tape")]
        assert all(b is not None and b["x"] >= 0 and b["x"] + b["width"] <= width for b in boxes)
        assert [b["y"] for b in boxes if b] == sorted(b["y"] for b in boxes if b)
        # The controls stay usable: every one is on screen and at least 32 px tall to tap.
        for label in ("Product", "Candle size"):
            box = page.get_by_label(label).bounding_box()
            assert box is not None and box["x"] + box["width"] <= width and box["height"] >= 32
        # Turned to landscape and back: still nothing sideways.
        page.set_viewport_size({"width": 800, "height": width})
        page.set_viewport_size({"width": width, "height": 800})
        page.wait_for_function(
            "() => document.querySelector('#chart .main-svg').getBoundingClientRect().right"
            " <= document.querySelector('.chart').getBoundingClientRect().right"
        )
        assert board.js(LAYOUT)["sticking"] == []
        board.assert_clean()


@pytest.mark.parametrize("viewport", [(1280, 600), (1280, 860), (900, 700)])
def test_no_dead_space_under_the_volume_chart(
    browser: Browser, server: str, viewport: tuple[int, int]
) -> None:
    """Where the side column is taller than the chart's own height (short windows) the chart
    grows to the panel's bottom instead of leaving empty space under the volume bars."""
    width, height = viewport
    with open_dashboard(browser, server, viewport={"width": width, "height": height}) as board:
        layout = board.js(LAYOUT)
        assert 0 <= layout["unused"] <= 2, layout
        assert layout["sticking"] == [], layout
        board.assert_clean()


def test_phone_dark_theme_is_remembered(browser: Browser, server: str) -> None:
    with open_dashboard(
        browser, server, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    ) as board:
        page = board.page
        paper = "() => document.getElementById('chart')._fullLayout.paper_bgcolor"
        light = board.js(paper)
        theme = page.get_by_role("button", name="Dark theme")
        theme.click()
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        expect(theme).to_have_attribute("aria-pressed", "true")
        page.wait_for_function(f"() => ({paper})() !== {light!r}")
        page.reload()  # the choice is remembered
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        board.assert_clean()


def test_empty_chart_says_so_without_a_made_up_time_axis(browser: Browser, server: str) -> None:
    """While history loads, and when a product has no candles, the chart shows a line of text
    and no axes (an empty date axis used to show Jan-Nov 2000 under "No candles yet")."""
    held: list[Any] = []
    ctx = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True)
    try:
        ctx.route(re.compile(r"/v1/products/[^/]+/candles"), lambda r: held.append(r))  # later
        ctx.route_web_socket(re.compile(r"/v1/stream$"), lambda ws: None)  # no live candles
        page = ctx.new_page()
        page.goto(f"{server}/")
        chart = page.locator("#chart")
        expect(chart).to_have_attribute("data-state", "loading")
        page.wait_for_function("() => document.getElementById('chart')._fullLayout")
        axes = "() => { const l = document.getElementById('chart')._fullLayout;"
        axes += " return [l.xaxis.visible, l.yaxis.visible, l.yaxis2.visible,"
        axes += " document.querySelectorAll('#chart .xtick, #chart .ytick').length]; }"
        assert page.evaluate(axes) == [False, False, False, 0]
        expect(chart).to_contain_text("Loading candles…")

        def asked() -> list[Any] | None:
            page.wait_for_timeout(50)  # route handlers run only inside Playwright's calls
            return held or None  # [] is not None

        eventually(asked, "the page to ask for candles")
        held[0].fulfill(json={"data": [], "granularity": 60, "product_id": "BTC-USD",
                              "exchange": "simulator", "start": "x", "end": "y"})  # fmt: skip
        expect(chart).to_have_attribute("data-state", "empty")
        expect(chart).to_contain_text("No candles yet")
        assert page.evaluate(axes) == [False, False, False, 0]
        assert "2000" not in (chart.text_content() or "")
    finally:
        ctx.close()


def test_assets_are_served_locally_and_unknown_paths_are_404(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        for path in ("/", "/dashboard"):
            page = client.get(path)
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "/dashboard/assets/plotly.min.js" in page.text
        plotly = client.get("/dashboard/assets/plotly.min.js")
        assert plotly.status_code == 200 and "javascript" in plotly.headers["content-type"]
        assert plotly.text.lstrip().startswith("/**") and "plotly.js" in plotly.text[:200]
        again = client.get(
            "/dashboard/assets/js/main.js", headers={"If-None-Match": client.get(
                "/dashboard/assets/js/main.js").headers["etag"]},
        )  # fmt: skip
        assert again.status_code == 304
        for bad in ("nope.js", "../routes/dashboard.py", "%2e%2e/%2e%2e/api/app.py"):
            r = client.get(f"/dashboard/assets/{bad}")
            assert r.status_code == 404 and "error" in r.json()
        assert "/dashboard" not in client.get("/openapi.json").text


def test_exact_decimal_helpers_in_the_browser(browser: Browser, server: str) -> None:
    """The page's decimal module (alerts, spread, VWAP) agrees with Python's Decimal."""
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(f"{server}/dashboard/assets/icon.svg")  # any same-origin document
        cases = [("0.3", "0.1"), ("65000.12", "65000.1200001"), ("1", "1.000"), ("7", "12.5")]
        got = page.evaluate(
            """async (cases) => {
                const x = await import('/dashboard/assets/js/exact.js');
                return cases.map(([a, b]) => [x.compare(a, b), x.subtract(a, b)]);
            }""",
            cases,
        )
        for (a, b), (order, diff) in zip(cases, got, strict=True):
            assert order == (Decimal(a) > Decimal(b)) - (Decimal(a) < Decimal(b))
            assert Decimal(diff) == Decimal(a) - Decimal(b)
        rounded = page.evaluate(
            """async () => {
                const x = await import('/dashboard/assets/js/exact.js');
                return [x.round('60385.507784431991', 2), x.round('0.995', 2),
                        x.round('12.5', 4), x.isDecimal('1e5'), x.isDecimal('12.50')];
            }"""
        )
        assert rounded == ["60385.51", "1", "12.5", False, True]
    finally:
        ctx.close()
