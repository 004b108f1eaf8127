"""Redundant collectors: two `sentinel ingest` processes for the same exchange write into one
Kafka topic, and `sentinel process` stores each trade exactly once. One collector's connection
is cut for a while (backfill off, so nothing refetches what it missed): the other collector's
frames fill the hole, and silver holds every trade the exchange emitted, without a gap."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.test_kafka_pipeline import Cluster, run_simulator

pytestmark = pytest.mark.integration


class CuttableProxy:
    """A TCP proxy to the simulator whose connections can be cut and refused for a while."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.refusing = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.cuts = 0
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def cut(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        self.cuts += 1

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()


async def test_two_collectors_one_cut_store_every_trade_once(
    broker: tuple[Path, str], tmp_path: Path
) -> None:
    sim = await run_simulator(500, 10_000, seed=21)
    port = int(sim.ws_url.rsplit(":", 1)[1].strip("/"))
    proxy = CuttableProxy(port)
    await proxy.start()
    cluster = Cluster(tmp_path, broker[1], sim, SENTINEL_BACKFILL="false")
    try:
        cluster.process()
        steady = cluster.ingest()
        flaky = cluster.start(
            "ingest", "--source", "simulator", "--simulator-url", f"ws://127.0.0.1:{proxy.port}"
        )
        for _ in range(240):  # bounded: both collectors subscribed and trades flowing
            if sim.connection_count >= 2 and proxy.connections >= 1 and sim.emitted_count > 500:
                break
            await asyncio.sleep(0.25)
        assert sim.connection_count >= 2 and not sim.done, cluster.logs()
        proxy.refusing = True
        proxy.cut()  # the flaky collector misses everything for the next 4 s
        at_cut = sim.emitted_count
        await asyncio.sleep(4)
        missed_by_flaky = sim.emitted_count - at_cut
        proxy.refusing = False
        await asyncio.wait_for(sim.wait_done(), 60)
        await cluster.wait_rows(10_000, 90)
    finally:
        cluster.stop_all()
        await proxy.stop()
        await sim.stop()
    assert missed_by_flaky > 500  # the cut really cost that collector trades
    assert proxy.connections >= 2, "the flaky collector never reconnected"
    assert steady.returncode == 0 and flaky.returncode == 0, cluster.logs()
    cluster.assert_exact()  # every emitted trade exactly once, nothing else
    assert "reconnecting" in cluster.log_of(flaky)
