"""Kafka records -> frames -> trades, tickers, gaps, quarantine and bronze rows, for every
exchange the registry knows.

Why decoding runs the registry's Python codecs inside `mapInArrow` instead of Spark SQL: the
rules of a venue live in its codec (sources/*_codec.py) and nowhere else. Rewriting them as
Spark expressions meant one second copy per venue (Coinbase alone took ~550 lines) that had
to be kept identical by hand, and could not be: msgspec's wording of a type error was not
available, so quarantine reasons only agreed in kind. Through `sources.venues.decode_frames`
the Spark job and the embedded engine run one code path and give the same rows and the same
reasons by construction, and a new venue needs nothing here. The cost stays small: frames go
to the Python workers and back as Arrow record batches (no per-row pickling), and decoding is
the codecs' own column-wise work (measured in docs/benchmarks.md, Spark section). Only the
Kafka envelope (topic -> exchange, headers) and the lake row shapes are Spark expressions.

`decoded()` yields one row per frame: the frame's columns, its quarantine `reason` (null when
usable) and the lake rows it carries as arrays (`trades`, `tickers`, `gaps`), which the table
functions below explode.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.udf import UserDefinedFunction
from pyspark.util import PythonEvalType

from crypto_sentinel.lake import tables as LT
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.batch import DecodedBatch
from crypto_sentinel.sources.venues import decode_frames

FRAME_COLUMNS = ("exchange", "conn_id", "recv_seq", "recv_ns", "text", "partition", "offset")
#: decoded row array -> (table spec, DecodedBatch table, DecodedBatch frame index)
NESTED = {
    "trades": (LT.TRADES, "trades", "trade_frames"),
    "tickers": (LT.TICKERS, "tickers", "ticker_frames"),
    "gaps": (LT.GAPS, "gaps", "gap_frames"),
}


def spark_type(typ: pa.DataType) -> T.DataType:
    """The Spark type Delta maps to the same column type as our Arrow table specs."""
    if pa.types.is_decimal(typ):
        return T.DecimalType(typ.precision, typ.scale)
    if pa.types.is_timestamp(typ):
        return T.TimestampType()
    if pa.types.is_date32(typ):
        return T.DateType()
    if pa.types.is_int64(typ):
        return T.LongType()
    if pa.types.is_string(typ):
        return T.StringType()
    raise TypeError(f"no Spark type for {typ}")


def spark_schema(spec: LT.TableSpec) -> T.StructType:
    return T.StructType([T.StructField(f.name, spark_type(f.type)) for f in spec.schema])


def _arrow_row(spec: LT.TableSpec) -> pa.StructType:
    """A table's row as the struct Spark expects back (every field nullable, as Spark's)."""
    return pa.struct([pa.field(f.name, f.type) for f in spec.schema])


FRAME_SCHEMA = T.StructType(
    [
        T.StructField("exchange", T.StringType()),
        T.StructField("conn_id", T.StringType()),
        T.StructField("recv_seq", T.LongType()),
        T.StructField("recv_ns", T.LongType()),
        T.StructField("text", T.StringType()),
        T.StructField("partition", T.IntegerType()),
        T.StructField("offset", T.LongType()),
    ]
)
DECODED_SCHEMA = T.StructType(
    [
        *FRAME_SCHEMA.fields,
        T.StructField("reason", T.StringType()),
        *(T.StructField(name, T.ArrayType(spark_schema(s))) for name, (s, *_) in NESTED.items()),
    ]
)
_ARROW_NESTED = {name: pa.list_(_arrow_row(spec)) for name, (spec, *_) in NESTED.items()}


def _header(name: str) -> Column:
    """A Kafka header's value as text (the first one with that key), or null."""
    found = F.filter("headers", lambda h: h["key"] == F.lit(name))
    return F.when(F.size(found) > 0, found[0]["value"].cast("string"))


def frames(records: DataFrame, topic_prefix: str) -> DataFrame:
    """Kafka rows -> the RawFrame columns the embedded consumer builds (bus/kafka.py)."""
    recv_seq = _header("recv_seq")
    recv_ns = _header("recv_ns")
    return records.select(
        F.expr(f"substring(topic, {len(topic_prefix) + 1})").alias("exchange"),
        F.coalesce(
            _header("conn_id"), F.concat(F.lit("kafka-"), F.col("partition").cast("string"))
        ).alias("conn_id"),
        F.coalesce(recv_seq.try_cast("long"), F.col("offset")).alias("recv_seq"),
        F.coalesce(recv_ns.try_cast("long"), F.unix_millis(F.col("timestamp")) * 1_000_000).alias(
            "recv_ns"
        ),
        F.col("value").cast("string").alias("text"),
        F.col("partition").cast("int").alias("partition"),
        F.col("offset"),
    )


#: (exchange, product_id) -> (sequence, time in unix micros) of the newest stored ticker
TickerMarks = dict[tuple[str, str], tuple[int, int]]


def decoded(frames_df: DataFrame, ticker_marks: TickerMarks | None = None) -> DataFrame:
    """One row per frame with its reason and rows (see the module docstring); tickers that
    are not newer than `ticker_marks` (and than the product's tickers before them) are left
    out, as the embedded engine leaves them out (`newer_tickers`)."""
    frames_df = frames_df.select(*FRAME_COLUMNS)
    function = UserDefinedFunction(
        functools.partial(decode_batches, dict(ticker_marks or {})),
        DECODED_SCHEMA,
        "decode_frames",
        PythonEvalType.SQL_MAP_ARROW_ITER_UDF,
    )
    # What `DataFrame.mapInArrow` does, without its pandas check: pyspark makes the function
    # through `pandas_udf`, which demands pandas on the driver though an Arrow map never uses
    # it (nor do the workers), and pandas is no dependency of ours.
    call = function(*[frames_df[name] for name in FRAME_COLUMNS])
    return DataFrame(frames_df._jdf.mapInArrow(call._jc, False, None), frames_df.sparkSession)


def decode_batches(
    ticker_marks: TickerMarks, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """The Python side of `mapInArrow`: each Arrow batch of frames through the registry. A
    task reads its Kafka partitions in offset order and a product's frames share a partition,
    so the ticker marks, carried from batch to batch, see each product's tickers in order."""
    for batch in batches:
        yield decode_batch(batch, ticker_marks)


def decode_batch(batch: pa.RecordBatch, ticker_marks: TickerMarks | None = None) -> pa.RecordBatch:
    """Frames (FRAME_COLUMNS) -> the same frames with `reason`, `trades`, `tickers`, `gaps`."""
    columns = [batch.column(name).to_pylist() for name in FRAME_COLUMNS]
    frames_in = [RawFrame(*values) for values in zip(*columns, strict=True)]
    out = decode_frames(frames_in)
    newer_tickers(out, {} if ticker_marks is None else ticker_marks)
    n = len(frames_in)
    reasons: list[str | None] = [None] * n
    for index, reason in out.rejected:
        reasons[index] = reason
    arrays = [batch.column(name) for name in FRAME_COLUMNS]
    arrays.append(pa.array(reasons, pa.string()))
    for name, (_, table_name, index_name) in NESTED.items():
        arrays.append(_per_frame(getattr(out, table_name), getattr(out, index_name), n, name))
    return pa.RecordBatch.from_arrays(arrays, [*FRAME_COLUMNS, "reason", *NESTED])


def newer_tickers(out: DecodedBatch, marks: TickerMarks) -> None:
    """Keep the tickers the embedded engine keeps (engine/chunks.py `_new_tickers`): in
    arrival order, a product's ticker whose sequence and time are both at or below the last
    kept one's (or the stored newest's) is dropped; `marks` moves along."""
    table = out.tickers
    if not table.num_rows:
        return
    keep = []
    rows = zip(
        table["exchange"].to_pylist(),
        table["product_id"].to_pylist(),
        table["sequence"].to_pylist(),
        pc.cast(table["time"], pa.int64()).to_pylist(),
        strict=True,
    )
    for exchange, product, sequence, time_us in rows:
        mark = marks.get((exchange, product))
        if mark is not None and sequence <= mark[0] and time_us <= mark[1]:
            keep.append(False)
            continue
        marks[(exchange, product)] = (sequence, time_us)
        keep.append(True)
    if not all(keep):
        mask = pa.array(keep, pa.bool_())
        out.tickers, out.ticker_frames = table.filter(mask), out.ticker_frames.filter(mask)


def _per_frame(table: pa.Table, frame_index: pa.Int32Array, n: int, name: str) -> pa.ListArray:
    """Rows in frame order, with each row's frame index, as one list per frame."""
    offsets = [0] * (n + 1)
    for index in frame_index.to_pylist():  # sorted: rows keep frame order
        offsets[index + 1] += 1
    for i in range(n):
        offsets[i + 1] += offsets[i]
    row_type = _ARROW_NESTED[name].value_type
    rows = table.select(row_type.names).cast(pa.schema(list(row_type))).combine_chunks()
    values = pa.StructArray.from_arrays(
        [rows.column(f.name).combine_chunks() for f in row_type], fields=list(row_type)
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, type=_ARROW_NESTED[name])


def _recv_time(recv_ns: Column) -> Column:
    return F.timestamp_micros(F.expr("recv_ns div 1000"))


def summary(frames_df: DataFrame) -> list[Row]:
    """One row per kind (trade, ticker, gap, rejected, other) and product (exchange,
    product_id; null but for trades and tickers): count (of rows for trades and tickers, of
    frames otherwise), dates, and the range of event times (unix micros) and ids (trade_id,
    ticker sequence), to decide which rows can be new and to prune reads, and the last row's
    (id, unix micros) in Kafka order (`newest`: the ticker marks). A frame without
    rows (an empty REST page, an ack, a heartbeat) counts as "other"."""
    kind = (
        F.when(F.col("reason").isNotNull(), "rejected")
        .when(F.size("trades") > 0, "trade")
        .when(F.size("tickers") > 0, "ticker")
        .when(F.size("gaps") > 0, "gap")
        .otherwise("other")
    )

    def events(rows: str, ident: str) -> Column:
        return F.transform(
            rows,
            lambda r, i: F.struct(
                r["product_id"].alias("product_id"),
                r["time"].alias("time"),
                r[ident].alias("id"),
                F.struct(F.col("partition"), F.col("offset"), i.alias("pos")).alias("at"),
            ),
        )

    exploded = frames_df.select(
        kind.alias("kind"),
        "exchange",
        F.explode_outer(
            F.when(kind == "trade", events("trades", "trade_id")).when(
                kind == "ticker", events("tickers", "sequence")
            )
        ).alias("e"),
    )
    keyed = F.col("kind").isin("trade", "ticker")
    event_time, ident = F.col("e.time"), F.col("e.id")
    return (
        exploded.groupBy(
            "kind",
            F.when(keyed, F.col("exchange")).alias("exchange"),
            F.col("e.product_id").alias("product_id"),
        )
        .agg(
            F.count("*").alias("n"),
            F.collect_set(F.to_date(event_time)).alias("dates"),
            F.unix_micros(F.min(event_time)).alias("first_us"),
            F.unix_micros(F.max(event_time)).alias("last_us"),
            F.min(ident).alias("first_id"),
            F.max(ident).alias("last_id"),
            F.max_by(F.struct(ident, F.unix_micros(event_time)), "e.at").alias("newest"),
        )
        .collect()
    )


def _rows(frames_df: DataFrame, name: str) -> DataFrame:
    """The rows of one array, in Kafka order (`_partition`, `_offset`, then `_pos` inside a
    frame), with every column of the table."""
    spec = NESTED[name][0]
    rows = frames_df.where(F.col("reason").isNull() & (F.size(name) > 0)).select(
        F.col("partition").alias("_partition"),
        F.col("offset").alias("_offset"),
        F.posexplode(name).alias("_pos", "r"),
    )
    return rows.select(
        *(F.col("r")[n].alias(n) for n in spec.schema.names), "_partition", "_offset", "_pos"
    )


def trades(frames_df: DataFrame) -> DataFrame:
    """silver.trades rows (streamed trades and those of REST pages alike)."""
    return _rows(frames_df, "trades")


def tickers(frames_df: DataFrame) -> DataFrame:
    return _rows(frames_df, "tickers")


def gaps(frames_df: DataFrame) -> DataFrame:
    return _rows(frames_df, "gaps").drop("_partition", "_offset", "_pos")


def quarantine(frames_df: DataFrame) -> DataFrame:
    recv = _recv_time(F.col("recv_ns"))
    return frames_df.where(F.col("reason").isNotNull()).select(
        F.col("exchange").alias("source"),
        "conn_id",
        "recv_seq",
        recv.alias("recv_time"),
        F.col("text").alias("frame"),
        "reason",
        F.to_date(recv).alias("date"),
    )


def bronze(frames_df: DataFrame) -> DataFrame:
    recv = _recv_time(F.col("recv_ns"))
    return frames_df.select(
        F.col("exchange").alias("source"),
        "conn_id",
        "recv_seq",
        recv.alias("recv_time"),
        F.col("text").alias("frame"),
        F.to_date(recv).alias("date"),
    )
