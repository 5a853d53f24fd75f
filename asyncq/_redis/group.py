"""Group commit: concurrent callers share one flush (one round trip, one connection)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Group commit: items submitted while a flush is in flight go out together in the next.

    ``submit`` returns (the flush's result for its item) once its own item was applied, so
    callers keep their guarantee while a burst of concurrent callers shares one round trip
    and one connection instead of taking one each. A caller that finds nothing in flight
    flushes its item itself, in its own task: a lone call costs no extra scheduling hop.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R]]],
        name: str,
        closed: Callable[[], Exception],
        dropped: Callable[[list[T], Exception], None] | None = None,
    ) -> None:
        self._flush = flush
        self._name = name
        self._closed = closed
        # Told of the items queued without a future (queue()) that no flush will carry: the
        # draining task was cancelled (aclose) before their turn.
        self._dropped = dropped
        # What the next flush sends, and its callers' futures (two lists: no pair per item).
        self._items: list[T] = []
        # None for an item queued without a future (see queue()): its flush reports on its own.
        self._futures: list[asyncio.Future[R] | None] = []
        self._inflight: list[asyncio.Future[R] | None] = []
        self._task: asyncio.Task[None] | None = None
        self._direct: asyncio.Future[None] | None = None  # done when a caller's own flush ends

    def submit(self, item: T) -> Awaitable[R]:
        """Queue ``item`` for the next flush; awaited, its result once that flush ran.

        A plain method handing back the future (or the caller's own flush): a burst of
        thousands of calls a second makes one coroutine object and frame less per call.
        """
        if self._task is None and self._direct is None:
            return self._flush_directly(item)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append(item)  # the flush in flight starts the next one
        self._futures.append(future)
        return future

    @property
    def busy(self) -> bool:
        """A flush is in flight: what is submitted now goes out in the next one."""
        return self._task is not None or self._direct is not None

    def queue(self, item: T) -> None:
        """Queue ``item`` for the next flush with no future, while :attr:`busy`.

        For a caller whose ``flush`` reports each item's outcome itself (a callback carried in
        the item): nothing is awaited, so the caller's task need not wait for the round trip.
        When not busy the caller uses :meth:`submit` (its own flush, no extra hop).
        """
        if not self.busy:
            raise RuntimeError("GroupCommit.queue() needs a flush in flight")
        self._items.append(item)
        self._futures.append(None)

    async def _flush_directly(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if self._task is not None or self._direct is not None:
            # Submitted while nothing was in flight, awaited once a flush had started: queue
            # behind it, as submit() would have (one flush at a time keeps the order).
            future: asyncio.Future[R] = loop.create_future()
            self._items.append(item)
            self._futures.append(future)
            return await future
        self._direct = loop.create_future()
        try:
            (result,) = await self._flush([item])
            return result
        finally:
            direct, self._direct = self._direct, None
            direct.set_result(None)
            if self._items:  # what arrived meanwhile goes out in the next flush
                self._task = asyncio.create_task(self._drain(), name=self._name)

    async def _drain(self) -> None:
        try:
            while self._items:
                items, self._inflight = self._items, self._futures
                self._items, self._futures = [], []
                try:
                    results = await self._flush(items)
                except Exception as exc:
                    for future in self._inflight:
                        if future is not None and not future.done():
                            future.set_exception(exc)
                else:
                    for future, result in zip(self._inflight, results, strict=True):
                        if future is not None and not future.done():
                            future.set_result(result)
                self._inflight = []
        finally:
            self._task = None
            for future in self._inflight + self._futures:  # only when cancelled (aclose)
                if future is not None and not future.done():
                    future.set_exception(self._closed())
            unsent = [item for item, future in zip(self._items, self._futures, strict=True) if future is None]
            self._inflight, self._items, self._futures = [], [], []
            if unsent and self._dropped is not None:
                self._dropped(unsent, self._closed())

    async def close(self) -> None:
        """Let the flush in progress (and what queued behind it) finish."""
        if self._direct is not None:
            await asyncio.wait((self._direct,))
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
