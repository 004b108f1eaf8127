"""Order books in the Spark job: silver.book_updates, gold.book_snapshots and the book gap
and quarantine rows, the same rows as the embedded engine's for the same frames.

Why on the driver: a book is kept by its venue's sync rule, one event after the other with
state between them (the book, the last update id, Binance's buffer), so it cannot be split
over executors. The executors only pick the batch's book frames out (the venue's cheap
`is_book`, in `mapInArrow`); the driver sorts them into bus order (per Kafka partition, by
offset: a product's frames share one partition, as the embedded consumer reads them) and runs
the engine's own `BookProcessor` over them. Its Arrow rows are committed by the engine's
own `LakeWriter` with the batch's Delta transaction, so a batch Spark runs again skips what is
stored.

Two transactions: the book tables carry the sink's (app id, batch id); bronze.gaps and the
quarantine, which the sink also appends to under that pair within the same batch, carry
(app id + ":books", batch id), or one of the two appends would be skipped as already done.

Restart: the books are continued from the lake as the embedded engine continues them
(`Engine._restore_books`): the newest full snapshot of each recent product plus the update
rows after it, all before the product's first frame in the first batch this process runs
(that batch may be one Spark runs again, whose rows are partly stored). What is not stored
(a venue's buffer of updates waiting for a snapshot) starts empty, as in the engine: a
Binance book in that state then breaks visibly (a gap row) instead of going wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql.types import StringType, StructField, StructType
from pyspark.sql.udf import UserDefinedFunction
from pyspark.util import PythonEvalType

from crypto_sentinel.books.history import BookHistory, FrameKey
from crypto_sentinel.books.processor import BookOutput, BookProcessor, BookSettings, datetime_of
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.lake import tables as LT
from crypto_sentinel.lake.location import LakeRoot
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import RawFrame, Rejected
from crypto_sentinel.sources.codec import FrameError
from crypto_sentinel.sources.venues import book_codec_for
from crypto_sentinel.spark.decode import FRAME_COLUMNS, FRAME_SCHEMA

log = logging.getLogger(__name__)

#: The batch's frame columns the driver needs, plus the sink's quarantine reason.
_COLUMNS = (*FRAME_COLUMNS, "reason")


def keep_book_frames(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The Python side of `mapInArrow`: only the frames a venue's book codec claims."""
    for batch in batches:
        exchanges = batch.column("exchange").to_pylist()
        texts = batch.column("text").to_pylist()
        keep = []
        for exchange, text in zip(exchanges, texts, strict=True):
            codec = book_codec_for(exchange) if exchange else None
            keep.append(codec is not None and text is not None and codec.is_book(text))
        yield batch.filter(pa.array(keep, pa.bool_()))


def book_frames(parsed: DataFrame) -> pa.Table:
    """The batch's book frames (`_COLUMNS`) on the driver, in bus order."""
    columns = parsed.select(*_COLUMNS)
    schema = StructType([*FRAME_SCHEMA.fields, StructField("reason", StringType())])
    function = UserDefinedFunction(
        keep_book_frames, schema, "keep_book_frames", PythonEvalType.SQL_MAP_ARROW_ITER_UDF
    )
    call = function(*[columns[name] for name in _COLUMNS])
    # `mapInArrow` without pyspark's pandas check, as decode.decoded does
    kept = DataFrame(columns._jdf.mapInArrow(call._jc, False, None), columns.sparkSession)
    table = kept.toArrow()
    return table.sort_by([("exchange", "ascending"), ("partition", "ascending"),
                          ("offset", "ascending")])  # fmt: skip


def raw_frames(table: pa.Table) -> tuple[list[RawFrame], set[int]]:
    """The frames, and the indexes of those the sink quarantines already (their own codec
    refused them: the engine writes one quarantine row per frame)."""
    values = [table.column(name).to_pylist() for name in _COLUMNS]
    frames: list[RawFrame] = []
    refused: set[int] = set()
    for index, (exchange, conn, seq, ns, text, part, offset, reason) in enumerate(
        zip(*values, strict=True)
    ):
        frames.append(RawFrame(exchange, conn, seq, ns, text, part, offset))
        if reason is not None:
            refused.add(index)
    return frames, refused


class SparkBooks:
    """The driver's books of one Spark job: `write(parsed, batch_id)` once per micro-batch."""

    def __init__(self, lake: LakeRoot, app_id: str, settings: BookSettings) -> None:
        self.lake = lake
        self.app_id = app_id
        self.settings = settings
        self.processor: BookProcessor | None = None  # made (and restored) at the first batch
        self._writer: LakeWriter | None = None

    def write(self, parsed: DataFrame, batch_id: int) -> dict[str, int]:
        """Run the batch's book frames through the books and commit their rows; returns
        the row counts. A failure leaves the books to be restored again from the lake."""
        frames, refused = raw_frames(book_frames(parsed))
        if self.processor is None:
            self.processor = self.restored(frames)
        try:
            out = self.processor.process(frames)
            return self._commit(out, frames, refused, batch_id)
        except BaseException:
            self.processor = None  # its state may be ahead of the lake
            raise

    def restored(self, frames: Sequence[RawFrame]) -> BookProcessor:
        """A processor that continues the lake's books from before `frames` (see module)."""
        processor = BookProcessor(BookRegistry(), self.settings)
        first = first_frames(frames)
        history = BookHistory(self.lake)
        count = 0
        for exchange, product_id in history.recent_products(2 * self.settings.checkpoint_seconds):
            found = history.book_before(exchange, product_id, first.get((exchange, product_id)))
            if found is not None:
                book, moment, conn_id = found
                processor.restore(exchange, product_id, book.view(), datetime_of(moment), conn_id)
                count += 1
        log.info("books restored from the lake: %d", count)
        return processor

    def _commit(
        self, out: BookOutput, frames: Sequence[RawFrame], refused: set[int], batch_id: int
    ) -> dict[str, int]:
        """Through the embedded engine's writer: its files are what `BookHistory` reads (Spark
        also writes the partition columns into its Parquet files, which those plain Parquet
        reads of hive-style folders refuse), and it skips a table that holds the batch."""
        if self._writer is None:
            self._writer = LakeWriter(self.lake, self.app_id)
        books = Batch(version=batch_id, txns={self.app_id: batch_id})
        if out.updates is not None:
            books.book_update_tables.append(out.updates)
        if out.snapshots is not None:
            books.book_snapshot_tables.append(out.snapshots)
        self._writer.commit(books)
        rejected = [Rejected(frames[i], reason) for i, reason in out.rejected if i not in refused]
        shared = Batch(version=batch_id, rejected=rejected, gaps=list(out.gaps))
        shared.txns = {self.shared_app_id: batch_id}
        self._writer.commit(shared)
        return {
            LT.BOOK_UPDATES.name: 0 if out.updates is None else out.updates.num_rows,
            LT.BOOK_SNAPSHOTS.name: 0 if out.snapshots is None else out.snapshots.num_rows,
            "book gaps": len(out.gaps),
            "book quarantine": len(rejected),
            "book events dropped": out.dropped,  # the engine's counters
            "book events buffered": out.buffered,
        }

    @property
    def shared_app_id(self) -> str:
        return f"{self.app_id}:books"


def first_frames(frames: Sequence[RawFrame]) -> dict[tuple[str, str], FrameKey]:
    """Each product's first frame among `frames` (its place in the engine's order)."""
    first: dict[tuple[str, str], FrameKey] = {}
    for frame in frames:
        codec = book_codec_for(frame.exchange)
        if codec is None:
            continue
        try:
            events = codec.decode(frame)
        except FrameError:
            continue
        key = (frame.recv_ns // 1000, frame.conn_id, frame.recv_seq)
        for event in events:
            product = (event.exchange, event.product_id)
            if product not in first or key < first[product]:
                first[product] = key
    return first
