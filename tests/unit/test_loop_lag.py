"""The event-loop lag probe: a loop held by a callback shows at /metrics."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import generate_latest

from crypto_sentinel import metrics
from crypto_sentinel.looplag import watch_loop_lag


def _probes(later_than: str | None = None) -> float:
    """Probes so far: all, or those that found the loop later than `later_than` (a bucket bound)."""
    buckets = {
        s.labels["le"]: s.value
        for s in metrics.LOOP_LAG.collect()[0].samples
        if s.name.endswith("_bucket")
    }
    return buckets["+Inf"] - (buckets[later_than] if later_than else 0.0)


def test_a_callback_that_holds_the_loop_is_recorded_as_lag_and_the_probe_stops() -> None:
    async def main() -> tuple[float, float]:
        stop = asyncio.Event()
        probe = asyncio.create_task(watch_loop_lag(stop, interval=0.01))
        await asyncio.sleep(0.1)  # a free loop: a probe every 10 ms
        free = _probes()
        time.sleep(0.4)  # the loop held: the sleeping probe wakes ~390 ms late
        await asyncio.sleep(0.03)
        stop.set()
        await asyncio.wait_for(probe, timeout=1)  # ends with the stop event
        return free, _probes("0.25")

    probes, late = _probes(), _probes("0.25")
    free, late_after = asyncio.run(main())
    assert free - probes >= 3
    assert late_after == late + 1
    assert b"sentinel_event_loop_lag_seconds_bucket" in generate_latest()
