"""The supervisor builds only the roles a run needs and stops them in order, also when a
role fails: what the sources published before a failure is still drained and committed.

The sources here are fakes (the network is not what is tested); the engine and the lake are
real (a Delta lake in a temporary folder).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.model import RawFrame
from crypto_sentinel.pipeline.ingest import IngestRole
from crypto_sentinel.pipeline.process import ProcessRole
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.sources.base import Publish, Source, SourceStatus
from tests.conftest import read_table


class FeedLost(Exception):
    """A source that cannot go on (the venue is gone for good)."""


class FakeSource:
    """Publishes `frames` frames, then fails with FeedLost, or (`fail=False`) waits to be
    cancelled."""

    def __init__(self, frames: int, fail: bool) -> None:
        self.status = SourceStatus(kind="fake", exchange="coinbase", url="fake://")
        self.frames = frames
        self.fail = fail
        self.published = 0
        self.cancelled = False

    async def run(self, publish: Publish) -> None:
        self.status.connected = True
        for seq in range(self.frames):
            await publish(RawFrame("coinbase", "conn-1", seq, time.time_ns(), f"not json {seq}"))
            self.published += 1
        if self.fail:
            raise FeedLost("venue gone")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def with_sources(monkeypatch: pytest.MonkeyPatch, *sources: FakeSource) -> None:
    async def choose(_role: IngestRole) -> list[Source]:
        return list(sources)

    monkeypatch.setattr(IngestRole, "choose_sources", choose)


async def test_a_failing_source_stops_the_run_after_the_engine_drained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FakeSource(frames=50, fail=True)
    with_sources(monkeypatch, source)
    # A long batch interval: nothing is committed unless the shutdown drains the engine.
    settings = load_settings(lake_dir=tmp_path / "lake", batch_interval_ms=60_000)
    pipeline = Pipeline(settings)
    with pytest.raises(FeedLost):
        await pipeline.run(with_api=False, install_signals=False)
    assert source.published == 50
    bronze = read_table(tmp_path / "lake", T.BRONZE)
    assert sorted(bronze["recv_seq"].to_pylist()) == list(range(50))
    assert pipeline.engine.stats.quarantined == 50  # the text is not a Coinbase frame


async def test_an_engine_failure_stops_the_sources_and_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FakeSource(frames=3, fail=False)
    with_sources(monkeypatch, source)
    started = ProcessRole.start

    def failing_start(role: ProcessRole, bus: object, input_done: asyncio.Event) -> asyncio.Task:
        async def fail_when_fed() -> None:
            while source.published < 3:
                await asyncio.sleep(0.01)
            raise OSError("disk gone")

        started(role, bus, input_done).cancel()  # the real engine task, never run
        return asyncio.create_task(fail_when_fed())

    monkeypatch.setattr(ProcessRole, "start", failing_start)
    pipeline = Pipeline(load_settings(lake_dir=tmp_path / "lake"))
    with pytest.raises(OSError, match="disk gone"):
        await pipeline.run(with_api=False, install_signals=False)
    assert source.cancelled


def test_only_the_roles_a_run_needs_are_built(tmp_path: Path) -> None:
    ingest_only = Pipeline(load_settings(lake_dir=tmp_path / "a", bus="kafka"), process=False)
    assert ingest_only.processing is None and ingest_only.ingesting is not None
    assert ingest_only.bus is None  # frames go to Kafka: no in-memory bus
    assert ingest_only.api is None and ingest_only.state is None  # no API before `run`
    assert not (tmp_path / "a").exists()  # no writer: the lake is not touched
    assert "engine" not in ingest_only.status()
    assert ingest_only.reliability()["duplicate_trades"] == 0
    ingest_only.lock.release()

    process_only = Pipeline(load_settings(lake_dir=tmp_path / "b", bus="kafka"), ingest=False)
    try:
        assert process_only.ingesting is None and process_only.processing is not None
        assert process_only.bus is None
        assert process_only.ready()  # no source to wait for
        assert not process_only.request_book_resync("coinbase", "BTC-USD")
        assert process_only.status()["engine"]["frames"] == 0
    finally:
        process_only.engine.close()
        process_only.lock.release()
