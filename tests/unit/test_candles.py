"""Candle maths: OHLCV, buy/sell volume, exact VWAP, order-independent merging."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from crypto_sentinel import metrics
from crypto_sentinel.engine.candles import Candle, candles_of, minute_start
from crypto_sentinel.lake import tables as TABLES
from crypto_sentinel.lake.errors import LakeWriteFailed
from crypto_sentinel.lake.rows import candles_table, trades_table
from crypto_sentinel.lake.writer import Batch, LakeWriter, stored_rows_of
from crypto_sentinel.model import Trade

T0 = datetime(2026, 1, 2, 3, 4, 0, tzinfo=UTC)


def trade(i: int, price: str, size: str, side: str, seconds: float) -> Trade:
    return Trade(
        "coinbase", "BTC-USD", i, Decimal(price), Decimal(size), side,
        T0 + timedelta(seconds=seconds), 0,
    )  # fmt: skip


TRADES = [
    trade(1, "100.10", "0.5", "buy", 1),
    trade(2, "101.25", "0.25", "sell", 10),
    trade(3, "99.99", "1.123456789012", "buy", 30),
    trade(4, "100.00", "0.000000000001", "sell", 59.999999),
]


def build(trades: list[Trade]) -> Candle:
    candle = Candle.from_trade(trades[0], minute_start(trades[0].time))
    for t in trades[1:]:
        candle.add(t)
    return candle


def test_ohlcv_and_vwap_are_exact() -> None:
    c = build(TRADES)
    assert (c.open, c.high, c.low, c.close) == (
        Decimal("100.10"), Decimal("101.25"), Decimal("99.99"), Decimal("100.00"),
    )  # fmt: skip
    assert c.volume == Decimal("1.873456789013")
    assert c.buy_volume == Decimal("1.623456789012")
    assert c.sell_volume == Decimal("0.250000000001")
    quote = sum((t.price * t.size for t in TRADES), Decimal(0))
    assert c.quote_volume == quote  # 24 decimal places, no rounding
    assert c.vwap == (quote / c.volume).quantize(Decimal("1e-12"))
    assert c.trade_count == 4
    assert (c.first_trade_id, c.last_trade_id) == (1, 4)
    assert c.start == T0


def test_arrival_order_does_not_matter() -> None:
    expected = dataclasses.asdict(build(TRADES))
    for order in itertools.permutations(TRADES):
        assert dataclasses.asdict(build(list(order))) == expected


def test_merging_partials_equals_one_pass() -> None:
    rng = random.Random(7)
    trades = [
        trade(i, f"{rng.uniform(90, 110):.2f}", f"{rng.uniform(0.001, 2):.8f}",
              rng.choice(["buy", "sell"]), i * 0.5)
        for i in range(1, 100)
    ]  # fmt: skip
    whole = build(trades)
    left, right = build(trades[::2]), build(trades[1::2])
    right.merge(left)
    assert dataclasses.asdict(right) == dataclasses.asdict(whole)


def test_bucket_is_exchange_time_minute() -> None:
    t = datetime(2026, 1, 2, 3, 4, 59, 999999, tzinfo=UTC)
    assert minute_start(t) == T0


def test_row_round_trip() -> None:
    c = build(TRADES)
    row = c.to_row()
    assert row["vwap"] == c.vwap and row["date"] == T0.date()
    assert dataclasses.asdict(Candle.from_row(row)) == dataclasses.asdict(c)


def test_column_wise_candles_equal_trade_by_trade_ones() -> None:
    """`candles_of` (a chunk's Arrow rows) gives the candles `Candle.add` builds trade by trade:
    products and minutes interleaved, trades out of order, times shared by several trades (the
    trade id then decides open and close)."""
    rng = random.Random(11)
    trades = []
    for i in range(3000):
        exchange, product = rng.choice(
            [("coinbase", "BTC-USD"), ("coinbase", "ETH-USD"), ("kraken", "BTC-USD")]
        )
        seconds = rng.choice([0, 1, 59.5, 60, 61, 125, 3600]) + rng.randrange(3) / 1000
        price = Decimal(rng.randrange(1, 10**9)).scaleb(-rng.randrange(0, 8))
        size = Decimal(rng.randrange(1, 10**12)).scaleb(-12)
        side = rng.choice(["buy", "sell"])
        trades.append(
            Trade(
                exchange,
                product,
                rng.randrange(10**6) * 4096 + i,
                price,
                size,
                side,
                T0 + timedelta(seconds=seconds),
                0,
            )
        )
    expected: dict[tuple[str, str, datetime], Candle] = {}
    for t in trades:
        start = minute_start(t.time)
        key = (t.exchange, t.product_id, start)
        if key in expected:
            expected[key].add(t)
        else:
            expected[key] = Candle.from_trade(t, start)
    got = candles_of(trades_table(trades))
    assert {c.key: c for c in got} == expected
    assert len(got) == len(expected)


def _candle(product: str, start: datetime, count: int) -> Candle:
    one = Trade("kraken", product, count, Decimal("1.5"), Decimal("2"), "buy", start, 0)
    candle = Candle.from_trade(one, start)
    candle.trade_count = count
    return candle


def test_a_candle_upsert_replaces_its_keys_and_keeps_every_other_row(tmp_path: Path) -> None:
    """Replacing what `stored_rows_of` matches is an upsert: the written keys end up once,
    with the new values, across dates and products (one with a quote in its name)."""
    writer = LakeWriter(tmp_path / "lake", "test")
    day2 = T0 + timedelta(days=1)
    first = [
        _candle("BTC/USD", T0, 1),
        _candle("BTC/USD", T0 + timedelta(minutes=1), 2),
        _candle("it's", T0, 3),
        _candle("BTC/USD", day2, 4),
    ]
    writer.upsert_candles(lambda: first)
    again = [
        _candle("BTC/USD", T0 + timedelta(minutes=1), 20),
        _candle("it's", T0, 30),
        _candle("it's", day2, 50),  # new
    ]
    writer.upsert_candles(lambda: again)
    rows = writer.tables[TABLES.CANDLES_1M.name].to_pyarrow_table().to_pylist()
    stored = {(r["product_id"], r["start"]): r["trade_count"] for r in rows}
    assert len(rows) == len(stored) == 5
    assert stored == {
        ("BTC/USD", T0): 1,
        ("BTC/USD", T0 + timedelta(minutes=1)): 20,
        ("it's", T0): 30,
        ("BTC/USD", day2): 4,
        ("it's", day2): 50,
    }
    writer.close()


def test_the_upsert_predicate_names_each_key_and_refuses_a_key_twice() -> None:
    table = candles_table([_candle("it's", T0, 1), _candle("ETH-USD", T0, 2)])
    predicate = stored_rows_of(table)
    assert predicate.startswith("date IN ('2026-01-02') AND (")
    assert "product_id = 'it''s' AND start IN ('2026-01-02T03:04:00+00:00')" in predicate
    with pytest.raises(ValueError, match="twice"):
        stored_rows_of(candles_table([_candle("ETH-USD", T0, 1), _candle("ETH-USD", T0, 2)]))


def test_a_batch_with_a_candle_key_twice_fails_at_once_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """A key twice is a bug, not a storage hiccup: the commit fails before any table is
    written, and is not retried (the retries would take seconds and could not help)."""
    writer = LakeWriter(tmp_path / "lake", "test")
    before = {name: dt.version() for name, dt in writer.tables.items()}
    retries = metrics.COMMIT_RETRIES.labels("error")._value.get()
    twice = [_candle("BTC-USD", T0, 1)], [_candle("BTC-USD", T0, 2)]
    with pytest.raises(LakeWriteFailed, match="candle key appears twice"):
        writer.commit(Batch(version=1, candles=twice[0], partial_candles=twice[1]))
    assert metrics.COMMIT_RETRIES.labels("error")._value.get() == retries
    for dt in writer.tables.values():
        dt.update_incremental()
    assert {name: dt.version() for name, dt in writer.tables.items()} == before
    writer.close()
