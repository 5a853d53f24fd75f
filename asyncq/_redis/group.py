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
    ) -> None:
        self._flush = flush
        self._name = name
        self._closed = closed
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._inflight: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self._direct: asyncio.Future[None] | None = None  # done when a caller's own flush ends

    async def submit(self, item: T) -> R:
        """Queue ``item`` for the next flush; return its result once that flush ran."""
        if self._task is None and self._direct is None:
            return await self._flush_directly(item)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))  # the flush in flight starts the next one
        return await future

    async def _flush_directly(self, item: T) -> R:
        self._direct = asyncio.get_running_loop().create_future()
        try:
            (result,) = await self._flush([item])
            return result
        finally:
            direct, self._direct = self._direct, None
            direct.set_result(None)
            if self._pending:  # what arrived meanwhile goes out in the next flush
                self._task = asyncio.create_task(self._drain(), name=self._name)

    async def _drain(self) -> None:
        try:
            while self._pending:
                self._inflight, self._pending = self._pending, []
                try:
                    results = await self._flush([item for item, _ in self._inflight])
                except Exception as exc:
                    for _, future in self._inflight:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(self._inflight, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                self._inflight = []
        finally:
            self._task = None
            for _, future in self._inflight + self._pending:  # only when cancelled (aclose)
                if not future.done():
                    future.set_exception(self._closed())
            self._inflight, self._pending = [], []

    async def close(self) -> None:
        """Let the flush in progress (and what queued behind it) finish."""
        if self._direct is not None:
            await asyncio.wait((self._direct,))
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
