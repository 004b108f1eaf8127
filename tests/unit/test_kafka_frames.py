"""Which Kafka messages the processor takes: only those of partitions it is assigned, in
offset order from where the lake is; a jump over offsets is counted, never silent. And what
a frame keeps of its record: the receipt line the publisher writes, the headers older
versions wrote, or what Kafka says of a record another producer wrote."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_sentinel import metrics
from crypto_sentinel.bus import kafka
from crypto_sentinel.bus.kafka import KafkaFrames, envelope, unwrap
from crypto_sentinel.config import load_settings
from crypto_sentinel.model import RawFrame
from tests.kafka_records import HEARTBEAT, OFFSET, PARTITION, RECORDS, TIMESTAMP_MS

TOPIC = "sentinel.raw.coinbase"


RECEIVED = RawFrame("coinbase", "c1", 1, 1000, HEARTBEAT)


class Message:
    """The parts of a confluent-kafka message the reader uses: by default a record as the
    publisher writes it."""

    def __init__(
        self,
        partition: int,
        offset: int,
        value: bytes | None = envelope(RECEIVED),
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self._partition, self._offset = partition, offset
        self._value, self._headers = value, headers

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, TIMESTAMP_MS)  # TIMESTAMP_CREATE_TIME


class Assigner:
    """A consumer that is never connected: these tests need no broker."""

    def __init__(self, *_: Any) -> None:
        self.partitions: list[TopicPartition] = []

    def subscribe(self, *_: Any, **__: Any) -> None:
        pass

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.partitions = partitions


@pytest.fixture(params=["compiled", "python"])
def frames(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> KafkaFrames:
    """A reader; each test runs with the compiled extension's common path and without it."""
    if request.param == "compiled" and kafka.NATIVE is None:
        pytest.fail("the compiled extension is not installed: run `make install` with cargo")
    if request.param == "python":
        monkeypatch.setattr(kafka, "NATIVE", None)
    monkeypatch.setattr(kafka, "Consumer", Assigner)
    lake_done = {0: 99, 1: None}  # partition 0: the lake holds up to offset 99
    return KafkaFrames(load_settings(), position=lambda _ex, p: lake_done.get(p))


def taken(reader: KafkaFrames, *messages: Message) -> list[tuple[int, int]]:
    return [(f.partition, f.offset) for f in reader._frames(list(messages))]


def test_messages_of_partitions_not_assigned_are_left_to_their_owner(frames: KafkaFrames) -> None:
    assert taken(frames, Message(0, 100)) == []  # nothing assigned yet
    frames._on_assign(Assigner(), [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    assert taken(frames, Message(2, 5), Message(0, 100), Message(1, 0)) == [(0, 100), (1, 0)]
    frames._on_revoke(Assigner(), [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    # fetched before the revoke, handed out after it: the new owner reads them from the lake
    assert taken(frames, Message(0, 101), Message(1, 1)) == []
    assert frames.stale == 4


def test_messages_before_the_lake_position_are_not_taken_again(
    frames: KafkaFrames, caplog: pytest.LogCaptureFixture
) -> None:
    frames._on_assign(Assigner(), [TopicPartition(TOPIC, 0)])
    assert taken(frames, Message(0, 98), Message(0, 99), Message(0, 100)) == [(0, 100)]
    assert caplog.text.count("before the lake's position") == 1  # said, once


def test_a_jump_over_offsets_is_counted(
    frames: KafkaFrames, caplog: pytest.LogCaptureFixture
) -> None:
    skipped = metrics.KAFKA_OFFSET_SKIPS.labels(TOPIC, "0")
    before = skipped._value.get()
    frames._on_assign(Assigner(), [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    got = taken(frames, Message(1, 40), Message(0, 100), Message(0, 104), Message(0, 105))
    assert got == [(1, 40), (0, 100), (0, 104), (0, 105)]  # partition 1 starts anywhere
    assert skipped._value.get() - before == 3
    assert "offsets 101..103 skipped" in caplog.text


def test_a_frame_keeps_what_the_ingest_process_recorded(frames: KafkaFrames) -> None:
    frames._on_assign(Assigner(), [TopicPartition(TOPIC, 1)])
    first, second = frames._frames([Message(1, 7), Message(1, 8)])
    assert (first.exchange, first.conn_id, first.recv_seq, first.recv_ns) == (
        "coinbase",
        "c1",
        1,
        1000,
    )
    assert (first.text, first.partition, first.offset) == ('{"type":"heartbeat"}', 1, 7)
    assert second.conn_id is first.conn_id  # decoded once per connection


def receipt(frame: RawFrame) -> tuple[str, int, int, str]:
    return frame.conn_id, frame.recv_seq, frame.recv_ns, frame.text


def test_the_receipt_line_round_trips_any_frame_text() -> None:
    text = 'line one\n{"price":"1.5","note":"\u00e9 \x1e"}\n'  # newlines, non-ASCII
    frame = RawFrame("coinbase", "0a1b2c3d4e5f6a7b", 42, 1_796_000_000_123_456_789, text)
    value = envelope(frame)
    assert value.startswith(b"\x1e1796000000123456789 42 0a1b2c3d4e5f6a7b\n")
    assert unwrap(value) == (b"0a1b2c3d4e5f6a7b", 42, 1_796_000_000_123_456_789, text.encode())


@pytest.mark.parametrize(
    ("value", "headers", "expected"), [r[1:] for r in RECORDS], ids=[r[0] for r in RECORDS]
)
def test_a_frame_keeps_its_receipt(
    frames: KafkaFrames,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    expected: tuple[str, int, int, str],
) -> None:
    frames._on_assign(Assigner(), [TopicPartition(TOPIC, PARTITION)])
    (frame,) = frames._frames([Message(PARTITION, OFFSET, value, headers)])
    assert receipt(frame) == expected
    assert (frame.exchange, frame.partition, frame.offset) == ("coinbase", PARTITION, OFFSET)


def left_to_python(message: Message) -> str:
    return "left to Python"


def test_the_compiled_path_takes_the_published_record_itself() -> None:
    """Records as `sentinel ingest` writes them never reach Python's per-message code: were
    they to, the tests above would pass without testing the compiled path."""
    assert kafka.NATIVE is not None, "the compiled extension is not installed"
    expected, conn_ids = {(TOPIC, 1): 7}, {b"c1": "c1"}
    got = kafka.NATIVE.kafka_frames(
        [Message(1, 7), Message(1, 8)], expected, {TOPIC: "coinbase"}, conn_ids, RawFrame,
        left_to_python,
    )  # fmt: skip
    assert got == [
        RawFrame("coinbase", "c1", 1, 1000, HEARTBEAT, 1, 7),
        RawFrame("coinbase", "c1", 1, 1000, HEARTBEAT, 1, 8),
    ]
    assert expected == {(TOPIC, 1): 9} and got[0].conn_id is conn_ids[b"c1"]


#: The shapes of RECORDS the compiled path takes itself: a receipt line of a known connection.
COMPILED_SHAPES = {"published", "text with newlines"}


@pytest.mark.parametrize(
    ("value", "headers", "expected"), [r[1:] for r in RECORDS], ids=[r[0] for r in RECORDS]
)
def test_the_compiled_path_leaves_every_other_shape_to_python(
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    expected: tuple[str, int, int, str],
    request: pytest.FixtureRequest,
) -> None:
    assert kafka.NATIVE is not None, "the compiled extension is not installed"
    offsets = {(TOPIC, PARTITION): OFFSET}
    (got,) = kafka.NATIVE.kafka_frames(
        [Message(PARTITION, OFFSET, value, headers)], offsets, {TOPIC: "coinbase"},
        {b"c1": "c1"}, RawFrame, left_to_python,
    )  # fmt: skip
    if request.node.callspec.id in COMPILED_SHAPES:
        assert receipt(got) == expected and offsets == {(TOPIC, PARTITION): OFFSET + 1}
    else:
        assert got == "left to Python" and offsets == {(TOPIC, PARTITION): OFFSET}


SETTINGS = load_settings()
_DIGITS = st.one_of(
    st.integers(0, 2**64).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"+1", b"-1", b" 1", b"1 ", b"\xd9\xa3", b"00012", b"1e3"]),
)
#: Values next to the receipt line the compiled path takes (a known connection, "c1").
NEAR_MISSES = [
    b"\x1e 6 c1\n{}", b"\x1e5  c1\n{}", b"\x1e5 6 c1", b"\x1e5 6 c1\r\n{}", b"\x1e5\t6 c1\n{}",
    b"\x1e9223372036854775807 9223372036854775807 c1\n{}",
    b"\x1e9223372036854775808 6 c1\n{}", b"\x1e5 6 c1\n\xff{}", b"\x1e5 6 c1\n\xed\xa0\x80",
    b"\x1e5 6 c1 \n{}", b" \x1e5 6 c1\n{}", b"\x1e\x1e5 6 c1\n{}", b"\x1e5 6 c1\n",
]  # fmt: skip


def read_both_ways(value: bytes) -> list[list[RawFrame]]:
    """The frames of a record with `value` (and of the records around it), with the compiled
    extension and without it."""
    assert kafka.NATIVE is not None, "the compiled extension is not installed"
    both = []
    for native in (kafka.NATIVE, None):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(kafka, "Consumer", Assigner)
            patch.setattr(kafka, "NATIVE", native)
            reader = KafkaFrames(SETTINGS, position=lambda _ex, _p: None)
            reader._on_assign(Assigner(), [TopicPartition(TOPIC, PARTITION)])
            reader._exchanges[TOPIC] = "coinbase"  # a topic and a connection seen before
            reader._conn_ids[b"c1"] = "c1"
            # the record before it sets where its partition is (the first one always goes
            # through Python); the one after it is of a partition not assigned
            messages = [Message(PARTITION, OFFSET - 1), Message(PARTITION, OFFSET, value)]
            both.append(reader._frames([*messages, Message(0, 1)]))
    return both


@pytest.mark.parametrize("value", NEAR_MISSES)
def test_the_compiled_path_reads_near_misses_as_python_does(value: bytes) -> None:
    with_extension, without = read_both_ways(value)
    assert with_extension == without


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.builds(
            lambda ns, seq, text: b"\x1e" + ns + b" " + seq + b" c1\n" + text,
            _DIGITS,
            _DIGITS,
            st.one_of(st.text(max_size=12).map(str.encode), st.binary(max_size=12)),
        ),
    )
)
def test_the_compiled_path_reads_any_value_as_python_does(value: bytes) -> None:
    """Random values, many of them a receipt line of a known connection with numbers that
    may not be plain: the same frame from both paths."""
    with_extension, without = read_both_ways(value)
    assert with_extension == without
