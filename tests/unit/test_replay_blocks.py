"""A replay reads its recording a block at a time: every block gives what `parse_line` gives
line by line, whether all of it is `sentinel record` wrappers (the fast pass) or not, and
handing frames over a part at a time gives what handing them over one by one does."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from crypto_sentinel.bus.memory import MemoryBus
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources import replay
from crypto_sentinel.sources.replay import PUBLISH_FRAMES, ReplaySource, _frame_texts, parse_line

WRAPPED = [
    b'{"recv_ts": 1704067200.25, "raw": "{\\"type\\":\\"match\\",\\"trade_id\\":1}"}\n',
    b'{"recv_ts": 1704067201.5, "raw": "caf\\u00e9 \\ud83d\\ude00"}\n',
]
ODD = [
    b'{"recv_ts": 1704067202, "raw": "an int stamp"}\n',  # int: taken as a float
    b'{"recv_ts": "soon", "raw": "a stamp that is no number"}\n',
    b'{"recv_ts": 1.0, "raw": 5}\n',  # raw not text: the line itself is the frame
    b'{"type":"ticker","price":"1.5"}\n',  # a bare frame
    b"not json at all\r\n",
    b"\n",  # blank: left out
    b'{"raw": "no stamp", "recv_ts": 3.0}\n',  # not a wrapper by its first key
    b'{"recv_ts": 1.0, "raw": "x"',  # truncated, no newline at the end
]


def per_line(lines: list[bytes]) -> list[tuple[float | None, str]]:
    texts = (line.decode("utf-8", errors="replace").rstrip("\r\n") for line in lines)
    return [parse_line(text) for text in texts if text]


@pytest.mark.parametrize("odd", [None, *ODD])
def test_a_block_gives_what_each_line_gives(odd: bytes | None) -> None:
    block = WRAPPED + ([odd] if odd is not None else []) + WRAPPED
    assert _frame_texts(block) == per_line(block)


def test_a_block_of_wrappers_keeps_stamps_and_text() -> None:
    assert _frame_texts(WRAPPED) == [
        (1704067200.25, '{"type":"match","trade_id":1}'),
        (1704067201.5, "caf\u00e9 \U0001f600"),
    ]


def test_full_speed_parts_give_the_frames_one_by_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At full speed to the in-process bus, frames go over `PUBLISH_FRAMES` at a time: the
    same texts in the same order with the same sequence numbers, none left out. Every part
    but the last is whole, though read blocks end anywhere (a short part would be decoded
    frame by frame)."""
    monkeypatch.setattr(replay, "BLOCK_BYTES", 4096)  # many blocks, none a part's size
    lines = [*WRAPPED, *ODD[:5]] * 2000
    path = tmp_path / "recording.ndjson"
    path.write_bytes(b"".join(lines))

    async def replayed(many: bool) -> tuple[list[tuple[str, int, str]], list[int]]:
        bus = MemoryBus(capacity=10**6)
        source = ReplaySource(path, exchange="simulator")
        parts: list[int] = []
        if many:

            async def publish_many(frames: list[RawFrame]) -> None:
                parts.append(len(frames))
                await bus.publish_many(frames)

            source.publish_many = publish_many
            source.room_for = bus.room_for
        frames: list[RawFrame] = []

        async def drain() -> None:  # as the engine does: a part waits for the one before
            while not source.done.is_set() or bus.depth():
                frames.extend(await bus.take(10**6, 0.01))

        draining = asyncio.create_task(drain())
        await source.run(bus.publish)
        await asyncio.wait_for(draining, 10)
        assert source.status.frames == len(frames)
        assert source.status.finished and source.bytes_read == path.stat().st_size
        return [(f.exchange, f.recv_seq, f.text) for f in frames], parts

    one_by_one, _ = asyncio.run(replayed(many=False))
    assert len(one_by_one) == len(per_line(lines)) > 2 * PUBLISH_FRAMES
    in_parts, parts = asyncio.run(replayed(many=True))
    assert in_parts == one_by_one
    assert parts[:-1] == [PUBLISH_FRAMES] * (len(parts) - 1)
    assert 0 < parts[-1] <= PUBLISH_FRAMES and sum(parts) == len(one_by_one)


async def test_a_part_is_stamped_once_the_bus_has_room_for_it(tmp_path: Path) -> None:
    """A part's receive time is when the bus takes it, not when it was made and then waited:
    no frame is stamped before the engine took the part ahead of it."""
    path = tmp_path / "recording.ndjson"
    path.write_bytes(b"".join(WRAPPED * PUBLISH_FRAMES))  # two lines each: two whole parts
    bus = MemoryBus(capacity=10**6)
    source = ReplaySource(path, exchange="simulator")
    source.publish_many, source.room_for = bus.publish_many, bus.room_for
    takes: list[tuple[int, list[RawFrame]]] = []

    async def slow_engine() -> None:
        while not source.done.is_set() or bus.depth():
            await asyncio.sleep(0.05)  # the part waits while the previous one is decoded
            frames = await bus.take(10**6, 0.01)
            if frames:
                takes.append((time.time_ns(), frames))

    engine = asyncio.create_task(slow_engine())
    await source.run(bus.publish)
    await asyncio.wait_for(engine, 10)
    assert [len(frames) for _, frames in takes] == [PUBLISH_FRAMES, PUBLISH_FRAMES]
    (first_taken, _), (_, second) = takes
    assert min(f.recv_ns for f in second) >= first_taken
