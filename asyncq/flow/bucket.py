"""Per-task rate limits inside one worker (``rate_limit="10/s"``, ``rate_limit_scope="worker"``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """A per-task token bucket: at most ``rate`` starts per second in this worker."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = 1.0
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, on_wait: Callable[[float | None], None] | None = None) -> None:
        """Wait until the task may start; ``on_wait(seconds or None)`` hears first if it must wait."""
        if on_wait is not None and self._lock.locked():
            on_wait(None)  # queued behind others: how long is not known yet
            on_wait = None
        async with self._lock:  # FIFO: waiters start in arrival order
            current = time.monotonic()
            self._tokens = min(1.0, self._tokens + (current - self._updated) * self.rate)
            self._updated = current
            if self._tokens < 1.0:
                wait = (1.0 - self._tokens) / self.rate
                if on_wait is not None:
                    on_wait(wait)
                await asyncio.sleep(wait)
                self._updated = time.monotonic()
                self._tokens = 1.0
            self._tokens -= 1.0
