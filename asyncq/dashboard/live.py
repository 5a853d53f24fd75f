"""The dashboard's live side: it folds the event stream into the history and tells browsers what changed.

One background task reads ``app.events`` (with the bus's kept history first, so a dashboard
started late or restarted catches up) and writes to the :class:`TaskHistory`; another polls
the presence records. Browsers listen on an SSE stream of small notices ("tasks" or "workers"
changed) and refetch the part of the page they show; a slow browser's notices are dropped,
never buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final

from asyncq.exceptions import AsyncqError

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.dashboard.history import TaskHistory

__all__ = ["LiveFeed"]

logger = logging.getLogger(__name__)

_BATCH: Final = 500  # events folded in one write
_LISTENER_QUEUE: Final = 32  # notices one browser may lag behind before they are dropped
_KEEPALIVE: Final = 15.0  # seconds between SSE comments, so proxies keep the stream open


class LiveFeed:
    """Reads events into the history and fans change notices out to SSE listeners."""

    def __init__(
        self,
        app: App,
        history: TaskHistory,
        *,
        poll_interval: float = 2.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.app = app
        self.on_event = on_event
        self.history = history
        self.poll_interval = poll_interval
        self._listeners: set[asyncio.Queue[str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.events_seen = 0
        self.connected = asyncio.Event()

    async def start(self) -> None:
        """Start reading; idempotent (a mounted dashboard, whose lifespan never runs, starts per request)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._read_events(), name="asyncq.dashboard.events"),
            asyncio.create_task(self._poll_workers(), name="asyncq.dashboard.workers"),
        ]

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def notify(self, topic: str, data: dict[str, Any] | None = None) -> None:
        message = f"event: {topic}\ndata: {json.dumps(data or {})}\n\n"
        for queue in self._listeners:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message)

    async def listen(self) -> AsyncIterator[str]:
        """The SSE text of every notice from now on, with keep-alive comments between them."""
        queue: asyncio.Queue[str] = asyncio.Queue(_LISTENER_QUEUE)
        self._listeners.add(queue)
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    yield await asyncio.wait_for(queue.get(), _KEEPALIVE)
                except TimeoutError:
                    yield ": keep-alive\n\n"
        finally:
            self._listeners.discard(queue)

    async def _read_events(self) -> None:
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except (AsyncqError, OSError) as exc:
                logger.warning("the dashboard lost the event stream (%s); reconnecting", exc)
            self.connected.clear()
            await asyncio.sleep(1.0)

    async def _consume(self) -> None:
        newest = await self.history.newest()
        # Replayed history older than what was folded before the restart is skipped (a margin
        # covers batches of several workers arriving out of order).
        skip_before = (newest or 0.0) - 30.0
        stream = await self.app.events.subscribe(history=True)
        self.connected.set()
        # A bounded hand-over queue: reading never outruns writing by more than its size.
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_BATCH * 4)

        async def read() -> None:
            try:
                async for event in stream:
                    self.events_seen += 1
                    if self.on_event is not None:
                        self.on_event(event)
                    if event.get("timestamp", time.time()) >= skip_before:
                        await queue.put(event)
            finally:
                await queue.put(None)

        reader = asyncio.create_task(read(), name="asyncq.dashboard.read")
        try:
            while True:
                first = await queue.get()
                if first is None:
                    break
                pending = [first]
                event: dict[str, Any] | None = first
                while len(pending) < _BATCH and not queue.empty():
                    event = queue.get_nowait()
                    if event is None:
                        break
                    pending.append(event)
                changed = await self.history.add(pending)
                if changed:
                    self.notify("tasks", {"ids": changed[:50]})
                if event is None:
                    break
            await reader  # re-raise what ended the stream
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await stream.aclose()

    async def _poll_workers(self) -> None:
        previous: Any = None
        while True:
            try:
                statuses = await asyncio.wait_for(self.app.control.workers(timeout=2.0), 5.0)
            except asyncio.CancelledError:
                raise
            except (AsyncqError, OSError, TimeoutError) as exc:
                logger.warning("the dashboard could not read the presence records: %s", exc)
            else:
                current = [(s.hostname, s.stats, s.is_lost) for s in statuses]
                if current != previous:
                    previous = current
                    self.notify("workers")
            await asyncio.sleep(self.poll_interval)
