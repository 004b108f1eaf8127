"""Each venue's six malformed copies (the fault plan's ``malformed``) are frames that venue's
codec rejects, and the fault plan recognises that venue's live trade frames (not snapshots,
tickers or heartbeats)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from crypto_sentinel.model import RawFrame
from crypto_sentinel.simulator.market import Market
from crypto_sentinel.simulator.venues import venue_for
from crypto_sentinel.sources.codec import FrameError
from crypto_sentinel.sources.venues import codec_for

VENUES = ["binance", "kraken", "coinbase-advanced"]


def frames(venue: str) -> tuple[str, str, str]:
    """(a live trade frame, a ticker frame, a trade's product) rendered by the venue."""
    impl = venue_for(venue)
    assert impl is not None
    market = Market(["BTC-USDT" if venue == "binance" else "BTC-USD"], seed=1, start_trade_id=9)
    trade = market.next_trade(datetime.now(UTC))
    trade = market.next_trade(datetime.now(UTC))
    return impl.trade_frame(market, trade), impl.ticker_frame(market, trade), trade.product_id


def decode(venue: str, text: str) -> object:
    codec = codec_for(venue)
    assert codec is not None
    return codec.decode(RawFrame(venue, "c", 0, time.time_ns(), text))


@pytest.mark.parametrize("venue", VENUES)
def test_every_corruption_is_rejected_by_the_venue_codec(venue: str) -> None:
    impl = venue_for(venue)
    assert impl is not None
    trade, _, _ = frames(venue)
    assert decode(venue, trade)  # the intact frame decodes to a trade
    corruptions = impl.shape.corruptions
    assert len(corruptions) == 6  # same draws as Coinbase's plan for one seed
    for corrupt in corruptions:
        bad = corrupt(trade)
        assert bad != trade, corrupt.__name__
        with pytest.raises(FrameError):
            decode(venue, bad)


@pytest.mark.parametrize("venue", VENUES)
def test_the_fault_plan_sees_live_trades_only(venue: str) -> None:
    impl = venue_for(venue)
    assert impl is not None
    trade, ticker, _ = frames(venue)
    assert impl.shape.trade(trade)
    assert impl.shape.trade(ticker) is None
    if impl.shape.heartbeat is not None:
        assert impl.shape.trade(impl.shape.heartbeat + "}") is None


def test_unknown_venue_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown venue"):
        venue_for("bitstamp")


def test_one_seed_faults_the_same_trades_on_every_venue() -> None:
    """The plan draws the same numbers per live trade frame on every venue, so one seed drops,
    repeats and corrupts the same trades whichever protocol carries them."""
    from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec

    spec = FaultSpec(seed=5, drop=0.05, drop_max=4, duplicate=0.05, malformed=0.05, reorder=0.05)
    fates: dict[str, list[int]] = {}
    for venue in ["coinbase", *VENUES]:
        market = Market(["BTC-USD", "ETH-USD"], seed=9, start_trade_id=1)
        impl = venue_for(venue)
        plan = FaultPlan(spec)
        if impl is not None:
            plan.use_shape(impl.shape)
        session = object()
        sent = []
        for _ in range(400):
            trade = market.next_trade(datetime.now(UTC))
            frame = market.match_frame(trade) if impl is None else impl.trade_frame(market, trade)
            sent.append(len(list(plan.outbound(session, frame))))
        fates[venue] = sent
        assert plan.dropped and plan.duplicated and plan.malformed and plan.reordered
    assert all(sent == fates["coinbase"] for sent in fates.values())
