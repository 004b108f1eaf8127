"""Order books under faults, end to end: a venue simulator over real WebSocket and REST drops,
duplicates and reorders book updates (Kraken: corrupts checksums too; Binance: skips update
ids), `sentinel up`'s pipeline keeps the books with books on, and then:

(Coinbase Exchange `level2` has no sequence numbers, so a lost or swapped update may go unseen
until the next snapshot (a crossed book is seen and resynced): the venue cuts the connection
once the faults stop, and the resync after the reconnect is what must make the book exact.
Advanced Trade's lost frames are seen at once, as `sequence_num` gaps across all channels.)

- a book is never crossed while it is valid (every change the registry announces is checked);
- breaks are found and resynced: the engine records each (a `book` gap row with its reason)
  and the book is valid again afterwards; a break only the engine can see (a Kraken checksum)
  makes the pipeline ask the feed for the book afresh;
- after the faults stop (the run's last trades go out clean, so the last break is found and
  resynced) and the simulator is quiet, the book served by the API equals the simulator's
  true book level by level;
- `book_at` over the lake answers, for 100 random moments of the run, exactly the live book the
  registry showed at that moment.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
from collections import Counter
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from crypto_sentinel.books.history import book_at
from crypto_sentinel.books.orderbook import BookView, OrderBook
from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.simulator import SimulatorServer
from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec
from tests.conftest import free_port, read_table

FAULTS = {
    "kraken": "book_drop=0.04,book_duplicate=0.04,book_reorder=0.04,book_checksum=0.04,seed=3",
    "binance": "book_drop=0.04,book_duplicate=0.04,book_reorder=0.04,book_gap=0.04,seed=3",
    "coinbase": "book_drop=0.04,book_duplicate=0.04,book_reorder=0.04,seed=3",
    "coinbase_advanced": "book_drop=0.04,book_duplicate=0.04,book_reorder=0.04,seed=3",
}
PRODUCT = {"kraken": "ETH-USD", "binance": "ETH-USDT", "coinbase": "ETH-USD",
           "coinbase_advanced": "ETH-USD"}  # fmt: skip
#: The exchange's name (simulator, `source` setting, lake) where it differs from the settings'.
SIM_VENUE = {"coinbase_advanced": "coinbase-advanced"}
#: Venues whose updates' loss the client cannot always see: resynced by a reconnect.
RECONNECT_TO_RESYNC = {"coinbase"}
#: Books on the Exchange feed need a signed subscribe (the simulator checks the fields only).
CREDENTIALS = {
    "coinbase_api_key": "chaos-key",
    "coinbase_api_secret": base64.b64encode(b"chaos secret").decode(),
    "coinbase_api_passphrase": "chaos-phrase",
}
DEPTH = 100  # the books' depth: Kraken's subscription, Binance's REST snapshot
#: Levels a side compared with the truth: a book kept to DEPTH levels knows its top exactly
#: (Binance's deeper levels are known only where a diff touched them after the snapshot).
COMPARED = 10
TRADES = 800
CLEAN_TAIL = 150  # the last trades of the run go out without faults


def levels(pairs: list[tuple[Decimal, Decimal]]) -> list[tuple[str, str]]:
    """Exact values, independent of how many trailing zeros a venue writes."""
    return [(format(p.normalize(), "f"), format(s.normalize(), "f")) for p, s in pairs]


async def until(check: Any, what: str, seconds: float = 90.0, shown: Any = None) -> None:
    """Wait for `check()`; on time out fail naming `what` (and `shown()`: what was seen)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}: {shown() if shown else ''}")
        await asyncio.sleep(0.1)


def venue_settings(venue: str, product: str, sim: SimulatorServer) -> dict[str, Any]:
    if venue == "coinbase":
        return {"products": [product], "coinbase_ws_url": sim.ws_url,
                "coinbase_rest_url": sim.rest_url, **CREDENTIALS}  # fmt: skip
    return {f"{venue}_products": [product], f"{venue}_ws_url": sim.ws_url,
            f"{venue}_rest_url": sim.rest_url}  # fmt: skip


@pytest.mark.parametrize("venue", ["kraken", "binance", "coinbase", "coinbase_advanced"])
async def test_books_survive_book_faults(venue: str, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    product = PRODUCT[venue]
    faults = FaultPlan(FaultSpec.parse(FAULTS[venue]))
    exchange = SIM_VENUE.get(venue, venue)  # the exchange's name in the lake and metrics
    sim = SimulatorServer([product], rate=40, seed=11, venue=exchange,
                          faults=faults, max_trades=TRADES)  # fmt: skip
    seen: list[tuple[datetime, BookView]] = []
    crossed: list[BookView] = []

    def watch(book: OrderBook) -> None:
        if book.valid and book.crossed():
            crossed.append(book.view(3))
        # book time: what `at=` selects by (exchange time, never going back)
        processor = pipeline.engine.books
        moment = None if processor is None else processor.moment(book.exchange, book.product_id)
        if moment is not None:
            seen.append((moment, book.view()))

    breaks_before = REGISTRY.get_sample_value("sentinel_book_breaks_total", {"exchange": exchange})
    async with sim:
        port = free_port()
        settings = load_settings(
            source=exchange, lake_dir=lake, port=port, batch_interval_ms=100,
            books=True, book_depth=DEPTH, book_snapshot_seconds=1.0, book_checkpoint_seconds=5.0,
            fallback_to_simulator=False, maintenance_enabled=False,
            **venue_settings(venue, product, sim),
        )  # fmt: skip
        pipeline = Pipeline(settings)
        assert pipeline.books is not None
        pipeline.books.subscribe(watch)
        task = asyncio.create_task(pipeline.run(with_api=True, install_signals=False))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

                async def faults_done() -> bool:
                    return sim.emitted_count >= TRADES - CLEAN_TAIL

                await until(faults_done, "the faulty part of the run", 120)
                # The last trades go out clean: a break the faults left is found at the next
                # update (a U/u gap, a checksum) and resynced; then the book must be exact.
                sim.faults = None
                if venue in RECONNECT_TO_RESYNC:
                    sim.disconnect_all()  # the resync: a new connection, a new snapshot
                await asyncio.wait_for(sim.wait_done(), 120)
                truth = sim.depth.truth(product, COMPARED)
                want = (levels(truth.bids), levels(truth.asks))

                served: list[Any] = []

                async def served_equals_truth() -> bool:
                    answer = await client.get(
                        f"/v1/products/{product}/book", params={"depth": COMPARED}
                    )
                    served[:] = [answer.status_code, answer.text[:600]]
                    if answer.status_code != 200 or not answer.json()["valid"]:
                        return False
                    body = answer.json()
                    got = (
                        levels([(Decimal(p), Decimal(s)) for p, s in body["bids"]]),
                        levels([(Decimal(p), Decimal(s)) for p, s in body["asks"]]),
                    )
                    return got == want

                await until(
                    served_equals_truth, "the served book equals the true book", 60,
                    lambda: f"served {served}, true {truth.update_id} {want[0][:3]} {want[1][:3]}",
                )  # fmt: skip
        finally:
            pipeline.stop_event.set()
            await asyncio.wait_for(task, 120)
        counts = faults.counts()

    injected = {k: v for k, v in counts.items() if k.startswith("book_") and v}
    assert len(injected) >= 3, counts  # the faults really happened
    assert crossed == [], crossed[:3]
    stats = pipeline.engine.stats
    assert stats.book_resyncs > 0, stats  # breaks were found ...
    breaks = REGISTRY.get_sample_value("sentinel_book_breaks_total", {"exchange": exchange})
    assert (breaks or 0) - (breaks_before or 0) == stats.book_resyncs  # ... counted at /metrics
    gaps = [g for g in read_table(lake, T.GAPS).to_pylist() if g["kind"] == "book"]
    assert len(gaps) == stats.book_resyncs and all(g["reason"] for g in gaps)
    if venue == "kraken":  # ... a checksum only the engine sees made it ask the feed
        assert any(g["reason"] == "checksum mismatch" for g in gaps), gaps
        (source,) = pipeline.status()["sources"]
        assert source["book_resyncs"] >= 1  # the feed re-subscribed on the engine's request
    if venue == "coinbase_advanced":  # a lost frame is a sequence_num gap, seen at once
        assert any(g["reason"] == "sequence break" for g in gaps), gaps
    if venue in RECONNECT_TO_RESYNC:  # the resync was a new connection (its snapshot first)
        assert sim.disconnects >= 1

    # at=: random moments of the run, each answered as the registry showed it then.
    # A book time with two full snapshots had two states: a break and the resync snapshot of
    # a venue that sends no time with it (Coinbase Exchange) share the break's time. `at=`
    # answers the last of them, a listener told once a chunk may have seen the first.
    full = Counter(s["time"] for s in read_table(lake, T.BOOK_SNAPSHOTS).to_pylist()
                   if s["depth"] is None)  # fmt: skip
    moments = [(t, view) for (t, view), (later, _) in itertools.pairwise(seen)
               if later > t and full[t] < 2]  # fmt: skip
    assert len(moments) >= 100
    rng = random.Random(5)
    for when, view in rng.sample(moments, 100):
        stored = book_at(lake, exchange, product, when, None)
        assert stored is not None, when
        assert stored.valid == view.valid, when
        if view.valid:
            assert (levels(stored.bids), levels(stored.asks)) == (
                levels(view.bids), levels(view.asks),
            ), when  # fmt: skip
