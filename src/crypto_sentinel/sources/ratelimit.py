"""A lazy-fill token bucket, the scheme Coinbase documents for its REST rate limits.

Coinbase Exchange public REST endpoints allow 10 requests/s per IP with bursts up to 15
(docs.cdp.coinbase.com/exchange/rest-api/rate-limits; see ../shared/PROTOCOLS.md section 2).
Backfill takes a token before each request, so a long backfill never earns an HTTP 429.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

COINBASE_PUBLIC_RATE = 10.0  # requests per second
COINBASE_PUBLIC_BURST = 15


class TokenBucket:
    def __init__(
        self,
        rate: float = COINBASE_PUBLIC_RATE,
        burst: int = COINBASE_PUBLIC_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def try_take(self) -> float:
        """Take a token if there is one (returns 0), else how many seconds until there is."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate

    async def take(self) -> None:
        """Wait until a request is allowed, then spend its token."""
        while (wait := self.try_take()) > 0:
            await asyncio.sleep(wait)
