"""The Spark Structured Streaming job: Kafka raw-frame topics -> the Delta lake.

Run it with `sentinel spark submit` (which calls spark-submit on this file). Settings come
from the environment (`SENTINEL_*`) like every other verb; `--available-now` processes what
the topics hold and stops (tests, backfills), otherwise it runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import uuid
from pathlib import Path
from types import FrameType

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from crypto_sentinel.books.processor import BookProcessor, BookSettings
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.config import Settings, load_settings
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import LakeWriter
from crypto_sentinel.spark import procs
from crypto_sentinel.spark.sink import LakeSink

log = logging.getLogger("crypto_sentinel.spark")


def checkpoint_dir(settings: Settings) -> Path:
    return (settings.spark_checkpoint_dir or settings.data_dir / "spark" / "checkpoint").resolve()


def session(
    settings: Settings, master: str | None = None, jars: list[Path] | None = None
) -> SparkSession:
    """Session confs the job depends on. UTC: no value may depend on the host's time zone (the
    collected columns are integers today; a timestamp added later must not shift lake dates).
    No web UI: nobody reads it on a headless box, and it is a port and threads less. Spark
    reads Kafka only and the plan has no shuffle (the driver writes the lake, spark/sink.py),
    so no Delta, s3a or shuffle settings. Under spark-submit, master and jars come from its
    command line instead."""
    confs = {
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
    }
    if master is not None:
        confs["spark.master"] = master
        confs["spark.driver.memory"] = settings.spark_driver_memory
        confs["spark.driver.extraJavaOptions"] = settings.spark_java_options
    if jars:
        confs["spark.jars"] = ",".join(str(j) for j in jars)
    builder = SparkSession.builder.appName(settings.spark_app_id)
    for key, value in confs.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def txn_app_id(settings: Settings, checkpoint: Path) -> str:
    """Delta app id of this checkpoint: Spark restarts batch ids with a new checkpoint, so a
    new checkpoint must not inherit the old one's committed versions."""
    marker = checkpoint / "sentinel-app.json"
    try:
        return str(json.loads(marker.read_text())["txn_app_id"])
    except (OSError, ValueError, KeyError):
        checkpoint.mkdir(parents=True, exist_ok=True)
        app_id = f"{settings.spark_app_id}:{uuid.uuid4().hex[:12]}"
        marker.write_text(json.dumps({"txn_app_id": app_id}))
        return app_id


def sink(settings: Settings, app_id: str) -> LakeSink:
    """The embedded engine over the lake, as `sentinel process` starts it: what the tables
    hold is learnt, and what a killed run left half committed is finished."""
    writer = LakeWriter(settings.lake_root, app_id)
    books = None  # a book follows its venue's rule message after message: on the driver
    if settings.books:
        books = BookProcessor(BookRegistry(), BookSettings.from_settings(settings))
    engine = Engine(
        writer, settings.spark_trigger_seconds, settings.spark_max_offsets_per_trigger, books=books
    )
    engine.load_state(LakeReader(settings.lake_root))
    return LakeSink(engine, app_id, settings.kafka_topic_prefix)


def start(
    spark: SparkSession, settings: Settings, lake_sink: LakeSink, available_now: bool
) -> StreamingQuery:
    checkpoint = checkpoint_dir(settings)
    records = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribePattern", "^" + re.escape(settings.kafka_topic_prefix) + ".*")
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", settings.spark_max_offsets_per_trigger)
        .option("includeHeaders", "true")
        .option("failOnDataLoss", "false")  # retention removed data: go on, never crash
        .option("kafka.metadata.max.age.ms", "5000")  # see new exchanges' topics soon
        .load()
    )
    writer = records.writeStream.foreachBatch(lake_sink).option(
        "checkpointLocation", str(checkpoint / "query")
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{settings.spark_trigger_seconds} seconds")
    return writer.queryName(settings.spark_app_id).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--available-now", action="store_true", help="process the backlog, stop")
    args = parser.parse_args(argv)
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    procs.exit_with_parent()  # the spark-submit JVM: never outlive it
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        if stopping:  # asked twice: no more waiting
            os._exit(128 + signum)
        stopping.append(signum)
        procs.exit_after(procs.DRIVER_STOP_S, 128 + signum)  # a JVM that no longer answers

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    spark = session(settings)
    error: Exception | None = None
    lake_sink: LakeSink | None = None
    try:
        lake_sink = sink(settings, txn_app_id(settings, checkpoint_dir(settings)))
        query = start(spark, settings, lake_sink, args.available_now)
        log.info("streaming %s* -> %s", settings.kafka_topic_prefix, settings.lake_root)
        while query.isActive and not stopping:
            query.awaitTermination(1)
        if stopping:
            query.stop()
        error = query.exception()
    except Exception as exc:  # one line in the log, exit code 1, Spark stopped
        error = exc
    finally:
        spark.stop()
        if lake_sink is not None:
            lake_sink.close()
    if error is not None:
        first = (str(error).strip().splitlines() or [repr(error)])[0]
        log.error("streaming query failed: %s", first)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
