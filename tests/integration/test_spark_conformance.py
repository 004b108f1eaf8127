"""The Spark job against the embedded engine on one real Kafka topic set (real broker, real
Spark, real Delta) that mixes every venue: recorded Coinbase frames plus simulated ones with
duplicates, malformed frames, dropped trade ranges and disconnects (so the source backfills
over REST and the topic carries `rest_trades` pages and `gap` records); Binance, Kraken and
Coinbase Advanced recordings, real and simulated (`simulator-<venue>`, each with every kind
of malformed frame and duplicates). Processed by `sentinel process` into lake A and by
`sentinel spark submit` into other lakes, it must give the same silver, gold, bronze, gap and
quarantine rows (reasons word for word): when the Spark driver is SIGKILLed mid-stream and
restarted on an S3 lake, and when the job runs on a standalone cluster.

Two Spark runs cover the four behaviours (the driver kill and the S3 lake share one, and
its restart is an `--available-now` run to a normal end) to keep the suite fast; the JVM's
first batch costs a minute on a loaded 2-core box. Both runs also check that nothing they
started outlives them (test_spark_processes.py covers the other ways to end)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from deltalake import DeltaTable

from crypto_sentinel.bus.kafka import (
    KafkaPublisher,
    ensure_topics,
    exchange_of,
    topic_name,
    unwrap,
)
from crypto_sentinel.config import Settings, load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot, storage_options
from crypto_sentinel.model import GapRecord, RawFrame
from crypto_sentinel.simulator import SimulatorServer, write_recording
from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec
from crypto_sentinel.simulator.server import Session
from crypto_sentinel.simulator.venues import venue_for
from crypto_sentinel.sources.codec import Decoded, FrameError
from crypto_sentinel.sources.coinbase.feed import CoinbaseSource
from crypto_sentinel.sources.replay import ReplaySource
from crypto_sentinel.sources.venues import decode_frame, simulated_name
from crypto_sentinel.spark import ops
from tests.conftest import COINBASE_DATA, ROOT, SHARED
from tests.integration.spark_procs import MARK, marked, wait_until_none
from tests.s3server import BUCKET, moto_s3

#: A fresh JVM's first micro-batch takes minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
SIM_TRADES = 1500
OTHER_VENUES = ["binance", "kraken", "coinbase-advanced"]
#: Real recordings of the other venues (Kraken v2 written from its documented shapes).
RECORDINGS = {
    "binance": [
        SHARED / "data" / "binance" / "aggTrade_combined_stream.ndjson",
        SHARED / "data" / "binance" / "bookTicker_combined_stream.ndjson",
    ],
    "coinbase-advanced": [SHARED / "data" / "coinbase_advanced" / "session.recv_ts.ndjson"],
    "kraken": [ROOT / "tests" / "fixtures" / "kraken_v2_session.ndjson"],
}
VENUE_TRADES = 150  # per simulated venue recording
EXCHANGES = [
    "coinbase", "simulator", *OTHER_VENUES, *(simulated_name(v) for v in OTHER_VENUES)
]  # fmt: skip
#: Dropped match ranges (REST still serves them) and forced disconnects: the source backfills.
FAULTS = FaultSpec(seed=11, drop=0.02, drop_max=15, disconnect_every=2.0)
_REST_TRADE = '{"trade_id":%d,"side":"buy","size":"%s","price":"5","time":"2026-01-01T00:00:00Z"}'
#: Frames the simulator's fault hook slips in after every 61st frame: each is quarantined by
#: the codec for a different reason (REST pages and gap records too: they are frames like
#: any other, and a page with one bad trade is refused whole).
MALFORMED = [
    "this is not json {",
    '{"type":"match","trade_id":"7","side":"buy","size":"1","price":"1",'
    '"product_id":"BTC-USD","time":"2026-01-01T00:00:00Z"}',
    '{"type":"mystery","product_id":"ETH-USD"}',
    '{"type":"match","trade_id":7,"side":"buy","size":"1","price":"-5",'
    '"product_id":"SOL-USD","time":"2026-01-01T00:00:00Z"}',
    '{"type":"match","trade_id":7,"side":"buy","size":"0.1234567890123","price":"5",'
    '"product_id":"BTC-USD","time":"2026-01-01T00:00:00Z"}',
    '{"type":"match","trade_id":7,"side":"up","size":"1","price":"5",'
    '"product_id":"ETH-USD","time":"2026-01-01T00:00:00Z"}',
    '{"type":"ticker","sequence":1,"product_id":"btc","price":"5","time":"2026-01-01T00:00:00Z"}',
    '{"type":"match","trade_id":7,"side":"buy","size":"1","price":"5",'
    '"product_id":"SOL-USD","time":"2999-01-01T00:00:00.5Z"}',
    '{"type":"match","side":"buy","size":"1","price":"5","product_id":"BTC-USD"}',
    '{"type":"rest_trades","product_id":"BTC-USD","trades":['
    + _REST_TRADE % (5, "1")
    + ","
    + _REST_TRADE % (6, "0")
    + "]}",
    '{"type":"rest_trades","product_id":"ETH-USD","trades":[{"trade_id":5,"side":"buy"}]}',
    '{"type":"rest_trades","product_id":"SOL-USD","trades":{"message":"rate limited"}}',
    '{"type":"rest_trades","product_id":"eth-usd","trades":[' + _REST_TRADE % (5, "1") + "]}",
    '{"type":"gap","product_id":"BTC-USD","kind":"meteor","detected_at":"2026-01-01T00:00:00Z",'
    '"first_missing_id":5,"last_missing_id":6,"missing":2,"backfilled":2,"outcome":"filled"}',
    '{"type":"gap","product_id":"ETH-USD","kind":"trade_id","detected_at":"2026-01-01T00:00:00Z",'
    '"last_missing_id":6,"missing":2,"backfilled":2,"outcome":"filled"}',
]


class Faults:
    """Simulator fault hook (the FrameHook protocol of simulator/server.py): the seeded
    `FaultPlan` drops match ranges and cuts connections; of what it lets through, every 40th
    match frame is duplicated and a malformed frame follows every 61st frame."""

    def __init__(self) -> None:
        self.plan = FaultPlan(FAULTS)
        self.disconnect_every = FAULTS.disconnect_every
        self.seen = 0
        self.duplicated = 0
        self.malformed = 0

    def outbound(self, session: Session, frame: str) -> Iterable[str | bytes]:
        out: list[str | bytes] = []
        for sent in self.plan.outbound(session, frame):
            self.seen += 1
            out.append(sent)
            if isinstance(sent, str) and sent.startswith('{"type":"match"') and self.seen % 40 == 0:
                out.append(sent)
                self.duplicated += 1
            if self.seen % 61 == 0:
                out.append(MALFORMED[self.malformed % len(MALFORMED)])
                self.malformed += 1
        return out

    def forget(self, session: Session) -> None:
        self.plan.forget(session)


class Published:
    """Trade ids per product the source handed to Kafka, streamed or from REST pages."""

    def __init__(self, publisher: KafkaPublisher) -> None:
        self.publisher = publisher
        self.trade_ids: dict[str, set[int]] = {}

    async def publish(self, frame: RawFrame) -> None:
        await self.publisher.publish(frame)
        try:
            msg = orjson.loads(frame.text)
        except orjson.JSONDecodeError:
            return
        if not isinstance(msg, dict):
            return
        ids = self.trade_ids.setdefault(str(msg.get("product_id")), set())
        if msg["type"] in ("match", "last_match") and isinstance(msg.get("trade_id"), int):
            ids.add(msg["trade_id"])
        elif msg["type"] == "rest_trades" and isinstance(msg.get("trades"), list):
            ids.update(t["trade_id"] for t in msg["trades"] if isinstance(t, dict))

    def covers(self, emitted: Iterable[tuple[str, int]]) -> bool:
        return all(i in self.trade_ids.get(p, ()) for p, i in emitted)


@dataclass
class Inputs:
    bootstrap: str
    prefix: str
    frames: int  # delivered to Kafka
    emitted: dict[tuple[str, int], tuple[str, str]]  # simulator trades: key -> price, size
    faults: Faults
    gaps: list[GapRecord]  # the usable gap records the topics hold

    def env(self, lake: Path, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
        return {
            **base,
            "SENTINEL_KAFKA_BOOTSTRAP": self.bootstrap,
            "SENTINEL_KAFKA_TOPIC_PREFIX": self.prefix,
            "SENTINEL_LAKE_DIR": str(lake),
            "SENTINEL_DATA_DIR": str(lake.parent / "data"),
            "SENTINEL_SPARK_JARS_CACHE": str(ROOT / ".sentinel" / "spark"),
            "SENTINEL_MAINTENANCE_ENABLED": "false",
            **extra,
        }


async def _publish(bootstrap: str, prefix: str, workdir: Path) -> Inputs:
    settings = load_settings(kafka_bootstrap=bootstrap, kafka_topic_prefix=prefix)
    await asyncio.to_thread(ensure_topics, settings, EXCHANGES)
    publisher = KafkaPublisher(settings)
    for name in ("session.recv_ts.ndjson", "error.ndjson"):  # recorded Coinbase frames
        await ReplaySource(COINBASE_DATA / name, exchange="coinbase").run(publisher.publish)
    for venue, paths in RECORDINGS.items():
        for path in paths:
            await ReplaySource(path, exchange=venue).run(publisher.publish)
    venue_bad = 0
    for venue in OTHER_VENUES:
        venue_bad += await _publish_simulated_venue(publisher, venue, workdir)
    faults = Faults()
    sim = SimulatorServer(
        products=PRODUCTS, rate=500, seed=6, max_trades=SIM_TRADES, faults=faults,
        wait_for_subscriber=True,
    )  # fmt: skip
    await sim.start()
    source = CoinbaseSource(
        PRODUCTS, sim.ws_url, exchange="simulator", kind="simulator", rest_url=sim.rest_url,
        backoff_cap=1.0,
    )  # fmt: skip
    published = Published(publisher)
    task = asyncio.create_task(source.run(published.publish))
    try:
        await asyncio.wait_for(sim.wait_done(), 60)
        emitted_keys = [(t.product_id, t.trade_id) for t in sim.market.emitted()]
        deadline = time.monotonic() + 60
        while not published.covers(emitted_keys):  # streamed, or backfilled over REST
            assert time.monotonic() < deadline, source.status.as_dict()
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # the gap records follow their last REST page
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()
    assert await asyncio.to_thread(publisher.flush, 30) == 0
    emitted = {(t.product_id, t.trade_id): (t.price, t.size) for t in sim.market.emitted()}
    assert len(emitted) == SIM_TRADES and faults.duplicated > 5
    assert faults.malformed >= len(MALFORMED)  # every kind of bad frame at least once
    assert faults.plan.dropped > 0 and sim.disconnects > 0
    # The topics themselves carry usable REST pages and gap records (the codec says which),
    # and each simulated venue's malformed frames.
    frames = await asyncio.to_thread(_topic_frames, settings, publisher.delivered)
    decoded = [_decode(*frame) for frame in frames]
    assert len(decoded) == publisher.delivered
    pages = [  # the simulator's REST pages (other venues' frames may carry several trades)
        d for (ex, _), d in zip(frames, decoded, strict=True)
        if ex == "simulator" and isinstance(d, list) and d
    ]  # fmt: skip
    gaps = [d for d in decoded if isinstance(d, GapRecord)]
    backfilled = {(t.product_id, t.trade_id) for page in pages for t in page}
    assert backfilled & emitted.keys() and backfilled <= emitted.keys(), len(pages)
    assert {g.kind for g in gaps} >= {"trade_id", "disconnect"}, gaps
    assert all(g.outcome == "filled" for g in gaps), gaps
    assert sum(g.backfilled for g in gaps) >= faults.plan.dropped
    assert sum(isinstance(d, FrameError) for d in decoded) >= faults.malformed + venue_bad
    return Inputs(bootstrap, prefix, publisher.delivered, emitted, faults, gaps)


async def _publish_simulated_venue(publisher: KafkaPublisher, venue: str, workdir: Path) -> int:
    """A simulated recording of `venue` under its twin's name; every 20th trade frame twice,
    and after each of the first six trade frames a malformed copy of it (one of each kind the
    venue's fault shape makes). Returns the number of malformed frames."""
    path = workdir / f"{venue}.ndjson"
    # 20 trades a second: Coinbase Advanced's 250 ms batches hold a few trades each
    write_recording(path, PRODUCTS[:2], VENUE_TRADES, seed=3, rate=20, venue=venue)
    impl = venue_for(venue)
    assert impl is not None
    exchange = simulated_name(venue)
    frames: list[str] = []
    trade_frames = 0
    for line in path.read_text().splitlines():
        text = orjson.loads(line)["raw"]
        frames.append(text)
        if impl.shape.trade(text) is None:
            continue
        if trade_frames < len(impl.shape.corruptions):
            frames.append(impl.shape.corruptions[trade_frames](text))
        elif trade_frames % 20 == 0:
            frames.append(text)
        trade_frames += 1
    assert trade_frames >= 25, trade_frames
    for seq, text in enumerate(frames):
        await publisher.publish(RawFrame(exchange, f"sim-{venue}", seq, time.time_ns(), text))
    return len(impl.shape.corruptions)


def _decode(exchange: str, text: str) -> Decoded | FrameError:
    try:
        return decode_frame(RawFrame(exchange, "check", 0, time.time_ns(), text))
    except FrameError as exc:
        return exc


def _topic_frames(settings: Settings, expected: int) -> list[tuple[str, str]]:
    """Every frame the topics hold, read back from the broker (not what we think we sent),
    each after its receipt line."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"check-{uuid.uuid4().hex}"}
    )
    try:
        topics = [topic_name(settings, ex) for ex in EXCHANGES]
        meta = consumer.list_topics(timeout=30).topics
        consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta[t].partitions]
        )
        texts: list[tuple[str, str]] = []
        deadline = time.monotonic() + 180
        while len(texts) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1):
                assert msg.error() is None, msg.error()
                opened = unwrap(msg.value())
                assert opened is not None, f"no receipt line: {msg.value()[:80]!r}"
                texts.append((exchange_of(settings, msg.topic()), opened[3].decode()))
        return texts
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def inputs(broker: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """One set of topics for every test here (the broker is conftest's, one per module)."""
    workdir = tmp_path_factory.mktemp("recordings")
    return asyncio.run(_publish(broker[1], f"t{uuid.uuid4().hex[:8]}.", workdir))


def _table(lake: LakeRoot, spec: T.TableSpec) -> DeltaTable | None:
    uri, options = spec.uri(lake), storage_options(lake)
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return None
    return DeltaTable(uri, storage_options=options)


def _rows(lake: LakeRoot, spec: T.TableSpec) -> list[dict[str, Any]]:
    table = _table(lake, spec)
    return [] if table is None else table.to_pyarrow_table().to_pylist()


def _count(lake: LakeRoot, spec: T.TableSpec) -> int:
    table = _table(lake, spec)
    return 0 if table is None else int(table.to_pyarrow_dataset().count_rows())


def _wait_for_frames(lake: Path, frames: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 150
    while _count(lake, T.BRONZE) < frames:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"bronze has {_count(lake, T.BRONZE)} of {frames} frames\n"
                + log.read_text(errors="replace")[-4000:]
            )
        time.sleep(0.5)


def _run(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "crypto_sentinel.cli", *args],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the JVM and Python driver with it
    )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def embedded_lake(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Lake A: the embedded engine as a Kafka consumer group (`sentinel process`)."""
    lake = tmp_path_factory.mktemp("embedded") / "lake"
    log = lake.parent / "process.log"
    env = inputs.env(lake, SENTINEL_KAFKA_GROUP=f"g{uuid.uuid4().hex[:8]}")
    proc = _run(["process"], env, log)
    try:
        _wait_for_frames(lake, inputs.frames, proc, log)
    finally:
        _stop(proc)
    silver = {
        (r["product_id"], r["trade_id"]): (str(r["price"]), str(r["size"]))
        for r in _rows(lake, T.TRADES)
        if r["exchange"] == "simulator"
    }
    assert silver.keys() == inputs.emitted.keys()  # the reference itself is complete
    assert len(_rows(lake, T.GAPS)) == len(inputs.gaps)
    return lake


@pytest.fixture(scope="module")
def jars() -> None:
    """Resolve once into the repo's cache (`make test` has done it with `sentinel spark
    install`; a plain pytest run does it here)."""
    ops.install(load_settings(spark_jars_cache=ROOT / ".sentinel" / "spark"), quiet=True)


def _submit(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    return _run(["spark", "submit", *args], env, log)


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 900) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, signal.SIGKILL)
        tail = log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"spark job did not finish\n{tail}") from None
    assert code == 0, log.read_text(errors="replace")[-6000:]


def _key(spec: T.TableSpec) -> Any:
    return lambda row: tuple(row[k] for k in spec.key)


def _sorted(lake: LakeRoot, spec: T.TableSpec) -> list[dict[str, Any]]:
    return sorted(_rows(lake, spec), key=lambda row: (_key(spec)(row), repr(row)))


def assert_same_lakes(a: LakeRoot, b: LakeRoot) -> None:
    """Row for row, every column, exact decimals (Decimal equality includes the scale), the
    same quarantine reasons word for word (both decode through the venues' codecs)."""
    for spec in (T.TRADES, T.CANDLES_1M, T.TICKERS, T.GAPS, T.BRONZE, T.QUARANTINE):
        rows_a = _sorted(a, spec)
        rows_b = _sorted(b, spec)
        assert len(rows_a) == len(rows_b), (spec.name, len(rows_a), len(rows_b))
        for row_a, row_b in zip(rows_a, rows_b, strict=True):
            assert row_a == row_b, (spec.name, row_a, row_b)
            for name, value in row_a.items():  # same decimal text, not only the same value
                assert str(value) == str(row_b[name]), (spec.name, name, value, row_b[name])


def _check_inputs_reached_silver(lake: LakeRoot, inputs: Inputs) -> None:
    trades = _rows(lake, T.TRADES)
    assert len({(r["exchange"], r["product_id"], r["trade_id"]) for r in trades}) == len(trades)
    assert sum(r["exchange"] == "coinbase" for r in trades) > 10  # recorded frames too
    assert sum(r["conn_id"].startswith("rest-") for r in trades) > 0  # backfilled over REST
    assert {r["exchange"] for r in trades} == set(EXCHANGES)  # every venue, real and simulated
    assert {r["exchange"] for r in _rows(lake, T.TICKERS)} >= set(EXCHANGES) - {"binance"}
    assert len(_rows(lake, T.GAPS)) == len(inputs.gaps)
    quarantined = _rows(lake, T.QUARANTINE)
    reasons = [r["reason"] for r in quarantined]
    assert len(reasons) >= inputs.faults.malformed + 2  # + recorded errors
    assert "trade 6 of the REST page: size must be > 0, got 0" in reasons
    assert "bad gap record: kind 'meteor', outcome 'filled'" in reasons
    for venue in OTHER_VENUES:  # each kind of malformed frame of each venue
        name = simulated_name(venue)
        assert sum(r["source"] == name for r in quarantined) >= 6, (name, reasons)


def test_spark_driver_killed_mid_stream_and_restarted_on_s3(
    inputs: Inputs,
    embedded_lake: Path,
    jars: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL of the whole job (driver and JVM) between or inside commits, then a re-run
    to the end of the topics; the lake is on S3 (moto), written by the driver through delta-rs
    (Spark reads Kafka only). Same lake, row for row."""
    mark = uuid.uuid4().hex
    with moto_s3() as s3:
        for name, value in s3.env.items():  # our own reads of the lake go to the same server
            monkeypatch.setenv(name, value)
        uri = f"s3://{BUCKET}/spark/lake"
        log = tmp_path / "spark.log"
        # small micro-batches, so the kill lands between (or inside) commits of a running stream
        env = inputs.env(
            tmp_path / "lake", SENTINEL_LAKE_URI=uri, SENTINEL_SPARK_MAX_OFFSETS_PER_TRIGGER="600",
            **s3.env, **{MARK: mark},
        )  # fmt: skip
        proc = _submit(env, log, "--master", "local[2]")
        try:
            deadline = time.monotonic() + 900
            while _count(uri, T.BRONZE) == 0:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.2)
        finally:
            _stop(proc, signal.SIGKILL)
        assert 0 < _count(uri, T.BRONZE) < inputs.frames  # really mid-stream
        assert wait_until_none(mark) == []  # the JVM's Python workers too
        log = tmp_path / "spark-restart.log"
        env.pop("SENTINEL_SPARK_MAX_OFFSETS_PER_TRIGGER")  # the rest in one batch after the re-run
        _finish(_submit(env, log, "--master", "local[2]", "--available-now"), log)
        assert marked(mark) == []  # a normal end: nothing left once the CLI has returned
        assert not (tmp_path / "lake").exists(), "the lake must not be written locally"
        _check_inputs_reached_silver(uri, inputs)
        assert_same_lakes(embedded_lake, uri)


def test_spark_on_standalone_cluster(
    inputs: Inputs, embedded_lake: Path, jars: None, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    mark = uuid.uuid4().hex
    env = inputs.env(lake, **{MARK: mark})
    settings_env = {k: v for k, v in env.items() if k.startswith("SENTINEL_")}
    status = tmp_path / "status.log"
    start = subprocess.run(
        [sys.executable, "-m", "crypto_sentinel.cli", "spark", "cluster", "start"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        state = ops.cluster_status(Path(settings_env["SENTINEL_DATA_DIR"]))
        assert state is not None and state["master_alive"] and state["worker_alive"]
        log = tmp_path / "spark.log"
        _finish(_submit(env, log, "--master", state["master_url"], "--available-now"), log)
        worker_log = Path(state["worker_log"]).read_text(errors="replace")
        assert "Asked to launch executor" in worker_log  # the work ran on the worker
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "crypto_sentinel.cli", "spark", "cluster", "stop"],
            env=env, stdout=status.open("w"), stderr=subprocess.STDOUT, timeout=120,
        )  # fmt: skip
    assert stop.returncode == 0
    assert ops.cluster_status(Path(settings_env["SENTINEL_DATA_DIR"])) is None
    assert wait_until_none(mark) == []  # daemons, executors and their Python workers
    _check_inputs_reached_silver(lake, inputs)
    assert_same_lakes(embedded_lake, lake)
