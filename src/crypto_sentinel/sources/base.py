"""What every source shares: its status (shown at /health) and trade-id gap accounting."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from crypto_sentinel.engine.dedupe import IdRanges
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.codec import Sighting

Publish = Callable[[RawFrame], Awaitable[None]]
#: Several frames at once, in order (the in-process bus's `publish_many`).
PublishMany = Callable[[list[RawFrame]], Awaitable[None]]
#: Waits until that many frames can be handed over at once without a wait (`room_for`).
RoomFor = Callable[[int], Awaitable[None]]


def new_conn_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class SourceStatus:
    kind: str  # coinbase | simulator | replay
    exchange: str  # lake name the frames are stored under
    url: str
    simulated: bool = False
    connected: bool = False
    finished: bool = False
    connections: int = 0
    reconnects: int = 0
    frames: int = 0
    last_frame_ns: int = 0
    last_error: str = ""
    last_disconnect: str = ""  # why the previous connection ended (kept after reconnecting)
    gaps: int = 0  # gaps confirmed missing after the grace period
    gaps_reported: int = 0  # gap detections, each extension of a growing gap counted
    gap_records: int = 0  # gap records published (one per gap, when its backfill is done)
    missing_trades: int = 0
    backfill_requests: int = 0
    backfilled_trades: int = 0  # missing trades recovered from REST
    unfilled_trades: int = 0  # missing trades REST could not provide
    backfill_throttled: int = 0  # REST answers 429 (each is retried)
    # The backfill backlog, refreshed by the backfill whenever it looks at its gaps:
    backfill_pending_gaps: int = 0
    backfill_pending_trades: int = 0  # missing ids no request has covered yet
    backfill_oldest_pending_ns: int = 0  # when the oldest id not yet fetched went missing
    book_resyncs: int = 0  # book resyncs the feed started (re-subscribe, REST snapshot)
    book_snapshots: int = 0  # REST book snapshots published as frames (Binance)

    def as_dict(self) -> dict[str, Any]:
        now = time.time_ns()
        age = (now - self.last_frame_ns) / 1e9 if self.last_frame_ns else None
        oldest = self.backfill_oldest_pending_ns
        return {
            **self.__dict__,
            "last_frame_age_seconds": age,
            "backfill_oldest_pending_seconds": round((now - oldest) / 1e9, 3) if oldest else 0.0,
        }


def source_counters(sources: Sequence[Source]) -> dict[str, int]:
    """The sources' reliability counters, summed (zeros without sources)."""
    statuses = [source.status for source in sources]
    return {
        "reconnects": sum(src.reconnects for src in statuses),
        "gaps": sum(src.gaps for src in statuses),
        "missing_trades": sum(src.missing_trades for src in statuses),
        "backfilled_trades": sum(src.backfilled_trades for src in statuses),
        "unfilled_trades": sum(src.unfilled_trades for src in statuses),
    }


@dataclass(eq=False)
class Gap:
    """Trade ids [first, last] of one product that the stream skipped (first > last: none).

    A gap that grows while it waits (the stream keeps skipping the next ids, as in an outage
    of the matches channel) is extended in place; `pieces` keeps when each part was seen, so
    the backfill knows how long each id has waited. `asked` holds the ids a REST request has
    already covered: a trade frame arriving after that is no longer a late arrival.
    """

    product_id: str
    kind: str  # disconnect | trade_id | heartbeat | startup
    first: int
    last: int
    detected_ns: int = field(default_factory=time.time_ns)
    arrived: set[int] = field(default_factory=set)  # ids that came late (reordered frames)
    pieces: list[tuple[int, int]] = field(default_factory=list)  # (last id, detected ns)
    asked: IdRanges = field(default_factory=IdRanges)
    recovered: int = 0  # missing ids REST returned

    def __post_init__(self) -> None:
        if not self.pieces:
            self.pieces.append((self.last, self.detected_ns))

    @property
    def size(self) -> int:
        return max(0, self.last - self.first + 1)

    def missing_count(self) -> int:
        return self.size - sum(1 for i in self.arrived if self.first <= i <= self.last)

    def missing(self) -> list[int]:
        return [i for i in range(self.first, self.last + 1) if i not in self.arrived]

    def grow(self, last: int, now_ns: int) -> None:
        self.last = last
        self.pieces.append((last, now_ns))

    def seen_ns(self, trade_id: int) -> int:
        """When the tracker learnt that `trade_id` (in this gap) was missing."""
        for end, at in self.pieces:
            if trade_id <= end:
                return at
        return self.pieces[-1][1]


@dataclass
class GapTracker:
    """Finds missing trade ids per product: trade ids are contiguous per product, and a
    heartbeat's last_trade_id covers quiet periods. `sequence` is not used: on the matches
    channel it jumps by design (shared with order events).

    Every gap goes to `on_gap` (the backfill). The first id seen per product on a new
    connection after a reconnect yields a `disconnect` gap, even an empty one, so every
    disconnect leaves a record; at start-up the first one yields a `startup` gap. A stream gap
    that continues an open one (no id in between arrived) extends it instead of adding one.
    """

    status: SourceStatus
    on_gap: Callable[[Gap], None] = lambda gap: None
    last_ids: dict[str, int] = field(default_factory=dict)
    open_gaps: dict[str, list[Gap]] = field(default_factory=dict)
    advanced_ns: dict[str, int] = field(default_factory=dict)  # product -> when last_ids grew
    #: product -> receive time of its newest match or heartbeat frame (source freshness;
    #: Coinbase sends a heartbeat per product every second, so a quiet market stays fresh).
    last_frame_ns: dict[str, int] = field(default_factory=dict)
    _fresh: dict[str, str] = field(default_factory=dict)  # product -> kind of its next gap
    #: The trade ids a frame shows: the codec of the source's exchange by default.
    sightings: Callable[[str], list[Sighting]] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.sightings is None:
            from crypto_sentinel.sources.venues import codec_for

            codec = codec_for(self.status.exchange)
            self.sightings = codec.sightings if codec is not None else lambda text: []

    def seed(self, product: str, ranges: list[tuple[int, int]]) -> None:
        """Start from what the lake holds: holes between stored ranges are start-up gaps,
        and everything after the newest stored id is backfilled once the stream shows it."""
        if not ranges:
            return
        for (_, hi), (lo, _) in itertools.pairwise(ranges):
            self._report(Gap(product, "startup", hi + 1, lo - 1))
        self.last_ids[product] = ranges[-1][1]
        self._fresh[product] = "startup"

    def new_connection(self, products: list[str]) -> None:
        if self.status.connections > 1:
            for product in products:
                self._fresh.setdefault(product, "disconnect")

    def observe(self, text: str) -> None:
        """Cheap look at a frame for trade ids (full validation happens in the engine)."""
        for seen in self.sightings(text):
            product = seen.product_id
            self.last_frame_ns[product] = self.status.last_frame_ns or time.time_ns()
            if seen.newest > 0:
                self._see(product, seen.newest, seen.covered, seen.kind, seen.carries_trade)

    def heard_of(self, product: str, newest: int) -> None:
        """Trade `newest` exists (learnt over REST, not from the stream): ids up to it should
        have arrived, as a heartbeat's last_trade_id says."""
        self._see(product, newest, newest, "heartbeat", carries_trade=False)

    def _see(self, product: str, newest: int, covered: int, kind: str, carries_trade: bool) -> None:
        """`newest` exists at the exchange; ids up to `covered` should have reached us.
        Only a frame that carries the trade itself (`carries_trade`) can show that a missing
        id arrived late: a heartbeat repeating a known last_trade_id names it, nothing more."""
        last = self.last_ids.get(product)
        fresh = self._fresh.pop(product, None)
        if last is None:
            self.last_ids[product] = newest
            return
        if newest <= last:
            if carries_trade:
                for gap in self.open_gaps.get(product, ()):
                    if gap.first <= newest <= gap.last and newest not in gap.asked:
                        gap.arrived.add(newest)  # a late (reordered) frame, not lost after all
            if fresh is not None:
                self._report(Gap(product, fresh, last + 1, last))
            return
        if covered > last or fresh is not None:
            self._report(Gap(product, fresh or kind, last + 1, covered))
        self.last_ids[product] = newest
        self.advanced_ns[product] = time.time_ns()

    def _report(self, gap: Gap) -> None:
        if gap.first > gap.last:
            self.on_gap(gap)
            return
        self.status.gaps_reported += 1
        gaps = self.open_gaps.setdefault(gap.product_id, [])
        if gap.kind in ("trade_id", "heartbeat") and gaps and gaps[-1].last + 1 == gap.first:
            gaps[-1].grow(gap.last, gap.detected_ns)  # the same outage, still going on
            return
        gaps.append(gap)
        self.on_gap(gap)

    def closed(self, gap: Gap) -> None:
        """The backfill of `gap` is done: late frames can no longer change it."""
        gaps = self.open_gaps.get(gap.product_id, [])
        if gap in gaps:
            gaps.remove(gap)

    def closed_all(self, product: str, done: set[Gap]) -> None:
        """`closed` for many gaps of one product at once (a coalesced backfill ends many)."""
        gaps = self.open_gaps.get(product)
        if gaps:
            gaps[:] = [g for g in gaps if g not in done]


class Source(Protocol):
    status: SourceStatus

    async def run(self, publish: Publish) -> None: ...
