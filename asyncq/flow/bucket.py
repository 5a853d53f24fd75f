"""Per-task rate limits inside one worker (``rate_limit="10/s"``, ``rate_limit_scope="worker"``)."""

from __future__ import annotations

import asyncio
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """A per-task token bucket: at most ``rate`` starts per second in this worker."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = 1.0
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until the task may start."""
        async with self._lock:  # FIFO: waiters start in arrival order
            current = time.monotonic()
            self._tokens = min(1.0, self._tokens + (current - self._updated) * self.rate)
            self._updated = current
            if self._tokens < 1.0:
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
                self._updated = time.monotonic()
                self._tokens = 1.0
            self._tokens -= 1.0
