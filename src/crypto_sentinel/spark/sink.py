"""foreachBatch sink: one Kafka micro-batch -> the lake, exactly once, as the embedded engine.

Every Delta write of batch N carries the app transaction (app id, N), so a batch that Spark
re-runs after a crash skips the tables that already hold it (appends through the writer's
txnAppId/txnVersion options, MERGEs through the session confs Delta reads for DML).
Order as in `lake/writer.py`: quarantine, trades, tickers, candles, gaps, bronze last.

Trades (streamed matches and the trades of REST backfill pages alike) are deduplicated on
(exchange, product_id, trade_id): first by Kafka offset (and position inside a page) in the
batch, then by an insert-only MERGE against silver. Candles of every minute the batch touched
are recomputed from silver (the source of truth) and upserted, so late trades and re-runs give
exactly the candle the embedded engine builds trade by trade.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal

import pyarrow as pa
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crypto_sentinel.lake import tables as LT
from crypto_sentinel.model import EXACT, QUANTUM
from crypto_sentinel.spark import decode

log = logging.getLogger(__name__)

TXN_APP_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
CANDLE_KEY = ("exchange", "product_id", "start")
MINUTE_US = 60_000_000


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


class LakeSink:
    """Callable for `writeStream.foreachBatch`; holds only paths and names (no state)."""

    def __init__(self, spark: SparkSession, lake: str, app_id: str, topic_prefix: str) -> None:
        self.spark = spark
        self.lake = lake
        self.app_id = app_id
        self.topic_prefix = topic_prefix

    def path(self, spec: LT.TableSpec) -> str:
        return spec.uri(self.lake)

    def __call__(self, records: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        parsed = decode.parse(decode.frames(records, self.topic_prefix)).persist()
        self.timings: dict[str, float] = {}
        try:
            counts = self.write(parsed, batch_id)
        finally:
            parsed.unpersist()
        log.info(
            "batch %d committed in %.2fs: %s; seconds per step %s",
            batch_id, time.monotonic() - started, counts, self.timings,
        )  # fmt: skip

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[name] = round(time.monotonic() - started, 2)

    def write(self, parsed: DataFrame, batch_id: int) -> dict[str, int]:
        """Write every table of one batch; returns row counts by kind of frame."""
        with self._step("parse"):
            scopes = {row["kind"]: row for row in decode.summary(parsed)}  # one small job
        if "rejected" in scopes:
            with self._step("quarantine"):
                self._append(LT.QUARANTINE, decode.quarantine(parsed), batch_id)
        if "trade" in scopes:
            scope = scopes["trade"]
            trades = _first_per_key(decode.trades(parsed), LT.TRADES.key).persist()
            try:
                with self._step("trades"):
                    self._insert_new(LT.TRADES, trades, scope, "trade_id", batch_id)
                with self._step("candles"):
                    self._upsert_candles(trades, scope, batch_id)
            finally:
                trades.unpersist()
        if "ticker" in scopes:
            tickers = _first_per_key(decode.tickers(parsed), LT.TICKERS.key)
            with self._step("tickers"):
                self._insert_new(LT.TICKERS, tickers, scopes["ticker"], "sequence", batch_id)
        if "gap" in scopes:
            with self._step("gaps"):
                self._append(LT.GAPS, decode.gaps(parsed), batch_id)
        if scopes:
            with self._step("bronze"):
                self._append(LT.BRONZE, decode.bronze(parsed), batch_id)
        return {kind: row["n"] for kind, row in scopes.items()}

    def _append(self, spec: LT.TableSpec, rows: DataFrame, batch_id: int) -> None:
        (
            rows.select(*spec.schema.names)
            .write.format("delta")
            .mode("append")
            .option("txnAppId", self.app_id)
            .option("txnVersion", batch_id)
            .save(self.path(spec))
        )

    @contextmanager
    def _txn(self, batch_id: int) -> Iterator[None]:
        """MERGE has no writer options: Delta takes the app transaction from session confs."""
        self.spark.conf.set(TXN_APP_CONF, self.app_id)
        self.spark.conf.set(TXN_VERSION_CONF, str(batch_id))
        try:
            yield
        finally:
            self.spark.conf.unset(TXN_APP_CONF)
            self.spark.conf.unset(TXN_VERSION_CONF)

    def _insert_new(
        self, spec: LT.TableSpec, rows: DataFrame, scope: Row, id_column: str, batch_id: int
    ) -> None:
        """Insert rows whose key the table does not hold yet. The batch's dates and id range
        only prune files (a matching row must lie in them); the key decides."""
        match = " AND ".join(f"t.{k} = s.{k}" for k in spec.key)
        prune = (
            f"t.date IN ({_date_list(scope['dates'])})"
            f" AND t.{id_column} BETWEEN {int(scope['first_id'])} AND {int(scope['last_id'])}"
        )
        target = DeltaTable.forPath(self.spark, self.path(spec)).alias("t")
        with self._txn(batch_id):
            (
                target.merge(rows.select(*spec.schema.names).alias("s"), f"{prune} AND {match}")
                .whenNotMatchedInsertAll()
                .execute()
            )

    def _upsert_candles(self, trades: DataFrame, scope: Row, batch_id: int) -> None:
        """Recompute every minute the batch touched from silver, upsert the rows."""
        first = int(scope["first_us"]) // MINUTE_US * MINUTE_US
        last = int(scope["last_us"]) // MINUTE_US * MINUTE_US
        minutes = f"timestamp_micros({first}) AND timestamp_micros({last})"
        touched = trades.select(
            "exchange", "product_id", F.date_trunc("minute", "time").alias("start")
        ).distinct()
        silver = (
            self.spark.read.format("delta")
            .load(self.path(LT.TRADES))
            .where(F.col("date").isin(scope["dates"]))
            .where(
                f"time >= timestamp_micros({first}) AND time < timestamp_micros({last + MINUTE_US})"
            )
            .withColumn("start", F.date_trunc("minute", "time"))
            .join(touched, list(CANDLE_KEY), "left_semi")
        )
        sums = _aggregate(silver).persist()  # read once: for the VWAPs and for the MERGE
        try:
            if sums.isEmpty():
                return
            candles = _candles(sums, _vwaps(self.spark, sums))
            match = " AND ".join(f"t.{k} = s.{k}" for k in CANDLE_KEY)
            prune = f"t.date IN ({_date_list(scope['dates'])}) AND t.start BETWEEN {minutes}"
            target = DeltaTable.forPath(self.spark, self.path(LT.CANDLES_1M)).alias("t")
            with self._txn(batch_id):
                (
                    target.merge(candles.alias("s"), f"{prune} AND {match}")
                    .whenMatchedUpdateAll()
                    .whenNotMatchedInsertAll()
                    .execute()
                )
        finally:
            sums.unpersist()


def _date_list(dates: list[date]) -> str:
    return ", ".join(f"DATE'{d.isoformat()}'" for d in dates)  # our own values, not input


def _first_per_key(rows: DataFrame, key: tuple[str, ...]) -> DataFrame:
    """Keep the first arrival of each key (Kafka order; inside a REST page, page order), as
    the embedded engine does. A product's frames share one partition (key = product id)."""
    order = Window.partitionBy(*key).orderBy("_partition", "_offset", "_pos")
    return (
        rows.withColumn("_n", F.row_number().over(order))
        .where(F.col("_n") == 1)
        .drop("_n", "_partition", "_offset", "_pos")
    )


def _aggregate(trades: DataFrame) -> DataFrame:
    """OHLCV sums per minute with the embedded engine's definitions (engine/candles.py)."""
    order = F.struct("time", "trade_id")
    amount = spark_type(LT.CANDLES_1M.schema.field("volume").type)
    zero = F.lit(0).cast(amount)
    agg = trades.groupBy(*CANDLE_KEY).agg(
        F.min_by("price", order).alias("open"),
        F.max("price").alias("high"),
        F.min("price").alias("low"),
        F.max_by("price", order).alias("close"),
        F.sum("size").alias("volume"),
        F.sum(F.when(F.col("side") == "buy", F.col("size")).otherwise(zero)).alias("buy_volume"),
        F.sum(F.when(F.col("side") != "buy", F.col("size")).otherwise(zero)).alias("sell_volume"),
        F.sum(F.col("price") * F.col("size")).alias("quote_volume"),
        F.count(F.lit(1)).alias("trade_count"),
        F.min(order).alias("first"),
        F.max(order).alias("last"),
    )
    return agg.withColumn("_start_us", F.unix_micros("start"))


def _vwaps(spark: SparkSession, sums: DataFrame) -> DataFrame:
    """VWAP per candle, computed on the driver: a batch touches few minutes, and Python's
    Decimal gives the embedded engine's exact half-even rounding. The values go back as
    literals (not createDataFrame, which would start Python worker processes)."""
    rows = sums.select("exchange", "product_id", "_start_us", "quote_volume", "volume").collect()
    vwap_type = spark_type(LT.CANDLES_1M.schema.field("vwap").type)
    values = [
        F.struct(
            F.lit(r["exchange"]).alias("exchange"),
            F.lit(r["product_id"]).alias("product_id"),
            F.lit(r["_start_us"]).cast("long").alias("_start_us"),
            F.lit(str(_vwap(r["quote_volume"], r["volume"]))).cast(vwap_type).alias("vwap"),
        )
        for r in rows
    ]
    return spark.range(1).select(F.explode(F.array(*values)).alias("v")).select("v.*")


def _candles(sums: DataFrame, vwaps: DataFrame) -> DataFrame:
    types = spark_schema(LT.CANDLES_1M)
    typed = [
        F.col(c).cast(types[c].dataType)
        for c in ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume")
    ]
    return sums.join(vwaps, ["exchange", "product_id", "_start_us"]).select(
        *CANDLE_KEY,
        *typed,
        F.col("quote_volume").cast(types["quote_volume"].dataType),
        "vwap",
        "trade_count",
        F.col("first.trade_id").alias("first_trade_id"),
        F.col("last.trade_id").alias("last_trade_id"),
        F.col("first.time").alias("first_trade_time"),
        F.col("last.time").alias("last_trade_time"),
        F.to_date("start").alias("date"),
    )


def _vwap(quote_volume: Decimal, volume: Decimal) -> Decimal:
    """Exactly Candle.vwap (half-even at 12 places); Spark's decimal division rounds half-up."""
    return EXACT.divide(quote_volume, volume).quantize(QUANTUM, context=EXACT)
