"""Event emission: the hooks the worker and producers call, buffered and published in batches.

A task's received, started and succeeded events make one row of plain values in a flat list
(a tuple appended, then two stores into it); a named background task (``asyncq.events.flush``)
sends what gathered every ``event_flush_interval`` seconds as one batch. The bus being slow or
away never slows tasks down: past :data:`BUFFER_LIMIT` waiting rows the oldest are dropped
(and counted in a warning). With events off, the hooks are :class:`NoEvents`' empty methods.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import asyncq.events.codec as codec
from asyncq._utils import cancel_and_wait
from asyncq.exceptions import AsyncqError

if TYPE_CHECKING:
    from asyncq.events.bus import EventBus
    from asyncq.message import Message

__all__ = ["BUFFER_LIMIT", "EventEmitter", "NoEvents"]

logger = logging.getLogger(__name__)

#: Rows waiting for the bus, at most (a row: one event, or a task's received, started and
#: succeeded); beyond, the oldest tenth is dropped.
BUFFER_LIMIT: Final = 100_000
_STRIDE: Final = codec.STRIDE  # values per record (codec.Record)
# Looked up once here rather than as attributes in every hook.
_RECEIVED: Final = codec.RECEIVED
_STARTED: Final = codec.STARTED
_SUCCEEDED: Final = codec.SUCCEEDED
_now = time.time_ns


def _encode(hostname: str, flat: list[Any], t0: int) -> bytes:
    """Encode a flat buffer, with the garbage collector paused (no await in between).

    Encoding makes a tuple per event (its task's key), all freed when it returns. A collection
    triggered meanwhile would find them alive and promote them, bringing the next full
    collection (of everything the worker holds) closer; measured, that cost a busy worker more
    than the encoding itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return codec.encode_batch(hostname, os.getpid(), flat, t0)
    finally:
        if was_enabled:
            gc.enable()


def _events_in(flat: list[Any]) -> int:
    """Events in a flat buffer: each row's first, and the started / succeeded written into it."""
    rows = len(flat) // _STRIDE
    return 3 * rows - flat[9::_STRIDE].count(None) - flat[10::_STRIDE].count(None)


class NoEvents:
    """The hooks with events off: each does nothing."""

    enabled = False

    def task_sent(self, message: Message) -> None:
        """A producer published ``message``."""

    def task_received(self, message: Message) -> None:
        """A worker decoded ``message``."""

    def task_started(self, message: Message) -> None:
        """Its function is about to run."""

    def task_succeeded(self, message: Message, runtime: float) -> None:
        """It returned after ``runtime`` seconds."""

    def task_failed(self, message: Message, exc: BaseException, runtime: float) -> None:
        """It raised ``exc`` (or gave up retrying) after ``runtime`` seconds."""

    def task_retried(self, message: Message, exc: BaseException | None, eta: float | None) -> None:
        """The next attempt was sent, to run at ``eta`` (None: now)."""

    def task_revoked(self, message: Message, reason: str) -> None:
        """It will not run (expired)."""

    def task_rejected(self, message: Message, reason: str, requeue: bool) -> None:
        """The task raised Reject."""

    def task_dead_lettered(
        self, message: Message | None, reason: str, *, task_id: str = "", queue: str = ""
    ) -> None:
        """It was parked in the dead-letter store (``message`` None: it could not be decoded)."""

    def task_waiting(self, message: Message, limit: str, key: str | None, wait: float | None) -> None:
        """It is held by a limit (``rate_limit``: ``wait`` seconds; ``concurrency_key``: ``key`` full)."""

    def worker_event(self, code: int, **fields: Any) -> None:
        """A worker-online / -heartbeat / -offline event (``codec.ONLINE`` ...)."""

    async def start(self) -> None:
        """Start sending."""

    async def aclose(self) -> None:
        """Send what is buffered, then stop (the bus stays open: others may share it)."""


class EventEmitter(NoEvents):
    """Buffers the events of one process (a worker or a producer) and publishes them in batches.

    Args:
        bus: where batches go (connected by :meth:`start`).
        hostname: the emitter's name in every event (a worker's ``host:pid``).
        include_args: put task args and kwargs in task-sent and task-received events.
        flush_interval: seconds events gather before they are sent together.
        buffer_limit: rows kept waiting for the bus, at most (:data:`BUFFER_LIMIT`).
    """

    enabled = True

    def __init__(
        self,
        bus: EventBus,
        hostname: str,
        *,
        include_args: bool,
        flush_interval: float,
        buffer_limit: int = BUFFER_LIMIT,
    ) -> None:
        self.bus = bus
        self._limit = max(10, buffer_limit) * _STRIDE
        self.hostname = hostname
        self.include_args = include_args
        self.flush_interval = flush_interval
        self._buffer: list[Any] = []  # rows, flattened (see _add)
        self._spare: list[Any] = []  # the buffer while the other one is being sent
        # Task id -> where its row starts in the buffer, while its started / succeeded events
        # may still be written into it. Only positions in this buffer: cleared when it is sent.
        self._open: dict[str, int] = {}
        self._t0 = _now()  # the buffer's times are nanoseconds after this (small ints format fast)
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0
        self.sent = 0

    # -- hooks: a tuple and an append each, or two stores into the task's row ------------------

    def _add(self, record: codec.Record) -> int:
        """Append a row; where it starts. Flat: the values go into one list and the tuple is
        freed at once (rows kept as objects until the flush would count towards the collector's
        thresholds, and make its full collections, of everything the worker holds, more frequent)."""
        buffer = self._buffer
        at = len(buffer)
        buffer += record
        if not at:
            self._wake.set()
        elif at >= self._limit:
            return self._trim(at)
        return at

    def _trim(self, at: int) -> int:
        """Drop the oldest tenth of a full buffer; where the row at ``at`` starts now."""
        cut = (self._limit // 10) // _STRIDE * _STRIDE
        self.dropped += _events_in(self._buffer[:cut])
        del self._buffer[:cut]
        self._open.clear()  # the positions moved
        return at - cut

    def _task(self, code: int, message: Message, extra: Any) -> None:
        # A row of its own, after any row the task has: its later events are rows too.
        self._open.pop(message.id, None)
        self._add(
            (
                code,
                _now() - self._t0,
                message.id,
                message.retries,
                message.task,
                message.queue,
                message.root_id,
                message.parent_id,
                extra,
                None,
                None,
                None,
            )
        )

    def _fields(self, message: Message) -> str:
        # The message's own fields as JSON text: a string keeps the row flat (see codec.Record).
        fields = "" if message.eta is None else f',"eta":{message.eta!r}'
        if message.expires is not None:
            fields += f',"expires":{message.expires!r}'
        if self.include_args:
            fields += codec.arguments_json(message)
        return fields

    def task_sent(self, message: Message) -> None:
        self._task(codec.SENT, message, self._fields(message))

    # The three hooks of every task, written out (no call in between): they are the hot path.
    def task_received(self, message: Message) -> None:
        fields = (
            self._fields(message)
            if message.eta is not None or message.expires is not None or self.include_args
            else ""
        )
        buffer = self._buffer
        at = len(buffer)
        buffer += (
            _RECEIVED,
            _now() - self._t0,
            message.id,
            message.retries,
            message.task,
            message.queue,
            message.root_id,
            message.parent_id,
            fields,
            None,  # started, succeeded, runtime: written in by the hooks below
            None,
            None,
        )
        if not at:
            self._wake.set()
        elif at >= self._limit:
            at = self._trim(at)
        self._open[message.id] = at

    def task_started(self, message: Message) -> None:
        at = self._open.get(message.id)
        if at is not None:
            self._buffer[at + 9] = _now() - self._t0
            return
        # Received before the last flush: a row of its own, which its end can still join.
        self._open[message.id] = self._add(
            (
                _STARTED,
                _now() - self._t0,
                message.id,
                message.retries,
                message.task,
                message.queue,
                message.root_id,
                message.parent_id,
                None,
                None,
                None,
                None,
            )
        )

    def task_succeeded(self, message: Message, runtime: float) -> None:
        at = self._open.pop(message.id, None)
        if at is not None:
            buffer = self._buffer
            buffer[at + 10] = _now() - self._t0
            buffer[at + 11] = int(runtime * 1e6)
            return
        self._add(
            (
                _SUCCEEDED,
                _now() - self._t0,
                message.id,
                message.retries,
                message.task,
                message.queue,
                message.root_id,
                message.parent_id,
                None,
                None,
                None,
                int(runtime * 1e6),
            )
        )

    def task_failed(self, message: Message, exc: BaseException, runtime: float) -> None:
        self._task(codec.FAILED, message, (*codec.exception_fields(exc), runtime))

    def task_retried(self, message: Message, exc: BaseException | None, eta: float | None) -> None:
        kind, text = codec.exception_fields(exc) if exc is not None else (None, None)
        self._task(codec.RETRIED, message, (kind, text, eta))

    def task_revoked(self, message: Message, reason: str) -> None:
        self._task(codec.REVOKED, message, reason)

    def task_rejected(self, message: Message, reason: str, requeue: bool) -> None:
        self._task(codec.REJECTED, message, (reason, requeue))

    def task_dead_lettered(
        self, message: Message | None, reason: str, *, task_id: str = "", queue: str = ""
    ) -> None:
        if message is not None:
            self._task(codec.DEAD_LETTERED, message, reason)
        else:
            when, code = _now() - self._t0, codec.DEAD_LETTERED
            self._add((code, when, task_id, 0, None, queue, None, None, reason, None, None, None))

    def task_waiting(self, message: Message, limit: str, key: str | None, wait: float | None) -> None:
        self._task(codec.WAITING, message, (limit, key, None if wait is None else round(wait, 6)))

    def worker_event(self, code: int, **fields: Any) -> None:
        self._add((code, _now() - self._t0, "", 0, "", "", None, None, fields, None, None, None))

    # -- sending ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the flusher; idempotent. The flusher connects the bus first thing, in the
        background: opened before the worker's first tasks (not inside its first busy
        moments), while a bus that is away delays nothing but the events (it is tried again
        at each flush, and each failure logs a warning)."""
        if self._flusher is None or self._flusher.done():
            self._closing = False
            self._flusher = asyncio.create_task(self._flush_loop(), name="asyncq.events.flush")

    async def _flush_loop(self) -> None:
        logger.debug("event flusher started for %s", self.hostname)
        try:
            await self.bus.connect()
        except AsyncqError as exc:
            logger.warning("could not connect the event bus (tried again at the next flush): %s", exc)
        try:
            while not self._closing:
                await self._wake.wait()
                if not self._closing:
                    # Gather for a while: one batch per interval costs the bus one write.
                    await asyncio.sleep(self.flush_interval)
                await self.flush()
        finally:
            logger.debug("event flusher stopped for %s (%d events sent)", self.hostname, self.sent)

    async def flush(self) -> None:
        """Send the buffered events now, as one batch."""
        # Swapped with a spare, never a new list: both stay old, so minor collections do not
        # walk their (up to buffer_limit x STRIDE) items every time; and no copy is made.
        flat, t0 = self._buffer, self._t0
        self._buffer, self._spare = self._spare, flat
        self._t0 = _now()
        self._open.clear()  # later events of these tasks go in rows of the next batch
        self._wake.clear()
        if self.dropped:
            logger.warning("dropped %d events: the event bus did not keep up", self.dropped)
            self.dropped = 0
        if not flat:
            return
        try:
            data, count = _encode(self.hostname, flat, t0), _events_in(flat)
        finally:
            del flat[:]  # the spare is empty again before anything can swap it in
        try:
            await self.bus.connect()
            await self.bus.publish(data)
        except AsyncqError as exc:  # monitoring must not stop the work it watches
            logger.warning("could not send %d events: %s", count, exc)
        else:
            self.sent += count

    def start_heartbeat(self, fields: Callable[[], dict[str, Any]], interval: float) -> None:
        """Send a worker-heartbeat event with ``fields()`` every ``interval`` seconds until closed."""
        self._heartbeat = asyncio.create_task(self._beat(fields, interval), name="asyncq.events.heartbeat")

    async def _beat(self, fields: Callable[[], dict[str, Any]], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.worker_event(codec.HEARTBEAT, **fields())

    async def aclose(self) -> None:
        """Stop the heartbeat, send what is buffered and stop the flusher (the bus stays open)."""
        await cancel_and_wait(self._heartbeat)
        self._heartbeat = None
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        await self.flush()
