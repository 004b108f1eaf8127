"""The simulator's books follow its trades: a trade takes the side it hits, the book is never
crossed, each update's ids are contiguous, replaying the updates rebuilds the book, levels
keep fixed decimals, and watching a book does not change the trades."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from crypto_sentinel.books.orderbook import OrderBook
from crypto_sentinel.simulator.depth import LEVELS, Depth
from crypto_sentinel.simulator.market import Market

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def test_trades_move_the_book_consistently() -> None:
    market = Market(["BTC-USD", "ETH-USD"], seed=3, start_trade_id=1)
    depth = Depth(market)
    mirror = OrderBook("x", "BTC-USD")
    start = depth.truth("BTC-USD")
    mirror.load_snapshot(start.bids, start.asks, start.update_id)
    last_id = start.update_id
    seen = 0
    for _ in range(3000):
        trade = market.next_trade(WHEN)
        update = depth.on_trade(trade)
        if trade.product_id != "BTC-USD":
            assert update is None  # nobody asked for ETH's book
            continue
        assert update is not None
        seen += 1
        assert update.first_id == last_id + 1
        assert update.last_id == update.first_id + len(update.changes) - 1
        last_id = update.last_id
        for side, price, size in update.changes:
            mirror.apply(side, price, size)
        book = depth.books["BTC-USD"].book
        assert not book.crossed()
        price = Decimal(trade.price)
        best_bid, best_ask = book.best_bid(), book.best_ask()
        assert best_bid is not None and best_ask is not None
        if trade.maker_side == "sell":  # a taker bought: nothing left on the asks below it
            assert best_ask >= price > best_bid
        else:
            assert best_bid <= price < best_ask
        assert LEVELS <= len(book.bids) <= LEVELS + 20
        assert LEVELS <= len(book.asks) <= LEVELS + 20
    assert seen > 1000
    truth = depth.truth("BTC-USD")
    assert mirror.top() == (truth.bids, truth.asks)
    assert truth.update_id == last_id
    for price, size in truth.bids + truth.asks:
        assert price.as_tuple().exponent == -2 and size.as_tuple().exponent == -8
        assert size > 0


def test_a_watched_book_leaves_the_trades_unchanged() -> None:
    plain, watched = (Market(["BTC-USD"], seed=8, start_trade_id=1) for _ in range(2))
    depth = Depth(watched)
    depth.ensure("BTC-USD")
    for _ in range(500):
        a, b = plain.next_trade(WHEN), watched.next_trade(WHEN)
        depth.on_trade(b)
        assert a == b


def test_a_gap_skips_update_ids() -> None:
    market = Market(["BTC-USD"], seed=2, start_trade_id=1)
    depth = Depth(market, gap=lambda product: 3)
    depth.ensure("BTC-USD")
    before = depth.truth("BTC-USD").update_id
    update = depth.on_trade(market.next_trade(WHEN))
    assert update is not None and update.first_id == before + 4
