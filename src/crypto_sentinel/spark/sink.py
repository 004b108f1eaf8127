"""foreachBatch sink: one Kafka micro-batch -> the lake, exactly once, as the embedded engine.

Every Delta write of batch N carries the app transaction (app id, N), so a batch that Spark
re-runs after a crash skips the tables that already hold it (appends through the writer's
txnAppId/txnVersion options, MERGEs through the session confs Delta reads for DML).
Order as in `lake/writer.py`: quarantine, trades, tickers, candles, gaps, bronze last.

Per batch, as few Spark jobs as the tables need (issue 22):

* one summary job (it also fills the cache of the decoded batch): per kind and product, the
  count, dates, event-time and id range;
* tickers: those the embedded engine keeps (decode.newer_tickers, against the ticker marks),
  so a plain append;
* trades: deduplicated on their key inside the batch (first arrival in Kafka order). Each
  product's highest stored trade id is known to the sink (read once per process, then kept up
  to date): a row above it cannot be stored yet, so the common batch is a plain append. Rows
  at or below it (REST backfill, repeated frames) are checked against silver by an anti-join
  on the key, pruned by date, product and id range, appended in the same single commit (so
  the candles know exactly which trades are new);
* candles: the new trades' partial candles (one aggregation job) merged on the driver, with
  the embedded engine's own `Candle.merge`, into the stored candles of the same minutes (one
  small pruned read of gold), then upserted: no re-read of silver. Only a batch that Spark
  re-runs after its trades were committed recomputes its minutes from silver (which trades
  were new is then unknown);
* quarantine, gaps and bronze: plain appends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from delta.tables import DeltaTable
from deltalake import DeltaTable as DeltaLakeTable
from pyspark.sql import Column, DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F

from crypto_sentinel.engine.candles import Candle
from crypto_sentinel.lake import tables as LT
from crypto_sentinel.lake.writer import candles_table
from crypto_sentinel.spark import decode
from crypto_sentinel.spark.books import SparkBooks

log = logging.getLogger(__name__)

TXN_APP_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
CANDLE_KEY = ("exchange", "product_id", "start")
MINUTE_US = 60_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Scope:
    """What one batch holds of one kind of record (from `decode.summary`)."""

    n: int = 0
    dates: set[date] = field(default_factory=set)
    first_us: int | None = None
    last_us: int | None = None
    #: (exchange, product_id) -> (lowest, highest) id of the batch
    ids: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    #: (exchange, product_id) -> (id, unix micros) of the batch's last row in Kafka order
    newest: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.n += int(row["n"])
        self.dates.update(row["dates"] or [])
        for name, pick in (("first_us", min), ("last_us", max)):
            if row[name] is not None:
                current = getattr(self, name)
                setattr(self, name, row[name] if current is None else pick(current, row[name]))
        if row["product_id"] is not None and row["first_id"] is not None:
            self.ids[(row["exchange"], row["product_id"])] = (row["first_id"], row["last_id"])
            self.newest[(row["exchange"], row["product_id"])] = tuple(row["newest"])

    @property
    def first_id(self) -> int:
        return min(lo for lo, _ in self.ids.values())

    @property
    def last_id(self) -> int:
        return max(hi for _, hi in self.ids.values())


@dataclass
class Marks:
    """Per product what is stored: read from the tables at start, moved after every commit."""

    #: (exchange, product_id) -> highest stored trade id (exact)
    trades: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (exchange, product_id) -> newest ticker's (sequence, unix micros): at start the
    #: highest of each stored, as the embedded engine starts (lake/query.py
    #: `ticker_high_water`), then the last one kept
    tickers: decode.TickerMarks = field(default_factory=dict)


class LakeSink:
    """Callable for `writeStream.foreachBatch`. State: the `Marks`, and the app's batches the
    tables held when this process started."""

    def __init__(
        self,
        spark: SparkSession,
        lake: str,
        app_id: str,
        topic_prefix: str,
        committed: dict[str, int] | None = None,
        marks: Marks | None = None,
    ) -> None:
        self.spark = spark
        self.lake = lake
        self.app_id = app_id
        self.topic_prefix = topic_prefix
        #: table name -> highest batch id of this app the table held at start (Delta txn)
        self.committed = committed or {}
        self.marks = marks or Marks()
        self.timings: dict[str, float] = {}
        #: The order books (spark/books.py), when `settings.books` is on.
        self.books: SparkBooks | None = None

    def path(self, spec: LT.TableSpec) -> str:
        return spec.uri(self.lake)

    def __call__(self, records: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        self.timings = {}
        frames = decode.frames(records, self.topic_prefix)
        parsed = decode.decoded(frames, self.marks.tickers).persist()
        try:
            if self.books is not None:  # before bronze, which the sink writes last
                with self._step("books"):
                    log.info("batch %d books: %s", batch_id, self.books.write(parsed, batch_id))
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
        with self._step("summary"):
            scopes: dict[str, Scope] = {}
            for row in decode.summary(parsed):  # one small job; fills parsed's cache
                scopes.setdefault(row["kind"], Scope()).add(row)
        if "rejected" in scopes:
            with self._step("quarantine"):
                self._append(LT.QUARANTINE, decode.quarantine(parsed), batch_id)
        if "trade" in scopes:
            self._trades(parsed, scopes["trade"], self.marks.trades, batch_id)
        if "ticker" in scopes:  # only newer tickers are decoded: a plain append
            with self._step("tickers"):
                self._append(LT.TICKERS, decode.tickers(parsed), batch_id)
            self.marks.tickers.update(scopes["ticker"].newest)
        if "gap" in scopes:
            with self._step("gaps"):
                self._append(LT.GAPS, decode.gaps(parsed), batch_id)
        if scopes:
            with self._step("bronze"):
                self._append(LT.BRONZE, decode.bronze(parsed), batch_id)
        return {kind: scope.n for kind, scope in scopes.items()}

    def _trades(
        self, parsed: DataFrame, scope: Scope, marks: dict[tuple[str, str], int], batch_id: int
    ) -> None:
        trades = _first_per_key(decode.trades(parsed), LT.TRADES.key)
        if batch_id <= self.committed.get(LT.TRADES.name, -1):
            # Spark re-runs a batch whose trades are stored: which were new is unknown, so
            # the candles of its minutes are recomputed from silver.
            self.timings["trades"] = 0.0
            if batch_id > self.committed.get(LT.CANDLES_1M.name, -1):
                with self._step("candles_from_silver"):
                    self._candles_from_silver(trades, scope, batch_id)
            _raise(marks, scope)
            return
        new = self._new_rows(trades, LT.TRADES, scope, marks, "trade_id").persist()
        try:
            # The partial candles before the trades' commit: `new` anti-joins silver, so
            # evaluated after the commit (a cache that the write did not fill) it would no
            # longer hold the late trades it has just inserted.
            with self._step("candles_partial"):
                partials = [
                    _candle(r)
                    for r in _aggregate(new.withColumn("start", F.date_trunc("minute", "time")))
                    .select(*_candle_columns())
                    .collect()
                ]
            with self._step("trades"):
                self._append(LT.TRADES, new, batch_id)
            _raise(marks, scope)
            with self._step("candles"):
                self._upsert_candles(partials, scope, batch_id)
        finally:
            new.unpersist()

    def _new_rows(
        self,
        rows: DataFrame,
        spec: LT.TableSpec,
        scope: Scope,
        marks: dict[tuple[str, str], int],
        id_column: str,
    ) -> DataFrame:
        """The rows whose key the table does not hold: those above their product's mark,
        and those at or below it that an anti-join against the table does not find."""
        late = {p: marks[p] for p, (lo, _) in scope.ids.items() if p in marks and lo <= marks[p]}
        rows = rows.select(*spec.schema.names)
        if not late:
            return rows
        mark = F.create_map(*[F.lit(v) for (e, p), m in late.items() for v in (f"{e}\n{p}", m)])
        below = F.col(id_column) <= F.coalesce(
            F.element_at(mark, F.concat("exchange", F.lit("\n"), "product_id")), F.lit(-1)
        )
        stored = (
            self.spark.read.format("delta")
            .load(self.path(spec))
            .where(F.col("date").isin(sorted(scope.dates)))
            .where(F.col("exchange").isin(sorted({e for e, _ in late})))
            .where(F.col("product_id").isin(sorted({p for _, p in late})))
            .where(F.col(id_column).between(min(scope.ids[p][0] for p in late), max(late.values())))
            .select(*spec.key)
        )
        return rows.where(~below).unionByName(
            rows.where(below).join(stored, list(spec.key), "left_anti")
        )

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

    def _upsert_candles(self, partials: list[Candle], scope: Scope, batch_id: int) -> None:
        """The new trades' partial candles merged into the stored candles of their minutes."""
        if not partials:
            return
        starts = [c.start for c in partials]
        stored = {
            (r["exchange"], r["product_id"], _utc(r["_start_us"])): r
            for r in self._stored_candles(min(starts), max(starts), scope.dates)
        }
        merged = []
        for partial in partials:
            row = stored.get(partial.key)
            if row is None:
                merged.append(partial)
                continue
            candle = _candle(row)
            candle.merge(partial)
            merged.append(candle)
        self._write_candles(candles_table(merged), bool(stored), scope.dates, batch_id)

    def _stored_candles(self, first: datetime, last: datetime, dates: set[date]) -> list[Row]:
        return (
            self.spark.read.format("delta")
            .load(self.path(LT.CANDLES_1M))
            .where(F.col("date").isin(sorted(dates)))
            .where(F.col("start").between(F.lit(first), F.lit(last)))
            .select(
                "exchange", "product_id", F.unix_micros("start").alias("_start_us"),
                "open", "high", "low", "close", "volume", "buy_volume", "sell_volume",
                "quote_volume", "trade_count", "first_trade_id", "last_trade_id",
                F.unix_micros("first_trade_time").alias("_first_us"),
                F.unix_micros("last_trade_time").alias("_last_us"),
            )
            .collect()
        )  # fmt: skip

    def _write_candles(self, rows: pa.Table, update: bool, dates: set[date], batch_id: int) -> None:
        """Append when none of the minutes is stored yet, else MERGE (one commit either way)."""
        source = self.spark.createDataFrame(rows)  # Arrow into the JVM: no Python workers
        if not update:
            self._append(LT.CANDLES_1M, source, batch_id)
            return
        starts = rows.column("start")
        first, last = pc.min(starts).as_py(), pc.max(starts).as_py()
        match = " AND ".join(f"t.{k} = s.{k}" for k in CANDLE_KEY)
        prune = (
            f"t.date IN ({_date_list(dates)})"
            f" AND t.start BETWEEN timestamp_micros({_us(first)})"
            f" AND timestamp_micros({_us(last)})"
        )
        target = DeltaTable.forPath(self.spark, self.path(LT.CANDLES_1M)).alias("t")
        with self._txn(batch_id):
            (
                target.merge(source.alias("s"), f"{prune} AND {match}")
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute()
            )

    def _candles_from_silver(self, trades: DataFrame, scope: Scope, batch_id: int) -> None:
        """Recompute every minute the batch touched from silver, upsert the rows."""
        assert scope.first_us is not None and scope.last_us is not None
        first = scope.first_us // MINUTE_US * MINUTE_US
        last = scope.last_us // MINUTE_US * MINUTE_US
        minutes = f"timestamp_micros({first}) AND timestamp_micros({last})"
        touched = trades.select(
            "exchange", "product_id", F.date_trunc("minute", "time").alias("start")
        ).distinct()
        silver = (
            self.spark.read.format("delta")
            .load(self.path(LT.TRADES))
            .where(F.col("date").isin(sorted(scope.dates)))
            .where(
                f"time >= timestamp_micros({first}) AND time < timestamp_micros({last + MINUTE_US})"
            )
            .withColumn("start", F.date_trunc("minute", "time"))
            .join(touched, list(CANDLE_KEY), "left_semi")
        )
        candles = [_candle(r) for r in _aggregate(silver).select(*_candle_columns()).collect()]
        if not candles:
            return
        source = self.spark.createDataFrame(candles_table(candles))
        match = " AND ".join(f"t.{k} = s.{k}" for k in CANDLE_KEY)
        prune = f"t.date IN ({_date_list(scope.dates)}) AND t.start BETWEEN {minutes}"
        target = DeltaTable.forPath(self.spark, self.path(LT.CANDLES_1M)).alias("t")
        with self._txn(batch_id):
            (
                target.merge(source.alias("s"), f"{prune} AND {match}")
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute()
            )


def read_marks(tables: dict[str, DeltaLakeTable]) -> Marks:
    """Each product's highest trade id, and highest ticker sequence and time, in the tables,
    read once per process by the driver (delta-rs, record batch by record batch: bounded
    memory), before Spark's first batch, which then has no extra jobs."""
    trades = _highest(tables[LT.TRADES.name], ["trade_id"])
    tickers = _highest(tables[LT.TICKERS.name], ["sequence", "time"])
    return Marks(
        {key: values[0] for key, values in trades.items()},
        {key: (values[0], values[1]) for key, values in tickers.items()},
    )


def _highest(table: DeltaLakeTable, columns: list[str]) -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    dataset = table.to_pyarrow_dataset()
    for batch in dataset.to_batches(columns=["exchange", "product_id", *columns]):
        if not batch.num_rows:
            continue
        grouped = pa.Table.from_batches([batch]).group_by(["exchange", "product_id"])
        for row in grouped.aggregate([(c, "max") for c in columns]).to_pylist():
            key = (row["exchange"], row["product_id"])
            values = [_int(row[f"{c}_max"]) for c in columns]
            old = found.get(key, values)
            found[key] = [max(a, b) for a, b in zip(old, values, strict=True)]
    return found


def _int(value: int | datetime) -> int:
    return _us(value) if isinstance(value, datetime) else int(value)


def _raise(marks: dict[tuple[str, str], int], scope: Scope) -> None:
    """After a commit, every id of the batch is stored: raise the products' marks."""
    for product, (_, hi) in scope.ids.items():
        marks[product] = max(marks.get(product, hi), hi)


def _candle_columns() -> tuple[str | Column, ...]:
    """Candle sums as `_candle` reads them (times as unix micros: no time-zone conversion)."""
    return (
        "exchange", "product_id", F.unix_micros("start").alias("_start_us"), "open", "high",
        "low", "close", "volume", "buy_volume", "sell_volume", "quote_volume", "trade_count",
        F.col("first.trade_id").alias("first_trade_id"),
        F.col("last.trade_id").alias("last_trade_id"),
        F.unix_micros("first.time").alias("_first_us"),
        F.unix_micros("last.time").alias("_last_us"),
    )  # fmt: skip


def _utc(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def _us(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


def _candle(row: Row) -> Candle:
    """A candle (or the partial candle of some trades) as the embedded engine holds it."""
    return Candle(
        exchange=row["exchange"],
        product_id=row["product_id"],
        start=_utc(row["_start_us"]),
        open=row["open"],
        high=row["high"],
        low=row["low"],
        close=row["close"],
        volume=row["volume"],
        buy_volume=row["buy_volume"],
        sell_volume=row["sell_volume"],
        quote_volume=row["quote_volume"],
        trade_count=int(row["trade_count"]),
        first_trade_id=int(row["first_trade_id"]),
        last_trade_id=int(row["last_trade_id"]),
        first_trade_time=_utc(row["_first_us"]),
        last_trade_time=_utc(row["_last_us"]),
    )


def _date_list(dates: set[date]) -> str:
    return ", ".join(f"DATE'{d.isoformat()}'" for d in sorted(dates))  # our own values, not input


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
    amount = decode.spark_type(LT.CANDLES_1M.schema.field("volume").type)
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
