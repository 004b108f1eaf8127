"""A replay reads its recording a block at a time: every block gives what `parse_line` gives
line by line, whether all of it is `sentinel record` wrappers (the fast pass) or not."""

from __future__ import annotations

import pytest

from crypto_sentinel.sources.replay import _frame_texts, parse_line

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
