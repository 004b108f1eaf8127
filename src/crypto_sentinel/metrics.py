"""Prometheus metrics shared by the pipeline and the API (one registry per process)."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import attrgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

FRAMES = Counter("sentinel_frames_total", "Frames received", ["exchange"])
TRADES = Counter("sentinel_trades_total", "Trades accepted into silver", ["exchange"])
DUPLICATES = Counter(
    "sentinel_duplicate_trades_total", "Trades dropped as duplicates", ["exchange"]
)
QUARANTINED = Counter(
    "sentinel_quarantined_frames_total", "Frames sent to quarantine", ["exchange"]
)
GAPS = Counter("sentinel_trade_id_gaps_total", "Trade-id gaps detected", ["exchange", "product_id"])
MISSING = Counter("sentinel_missing_trades_total", "Trade ids missing in gaps", ["exchange"])
BACKFILLED = Counter(
    "sentinel_backfilled_trades_total", "Missing trades recovered by REST backfill", ["exchange"]
)
BACKFILL_REQUESTS = Counter(
    "sentinel_backfill_requests_total", "REST backfill requests (retries included)", ["exchange"]
)
BACKFILL_PENDING_GAPS = Gauge(
    "sentinel_backfill_pending_gaps", "Gaps waiting for (or in) REST backfill", ["exchange"]
)
BACKFILL_PENDING_TRADES = Gauge(
    "sentinel_backfill_pending_trades",
    "Missing trade ids no REST backfill request has covered yet",
    ["exchange"],
)
BACKFILL_OLDEST_PENDING = Gauge(
    "sentinel_backfill_oldest_pending_seconds",
    "How long the oldest missing trade id not yet fetched has waited",
    ["exchange"],
)
RECONNECTS = Counter("sentinel_reconnects_total", "Source reconnects", ["exchange"])
BOOK_RESYNCS = Counter(
    "sentinel_book_resyncs_total", "Book resyncs a feed started", ["exchange", "reason"]
)
BOOK_CHANGES = Counter("sentinel_book_level_changes_total", "Level changes applied to books")
BOOK_BREAKS = Counter(
    "sentinel_book_breaks_total",
    "Book breaks the engine found (sequence, checksum, reconnect)",
    ["exchange"],
)
BOOK_DROPPED = Counter(
    "sentinel_book_events_dropped_total", "Book events a sync rule dropped (stale, repeated)"
)
BATCHES = Counter("sentinel_batches_total", "Micro-batches committed")
COMMIT_RETRIES = Counter(
    "sentinel_commit_retries_total",
    "Lake commits retried: a conflict with another writer or maintenance, or a storage error",
    ["reason"],
)
for _reason in ("conflict", "error"):  # shown at 0 before the first retry
    COMMIT_RETRIES.labels(_reason)
REDERIVED_BATCHES = Counter(
    "sentinel_rederived_batches_total",
    "Batches bronze held that were derived again at start (a commit was interrupted)",
)
COMMIT_SECONDS = Histogram(
    "sentinel_commit_seconds",
    "Duration of one micro-batch commit",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FRAME_TO_LAKE_SECONDS = Histogram(
    "sentinel_frame_to_lake_seconds",
    "Frame receipt to committed in Delta (per batch, oldest frame)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BUS_DEPTH = Gauge("sentinel_bus_depth", "Frames waiting in the bus")
LOOP_LAG = Histogram(
    "sentinel_event_loop_lag_seconds",
    "How late the event loop ran a timer that was due (probed every 50 ms): what every request,"
    " push and chunk waited behind then",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
API_SECONDS = Histogram(
    "sentinel_api_request_seconds",
    "API request duration",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)

# --- serving layer: hot state, live push, API ------------------------------------------------
API_RESPONSES = Counter(
    "sentinel_api_responses_total", "API responses by route and status", ["route", "status"]
)
INGEST_RATE = Gauge("sentinel_ingest_trades_per_second", "Trades accepted per second (last second)")
CONSUMER_LAG = Histogram(
    "sentinel_consumer_lag_seconds",
    "Frame receipt to processed into hot state (sampled: 1 trade in 16)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
WARMUP_SECONDS = Gauge("sentinel_hot_state_warmup_seconds", "Time spent rebuilding hot state")
PUSH_CLIENTS = Gauge("sentinel_push_clients", "Connected live-push clients", ["transport"])
PUSH_MESSAGES = Counter("sentinel_push_messages_total", "Messages pushed", ["transport"])
PUSH_CONFLATED = Counter(
    "sentinel_push_conflated_total", "Ticker/candle/book updates replaced before send"
)
PUSH_DROPPED = Counter(
    "sentinel_push_dropped_clients_total",
    "Push clients dropped for reading too slowly",
    ["transport"],
)
PUSH_LATENCY = Histogram(
    "sentinel_push_latency_seconds",
    "Frame receipt to trade message handed to the client socket (sampled per send batch)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)

# --- source freshness and Kafka consumer lag ---------------------------------------------------
KAFKA_LAG = Gauge(
    "sentinel_kafka_consumer_lag_messages",
    "Kafka mode: messages in a partition this consumer has not read yet (high watermark minus"
    " position, from the client's statistics every few seconds)",
    ["topic", "partition"],
)

KAFKA_OFFSET_SKIPS = Counter(
    "sentinel_kafka_offsets_skipped_total",
    "Kafka mode: offsets a partition jumped over between two messages this consumer read"
    " (frames the lake will not hold, e.g. deleted by retention before they were read)",
    ["topic", "partition"],
)

#: (exchange, product id) -> unix ns of the newest frame seen for that product.
LastFrames = Callable[[], Mapping[tuple[str, str], int]]


class SourceFreshness(Collector):
    """`sentinel_source_freshness_seconds`: seconds since the last frame per product, computed
    when scraped from what the running sources report (`watch`)."""

    def __init__(self) -> None:
        self._sources: dict[int, LastFrames] = {}

    def watch(self, last_frames: LastFrames) -> Callable[[], None]:
        """Report `last_frames()` at every scrape; returns the call that stops it."""
        key = id(last_frames)
        self._sources[key] = last_frames
        return lambda: self._sources.pop(key, None) and None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sentinel_source_freshness_seconds",
            "Seconds since the source received the last frame of each product",
            labels=["exchange", "product_id"],
        )
        now = time.time_ns()
        for last_frames in list(self._sources.values()):
            for (exchange, product), ns in dict(last_frames()).items():
                family.add_metric([exchange, product], max(0.0, (now - ns) / 1e9))
        yield family


SOURCE_FRESHNESS = SourceFreshness()
REGISTRY.register(SOURCE_FRESHNESS)

_exchange_of = attrgetter("exchange")


def count_chunk(frames: Sequence[Any], trades: pa.Table | Sequence[Any]) -> None:
    """Frames and accepted trades of one engine chunk, one increment per exchange (a Kafka
    consumer's chunk may mix exchanges' topics; the in-process bus never does)."""
    if not frames:
        return
    exchanges = set(map(_exchange_of, frames))
    if len(exchanges) == 1:
        (exchange,) = exchanges
        FRAMES.labels(exchange).inc(len(frames))
        count = trades.num_rows if isinstance(trades, pa.Table) else len(trades)
        if count:
            TRADES.labels(exchange).inc(count)
        return
    for exchange, n in Tally(map(_exchange_of, frames)).items():
        FRAMES.labels(exchange).inc(n)
    if isinstance(trades, pa.Table):
        counts = pc.value_counts(trades.column("exchange")).to_pylist()
        tally = {c["values"]: c["counts"] for c in counts}
    else:
        tally = dict(Tally(map(_exchange_of, trades)))
    for exchange, n in tally.items():
        TRADES.labels(exchange).inc(n)
