"""Play a recording (NDJSON) into the pipeline at N x recorded speed or as fast as possible.

Lines are either `{"recv_ts": <unix seconds>, "raw": "<frame>"}` (what `sentinel record`
writes) or bare frames. A line that is neither is passed on as it is, so the engine
quarantines it like any malformed frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

from crypto_sentinel.extension import NATIVE
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.base import Publish, PublishMany, RoomFor, SourceStatus, new_conn_id


def parse_line(line: str) -> tuple[float | None, str]:
    """(recorded receive time or None, frame text)."""
    if line.startswith('{"recv_ts"'):
        try:
            wrapper = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None, line
        if isinstance(wrapper, dict) and isinstance(wrapper.get("raw"), str):
            ts = wrapper.get("recv_ts")
            return (float(ts) if isinstance(ts, int | float) else None), wrapper["raw"]
    return None, line


def _frame_texts(lines: list[bytes]) -> list[tuple[float | None, str]]:
    """`parse_line` for a block of lines (blank lines left out), with one C-level `map` of
    the JSON decoder over the block: the per-line Python work was most of a replay's cost."""
    texts = _recorded_texts(lines)
    if texts is not None:
        return texts
    out: list[tuple[float | None, str]] = []
    for raw_line in lines:
        line = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
        if line:
            out.append(parse_line(line))
    return out


def _recorded_texts(lines: list[bytes]) -> list[tuple[float | None, str]] | None:
    """The common block, every line a `sentinel record` wrapper, in a few C-level passes;
    None for any other block (`_frame_texts` then goes line by line)."""
    try:
        wrappers = list(map(orjson.loads, lines))
        texts = [w["raw"] for w in wrappers]
        stamps = [w["recv_ts"] for w in wrappers]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    if not (
        all(type(t) is str for t in texts)
        and all(type(ts) is float for ts in stamps)
        and all(line.startswith(b'{"recv_ts"') for line in lines)
    ):
        return None
    return list(zip(stamps, texts, strict=True))


def _line_text(line: bytes) -> str:
    """The frame text of one line (`parse_line` after decoding it as `_frame_texts` does)."""
    return parse_line(line.decode("utf-8", errors="replace").rstrip("\r\n"))[1]


def frame_texts(fh: BinaryIO) -> Iterator[list[str]]:
    """The frame texts of a recording, a block at a time (blank lines left out): through the
    compiled extension when it is installed (it reads the common lines without the
    interpreter, which the writer's thread can use meanwhile), else `_frame_texts`."""
    if NATIVE is None:
        while lines := fh.readlines(BLOCK_BYTES):
            yield [text for _, text in _frame_texts(lines)]
        return
    rest = b""
    while True:
        data = fh.read(BLOCK_BYTES)
        block = rest + data if rest else data
        if not block:
            return
        texts, others, used = NATIVE.recording_texts(block, not data)
        for index, line in others:
            texts[index] = _line_text(line)
        rest = block[used:]
        yield texts


#: Bytes of the recording read and parsed at a time.
BLOCK_BYTES = 1 << 18
#: Frames handed over at a time at full speed, between which the engine and the API run: the
#: engine's chunk (`engine.processor.CHUNK_FRAMES`), so each part is decoded column-wise in
#: one go. Smaller parts cut a chunk's fixed costs (Arrow calls, the compiled decoder's set-up)
#: into more pieces: 512 frames replayed 37.5 k against 46.4 k trades/s with 2,000 (session
#: 27), and 2,000 about 7 % slower than 5,000 (docs/benchmarks.md, session 35).
PUBLISH_FRAMES = 5000


class ReplaySource:
    def __init__(self, path: Path, exchange: str = "coinbase", speed: float | None = None) -> None:
        self.path = path
        self.speed = speed  # None: as fast as possible
        self.status = SourceStatus(kind="replay", exchange=exchange, url=str(path))
        self.done = asyncio.Event()
        self.bytes_read = 0  # of the recording, for progress bars
        #: Set when the frames go to the in-process bus: at full speed they are handed over
        #: `PUBLISH_FRAMES` at a time (a coroutine per frame cost as much as reading it).
        self.publish_many: PublishMany | None = None
        #: Set with `publish_many`: waits until the bus takes a part at once.
        self.room_for: RoomFor | None = None

    async def run(self, publish: Publish) -> None:
        conn_id = new_conn_id()
        self.status.connected = True
        self.status.connections = 1
        with self.path.open("rb") as fh:
            if self.speed is None and self.publish_many is not None:
                await self._publish_parts(fh, conn_id, self.publish_many)
            else:
                await self._publish_each(fh, conn_id, publish)
        self.status.connected = False
        self.status.finished = True
        self.done.set()

    async def _publish_each(self, fh: BinaryIO, conn_id: str, publish: Publish) -> None:
        """Frame by frame, at the recorded pace times `speed` (or as fast as possible)."""
        exchange = self.status.exchange
        first_ts: float | None = None
        started = time.monotonic()
        seq = 0
        while lines := fh.readlines(BLOCK_BYTES):
            for ts, text in _frame_texts(lines):
                if self.speed is not None and ts is not None:
                    first_ts = ts if first_ts is None else first_ts
                    wait = (ts - first_ts) / self.speed - (time.monotonic() - started)
                    if wait > 0:
                        await asyncio.sleep(wait)
                seq += 1
                now = time.time_ns()
                await publish(RawFrame(exchange, conn_id, seq, now, text))
                if seq % PUBLISH_FRAMES == 0:
                    self.status.frames = seq
                    self.status.last_frame_ns = now
                    await asyncio.sleep(0)  # let the engine and the API run
            self.status.frames = seq
            self.status.last_frame_ns = time.time_ns()
            self.bytes_read = fh.tell()

    async def _publish_parts(self, fh: BinaryIO, conn_id: str, publish_many: PublishMany) -> None:
        """At full speed: hand the frames over in parts of `PUBLISH_FRAMES` (the last one
        shorter), whatever the read blocks hold, each part stamped with the time it was handed
        over. Whole parts let the engine decode every chunk column-wise: a block's short tail
        went through the per-frame codec and cost as much as a full chunk."""
        exchange = self.status.exchange
        seq = 0
        texts: list[str] = []
        blocks = frame_texts(fh)
        while True:
            block = next(blocks, None)
            if block is not None:
                texts.extend(block)
            self.bytes_read = fh.tell()
            at = 0
            while len(texts) - at >= PUBLISH_FRAMES or (block is None and at < len(texts)):
                part = texts[at : at + PUBLISH_FRAMES]
                at += len(part)
                if self.room_for is not None:  # stamped once the bus takes it, not before
                    await self.room_for(len(part))
                now = time.time_ns()
                frames = [
                    RawFrame(exchange, conn_id, n, now, text)
                    for n, text in enumerate(part, seq + 1)
                ]
                seq += len(frames)
                await publish_many(frames)
                self.status.frames = seq
                self.status.last_frame_ns = now
                await asyncio.sleep(0)  # let the engine and the API run
            del texts[:at]
            if block is None:
                return
