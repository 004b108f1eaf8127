"""Raw-topic records of every shape the reader meets, and the receipt a frame must keep of
each (connection, position, receive ns, text): the embedded consumer (tests/unit/
test_kafka_frames.py) and the Spark job (tests/integration/test_spark_envelope.py) are held
to the same table. Each record sits at partition 1, offset 7, written at 5 ms past the epoch."""

from __future__ import annotations

from crypto_sentinel.bus.kafka import envelope
from crypto_sentinel.model import RawFrame

HEARTBEAT = '{"type":"heartbeat"}'
PARTITION, OFFSET, TIMESTAMP_MS = 1, 7, 5
OLD_HEADERS = [("conn_id", b"c9"), ("recv_seq", b"3"), ("recv_ns", b"2000")]
FOREIGN = ("kafka-1", OFFSET, TIMESTAMP_MS * 1_000_000)  # what Kafka itself says of a record

#: (label, value, headers, expected receipt)
RECORDS: list[tuple[str, bytes | None, list[tuple[str, bytes]] | None, tuple]] = [
    ("published", envelope(RawFrame("coinbase", "c1", 1, 1000, HEARTBEAT)), None,
     ("c1", 1, 1000, HEARTBEAT)),
    ("older version (headers)", HEARTBEAT.encode(), OLD_HEADERS, ("c9", 3, 2000, HEARTBEAT)),
    ("another producer", HEARTBEAT.encode(), None, (*FOREIGN, HEARTBEAT)),
    ("headers that are not numbers", b"{}", [("recv_seq", b"x"), ("recv_ns", b"")],
     (*FOREIGN, "{}")),
    ("starts like a receipt line", b"\x1enot a receipt\n{}", None,
     (*FOREIGN, "\x1enot a receipt\n{}")),
    ("receipt line without a frame", b"\x1e5 6 c1", None, (*FOREIGN, "\x1e5 6 c1")),
    ("receipt numbers with a sign", b"\x1e+5 6 c1\n{}", None, (*FOREIGN, "\x1e+5 6 c1\n{}")),
    ("receipt numbers beyond 64 bits", b"\x1e99999999999999999999 6 c1\n{}", None,
     (*FOREIGN, "\x1e99999999999999999999 6 c1\n{}")),
    ("header beyond 64 bits", b"{}", [("recv_ns", b"99999999999999999999")], (*FOREIGN, "{}")),
    ("no connection id", b"\x1e5 6 \n{}", None, ("kafka-1", 6, 5, "{}")),
    ("text with newlines", b"\x1e5 6 c1\n{\n}\n", None, ("c1", 6, 5, "{\n}\n")),
    ("no value", None, None, (*FOREIGN, "")),
]  # fmt: skip
