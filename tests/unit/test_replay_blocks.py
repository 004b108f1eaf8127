"""A replay reads its recording a block at a time: every block gives what `parse_line` gives
line by line, whether all of it is `sentinel record` wrappers (the fast pass) or not, with the
compiled extension's pass (native/src/recording.rs) and without it."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_sentinel.simulator import write_recording
from crypto_sentinel.sources import replay
from crypto_sentinel.sources.replay import _frame_texts, parse_line
from tests.conftest import COINBASE_DATA


@pytest.fixture(autouse=True, params=["compiled", "python"])
def recording_pass(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with the compiled wrapper pass and without it."""
    if request.param == "compiled":
        assert replay.NATIVE is not None, "the compiled extension is not installed (make install)"
    else:
        monkeypatch.setattr(replay, "NATIVE", None)
    return str(request.param)


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


def test_every_escape_json_has() -> None:
    line = b'{"recv_ts": 1.5, "raw": "\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\\u00e9\\uD83D\\uDE00"}\n'
    assert _frame_texts([line]) == [(1.5, '"\\/\b\f\n\r\t\x00\u00e9\U0001f600')]


def test_the_compiled_pass_takes_real_and_simulated_recordings(
    recording_pass: str, tmp_path: pytest.TempPathFactory
) -> None:
    """Without this the tests above could pass with a compiled pass that never answers."""
    simulated = tmp_path / "sim.ndjson"  # type: ignore[operator]
    write_recording(simulated, ["BTC-USD", "ETH-USD"], 300, seed=3)
    for path in (COINBASE_DATA / "session.recv_ts.ndjson", simulated):
        lines = path.read_bytes().splitlines(keepends=True)
        assert _frame_texts(lines) == per_line(lines)
        if recording_pass == "compiled":
            assert replay.NATIVE is not None
            assert replay.NATIVE.recording_lines(lines) == per_line(lines), path


STAMPS = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**20), 10**20)


TEXTS = st.text(st.characters(blacklist_categories=()), max_size=40)  # lone surrogates too


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    st.lists(
        st.tuples(STAMPS, TEXTS, st.sampled_from(["orjson", "ascii", "utf-8"])),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 30),
)
def test_generated_wrapper_lines(entries: list[tuple[float, str, str]], cut: int) -> None:
    """Stamps and texts of every kind (escapes, astral characters, lone surrogates, ints),
    written the ways JSON writers write them, some cut short."""
    lines = []
    for stamp, text, style in entries:
        if (
            style == "orjson"
            and text.isprintable()
            and text.encode("utf-8", "ignore") == text.encode("utf-8", "surrogatepass")
        ):
            body = orjson.dumps(text)
        else:
            body = json.dumps(text, ensure_ascii=style == "ascii").encode("utf-8", "surrogatepass")
        space = b"  " if style == "utf-8" else b" "
        lines.append(
            b'{"recv_ts":' + space + json.dumps(stamp).encode() + b', "raw": ' + body + b"}\n"
        )
    if cut:
        lines[-1] = lines[-1][:-cut]
    assert _frame_texts(lines) == per_line(lines)
