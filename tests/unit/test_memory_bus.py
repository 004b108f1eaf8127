"""The in-process bus keeps order, bounds memory (a full bus makes the source wait) and
returns an empty list when nothing arrives in time."""

from __future__ import annotations

import asyncio

from crypto_sentinel.bus.memory import MemoryBus
from crypto_sentinel.model import RawFrame


def frame(i: int) -> RawFrame:
    return RawFrame("simulator", "c", i, i, f"{{{i}}}")


async def consume(
    bus: MemoryBus, producer: asyncio.Task[None], count: int
) -> tuple[list[int], int]:
    """Take `count` frames in small bites as they come: their sequence numbers, and the
    deepest the bus got meanwhile."""
    got: list[int] = []
    deepest = 0
    while len(got) < count:
        await asyncio.sleep(0)
        deepest = max(deepest, bus.depth())
        got.extend(f.recv_seq for f in await bus.take(37, 1.0))
    await producer
    return got, deepest


async def test_order_capacity_and_timeout() -> None:
    bus = MemoryBus(capacity=100)
    assert await bus.take(10, 0.01) == []

    async def produce() -> None:
        for i in range(1000):
            await bus.publish(frame(i))

    got, deepest = await consume(bus, asyncio.create_task(produce()), 1000)
    assert got == list(range(1000))
    assert 0 < deepest <= 100
    assert bus.depth() == 0


async def test_a_waiting_take_wakes_on_publish() -> None:
    bus = MemoryBus(capacity=10)
    waiting = asyncio.create_task(bus.take(5, 5.0))
    await asyncio.sleep(0.01)
    await bus.publish(frame(1))
    assert [f.recv_seq for f in await asyncio.wait_for(waiting, 1.0)] == [1]


async def test_publishing_many_keeps_order_and_waits_while_full() -> None:
    bus = MemoryBus(capacity=100)

    async def produce() -> None:
        for start in range(0, 1000, 64):
            await bus.publish_many([frame(i) for i in range(start, min(start + 64, 1000))])

    got, deepest = await consume(bus, asyncio.create_task(produce()), 1000)
    assert got == list(range(1000))
    assert 0 < deepest < 100 + 64  # a part is handed over whole once there is room


async def test_a_part_waits_while_a_part_as_large_is_still_waiting() -> None:
    """A replay's parts do not stack up in a bus with room for many: each waits until the
    engine took what was there (stacked parts only delayed every frame)."""
    bus = MemoryBus(capacity=10_000)
    await bus.publish_many([frame(i) for i in range(100)])
    second = asyncio.create_task(bus.publish_many([frame(i) for i in range(100, 200)]))
    await asyncio.sleep(0.01)
    assert not second.done() and bus.depth() == 100
    assert [f.recv_seq for f in await bus.take(60, 1.0)] == list(range(60))
    await asyncio.wait_for(second, 1.0)  # 40 frames left: fewer than the part brings
    assert bus.depth() == 140
    assert [f.recv_seq for f in await bus.take(1000, 1.0)] == list(range(60, 200))


async def test_room_for_a_part_is_what_publishing_it_waits_for() -> None:
    """A replay waits for room before it makes (and stamps) its next part."""
    bus = MemoryBus(capacity=150)
    await bus.publish_many([frame(i) for i in range(100)])
    waiting = asyncio.create_task(bus.room_for(100))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await bus.take(1, 1.0)  # 99 frames left: fewer than the part brings
    await asyncio.wait_for(waiting, 1.0)
    small = asyncio.create_task(bus.room_for(50))  # a smaller part still waits
    await asyncio.sleep(0.01)
    assert not small.done()
    await bus.take(60, 1.0)
    await asyncio.wait_for(small, 1.0)
