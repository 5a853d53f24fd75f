"""The memory:// lock store: locks in this process, one table per broker instance."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["MemoryLockStore"]


class MemoryLockStore:
    """In-process locks; every producer and worker of one memory broker share them."""

    def __init__(self, broker: Any) -> None:
        self._locks: dict[str, tuple[str, float]] = {}  # key -> (holder, monotonic expiry)

    async def acquire(self, key: str, holder: str, ttl: float) -> str:
        current = self._locks.get(key)
        now = time.monotonic()
        if current is not None and current[1] > now:
            return current[0]
        self._locks[key] = (holder, now + ttl)
        return holder

    async def release(self, key: str, holder: str) -> bool:
        current = self._locks.get(key)
        if current is None or current[0] != holder:
            return False
        del self._locks[key]
        return current[1] > time.monotonic()

    async def holder(self, key: str) -> str | None:
        current = self._locks.get(key)
        return current[0] if current is not None and current[1] > time.monotonic() else None
