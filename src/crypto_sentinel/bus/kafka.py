"""Apache Kafka as the durable log between ingest and processing (confluent-kafka).

Topic layout: one raw-frames topic per exchange, `<prefix><exchange>` (default
`sentinel.raw.coinbase`), 6 partitions by default, key = product id so every product's frames
stay in order in one partition, value = a receipt line (`envelope`: receive time, position in
the connection, connection id) and then the frame text exactly as received. Records of older
versions carried the receipt in headers instead; they are read as before. Retention defaults
to 7 days: the lake's bronze table is the long-term copy, Kafka is the buffer that lets
processing restart and catch up.

Offsets are not trusted to Kafka: the processor seeks to the offsets recorded in Delta
(see `crypto_sentinel.distributed`) and commits to Kafka only so lag is visible to tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient, NewTopic

from crypto_sentinel import metrics
from crypto_sentinel.config import Settings
from crypto_sentinel.extension import NATIVE
from crypto_sentinel.model import RawFrame
from crypto_sentinel.startup import StartupError

log = logging.getLogger(__name__)

#: How often the consumer's client reports statistics (its partitions' lag).
STATS_INTERVAL_MS = 2_000
CONTROL_KEY = b"_control"  # frames without a product: subscriptions acks, errors
_PRODUCT = re.compile(r'"product_id":\s*"([^"]{1,40})"')
#: The first byte of a value that starts with a receipt line. Exchange frames are JSON text,
#: which never starts with it (ASCII "record separator").
ENVELOPE = b"\x1e"
INT64_MAX = 2**63 - 1  # the lake's receive columns are 64-bit


def topic_name(settings: Settings, exchange: str) -> str:
    return f"{settings.kafka_topic_prefix}{exchange}"


def exchange_of(settings: Settings, topic: str) -> str:
    return topic.removeprefix(settings.kafka_topic_prefix)


def frame_key(text: str) -> bytes:
    """The product id, found without parsing the whole frame."""
    match = _PRODUCT.search(text)
    return match.group(1).encode() if match else CONTROL_KEY


def envelope(frame: RawFrame) -> bytes:
    """The raw topic's value: `\\x1e<recv_ns> <recv_seq> <conn_id>\\n`, then the frame text.

    Why not Kafka headers: confluent-kafka makes a list of tuples of each message's headers,
    and that cost the consumer more than all its other per-message work together
    (docs/benchmarks.md, session 33). Connection ids are ours and hold no newline."""
    receipt = b"%d %d %b\n" % (frame.recv_ns, frame.recv_seq, frame.conn_id.encode())
    return ENVELOPE + receipt + frame.text.encode()


def unwrap(value: bytes) -> tuple[bytes, int, int, bytes] | None:
    """(connection id, position, receive ns, frame text) of an `envelope`, or None for a value
    without a receipt line (its numbers plain digits that fit a 64-bit integer)."""
    end = value.find(b"\n")
    if end < 0 or not value.startswith(ENVELOPE):
        return None
    try:
        ns, seq, conn = value[1:end].split(b" ", 2)
    except ValueError:
        return None
    if not (ns.isdigit() and seq.isdigit()):
        return None
    recv_ns, recv_seq = int(ns), int(seq)
    if recv_ns > INT64_MAX or recv_seq > INT64_MAX:
        return None
    return conn, recv_seq, recv_ns, value[end + 1 :]


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection settings every client shares: bootstrap servers and, when configured, the
    security protocol, SASL mechanism and credentials and the CA file (librdkafka names)."""
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    protocol = settings.kafka_security_protocol
    if protocol != "PLAINTEXT":
        conf["security.protocol"] = protocol
    if protocol.startswith("SASL_"):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        conf["sasl.password"] = password.get_secret_value() if password is not None else ""
    if settings.kafka_ssl_ca_location is not None and protocol in ("SSL", "SASL_SSL"):
        conf["ssl.ca.location"] = str(settings.kafka_ssl_ca_location)
    return conf


#: Client errors that mean the broker cannot be used as configured (not a passing outage).
REFUSED = (KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED)


def ensure_topics(settings: Settings, exchanges: list[str], timeout: float = 30) -> None:
    """Create the raw-frame topics with the configured layout if they do not exist.

    A broker that refuses this client (credentials, TLS) raises `StartupError` with one line.
    """
    errors: list[KafkaError] = []
    conf: dict[str, Any] = {**client_config(settings), "error_cb": errors.append, "logger": log}
    admin = AdminClient(conf)
    _check_access(admin, errors, settings, timeout)
    config = {
        "retention.ms": str(int(settings.kafka_retention_hours * 3600 * 1000)),
        "min.insync.replicas": str(settings.kafka_min_insync),
        "compression.type": "producer",
    }
    wanted = [
        NewTopic(
            topic_name(settings, ex),
            num_partitions=settings.kafka_partitions,
            replication_factor=settings.kafka_replication,
            config=config,
        )
        for ex in exchanges
    ]
    for topic, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def _check_access(
    admin: AdminClient, errors: list[KafkaError], settings: Settings, timeout: float
) -> None:
    """Wait for metadata; a refusal (SASL, TLS) seen meanwhile ends the wait with one line.

    librdkafka's messages name the mechanism and the failing step, never the password.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException:
            admin.poll(0)  # serves error_cb
            refused = [e for e in errors if e.code() in REFUSED]
            if refused:
                raise StartupError(
                    f"Kafka at {settings.kafka_bootstrap} refused this client"
                    f" ({settings.kafka_security_protocol}): {refused[-1].str()}"
                ) from None
            if time.monotonic() >= deadline:
                raise


def tail_texts(
    settings: Settings, exchange: str, per_partition: int, timeout: float = 30
) -> list[str]:
    """The last `per_partition` frames of each partition of an exchange's topic (oldest first
    per partition), read by assignment: no consumer group joins or commits. [] without topic.
    """
    topic = topic_name(settings, exchange)
    conf: dict[str, Any] = {
        **client_config(settings),
        "group.id": f"{settings.kafka_group}-tail",
        "enable.auto.commit": False,
        "logger": log,
    }
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        ends: dict[int, int] = {}
        starts = []
        for partition in sorted(meta.partitions):
            lo, hi = consumer.get_watermark_offsets(
                KafkaPartition(topic, partition), timeout=timeout
            )
            if hi > lo:
                ends[partition] = hi
                starts.append(KafkaPartition(topic, partition, max(lo, hi - per_partition)))
        if not starts:
            return []
        consumer.assign(starts)
        texts: list[str] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is not None:
                    continue
                partition, offset = msg.partition(), msg.offset()
                if partition in ends and offset is not None and offset < ends[partition]:
                    value = msg.value() or b""
                    opened = unwrap(value)
                    text = value if opened is None else opened[3]
                    texts.append(text.decode("utf-8", errors="replace"))
                    if offset + 1 >= ends[partition]:
                        del ends[partition]
        if ends:
            raise TimeoutError(f"Kafka topic {topic}: tail not read within {timeout:.0f} s")
        return texts
    finally:
        consumer.close()


class KafkaPublisher:
    """Idempotent producer (acks=all): librdkafka buffers and retries through broker outages;
    `publish` waits while its buffer is full, so a long outage slows the source, never loses."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.delivered = 0
        self.failed = 0
        self.outage = False
        self.last_error = ""
        self._producer = Producer(
            {
                **client_config(settings),
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "zstd",
                "linger.ms": 5,
                "queue.buffering.max.messages": 200_000,
                "message.timeout.ms": 0,  # never give up on a frame: retry until delivered
                "error_cb": self._on_error,
                "logger": log,  # librdkafka's own lines go through logging, not raw to stderr
            }
        )

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = str(err)
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, *REFUSED):
            self.outage = True
        log.warning("kafka producer: %s", err)

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
            self.outage = False
        else:
            self.failed += 1
            self.last_error = str(err)
            log.error("kafka delivery failed: %s", err)

    async def publish(self, frame: RawFrame) -> None:
        value = envelope(frame)
        while True:
            try:
                self._producer.produce(
                    topic_name(self.settings, frame.exchange),
                    key=frame_key(frame.text),
                    value=value,
                    timestamp=frame.recv_ns // 1_000_000,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:  # buffer full (e.g. broker down): wait, deliver, retry
                self._producer.poll(0)
                await asyncio.sleep(0.05)
        self._producer.poll(0)

    async def run_delivery_reports(self) -> None:
        """Serve delivery callbacks while the source is quiet."""
        while True:
            self._producer.poll(0)
            await asyncio.sleep(0.1)

    def flush(self, timeout: float = 30) -> int:
        return int(self._producer.flush(timeout))

    def pending(self) -> int:
        return len(self._producer)


class KafkaFrames:
    """Consumer-group reader with the in-process bus's interface (`take`, `depth`).

    `position(exchange, partition)` says where the lake is for that partition (the last
    offset committed in Delta, or None); on every assignment the consumer seeks there, not
    to Kafka's committed offset. `before_revoke` lets the engine flush before partitions move.
    """

    def __init__(
        self,
        settings: Settings,
        position: Callable[[str, int], int | None],
        before_revoke: Callable[[], None] = lambda: None,
        after_assign: Callable[[], None] = lambda: None,
        group: str | None = None,
        from_end: bool = False,
    ) -> None:
        self.settings = settings
        self._exchanges: dict[str, str] = {}  # topic -> exchange
        self._conn_ids: dict[bytes, str] = {}  # connection id as received -> its text
        self.position = position
        self.before_revoke = before_revoke
        self.after_assign = after_assign
        self.from_end = from_end
        self.assigned: list[tuple[str, int]] = []
        #: (topic, partition) -> the offset the next message must have (-1: any, where the
        #: start was not an offset); only assigned partitions are present.
        self._next: dict[tuple[str, int], int] = {}
        self.stale = 0  # messages of partitions no longer (or not yet) assigned, dropped
        self._stale_seen = 0  # ... as of the last assignment (logged then)
        self._behind: set[tuple[str, int]] = set()  # assigned, but sent offsets before the lake's
        self._consumer = Consumer(
            {
                **client_config(settings),
                "group.id": group or settings.kafka_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "latest" if from_end else "earliest",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
                "topic.metadata.refresh.interval.ms": 5_000,
                # Client statistics (served by consume) give each partition's lag.
                "statistics.interval.ms": STATS_INTERVAL_MS,
                "stats_cb": self._on_stats,
                "logger": log,
            }
        )
        pattern = "^" + re.escape(settings.kafka_topic_prefix) + ".*"
        self._consumer.subscribe([pattern], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        if not self.from_end:
            for tp in partitions:
                done = self.position(exchange_of(self.settings, tp.topic), tp.partition)
                tp.offset = OFFSET_BEGINNING if done is None else done + 1
        self.assigned = [(tp.topic, tp.partition) for tp in partitions]
        self._next = {(tp.topic, tp.partition): max(-1, tp.offset) for tp in partitions}
        self._behind = set()
        if self.stale > self._stale_seen:
            log.info("left %d messages fetched before the rebalance to their partitions' owners",
                     self.stale - self._stale_seen)  # fmt: skip
            self._stale_seen = self.stale
        log.info("assigned %s", [(tp.topic, tp.partition, tp.offset) for tp in partitions])
        consumer.assign(partitions)
        self.after_assign()

    def _on_stats(self, text: str) -> None:
        """`sentinel_kafka_consumer_lag_messages` per assigned partition: the high watermark
        minus the next offset handed to the engine (committed offset before the first)."""
        try:
            topics = json.loads(text).get("topics", {})
        except ValueError:
            return
        assigned = set(self.assigned)
        for topic, info in topics.items():
            for key, part in info.get("partitions", {}).items():
                partition = int(key)
                if partition < 0 or (topic, partition) not in assigned:
                    continue
                high, read = part.get("hi_offset", -1), part.get("app_offset", -1)
                if read < 0:
                    read = part.get("committed_offset", -1)
                if high >= 0 and read >= 0:
                    lag = max(0, high - read)
                elif high >= 0:
                    lag = max(0, part.get("consumer_lag", 0))
                else:
                    continue
                metrics.KAFKA_LAG.labels(topic, str(partition)).set(lag)

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        log.info("revoking %s", [(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:  # another consumer reports these now
            with contextlib.suppress(KeyError):
                metrics.KAFKA_LAG.remove(tp.topic, str(tp.partition))
        self.before_revoke()
        self.assigned = []
        self._next = {}

    def depth(self) -> int:
        return 0

    async def take(self, max_frames: int, timeout: float) -> list[RawFrame]:
        deadline = time.monotonic() + timeout
        while True:
            messages = self._consumer.consume(num_messages=min(max_frames, 5000), timeout=0)
            frames = self._frames(messages)
            if frames:
                return frames
            # Always yield to the event loop, even with timeout 0, or the caller spins.
            await asyncio.sleep(min(0.005, max(0.001, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                return []

    def _frames(self, messages: list[Any]) -> list[RawFrame]:
        """The frames the messages carry, in order, leaving out error events and messages this
        consumer must not process (`_in_order`). The compiled extension takes the common
        record (the next offset, a receipt line, a known topic and connection) and hands
        every other message to `_frame_of`: draining a backlog, this turning was a third of
        the engine thread's time in Python (docs/benchmarks.md, session 34)."""
        if NATIVE is not None:
            frames: list[RawFrame] = NATIVE.kafka_frames(
                messages, self._next, self._exchanges, self._conn_ids, RawFrame, self._frame_of
            )
            return frames
        return [frame for msg in messages if (frame := self._frame_of(msg)) is not None]

    def _frame_of(self, msg: Any) -> RawFrame | None:
        """The frame of one message, None to leave it out. The receipt line (`envelope`) says
        where and when the ingest process received the frame."""
        if msg.error() is not None:
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("kafka consumer: %s", msg.error())
            return None
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        key = (topic, partition)
        if self._next.get(key) == offset:  # the common case: the next message
            self._next[key] = offset + 1
        elif not self._in_order(topic, partition, offset):
            return None
        text = msg.value() or b""
        opened = unwrap(text)
        if opened is None:  # an older version's record (headers), or another producer's
            conn, recv_seq, recv_ns = _receipt_of_headers(msg, offset)
        else:
            conn, recv_seq, recv_ns, text = opened
        exchange = self._exchanges.get(topic)
        if exchange is None:
            exchange = self._exchanges[topic] = exchange_of(self.settings, topic)
        if conn:
            conn_ids = self._conn_ids
            conn_id = conn_ids.get(conn)
            if conn_id is None:
                if len(conn_ids) >= 1024:  # one per ingest connection; bounded anyway
                    conn_ids.clear()
                conn_id = conn_ids[conn] = conn.decode("utf-8", errors="replace")
        else:
            conn_id = f"kafka-{partition}"
        text = text.decode("utf-8", errors="replace")
        return RawFrame(exchange, conn_id, recv_seq, recv_ns, text, partition, offset)

    def _in_order(self, topic: str, partition: int, offset: int) -> bool:
        """Whether to process this message: its partition is assigned and it is the next one.

        A batch consume can return messages fetched before a rebalance revoked their
        partition; the new owner reads them from the lake's position, so processing them
        here too would write them twice. A jump over offsets is counted and logged: those
        frames are not in the lake."""
        key = (topic, partition)
        expected = self._next.get(key)
        if expected is None or offset < expected:
            self.stale += 1
            if expected is not None and key not in self._behind:
                self._behind.add(key)  # once per assignment: the topic may have been recreated
                log.warning(
                    "kafka partition %s[%d]: offset %d is before the lake's position %d;"
                    " left out (was the topic recreated?)", topic, partition, offset, expected,
                )  # fmt: skip
            return False
        if 0 <= expected < offset:
            metrics.KAFKA_OFFSET_SKIPS.labels(topic, str(partition)).inc(offset - expected)
            log.warning(
                "kafka partition %s[%d]: offsets %d..%d skipped (not readable any more)",
                topic, partition, expected, offset - 1,
            )  # fmt: skip
        self._next[key] = offset + 1
        return True

    def commit(self, positions: dict[tuple[str, int], int]) -> None:
        """Tell Kafka how far we are (for lag monitoring only; Delta is the truth)."""
        offsets = [
            KafkaPartition(topic_name(self.settings, ex), part, off + 1)
            for (ex, part), off in positions.items()
        ]
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.debug("offset commit skipped: %s", exc)

    def close(self) -> None:
        self._consumer.close()


def _receipt_of_headers(msg: Any, offset: int) -> tuple[bytes | None, int, int]:
    """(connection id, position, receive ns) from the headers older versions wrote; the
    offset and the record's timestamp stand in where they are missing."""
    headers = dict(msg.headers() or ())
    return (
        headers.get("conn_id"),
        _int_or(headers.get("recv_seq"), offset),
        _int_or(headers.get("recv_ns"), msg.timestamp()[1] * 1_000_000),
    )


def _int_or(text: bytes | None, default: int) -> int:
    try:
        number = int(text) if text else default
    except ValueError:
        return default
    return number if -INT64_MAX <= number <= INT64_MAX else default
