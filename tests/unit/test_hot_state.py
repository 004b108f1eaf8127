"""Hot state fed a chunk at a time (Arrow rows or records, made records on read) holds
exactly what it would hold fed one trade at a time: same trades, same `complete_from`."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pytest

from crypto_sentinel.api.state import SeenTrade, TradeRing
from crypto_sentinel.engine.records import NewTrades
from crypto_sentinel.lake.rows import trades_table
from crypto_sentinel.model import Trade

T0 = datetime(2026, 12, 2, 12, tzinfo=UTC)


def trade(trade_id: int, product: str = "BTC-USD") -> Trade:
    return Trade(
        exchange="coinbase",
        product_id=product,
        trade_id=trade_id,
        price=Decimal("100.5") + trade_id,
        size=Decimal("0.001"),
        side="buy",
        time=T0 + timedelta(milliseconds=trade_id),
        recv_ns=1_000_000 + trade_id,
        sequence=trade_id * 2,
        conn_id="c",
    )


def as_rows(trades: list[Trade]) -> NewTrades:
    recv = pa.array([t.recv_ns for t in trades], pa.int64())
    return NewTrades(trades_table(trades), recv)


def chunks_of(ids: list[int], rng: random.Random) -> list[list[int]]:
    out, at = [], 0
    while at < len(ids):
        n = rng.randint(1, 700)
        out.append(ids[at : at + n])
        at += n
    return out


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("order", ["ascending", "backfilled"])
def test_chunked_ring_equals_trade_by_trade(seed: int, order: str) -> None:
    rng = random.Random(seed)
    ids = list(range(1, rng.randint(50, 6000)))
    if order == "backfilled":  # a few late ids arrive in later chunks
        late = rng.sample(ids, k=min(40, len(ids) // 5))
        ids = [i for i in ids if i not in set(late)] + late
    size, floor = rng.choice([(10, 0), (100, 0), (1000, 0), (100, 30)])
    eager, lazy = TradeRing(size, floor), TradeRing(size, floor)
    for n, chunk in enumerate(chunks_of(ids, rng)):
        trades = [trade(i) for i in chunk]
        for t in trades:
            eager.add(SeenTrade(t, n))
        # live feeds hand records (a few frames at a time), backlogs Arrow rows
        lazy.add_new(as_rows(trades) if rng.random() < 0.7 else NewTrades(records=trades), n)
        if rng.random() < 0.2:  # a reader now and then
            lazy.settle()
            assert [s.trade for s in lazy] == [s.trade for s in eager]
    lazy.settle()
    assert [s.trade for s in lazy] == [s.trade for s in eager]
    assert [s.processed_ns for s in lazy] == [s.processed_ns for s in eager]
    assert lazy.complete_from == eager.complete_from


def test_waiting_rows_stay_bounded_without_readers() -> None:
    ring = TradeRing(100, 0)
    for start in range(1, 100_000, 500):
        ring.add_new(as_rows([trade(i) for i in range(start, start + 500)]), 0)
        assert ring._waiting_rows <= 2 * 100 + 500
    ring.settle()
    assert [s.trade.trade_id for s in ring] == list(range(99_901, 100_001))
    assert ring.complete_from == 99_901


def test_new_trades_split_per_product_in_chunk_order() -> None:
    trades = [
        trade(i, p) for i, p in [(5, "ETH-USD"), (1, "BTC-USD"), (2, "ETH-USD"), (3, "BTC-USD")]
    ]
    parts = as_rows(trades).per_product()
    assert {k: [t.trade_id for t in v.records()] for k, v in parts.items()} == {
        ("coinbase", "BTC-USD"): [1, 3],
        ("coinbase", "ETH-USD"): [5, 2],
    }
    assert parts[("coinbase", "ETH-USD")].records() == [trades[0], trades[2]]
    assert as_rows(trades).records(-2) == trades[2:]
    assert as_rows(trades).first() == trades[0]


def test_dropped_chunks_raise_complete_from_when_the_rest_just_fills_the_ring() -> None:
    ring = TradeRing(100, 0)
    for start in (1, 101, 201):  # 300 waiting ids: the two older chunks go unread
        ring.add_new(as_rows([trade(i) for i in range(start, start + 100)]), 0)
    ring.settle()
    assert [s.trade.trade_id for s in ring] == list(range(201, 301))
    assert ring.complete_from == 201  # ids 1..200 are not in memory: the lake answers them
