"""`sentinel_kafka_consumer_lag_messages` against a real broker: a backlog shows as lag while
the consumer is behind, and the gauge comes back to 0 once everything was handed over."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from crypto_sentinel.bus.kafka import KafkaFrames, KafkaPublisher, ensure_topics, topic_name
from crypto_sentinel.config import load_settings
from crypto_sentinel.model import RawFrame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BACKLOG = 3000
GAUGE = "sentinel_kafka_consumer_lag_messages"


async def test_lag_gauge_shows_the_backlog_and_returns_to_zero(broker: tuple[Path, str]) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka_bootstrap=broker[1],
        kafka_topic_prefix=f"lag{tag}.",
        kafka_group=f"lag{tag}",
        kafka_partitions=1,
    )
    ensure_topics(settings, ["simulator"])
    labels = {"topic": topic_name(settings, "simulator"), "partition": "0"}

    def lag() -> float | None:
        return REGISTRY.get_sample_value(GAUGE, labels)

    publisher = KafkaPublisher(settings)
    for i in range(BACKLOG):
        text = f'{{"type":"match","trade_id":{i},"product_id":"BTC-USD"}}'
        await publisher.publish(RawFrame("simulator", "c1", i, time.time_ns(), text))
    assert publisher.flush(60) == 0 and publisher.delivered == BACKLOG

    frames = KafkaFrames(settings, position=lambda _exchange, _partition: None)
    got: list[RawFrame] = []
    try:
        # Behind: one frame every 0.1 s until the client's statistics (every 2 s) report a
        # lag; 60 s of this read at most 600 of the backlog.
        deadline = time.monotonic() + 60
        while not lag() and time.monotonic() < deadline:
            got += await frames.take(1, 0.1)
            await asyncio.sleep(0.1)
        behind = lag()
        assert behind is not None and behind > 0, f"no lag reported with {len(got)} read"
        assert len(got) < BACKLOG
        # The statistics are a snapshot from before the newest takes: between what is unread
        # now and the whole backlog.
        assert BACKLOG - len(got) <= behind <= BACKLOG, (behind, len(got))

        # Catch up, then keep polling until the next statistics say 0.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (len(got) < BACKLOG or lag() != 0):
            got += await frames.take(5000, 0.5)
        assert sorted(f.offset for f in got) == list(range(BACKLOG)), "frames lost or repeated"
        assert lag() == 0, f"lag {lag()} after reading all {BACKLOG} frames"
    finally:
        frames.close()
