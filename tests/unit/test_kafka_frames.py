"""Which Kafka messages the processor takes: only those of partitions it is assigned, in
offset order from where the lake is; a jump over offsets is counted, never silent. And what
a frame keeps of its record: the receipt line the publisher writes, the headers older
versions wrote, or what Kafka says of a record another producer wrote."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TopicPartition

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


@pytest.fixture
def frames(monkeypatch: pytest.MonkeyPatch) -> KafkaFrames:
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
