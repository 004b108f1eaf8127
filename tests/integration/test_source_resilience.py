"""The Coinbase source against a real (simulated) exchange that misbehaves: frames over the
maximum size and a silent feed both end in a reconnect and a fresh subscription."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from crypto_sentinel.model import RawFrame
from crypto_sentinel.simulator import Session, SimulatorServer
from crypto_sentinel.sources.coinbase.feed import CoinbaseSource

pytestmark = pytest.mark.integration


class HugeFrameOnce:
    """Sends one 2 MiB frame on the first connection, then behaves."""

    def __init__(self) -> None:
        self.sent = False

    def outbound(self, session: Session, frame: str) -> Iterable[str | bytes]:
        if not self.sent and frame.startswith('{"type":"match"'):
            self.sent = True
            return [frame, '{"type":"noise","pad":"' + "x" * (2 << 20) + '"}']
        return [frame]


class SilentAfterSubscribe:
    """The first connection gets its subscription ack and then nothing at all."""

    def __init__(self) -> None:
        self.first: int | None = None

    def outbound(self, session: Session, frame: str) -> Iterable[str | bytes]:
        if self.first is None:
            self.first = session.id
        if session.id == self.first and not frame.startswith('{"type":"subscriptions"'):
            return []
        return [frame]


async def run_until(source: CoinbaseSource, condition: object, limit: float = 30) -> list:
    frames: list[RawFrame] = []

    async def publish(frame: RawFrame) -> None:
        frames.append(frame)

    task = asyncio.create_task(source.run(publish))
    try:
        for _ in range(int(limit / 0.1)):
            await asyncio.sleep(0.1)
            if condition(source, frames):  # type: ignore[operator]
                return frames
        raise AssertionError(f"condition not met: {source.status}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def resubscribed(source: CoinbaseSource, frames: list[RawFrame]) -> bool:
    acks = [f for f in frames if f.text.startswith('{"type":"subscriptions"')]
    return source.status.connections >= 2 and len({f.conn_id for f in acks}) >= 2


def streaming_again(source: CoinbaseSource, frames: list[RawFrame]) -> bool:
    """Resubscribed, and trades flow on the new connection (not only its ack)."""
    first = frames[0].conn_id if frames else None
    return resubscribed(source, frames) and any(
        f.conn_id != first and f.text.startswith('{"type":"match"') for f in frames
    )


async def test_frame_over_the_maximum_size_forces_a_reconnect() -> None:
    async with SimulatorServer(["BTC-USD"], rate=50, faults=HugeFrameOnce()) as sim:
        source = CoinbaseSource(
            ["BTC-USD"], sim.ws_url, exchange="simulator", kind="simulator",
            max_frame_bytes=1 << 20, backoff_cap=0.5,
        )  # fmt: skip
        frames = await run_until(source, resubscribed)
    assert source.status.reconnects >= 1
    reason = source.status.last_disconnect
    assert "1009" in reason or "too big" in reason.lower(), reason
    assert all(len(f.text) < 1 << 20 for f in frames)


async def test_silent_feed_hits_the_idle_timeout_and_resubscribes() -> None:
    async with SimulatorServer(["BTC-USD"], rate=50, faults=SilentAfterSubscribe()) as sim:
        source = CoinbaseSource(
            ["BTC-USD"], sim.ws_url, exchange="simulator", kind="simulator",
            idle_timeout=0.5, backoff_cap=0.5,
        )  # fmt: skip
        frames = await run_until(source, streaming_again)
    assert source.status.reconnects >= 1
    assert "TimeoutError" in source.status.last_disconnect
    silent = frames[0].conn_id  # the first connection sent its ack and then nothing
    assert not any(f.conn_id == silent and f.text.startswith('{"type":"match"') for f in frames)
