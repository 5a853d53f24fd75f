"""In-process event bus for ``memory://`` apps: readers and emitters share one App."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

__all__ = ["MemoryEventBus"]


class _MemoryReader:
    __slots__ = ("_bus", "_inbox")

    def __init__(self, bus: MemoryEventBus, inbox: asyncio.Queue[bytes | None]) -> None:
        self._bus, self._inbox = bus, inbox

    def __aiter__(self) -> _MemoryReader:
        return self

    async def __anext__(self) -> bytes:
        batch = await self._inbox.get()
        if batch is None:
            self._inbox.put_nowait(None)  # stays ended
            raise StopAsyncIteration
        return batch

    async def aclose(self) -> None:
        self._bus._readers.discard(self._inbox)
        self._inbox.put_nowait(None)


class MemoryEventBus:
    """``memory://``: batches handed to this process's readers; the last ``history_limit`` kept."""

    keeps_history = True

    def __init__(self, url: str = "memory://", *, history_limit: int = 10_000, **options: Any) -> None:
        self.url = url
        self._history: deque[bytes] = deque(maxlen=max(1, int(history_limit)))
        self._readers: set[asyncio.Queue[bytes | None]] = set()

    async def connect(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """End every reader."""
        for inbox in self._readers:
            inbox.put_nowait(None)
        self._readers.clear()

    async def publish(self, batch: bytes) -> None:
        self._history.append(batch)
        for inbox in self._readers:
            inbox.put_nowait(batch)

    async def subscribe(self, *, history: bool = False) -> _MemoryReader:
        inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        for batch in self._history if history else ():
            inbox.put_nowait(batch)
        self._readers.add(inbox)
        return _MemoryReader(self, inbox)
