"""Play a recording (NDJSON) into the pipeline at N x recorded speed or as fast as possible.

Lines are either `{"recv_ts": <unix seconds>, "raw": "<frame>"}` (what `sentinel record`
writes) or bare frames. A line that is neither is passed on as it is, so the engine
quarantines it like any malformed frame.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.base import Publish, PublishMany, SourceStatus, new_conn_id


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


#: Bytes of the recording read and parsed at a time.
BLOCK_BYTES = 1 << 18
#: Frames handed over at a time at full speed, between which the engine and the API run.
PUBLISH_FRAMES = 512


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

    async def run(self, publish: Publish) -> None:
        conn_id = new_conn_id()
        exchange = self.status.exchange
        self.status.connected = True
        self.status.connections = 1
        first_ts: float | None = None
        started = time.monotonic()
        seq = 0
        with self.path.open("rb") as fh:
            while lines := fh.readlines(BLOCK_BYTES):
                texts = _frame_texts(lines)
                if self.speed is None and self.publish_many is not None:
                    seq = await self._publish_block(texts, conn_id, seq, self.publish_many)
                    self.bytes_read = fh.tell()
                    continue
                for ts, text in texts:
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
        self.status.connected = False
        self.status.finished = True
        self.done.set()

    async def _publish_block(
        self,
        texts: list[tuple[float | None, str]],
        conn_id: str,
        seq: int,
        publish_many: PublishMany,
    ) -> int:
        """Hand a block's frames over `PUBLISH_FRAMES` at a time, each part stamped with the
        time it was handed over; returns the last sequence number used."""
        exchange = self.status.exchange
        for at in range(0, len(texts), PUBLISH_FRAMES):
            part = texts[at : at + PUBLISH_FRAMES]
            now = time.time_ns()
            frames = [
                RawFrame(exchange, conn_id, n, now, text)
                for n, (_, text) in enumerate(part, seq + 1)
            ]
            seq += len(frames)
            await publish_many(frames)
            self.status.frames = seq
            self.status.last_frame_ns = now
            await asyncio.sleep(0)  # let the engine and the API run
        return seq
