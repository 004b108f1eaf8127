"""Which Kafka messages the processor takes: only those of partitions it is assigned, in
offset order from where the lake is; a jump over offsets is counted, never silent."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TopicPartition

from crypto_sentinel import metrics
from crypto_sentinel.bus import kafka
from crypto_sentinel.bus.kafka import KafkaFrames
from crypto_sentinel.config import load_settings

TOPIC = "sentinel.raw.coinbase"


class Message:
    """The parts of a confluent-kafka message the reader uses."""

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return b'{"type":"heartbeat"}'

    def headers(self) -> list[tuple[str, bytes]]:
        return [("conn_id", b"c1"), ("recv_seq", b"1"), ("recv_ns", b"1000")]


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
