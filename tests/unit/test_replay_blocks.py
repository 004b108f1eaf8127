"""A replay reads its recording a block at a time: every block gives what `parse_line` gives
line by line, whether all of it is `sentinel record` wrappers (the fast pass) or not, the
compiled reader gives what Python's gives, and handing frames over a part at a time gives what
handing them over one by one does."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_sentinel.bus.memory import MemoryBus
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources import replay
from crypto_sentinel.sources.replay import PUBLISH_FRAMES, ReplaySource, _frame_texts, parse_line
from tests.conftest import SHARED

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


# --- the compiled reader (native/src/recording.rs) ------------------------------------------


def both_readers(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """A recording's texts through the compiled reader and through Python's."""
    if replay.NATIVE is None:
        pytest.fail("the compiled extension is not installed: run `make install` with cargo")

    def texts() -> list[str]:
        with path.open("rb") as fh:
            return [text for block in replay.frame_texts(fh) for text in block]

    compiled = texts()
    monkeypatch.setattr(replay, "NATIVE", None)
    return compiled, texts()


RECORDINGS = sorted((SHARED / "data").glob("*/*.ndjson"))


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_compiled_reader_reads_every_recording_as_python(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled, python = both_readers(path, monkeypatch)
    assert compiled == python
    assert len(compiled) == sum(1 for line in path.read_bytes().splitlines() if line.strip(b"\r"))


def test_the_compiled_reader_takes_blocks_that_end_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines cut by a block's end, a line longer than a block, no newline at the end."""
    monkeypatch.setattr(replay, "BLOCK_BYTES", 7)
    path = tmp_path / "recording.ndjson"
    recording = b"".join([*WRAPPED, *ODD, *WRAPPED, *ODD])
    path.write_bytes(recording)
    compiled, python = both_readers(path, monkeypatch)
    lines = recording.splitlines(keepends=True)
    assert compiled == python == [text for _, text in per_line(lines)]


NEAR_MISSES = [
    b'{"recv_ts": 1e5, "raw": "an exponent"}',
    b'{"recv_ts": 1e400, "raw": "infinite"}',
    b'{"recv_ts": 01, "raw": "a leading zero"}',
    b'{"recv_ts": -0.5, "raw": "negative"}',
    b'{"recv_ts": 1., "raw": "no fraction digits"}',
    b'{"recv_ts": 1, "raw": "\\ud800 lone high"}',
    b'{"recv_ts": 1, "raw": "\\udc00 lone low"}',
    b'{"recv_ts": 1, "raw": "\\ud800\\u0041 high then not low"}',
    b'{"recv_ts": 1, "raw": "\\ud83d\\ude00 a pair"}',
    b'{"recv_ts": 1, "raw": "\\u00E9\\u00e9 hex cases"}',
    b'{"recv_ts": 1, "raw": "\\u12 short"}',
    b'{"recv_ts": 1, "raw": "\\x41 unknown escape"}',
    b'{"recv_ts": 1, "raw": "\\/\\b\\f\\n\\r\\t\\"\\\\ every escape"}',
    b'{"recv_ts": 1, "raw": "tab\tinside"}',
    b'{"recv_ts": 1, "raw": "del\x7finside"}',
    b'{"recv_ts": 1, "raw": "\\u0000 nul"}',
    b'{"recv_ts": 1, "raw": "x", "raw": "duplicate key"}',
    b'{"recv_ts": 1, "raw": "x"} trailing',
    b'{"recv_ts": 1, "raw": "x"} \t ',
    b'{"recv_ts"\t:\t1\t,\t"raw"\t:\t"tabs"\t}',
    b'{"recv_ts":1,"raw":"no spaces"}',
    b'{"recv_ts": 1, "raw": "x"\r}',
    b'{"recv_ts": 1, "raw": "caf\xc3\xa9 utf-8"}',
    b'{"recv_ts": 1, "raw": "bad \xff utf-8"}',
    b'{"recv_ts": 1, "raw": "unterminated',
    b'{"recv_ts": 1, "raw": 5}',
    b'{"recv_ts": 1}',
    b'{"recv_ts": null, "raw": "null stamp"}',
    b'{ "recv_ts": 1, "raw": "space first"}',
    b"\xef\xbb\xbfa byte order mark",
    b"bare \xe2\x82 cut utf-8",
    b"  ",
    b"\r\r",
]


@pytest.mark.parametrize("line", NEAR_MISSES)
def test_the_compiled_reader_reads_near_misses_as_python(
    line: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "recording.ndjson"
    path.write_bytes(b"\n".join([WRAPPED[0].rstrip(), line, WRAPPED[1].rstrip()]) + b"\n")
    compiled, python = both_readers(path, monkeypatch)
    assert compiled == python


raw_text = st.text(max_size=60)
stamp = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**30), 10**30))
wrapper = st.builds(
    lambda ts, raw, ascii_only, sep: json.dumps(
        {"recv_ts": ts, "raw": raw}, ensure_ascii=ascii_only, separators=sep
    ).encode("utf-8", errors="surrogatepass"),
    stamp,
    raw_text,
    st.booleans(),
    st.sampled_from([(", ", ": "), (",", ":"), (" ,", " : ")]),
)


def mutated(line: bytes, where: int, what: bytes, cut: bool) -> bytes:
    at = where % (len(line) + 1)
    return line[:at] + (b"" if cut else what + line[at:])


any_line = st.one_of(
    wrapper,
    st.builds(mutated, wrapper, st.integers(0, 200), st.binary(max_size=3), st.booleans()),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    raw_text.map(lambda t: t.encode("utf-8", errors="surrogatepass").replace(b"\n", b"")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(any_line, max_size=12), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_the_compiled_reader_reads_generated_lines_as_python(
    lines: list[bytes], newline: bytes, last_newline: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as monkeypatch:
        path = Path(tmp) / "recording.ndjson"
        path.write_bytes(newline.join(lines) + (newline if last_newline else b""))
        compiled, python = both_readers(path, monkeypatch)
        assert compiled == python
