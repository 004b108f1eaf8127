"""Distributed mode against a real Apache Kafka broker (KRaft, started by the test):
simulator -> `sentinel ingest` -> Kafka -> `sentinel process` -> Delta must be exact, also
with two processors, a processor killed with SIGKILL, a broker restart and a lost replica."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from deltalake import DeltaTable

from crypto_sentinel.bus.kafka import unwrap
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.writer import CRASH_AT_ENV
from crypto_sentinel.ops import kafka
from crypto_sentinel.simulator import SimulatorServer
from tests.conftest import free_port, free_port_run
from tests.helpers import assert_candles_match_silver

pytestmark = pytest.mark.integration
PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]


class Cluster:
    """Processes of one distributed pipeline, with their own topics, group and lake."""

    def __init__(self, tmp: Path, bootstrap: str, sim: SimulatorServer, **env: str) -> None:
        self.tmp = tmp
        self.lake = tmp / "lake"
        tag = uuid.uuid4().hex[:8]
        self.env = {
            **os.environ,
            "SENTINEL_KAFKA_BOOTSTRAP": bootstrap,
            "SENTINEL_KAFKA_TOPIC_PREFIX": f"t{tag}.",
            "SENTINEL_KAFKA_GROUP": f"g{tag}",
            "SENTINEL_LAKE_DIR": str(self.lake),
            "SENTINEL_PRODUCTS": ",".join(PRODUCTS),
            "SENTINEL_BATCH_INTERVAL_MS": "100",
            **env,
        }
        self.sim = sim
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{args[0]}-{len(self.procs)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "crypto_sentinel.cli", *args],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
        )
        self.procs.append((proc, log))
        return proc

    def ingest(self) -> subprocess.Popen[bytes]:
        return self.start("ingest", "--source", "simulator", "--simulator-url", self.sim.ws_url)

    def process(self) -> subprocess.Popen[bytes]:
        return self.start("process")

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return next(p for q, p in self.procs if q is proc).read_text(errors="replace")

    def silver(self) -> dict[tuple[str, int], tuple[Decimal, Decimal]]:
        path = T.TRADES.path(self.lake)
        if not DeltaTable.is_deltatable(str(path)):
            return {}
        rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
        out = {(r["product_id"], r["trade_id"]): (r["price"], r["size"]) for r in rows}
        assert len(out) == len(rows), "duplicate trades in silver"
        return out

    async def _until(
        self, check: Callable[[], bool], failure: Callable[[], str], timeout: float
    ) -> None:
        """Poll `check` every 0.5 s; after `timeout`, fail with `failure()` and the logs."""
        for _ in range(int(timeout / 0.5)):
            if check():
                return
            await asyncio.sleep(0.5)
        raise AssertionError(failure() + "\n" + self.logs())

    async def wait_rows(self, n: int, timeout: float) -> None:
        await self._until(
            lambda: len(self.silver()) >= n,
            lambda: f"silver has {len(self.silver())} of {n} trades\n{self.where_missing()}",
            timeout,
        )

    def where_missing(self, limit: int = 5) -> str:
        """Where the first trades silver lacks are: their frame's Kafka partition and offset,
        and whether bronze holds it; so a shortfall in CI says which step lost them."""
        emitted = {(t.product_id, t.trade_id) for t in self.sim.market.emitted()}
        missing = set(sorted(emitted - self.silver().keys())[:limit])
        bronze = DeltaTable(str(T.BRONZE.path(self.lake))).to_pyarrow_table(
            columns=["conn_id", "recv_seq"]
        )
        held = set(zip(*(bronze[c].to_pylist() for c in ("conn_id", "recv_seq")), strict=True))
        lines = [f"bronze: {bronze.num_rows} rows, {len(held)} distinct frames"]
        topic = self.env["SENTINEL_KAFKA_TOPIC_PREFIX"] + "simulator"
        for partition, offset, where, text in topic_messages(self.env, topic):
            try:
                frame = json.loads(text)
            except ValueError:
                continue
            key = (frame.get("product_id"), frame.get("trade_id"))
            if frame.get("type") == "match" and key in missing:
                missing.discard(key)
                lines.append(f"{key}: Kafka {partition}@{offset}, in bronze: {where in held}")
        lines += [f"{key}: in no Kafka match frame" for key in sorted(missing)]
        return "\n".join(lines)

    async def wait_logged(self, text: str, timeout: float) -> None:
        """Until some process's whole log holds `text`."""
        await self._until(
            lambda: any(text in p.read_text(errors="replace") for _, p in self.procs),
            lambda: f"no process logged {text!r}",
            timeout,
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for _, p in self.procs
        )

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def assert_exact(self) -> None:
        emitted = {
            (t.product_id, t.trade_id): (Decimal(t.price), Decimal(t.size))
            for t in self.sim.market.emitted()
        }
        stored = self.silver()
        missing = emitted.keys() - stored.keys()
        extra = stored.keys() - emitted.keys()
        assert not missing and not extra, (len(missing), len(extra), self.logs())
        assert stored == emitted


def topic_messages(
    env: dict[str, str], topic: str
) -> Iterator[tuple[int, int, tuple[str, int], str]]:
    """Every message of a topic: partition, offset, (connection, position), frame text (read by
    assignment)."""
    consumer = Consumer(
        {"bootstrap.servers": env["SENTINEL_KAFKA_BOOTSTRAP"], "group.id": "test-reader"}
    )
    try:
        for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            consumer.assign([TopicPartition(topic, partition, low)])
            offset = low
            while offset < high:
                messages = [m for m in consumer.consume(1000, timeout=5) if m.error() is None]
                if not messages:
                    break  # bounded: a partition that stops answering ends the listing
                for msg in messages:
                    offset = msg.offset() + 1
                    opened = unwrap(msg.value() or b"")
                    assert opened is not None, f"no receipt line at {partition}@{msg.offset()}"
                    conn, seq, _, text = opened
                    yield partition, msg.offset(), (conn.decode(), seq), text.decode()
    finally:
        consumer.close()


async def run_simulator(rate: float, trades: int, seed: int) -> SimulatorServer:
    sim = SimulatorServer(
        products=PRODUCTS, rate=rate, seed=seed, max_trades=trades, wait_for_subscriber=True
    )
    await sim.start()
    return sim


async def test_ingest_kafka_process_is_exact(broker: tuple[Path, str], tmp_path: Path) -> None:
    """Also a `serve` replica: its hot state tails Kafka, its history comes from the lake."""
    sim = await run_simulator(1000, 10_000, seed=11)
    cluster = Cluster(tmp_path, broker[1], sim)
    port = free_port()
    try:
        cluster.start("serve", "--bus", "kafka", "--port", str(port))
        cluster.process()
        cluster.ingest()
        live: list[dict] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(120):  # bounded: at most a minute
                if sim.done or live:
                    break
                await asyncio.sleep(0.5)
                try:
                    r = await client.get("/latest")  # no exchange: the README's example
                except httpx.TransportError:
                    continue
                live = [t for t in r.json()["data"] if t["processing_time"] != t["recv_time"]]
            # the replica's configured default (coinbase) has no data: never a fixed default
            rows = (await client.get("/v1/products")).json()["data"]
        await asyncio.wait_for(sim.wait_done(), 60)
        await cluster.wait_rows(10_000, 90)
    finally:
        cluster.stop_all()
        await sim.stop()
    cluster.assert_exact()
    assert live, "the serve replica never showed a trade from the Kafka tail"
    assert {r["exchange"] for r in rows} == {"simulator"}, rows
    assert rows and all(r["last"] is not None for r in rows), rows
    emitted = {(t.product_id, t.trade_id) for t in sim.market.emitted()}
    assert {(t["symbol"], t["trade_id"]) for t in live} <= emitted


async def test_two_processors_share_six_partitions(
    broker: tuple[Path, str], tmp_path: Path
) -> None:
    """Both processors maintain the lake too, a pass every second, so their compactions
    meet: one at a time (the lake's maintenance lock), or silver holds rows twice."""
    sim = await run_simulator(1000, 6000, seed=12)
    cluster = Cluster(
        tmp_path,
        broker[1],
        sim,
        SENTINEL_MAINTENANCE_INTERVAL_S="1",
        SENTINEL_MAINTENANCE_MAX_FILES_PER_PARTITION="2",
    )
    try:
        first, second = cluster.process(), cluster.process()
        cluster.ingest()
        await asyncio.wait_for(sim.wait_done(), 60)
        await cluster.wait_rows(6000, 90)
        # the passes really met silver (searched in the whole logs: `logs()` shows their tails)
        await cluster.wait_logged("compacted silver.trades", 60)
    finally:
        cluster.stop_all()
        await sim.stop()
    cluster.assert_exact()
    for proc in (first, second):  # both members really owned partitions
        assert "assigned [('t" in cluster.log_of(proc), cluster.logs()


async def test_processor_killed_with_sigkill_and_restarted(
    broker: tuple[Path, str], tmp_path: Path
) -> None:
    sim = await run_simulator(1000, 10_000, seed=13)
    cluster = Cluster(tmp_path, broker[1], sim)
    try:
        victim = cluster.process()
        cluster.ingest()
        await cluster.wait_rows(1500, 120)
        victim.send_signal(signal.SIGKILL)  # mid-stream, possibly mid-commit
        victim.wait()
        await asyncio.sleep(1)
        cluster.process()
        await asyncio.wait_for(sim.wait_done(), 60)
        await cluster.wait_rows(10_000, 90)
    finally:
        cluster.stop_all()
        await sim.stop()
    cluster.assert_exact()


async def test_processor_ended_between_bronze_and_silver_loses_nothing(
    broker: tuple[Path, str], tmp_path: Path
) -> None:
    """Raw first over Kafka: the processor resumes after bronze's offsets, so the batch bronze
    holds and silver lacks must be derived again from bronze when the partition is assigned."""
    sim = await run_simulator(1000, 6000, seed=14)
    cluster = Cluster(tmp_path, broker[1], sim)
    try:
        victim = cluster.start("process", env={CRASH_AT_ENV: f"{T.BRONZE.name}:3"})
        cluster.ingest()
        rc = await asyncio.to_thread(victim.wait, 120)
        assert rc == 70, cluster.logs()
        cluster.process()
        await asyncio.wait_for(sim.wait_done(), 60)
        await cluster.wait_rows(6000, 90)
    finally:
        cluster.stop_all()
        await sim.stop()
    cluster.assert_exact()
    assert assert_candles_match_silver(cluster.lake) > 0


async def test_processor_ended_between_bronze_and_silver_beside_a_busy_one(
    broker: tuple[Path, str], tmp_path: Path
) -> None:
    """The survivor of two processors gets the ended one's partitions only after the group's
    session timeout, many of its own commits later: it finds the ended one's last bronze
    commit and derives it again (test_kafka_recovery.py has the search past bronze's newest
    64 commits), and the candles end up equal to silver's trades."""
    sim = await run_simulator(1500, 30_000, seed=15)
    # short batches: the survivor commits faster than the old search depth over its session
    cluster = Cluster(tmp_path, broker[1], sim, SENTINEL_BATCH_INTERVAL_MS="20")
    try:
        survivor = cluster.process()
        victim = cluster.start("process", env={CRASH_AT_ENV: f"{T.BRONZE.name}:20"})
        cluster.ingest()
        rc = await asyncio.to_thread(victim.wait, 120)
        assert rc == 70, cluster.logs()
        await asyncio.wait_for(sim.wait_done(), 90)
        await cluster.wait_rows(30_000, 120)

        def took_over() -> bool:  # after the group's session timeout (10 s) at the latest
            log = cluster.log_of(survivor).splitlines()
            assigned = [line for line in log if "assigned [" in line]
            return all(f"simulator', {p}," in assigned[-1] for p in range(6))

        # the ended one can reach its crash after the feed is done (its candle commits may
        # lose to the survivor's for seconds), so the takeover is waited for, not assumed
        await cluster._until(took_over, lambda: "the survivor never took over", 60)
    finally:
        cluster.stop_all()
        await sim.stop()
    cluster.assert_exact()
    assert assert_candles_match_silver(cluster.lake) > 0


async def test_a_lake_that_refuses_writes_stops_the_processor_with_one_line(
    broker: tuple[Path, str], tmp_path: Path
) -> None:
    """The candles table's log turns read-only under a running processor (chattr +i holds even
    for root): its writes fail past their retries, and the processor stops with exit code 1
    and one line naming the batch, without a traceback and without hanging in the Kafka
    consumer's revocation. Once writable, a new processor completes every trade."""
    sim = await run_simulator(1000, 12_000, seed=16)
    cluster = Cluster(tmp_path, broker[1], sim)
    log_dir = T.CANDLES_1M.path(cluster.lake) / "_delta_log"
    try:
        first = cluster.process()
        cluster.ingest()
        await cluster.wait_rows(1500, 120)
        subprocess.run(["chattr", "+i", str(log_dir)], check=True)
        rc = await asyncio.to_thread(first.wait, 60)
        output = cluster.log_of(first)
        assert rc == 1, output
        assert "sentinel: lake write of batch" in output and "Operation not permitted" in output
        assert "Traceback" not in output, output
        subprocess.run(["chattr", "-i", str(log_dir)], check=True)
        cluster.process()
        await asyncio.wait_for(sim.wait_done(), 90)
        await cluster.wait_rows(12_000, 120)
    finally:
        subprocess.run(["chattr", "-i", str(log_dir)], check=False)
        cluster.stop_all()
        await sim.stop()
    cluster.assert_exact()
    assert assert_candles_match_silver(cluster.lake) > 0


async def test_broker_restart_during_ingest(broker: tuple[Path, str], tmp_path: Path) -> None:
    data, bootstrap = broker
    sim = await run_simulator(500, 8000, seed=14)
    cluster = Cluster(tmp_path, bootstrap, sim)
    port = free_port()
    try:
        up = cluster.start(
            "up", "--bus", "kafka", "--source", "simulator", "--simulator-url", sim.ws_url,
            "--port", str(port),
        )  # fmt: skip
        await cluster.wait_rows(1000, 120)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/ready")).status_code == 200
            await asyncio.to_thread(kafka.stop, data)
            saw_outage = False
            for _ in range(60):  # /ready must report the outage
                await asyncio.sleep(0.5)
                if (await client.get("/ready")).status_code == 503:
                    saw_outage = True
                    break
            assert up.poll() is None, cluster.logs()  # nothing crashed
            await asyncio.to_thread(kafka.start, data, timeout=90)
            for _ in range(120):
                await asyncio.sleep(0.5)
                if (await client.get("/ready")).status_code == 200:
                    break
            else:
                raise AssertionError("not ready after the broker came back\n" + cluster.logs())
        assert saw_outage, cluster.logs()
        await asyncio.wait_for(sim.wait_done(), 90)
        await cluster.wait_rows(8000, 120)
    finally:
        cluster.stop_all()
        await sim.stop()
    cluster.assert_exact()


@pytest.fixture
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    data = tmp_path_factory.mktemp("kafka3")
    kafka.start(data, nodes=3, port=free_port_run(6), timeout=120)
    try:
        yield data, kafka.bootstrap_servers(data)
    finally:
        kafka.stop(data)


async def test_three_node_cluster_survives_losing_a_broker(
    three_nodes: tuple[Path, str], tmp_path: Path
) -> None:
    data, bootstrap = three_nodes
    sim = await run_simulator(800, 8000, seed=15)
    cluster = Cluster(
        tmp_path, bootstrap, sim, SENTINEL_KAFKA_REPLICATION="3", SENTINEL_KAFKA_MIN_INSYNC="2"
    )
    try:
        cluster.process()
        cluster.ingest()
        await cluster.wait_rows(1500, 90)
        await asyncio.to_thread(kafka.kill, data, 1)  # SIGKILL one broker mid-stream
        await asyncio.wait_for(sim.wait_done(), 90)
        await cluster.wait_rows(8000, 150)
    finally:
        cluster.stop_all()
        await sim.stop()
    cluster.assert_exact()
