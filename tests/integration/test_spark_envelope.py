"""The Spark job reads every shape of raw-topic record as the embedded consumer does (the
table in tests/kafka_records.py): its receipt line, an older version's headers, another
producer's bare record. Real Spark, in-process, on rows shaped as its Kafka source gives
them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyspark.sql import types as ST

from crypto_sentinel.config import load_settings
from crypto_sentinel.spark import decode, job
from crypto_sentinel.spark.sink import collect_frames
from tests.kafka_records import OFFSET, PARTITION, RECORDS, TIMESTAMP_MS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
PREFIX = "sentinel.raw."

#: The columns of Spark's Kafka source that the job reads (with headers included).
KAFKA_ROWS = ST.StructType(
    [
        ST.StructField("topic", ST.StringType()),
        ST.StructField("partition", ST.IntegerType()),
        ST.StructField("offset", ST.LongType()),
        ST.StructField("timestamp", ST.TimestampType()),
        ST.StructField("value", ST.BinaryType()),
        ST.StructField(
            "headers",
            ST.ArrayType(
                ST.StructType(
                    [
                        ST.StructField("key", ST.StringType()),
                        ST.StructField("value", ST.BinaryType()),
                    ]
                )
            ),
        ),
    ]
)


def test_spark_reads_every_record_shape_as_the_embedded_consumer() -> None:
    spark = job.session(load_settings(), master="local[1]")
    try:
        written = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=TIMESTAMP_MS)
        rows = [
            (PREFIX + "coinbase", PARTITION, OFFSET, written, value, headers)
            for _, value, headers, _ in RECORDS
        ]
        records = spark.createDataFrame(rows, KAFKA_ROWS)
        frames = collect_frames(decode.frames(records, PREFIX).toArrow())
    finally:
        spark.stop()
    got = {
        label: (f.conn_id, f.recv_seq, f.recv_ns, f.text)
        for (label, *_), f in zip(RECORDS, frames, strict=True)
    }
    assert got == {label: expected for label, _, _, expected in RECORDS}
    assert {(f.exchange, f.partition, f.offset) for f in frames} == {
        ("coinbase", PARTITION, OFFSET)
    }
