"""What every source shares: its status (shown at /health) and trade-id gap accounting."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from crypto_sentinel import metrics
from crypto_sentinel.model import RawFrame

Publish = Callable[[RawFrame], Awaitable[None]]


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
    gaps: int = 0
    missing_trades: int = 0

    def as_dict(self) -> dict[str, Any]:
        age = (time.time_ns() - self.last_frame_ns) / 1e9 if self.last_frame_ns else None
        return {**self.__dict__, "last_frame_age_seconds": age}


@dataclass
class GapTracker:
    """Counts missing trade ids per product; trade ids are contiguous per product."""

    status: SourceStatus
    last_ids: dict[str, int] = field(default_factory=dict)
    gap_log: list[tuple[str, int, int]] = field(default_factory=list)  # product, first, last

    def observe(self, text: str) -> None:
        """Cheap look at a frame for trade ids (full validation happens in the engine)."""
        if '"trade_id"' not in text and '"last_trade_id"' not in text:
            return
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        if not isinstance(msg, dict):
            return
        kind = msg.get("type")
        product = msg.get("product_id")
        if not isinstance(product, str):
            return
        if kind in ("match", "last_match"):
            trade_id = msg.get("trade_id")
            if isinstance(trade_id, int):
                self._see(product, trade_id, inclusive=True)
        elif kind == "heartbeat":
            last = msg.get("last_trade_id")
            if isinstance(last, int) and last > 0:
                self._see(product, last, inclusive=False)

    def _see(self, product: str, trade_id: int, inclusive: bool) -> None:
        last = self.last_ids.get(product)
        if last is None:
            self.last_ids[product] = trade_id
            return
        # A heartbeat's last_trade_id says trades up to it exist; if we have not seen them
        # yet they may still be in flight, so only a match past them proves a gap.
        if inclusive and trade_id > last + 1:
            self.status.gaps += 1
            self.status.missing_trades += trade_id - last - 1
            self.gap_log.append((product, last + 1, trade_id - 1))
            metrics.GAPS.labels(self.status.exchange, product).inc()
            metrics.MISSING.labels(self.status.exchange).inc(trade_id - last - 1)
        if inclusive and trade_id > last:
            self.last_ids[product] = trade_id


class Source(Protocol):
    status: SourceStatus

    async def run(self, publish: Publish) -> None: ...
