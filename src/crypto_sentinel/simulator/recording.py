"""Write a simulated ws-feed session to NDJSON without running a server.

The output uses the wrapping of the real captures (``session.recv_ts.ndjson``): one line
per frame, ``{"recv_ts": <unix seconds>, "raw": "<frame text>"}``. Simulated time starts at
a fixed instant, so the same arguments always produce the same bytes; that makes large
recordings usable as replay fixtures and benchmark inputs.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from crypto_sentinel.simulator.market import Market
from crypto_sentinel.simulator.protocol import Subscriptions

__all__ = ["RECORDING_START", "write_recording"]

RECORDING_START = datetime(2024, 1, 1, tzinfo=UTC)
"""Simulated wall time of the first trade of every recording."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LATENCY_US = 1_000  # simulated network delay between a frame's time and its receipt
_CHUNK = 20_000  # lines buffered per write


def write_recording(
    path: str | Path,
    products: list[str],
    count: int,
    seed: int = 1,
    start_trade_id: int | None = None,
    rate: float = 50_000.0,
    *,
    start: datetime = RECORDING_START,
    venue: str = "coinbase",
) -> int:
    """Write ``count`` trades as a recorded session; return the number of match frames.

    Layout, like a client that subscribes to ``matches``, ``ticker`` and ``heartbeat``
    one channel at a time: the cumulative ``subscriptions`` acks, each followed by its
    snapshots (one ``last_match`` / one ticker per product, of a trade made just before
    the recording starts), then per trade its ``match`` and its ``ticker``, and one
    ``heartbeat`` per product at every whole simulated second. Trades are ``1 / rate``
    seconds of simulated time apart.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if not rate > 0:
        raise ValueError("rate must be > 0")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if venue != "coinbase":
        return _write_venue_recording(Path(path), venue, products, count, seed, rate, start)
    market = Market(list(products), seed=seed, start_trade_id=start_trade_id, history_limit=0)
    start_us = (start - _EPOCH) // timedelta(microseconds=1)
    dumps = orjson.dumps
    lines: list[str] = []

    def add(ts_us: int, frame: str) -> None:
        lines.append(f'{{"recv_ts": {ts_us / 1e6!r}, "raw": {dumps(frame).decode()}}}\n')

    # History before the subscription, so the snapshots have something to show.
    n = len(market.products)
    for i, product in enumerate(market.products):
        market.trade_for(product, start - timedelta(milliseconds=250 * (n - i)))

    subs = Subscriptions()
    for channel in ("matches", "ticker", "heartbeat"):
        subs.subscribe({channel: list(market.products)})
        add(start_us, subs.ack_frame())
        for product in market.products:
            last = market.last_trade(product)
            assert last is not None
            if channel == "matches":
                add(start_us, market.match_frame(last, "last_match"))
            elif channel == "ticker":
                add(start_us, market.ticker_frame(last))

    tmp = Path(f"{path}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    step_us = 1e6 / rate
    next_heartbeat = start_us + 1_000_000
    with tmp.open("w", encoding="utf-8") as out:
        for k in range(count):
            t_us = start_us + int(k * step_us)
            while next_heartbeat <= t_us:
                when = _EPOCH + timedelta(microseconds=next_heartbeat)
                for product in market.products:
                    add(next_heartbeat + _LATENCY_US, market.heartbeat_frame(product, when))
                next_heartbeat += 1_000_000
            trade = market.next_trade(_EPOCH + timedelta(microseconds=t_us))
            add(t_us + _LATENCY_US, market.match_frame(trade))
            add(t_us + _LATENCY_US, market.ticker_frame(trade))
            if len(lines) >= _CHUNK:
                out.write("".join(lines))
                lines.clear()
        out.write("".join(lines))
    os.replace(tmp, path)
    return count


class _Session:
    """What a venue keeps per connection (the recording is one connection)."""

    state: object = None


def _write_venue_recording(
    path: Path,
    venue: str,
    products: list[str],
    count: int,
    seed: int,
    rate: float,
    start: datetime,
) -> int:
    """Another venue's frames for the same market: per trade its trade frame and its ticker
    frame as that venue renders them (Coinbase Advanced: numbered per connection, trades
    batched every 250 ms of simulated time)."""
    from crypto_sentinel.simulator.venues import venue_for

    impl = venue_for(venue)
    assert impl is not None
    market = Market(list(products), seed=seed, history_limit=0)
    session = _Session()
    if impl.stamps:  # numbered per connection: the venue keeps its counter on the session
        impl.on_open(session, "/", {}, market)
    dumps = orjson.dumps
    start_us = (start - _EPOCH) // timedelta(microseconds=1)
    step_us = 1e6 / rate
    batch_us = int(impl.batch_interval * 1e6) or None
    next_flush = start_us + (batch_us or 0)
    tmp = Path(f"{path}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def add(ts_us: int, frames: list[str]) -> None:
        for frame in frames:
            lines.append(f'{{"recv_ts": {ts_us / 1e6!r}, "raw": {dumps(frame).decode()}}}\n')

    with tmp.open("w", encoding="utf-8") as out:
        for k in range(count):
            t_us = start_us + int(k * step_us)
            if batch_us is not None and t_us >= next_flush:
                add(next_flush + _LATENCY_US, impl.flush(session))
                next_flush += batch_us * max(1, (t_us - next_flush) // batch_us + 1)
            trade = market.next_trade(_EPOCH + timedelta(microseconds=t_us))
            for frame in (impl.trade_frame(market, trade), impl.ticker_frame(market, trade)):
                stamped = impl.stamp(session, frame) if impl.stamps else frame
                if stamped is not None:
                    add(t_us + _LATENCY_US, [stamped])
            if len(lines) >= _CHUNK:
                out.write("".join(lines))
                lines.clear()
        add(start_us + int(count * step_us) + _LATENCY_US, impl.flush(session))
        out.write("".join(lines))
    os.replace(tmp, path)
    return count
