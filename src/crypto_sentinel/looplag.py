"""How late the event loop runs what is due, at /metrics (`sentinel_event_loop_lag_seconds`).

Why: the API, live push and the engine's chunks share one event loop. When answers come late,
the question is whether the loop was held (a long callback, another thread holding the
interpreter, a CPU busy with other work) or the work itself was slow. A probe that sleeps a
short interval and records by how much it woke late answers it, at the cost of 20 wake-ups a
second (Node.js services export the same measure).
"""

from __future__ import annotations

import asyncio
import time

from crypto_sentinel import metrics

#: Seconds between two probes.
PROBE_SECONDS = 0.05


async def watch_loop_lag(stop: asyncio.Event, interval: float = PROBE_SECONDS) -> None:
    """Observe the loop's lag every `interval` until `stop` (a task of the pipeline)."""
    while not stop.is_set():
        due = time.perf_counter() + interval
        await asyncio.sleep(interval)
        metrics.LOOP_LAG.observe(max(0.0, time.perf_counter() - due))
