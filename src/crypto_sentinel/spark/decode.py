"""Kafka records -> the frame columns the embedded engine's Kafka consumer builds.

Only the Kafka envelope (topic -> exchange, receipt line -> connection, sequence and receive
time) is Spark work: it runs where the records are read, in the batch's one Spark job. What a
frame holds is decoded on the driver by the venues' codecs, through the embedded engine
(spark/sink.py), so both paths give the same rows and quarantine reasons by construction.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

#: The collected columns, in `RawFrame`'s field order.
FRAME_COLUMNS = ("exchange", "conn_id", "recv_seq", "recv_ns", "text", "partition", "offset")


def _header(name: str) -> Column:
    """A Kafka header's value as text (the first one with that key), or null."""
    found = F.filter("headers", lambda h: h["key"] == F.lit(name))
    return F.when(F.size(found) > 0, found[0]["value"].cast("string"))


def frames(records: DataFrame, topic_prefix: str) -> DataFrame:
    """Kafka rows -> the RawFrame columns the embedded consumer builds (bus/kafka.py); a
    record without a value is an empty frame there too (quarantined, never dropped).

    A value that starts with a receipt line (`bus.kafka.envelope`) gives the connection,
    position and receive time; a record of an older version gives them in its headers."""
    value = F.col("value").cast("string")
    receipt = F.substring_index(value, "\n", 1)
    fields = F.split(receipt.substr(F.lit(2), F.length(receipt)), " ", 3)
    ns_text, seq_text, conn = (F.get(fields, i) for i in range(3))  # null when not there
    ns, seq = ns_text.try_cast("long"), seq_text.try_cast("long")
    enveloped = (
        value.startswith("\x1e")
        & (F.length(receipt) < F.length(value))  # a newline ends the receipt line
        & (F.size(fields) == 3)
        & ns_text.rlike("^[0-9]+$")
        & seq_text.rlike("^[0-9]+$")
        & ns.isNotNull()  # fits 64 bits
        & seq.isNotNull()
    )
    conn_id = F.when(enveloped, conn).otherwise(_header("conn_id"))
    return records.select(
        F.expr(f"substring(topic, {len(topic_prefix) + 1})").alias("exchange"),
        F.when(conn_id != "", conn_id)
        .otherwise(F.concat(F.lit("kafka-"), F.col("partition").cast("string")))
        .alias("conn_id"),
        F.coalesce(
            F.when(enveloped, seq).otherwise(_header("recv_seq").try_cast("long")),
            F.col("offset"),
        ).alias("recv_seq"),
        F.coalesce(
            F.when(enveloped, ns).otherwise(_header("recv_ns").try_cast("long")),
            F.unix_millis(F.col("timestamp")) * 1_000_000,
        ).alias("recv_ns"),
        F.coalesce(
            F.when(enveloped, value.substr(F.length(receipt) + 2, F.length(value))).otherwise(
                value
            ),
            F.lit(""),
        ).alias("text"),
        F.col("partition").cast("int").alias("partition"),
        F.col("offset"),
    )
