"""In-process result backend for tests and embedding."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from asyncq._options import parse_options
from asyncq._utils import now
from asyncq.backends.base import BackendCapabilities, BackendDefaults

__all__ = ["MemoryBackend"]

_PRUNE_INTERVAL = 60.0  # seconds between sweeps of expired entries


class MemoryBackend(BackendDefaults):
    """``memory://``: records in this process's memory, with expiry and immediate wake-ups."""

    capabilities = BackendCapabilities(persistent=False, notifies=True, shared=False)

    def __init__(self, url: str = "memory://", **options: Any) -> None:
        self.url = url
        parse_options(urlsplit(url).query, options, (), what="memory backend")  # it has none
        self._records: dict[str, tuple[bytes, bool, float | None]] = {}
        self._counters: dict[str, tuple[int, float | None]] = {}
        self._waiters: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._next_prune = now() + _PRUNE_INTERVAL

    async def connect(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self._waiters.clear()

    def _live(self, task_id: str) -> tuple[bytes, bool, float | None] | None:
        entry = self._records.get(task_id)
        if entry is not None and entry[2] is not None and entry[2] <= now():
            del self._records[task_id]
            return None
        return entry

    def _prune(self, current: float | None = None) -> None:
        """Drop expired records and counters now and then, so a long-lived process does not grow."""
        if current is None:
            current = now()
        if current < self._next_prune:
            return
        self._next_prune = current + _PRUNE_INTERVAL
        for store in (self._records, self._counters):
            expired = [key for key, entry in store.items() if entry[-1] is not None and entry[-1] <= current]
            for key in expired:
                del store[key]

    async def set(self, task_id: str, record: bytes, *, final: bool, ttl: float | None) -> None:
        current = now()
        if current >= self._next_prune:  # one clock read and no call on most writes
            self._prune(current)
        self._records[task_id] = (record, final, None if ttl is None else current + ttl)
        if final:
            for future in self._waiters.pop(task_id, ()):
                if not future.done():
                    future.set_result(record)

    async def get(self, task_id: str) -> bytes | None:
        entry = self._live(task_id)
        return None if entry is None else entry[0]

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        return [await self.get(task_id) for task_id in task_ids]

    async def wait(self, task_id: str, *, timeout: float | None) -> bytes | None:
        entry = self._live(task_id)
        if entry is not None and entry[1]:
            return entry[0]
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(task_id, [])
        waiters.append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(task_id, None)

    async def forget(self, task_id: str) -> None:
        self._records.pop(task_id, None)

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        self._prune()
        value, expires_at = self._counters.get(key, (0, None))
        if expires_at is not None and expires_at <= now():
            value = 0
        value += amount
        self._counters[key] = (value, None if ttl is None else now() + ttl)
        return value
