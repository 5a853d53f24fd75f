"""Coalescing single calls into batch calls: many acks or publishes in one request.

Items handed in during one event-loop iteration (or a short linger) for the same key (a
queue URL) go out together, in chunks of ``size``, one chunk after another (so publish order is kept). Each
caller waits for its own item's outcome. Generic: nothing here knows a product.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["BatchCalls"]

T = TypeVar("T")

#: Sends one chunk; returns one outcome per item, None for success.
Sender = Callable[[str, Sequence[T]], Awaitable[Sequence[BaseException | None]]]


class BatchCalls(Generic[T]):
    """``await calls.call(key, item)`` sends ``item`` in a batch with its neighbours."""

    def __init__(self, send: Sender[T], size: int, *, linger: float = 0.0) -> None:
        # linger: seconds the first item of a batch waits for neighbours (0: this loop turn).
        self._send, self._size, self._linger = send, size, linger
        self._pending: dict[str, list[tuple[T, asyncio.Future[None]]]] = {}
        self._flushing: set[asyncio.Task[None]] = set()

    async def call(self, key: str, item: T) -> None:
        loop = asyncio.get_running_loop()
        waiting = self._pending.get(key)
        if waiting is None:
            waiting = self._pending[key] = []
            if self._linger > 0:
                loop.call_later(self._linger, self._start, key)
            else:
                loop.call_soon(self._start, key)
        done: asyncio.Future[None] = loop.create_future()
        waiting.append((item, done))
        # A cancelled caller's item still goes out (it is queued): only the wait is dropped.
        await asyncio.shield(done)

    def _start(self, key: str) -> None:
        batch = self._pending.pop(key, [])
        flush = asyncio.create_task(self._flush(key, batch), name="asyncq.batch-flush")
        self._flushing.add(flush)
        flush.add_done_callback(self._flushing.discard)

    async def _flush(self, key: str, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        for start in range(0, len(batch), self._size):
            chunk = batch[start : start + self._size]
            try:
                outcomes: Sequence[BaseException | None] = await self._send(key, [item for item, _ in chunk])
            except BaseException as exc:  # every waiter of the chunk learns of it
                outcomes = [exc] * len(chunk)
                if not isinstance(exc, Exception):
                    for _, done in batch[start:]:
                        if not done.done():
                            done.set_exception(exc)
                    raise
            for (_, done), outcome in zip(chunk, outcomes, strict=True):
                if done.done():
                    continue
                if outcome is None:
                    done.set_result(None)
                else:
                    done.set_exception(outcome)

    async def drain(self) -> None:
        """Wait for every batch handed in so far to be sent."""
        while self._pending or self._flushing:
            await asyncio.sleep(0)
            if self._flushing:
                await asyncio.gather(*self._flushing, return_exceptions=True)
