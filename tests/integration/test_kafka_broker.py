"""Real-broker tests for ``crypto_sentinel.ops.kafka`` (no mocks).

Why: what the ops module promises (Maven install, KRaft start, data surviving a restart, a
3-node cluster losing a node without losing acked writes) only means something against real
JVMs. Jars come from the normal Maven cache (~/.m2 or $SENTINEL_MAVEN_REPO), so only the first
run downloads; every test uses its own data dir and free ports and kills what it started.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, PartitionMetadata

from crypto_sentinel.ops import kafka

pytestmark = [pytest.mark.integration, pytest.mark.timeout(170)]

KEYS = [f"BTC-USD-{i:02d}" for i in range(25)]

Record = tuple[str, dict[str, int | str]]


# --------------------------------------------------------------------------- helpers


def _free_port_block(size: int) -> int:
    """A run of ``size`` consecutive free ports below the Linux ephemeral range."""
    for _ in range(200):
        base = random.randint(20000, 32000 - size)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError(f"no block of {size} free ports found")


def _records(count: int, start: int, seqs: dict[str, int]) -> list[Record]:
    """Keyed records with a per-key sequence number, so order can be checked per key."""
    out: list[Record] = []
    for n in range(start, start + count):
        key = KEYS[n % len(KEYS)]
        out.append((key, {"key": key, "seq": seqs[key], "n": n}))
        seqs[key] += 1
    return out


def _produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    """Idempotent, acks=all producer; fails the test on any undelivered record."""
    errors: list[str] = []
    delivered = 0

    def on_delivery(err: object, _msg: Message) -> None:
        nonlocal delivered
        if err is not None:
            errors.append(str(err))
        else:
            delivered += 1

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 90_000,
        }
    )
    for key, value in records:
        producer.produce(topic, key=key, value=json.dumps(value), on_delivery=on_delivery)
        producer.poll(0)
    left = producer.flush(100)
    assert left == 0, f"{left} records still in flight after 100s"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert delivered == len(records)


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def _poll_into(
    consumer: Consumer, out: list[tuple[str, dict[str, int | str], int]], want: int, timeout: float
) -> None:
    """Consume until ``out`` holds ``want`` records, committing each batch synchronously."""
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=500, timeout=1.0)
        for msg in batch:
            assert msg.error() is None, msg.error()
            key = msg.key()
            value = msg.value()
            assert key is not None and value is not None
            out.append((key.decode(), json.loads(value), msg.partition() or 0))
        if batch:
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as exc:
                # A commit may fail while the group coordinator moves; the next one covers it.
                print(f"commit retried later: {exc}")
    assert len(out) >= want, f"consumed {len(out)} of {want} records in {timeout}s"


def _check(consumed: list[tuple[str, dict[str, int | str], int]], produced: list[Record]) -> None:
    """Nothing lost, content intact, one partition per key, per-key order preserved.

    Redeliveries (at-least-once after a failed commit) are tolerated: order is judged on the
    first time each record was seen.
    """
    by_n = {int(v["n"]): (k, v) for k, v in produced}
    seen: set[int] = set()
    partitions: dict[str, set[int]] = defaultdict(set)
    order: dict[str, list[int]] = defaultdict(list)
    for key, value, partition in consumed:
        n = int(value["n"])
        assert (key, value) == by_n[n], f"record {n} corrupted"
        partitions[key].add(partition)
        if n not in seen:
            seen.add(n)
            order[key].append(int(value["seq"]))
    assert seen == set(by_n), f"{len(set(by_n) - seen)} records lost"
    for key, seqs in order.items():
        assert len(partitions[key]) == 1, f"{key} spread over partitions {partitions[key]}"
        assert seqs == sorted(seqs), f"{key} out of order: {seqs[:20]}"


def _read_log(
    bootstrap: str, topic: str, partitions: int
) -> list[tuple[str, dict[str, int | str], int]]:
    """Every record physically in the topic, read by assignment (no group, no commits)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    try:
        tps = [TopicPartition(topic, p, 0) for p in range(partitions)]
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        }
        consumer.assign(tps)
        out: list[tuple[str, dict[str, int | str], int]] = []
        _poll_into_assigned(consumer, out, sum(ends.values()), 60)
        return out
    finally:
        consumer.close()


def _poll_into_assigned(
    consumer: Consumer, out: list[tuple[str, dict[str, int | str], int]], want: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=500, timeout=1.0):
            assert msg.error() is None, msg.error()
            key, value = msg.key(), msg.value()
            assert key is not None and value is not None
            out.append((key.decode(), json.loads(value), msg.partition() or 0))
    assert len(out) == want, f"read {len(out)} of {want} records"


def _create_topic(
    bootstrap: str, topic: str, rf: int, config: dict[str, str]
) -> dict[int, PartitionMetadata]:
    """Create a 6-partition topic; its partitions once every one has a leader (brokers learn
    of a new topic one after another: a second client may still see none)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=6, replication_factor=rf, config=config)]
    )
    futures[topic].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until every partition has a leader
        md = admin.list_topics(topic, timeout=10).topics[topic]
        leaders = [p.leader for p in md.partitions.values()]
        if md.error is None and len(leaders) == 6 and min(leaders) >= 0:
            return dict(md.partitions)
        time.sleep(0.2)
    raise AssertionError(f"topic {topic} has no leaders after 30s")


def _committed(consumer: Consumer, tps: list[TopicPartition]) -> list[TopicPartition]:
    """Offset fetch, retried like a real client would while the coordinator finishes loading."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return consumer.committed(tps, timeout=10)
        except KafkaException as exc:
            if not exc.args[0].retriable() or time.monotonic() > deadline:
                raise
            print(f"offset fetch retried: {exc}")
            time.sleep(0.5)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _cli(*argv: str) -> tuple[int, str]:
    """Run the ``kafka`` CLI verbs through a throw-away top-level parser, like the main CLI."""
    parser = argparse.ArgumentParser(prog="sentinel")
    kafka.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = args.func(args)
    return code, buf.getvalue()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """Per-test data dir; teardown stops, then SIGKILLs, whatever the test started."""
    d = tmp_path / "sentinel"
    try:
        yield d
    finally:
        try:
            kafka.stop(d, timeout=20)
        finally:
            for row in kafka.status(d):
                if row["alive"] and row["pid"]:
                    os.kill(row["pid"], signal.SIGKILL)


# --------------------------------------------------------------------------- tests


def test_cli_without_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Help works for every verb; status of an empty dir says so; a missing mvn is explained."""
    for verb in ("install", "start", "stop", "status"):
        with pytest.raises(SystemExit) as exc, contextlib.redirect_stdout(io.StringIO()):
            _cli("kafka", verb, "--help")
        assert exc.value.code == 0
    code, out = _cli("kafka", "status", "--data-dir", str(tmp_path / "empty"))
    assert code == 3 and "no Kafka cluster configured" in out
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(kafka.KafkaOpsError, match="mvn"):
        kafka.install(tmp_path / "nomvn", quiet=True)


def test_install_reports_maven_failure(tmp_path: Path) -> None:
    """A version Maven cannot resolve must fail loudly with Maven's own explanation."""
    with pytest.raises(kafka.KafkaOpsError) as exc:
        kafka.install(tmp_path / "bad", version="0.0.0-no-such-version", quiet=True)
    message = str(exc.value)
    assert "mvn failed" in message and "kafka_2.13" in message
    assert not (kafka.kafka_home(tmp_path / "bad", "0.0.0-no-such-version") / "libs").exists()


def test_single_node_roundtrip_and_restart(data_dir: Path) -> None:
    home = kafka.install(data_dir, quiet=True)
    assert (home / "libs").is_dir()
    t0 = time.monotonic()
    assert kafka.install(data_dir, quiet=True) == home  # cached: marker short-circuits
    assert time.monotonic() - t0 < 2

    port = _free_port_block(2)
    t0 = time.monotonic()
    procs = kafka.start(data_dir, nodes=1, port=port, timeout=60)
    print(f"single node ready in {time.monotonic() - t0:.1f}s")
    assert [p.node for p in procs] == [0] and procs[0].alive
    bootstrap = kafka.bootstrap_servers(data_dir)
    assert bootstrap == f"127.0.0.1:{port}"
    assert kafka.start(data_dir)[0].pid == procs[0].pid  # already running: left alone
    assert Path(kafka.status(data_dir)[0]["log"]).stat().st_size > 0  # log4j writes files
    # a fresh node is ready with its consumer-offsets topic: the first group joins at once
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert "__consumer_offsets" in admin.list_topics(timeout=10).topics

    topic = "trades"
    _create_topic(bootstrap, topic, rf=1, config={})
    seqs: dict[str, int] = defaultdict(int)
    produced = _records(1000, 0, seqs)
    _produce(bootstrap, topic, produced)

    consumer = _consumer(bootstrap, "sentinel-test")
    consumed: list[tuple[str, dict[str, int | str], int]] = []
    try:
        consumer.subscribe([topic])
        _poll_into(consumer, consumed, 1000, 60)
    finally:
        consumer.close()
    assert len(consumed) == 1000
    _check(consumed, produced)

    pid = procs[0].pid
    kafka.stop(data_dir)
    assert _pid_gone(pid)
    assert not procs[0].alive
    assert [row["alive"] for row in kafka.status(data_dir)] == [False]

    # Restart through the CLI with no options: the stored layout and the data are reused.
    code, out = _cli("kafka", "start", "--data-dir", str(data_dir))
    assert code == 0, out
    code, out = _cli("kafka", "status", "--data-dir", str(data_dir), "--json")
    assert code == 0
    (row,) = json.loads(out)
    assert row["alive"] and row["pid"] != pid

    # Committed offsets of the first group survived the restart ...
    checker = _consumer(bootstrap, "sentinel-test")
    try:
        committed = _committed(checker, [TopicPartition(topic, p) for p in range(6)])
        assert sum(tp.offset for tp in committed) == 1000
    finally:
        checker.close()
    # ... and so did every record: a new group reads all 1000 again from the beginning.
    again: list[tuple[str, dict[str, int | str], int]] = []
    consumer = _consumer(bootstrap, "sentinel-test-after-restart")
    try:
        consumer.subscribe([topic])
        _poll_into(consumer, again, 1000, 60)
    finally:
        consumer.close()
    assert len(again) == 1000
    _check(again, produced)

    code, _ = _cli("kafka", "stop", "--data-dir", str(data_dir))
    assert code == 0 and _pid_gone(row["pid"])


def test_three_nodes_survive_a_killed_node(data_dir: Path) -> None:
    base = _free_port_block(6)
    t0 = time.monotonic()
    procs = kafka.start(data_dir, nodes=3, port=base, timeout=90)
    print(f"three nodes ready in {time.monotonic() - t0:.1f}s")
    assert [p.node for p in procs] == [0, 1, 2]
    bootstrap = kafka.bootstrap_servers(data_dir)
    assert bootstrap == ",".join(f"127.0.0.1:{base + i}" for i in range(3))

    topic = "trades-replicated"
    partitions = _create_topic(bootstrap, topic, rf=3, config={"min.insync.replicas": "2"})
    assert all(len(p.replicas) == 3 for p in partitions.values())
    victim = partitions[0].leader

    seqs: dict[str, int] = defaultdict(int)
    produced = _records(500, 0, seqs)
    _produce(bootstrap, topic, produced)
    consumer = _consumer(bootstrap, "sentinel-ha")
    consumed: list[tuple[str, dict[str, int | str], int]] = []
    try:
        consumer.subscribe([topic])
        _poll_into(consumer, consumed, 500, 60)

        t0 = time.monotonic()
        kafka.kill(data_dir, victim)  # crash the leader of partition 0, no controlled shutdown
        alive = {row["node"]: row["alive"] for row in kafka.status(data_dir)}
        assert alive == {i: i != victim for i in range(3)}

        more = _records(500, 500, seqs)
        _produce(bootstrap, topic, more)  # acks=all with 2 of 3 replicas still satisfies ISR 2
        produced += more
        _poll_into(consumer, consumed, 1000, 90)
        print(f"failover: 500 records produced+consumed {time.monotonic() - t0:.1f}s after kill")
    finally:
        consumer.close()
    _check(consumed, produced)

    # The log itself holds each record exactly once (idempotent producer, no retry duplicates).
    in_log = _read_log(bootstrap, topic, 6)
    assert len(in_log) == 1000
    _check(in_log, produced)

    survivors = [p.pid for p in procs if p.node != victim]
    kafka.stop(data_dir)
    assert all(_pid_gone(pid) for pid in survivors)
    assert not any(row["alive"] for row in kafka.status(data_dir))
