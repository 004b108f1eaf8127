"""The order book panel in a real browser (headless Chromium via Playwright): a real pipeline
(`Pipeline.run` with its API, the built-in simulator as source) whose book registry a
background task keeps changing, as the engine does; the page draws the depth chart from the
`book` push channel, follows each change, and says plainly when a product has no book."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from crypto_sentinel.config import load_settings
from crypto_sentinel.runtime import Pipeline
from tests.browser.test_dashboard import eventually, open_dashboard
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

BOOKED = "BTC-USD"  # the product the task keeps a book for; ETH-USD has none
LEVELS = 60  # per side: more than the 50 the page asks for


@dataclass
class Served:
    base: str
    paused: threading.Event  # set: the task stops changing the book


def levels(n: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
    """Book number `n`: the mid walks, sizes grow away from it (exact decimals)."""
    mid = Decimal(65000) + Decimal(n % 40) / 10
    bids = [(mid - Decimal(i + 1) / 10, Decimal(i + 1) * Decimal("0.25")) for i in range(LEVELS)]
    asks = [(mid + Decimal(i + 1) / 10, Decimal(i + 1) * Decimal("0.5")) for i in range(LEVELS)]
    return bids, asks


async def churn(pipeline: Pipeline, paused: threading.Event) -> None:
    """Replace the book ten times a second and tell the registry, as the engine would."""
    while not pipeline.sources:
        await asyncio.sleep(0.05)
    books = pipeline.books
    assert books is not None  # books are on
    book = books.book(pipeline.sources[0].status.exchange, BOOKED)
    n = 0
    while True:
        if not paused.is_set():
            n += 1
            bids, asks = levels(n)
            book.load_snapshot(bids, asks, update_id=n, time=datetime.now(UTC))
            books.changed(book)
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    lake: Path = tmp_path_factory.mktemp("books") / "lake"
    port = free_port()
    paused = threading.Event()
    started: list[Any] = []  # the loop and the pipeline, once running
    failed: list[BaseException] = []

    async def main() -> None:
        pipeline = Pipeline(
            load_settings(lake_dir=lake, port=port, source="simulator",
                          products=f"{BOOKED},ETH-USD", simulator_rate=20, simulator_seed=3,
                          batch_interval_ms=100, books=True)
        )  # fmt: skip
        started.extend([asyncio.get_running_loop(), pipeline])
        task = asyncio.create_task(churn(pipeline, paused))
        try:
            await pipeline.run(with_api=True, install_signals=False)
        finally:
            task.cancel()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # shown by the fixture, not lost in the thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="books-pipeline", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool | None:
        assert not failed, failed
        try:
            return httpx.get(f"{base}/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return None

    try:
        eventually(ready, "the pipeline's API to be ready", timeout=60)
        eventually(
            lambda: httpx.get(f"{base}/v1/products/{BOOKED}/book", timeout=2).status_code == 200,
            "the first book",
        )
        yield Served(base, paused)
    finally:
        if started:
            loop, pipeline = started
            loop.call_soon_threadsafe(pipeline.stop_event.set)
        thread.join(60)
        assert not thread.is_alive(), "the pipeline did not stop"


DRAWN = "() => { const d = document.getElementById('depth'); return d.dataset.updateId; }"
CURVES = "() => document.getElementById('depth').data.map((t) => [t.name, t.x, t.y])"


def expected_curves(book: dict[str, Any]) -> list[list[Any]]:
    """What the page must draw for a REST book: running totals, bids lowest price first."""
    out = []
    for name in ("bids", "asks"):
        total, points = Decimal(0), []
        for price, size in book[name]:
            total += Decimal(size)
            points.append((float(Decimal(price)), float(total)))
        if name == "bids":
            points.reverse()
        out.append([name, [p for p, _ in points], [t for _, t in points]])
    return out


def test_depth_chart_appears_and_follows_the_book(browser: Browser, served: Served) -> None:
    with open_dashboard(browser, served.base, viewport={"width": 1280, "height": 860}) as board:
        page = board.page
        depth = page.locator("#depth")
        expect(depth).to_have_attribute("data-state", "ready")
        expect(depth).to_be_visible()
        expect(page.locator("#book-note")).to_be_hidden()
        seen: set[str] = set()

        def redrawn() -> bool | None:
            seen.add(board.js(DRAWN))
            return len(seen) >= 3 or None

        eventually(redrawn, "the depth chart to redraw with two newer books")

        served.paused.set()  # hold the book still: the page must end on exactly it
        try:
            rest = board.api(f"/v1/products/{BOOKED}/book", depth=50)
            expect(depth).to_have_attribute("data-update-id", str(rest["update_id"]))
            assert len(rest["bids"]) == len(rest["asks"]) == 50
            assert board.js(CURVES) == expected_curves(rest)
            spread = f"Spread {rest['spread']} · mid {rest['mid']}"
            expect(page.locator("#book-spread")).to_have_text(spread)
        finally:
            served.paused.clear()
        board.assert_clean()


def test_product_without_a_book_says_so(browser: Browser, served: Served) -> None:
    with open_dashboard(browser, served.base, viewport={"width": 1280, "height": 860}) as board:
        page = board.page
        expect(page.locator("#depth")).to_have_attribute("data-state", "ready")
        page.get_by_label("Product").select_option("ETH-USD")
        expect(page.locator("#depth")).to_have_attribute("data-state", "empty")
        expect(page.locator("#depth")).to_be_hidden()
        note = page.locator("#book-note")
        expect(note).to_be_visible()
        expect(note).to_contain_text("order books are off")
        expect(page.locator("#book-spread")).to_have_text("")
        page.get_by_label("Product").select_option(BOOKED)  # and back: the book returns
        expect(page.locator("#depth")).to_have_attribute("data-state", "ready")
        board.assert_clean()


@pytest.mark.parametrize("width", [360, 414])
def test_depth_chart_fits_a_phone(browser: Browser, served: Served, width: int) -> None:
    with open_dashboard(
        browser, served.base, viewport={"width": width, "height": 800}, is_mobile=True,
        has_touch=True,
    ) as board:  # fmt: skip
        page = board.page
        expect(page.locator("#depth")).to_have_attribute("data-state", "ready")
        page.wait_for_timeout(300)  # live redraws
        box = page.locator("#depth .main-svg").first.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box
        assert board.js("() => document.documentElement.scrollWidth") <= width
        # one column: the book right under the candles, above the trade tape
        boxes = [page.locator(s).bounding_box() for s in (".chart", ".book", ".tape")]
        assert [b["y"] for b in boxes if b] == sorted(b["y"] for b in boxes if b)
        assert len([b for b in boxes if b]) == 3
        board.assert_clean()
