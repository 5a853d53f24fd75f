"""Monitoring events: ``app.events`` emits task and worker events and streams them to readers.

Task events (task-sent, -received, -started, -succeeded, -failed, -retried, -revoked,
-rejected, -dead-lettered) and worker events (worker-online, -heartbeat, -offline) are off by
default: ``worker_send_task_events`` (``asyncq run -E``) turns on a worker's, and
``task_send_sent_event`` a producer's task-sent. They travel in batches over an event bus on
the broker's transport (:mod:`asyncq.events.bus`); ``app.events.stream()`` reads them, and
``asyncq events module:app`` tails them. The schema is in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from asyncq.config import heartbeat_interval
from asyncq.events import codec
from asyncq.events.bus import EVENT_BUSES, EventBus, EventReader, event_bus_from_url
from asyncq.events.codec import EVENT_TYPES, TASK_EVENT_TYPES, WORKER_EVENT_TYPES, decode_batch
from asyncq.events.emitter import EventEmitter, NoEvents
from asyncq.exceptions import SerializationError

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.message import Message
    from asyncq.worker.worker import Worker

__all__ = [
    "EVENT_BUSES",
    "EVENT_TYPES",
    "NO_EVENTS",
    "TASK_EVENT_TYPES",
    "WORKER_EVENT_TYPES",
    "EventBus",
    "EventEmitter",
    "EventReader",
    "EventStream",
    "Events",
    "NoEvents",
    "decode_batch",
    "event_bus_from_url",
]

logger = logging.getLogger(__name__)

#: The hooks with events off (shared: it holds no state).
NO_EVENTS = NoEvents()


class EventStream:
    """A subscription to an app's events: an async iterator of event dicts."""

    def __init__(self, reader: EventReader) -> None:
        self._reader = reader
        self._pending: list[dict[str, Any]] = []

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._pending:
            batch = await self._reader.__anext__()
            try:
                self._pending = decode_batch(batch)
            except SerializationError as exc:  # another version's, or garbage: skip it, loudly
                logger.warning("skipping an event batch: %s", exc)
            self._pending.reverse()  # popped from the end
        return self._pending.pop()

    async def aclose(self) -> None:
        """Unsubscribe."""
        await self._reader.aclose()


class _Loop:
    """One event loop's bus and producer emitter (connections are loop-bound)."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.producer: EventEmitter | None = None
        self.starting: asyncio.Task[None] | None = None


class Events:
    """The events of one app (``app.events``): emission hooks, and ``stream()`` for readers."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Loop] = weakref.WeakKeyDictionary()
        self._shared: _Loop | None = None  # memory://: one bus for the whole app
        # task_send_sent_event, read again only when the configuration changed: every send
        # asks, and a setting lookup costs more than the rest of this hook when it is off.
        self._sent_on, self._sent_version = False, -1
        self._sent_conf: object = None

    def _loop(self) -> _Loop:
        if self._shared is not None:
            return self._shared
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            conf = self._app.conf
            url = conf.control_url or self._app.broker_url
            # The broker's transport options are for the broker's driver, not another store's.
            options = {} if conf.control_url else dict(conf.broker_transport_options)
            if url.startswith("redis"):  # the other buses' histories are capped by count only
                options["history_bytes"] = conf.event_history_bytes
            bus = event_bus_from_url(url, history_limit=conf.event_history_limit, **options)
            state = _Loop(bus)
            if url.startswith("memory:"):
                self._shared = state
            else:
                self._loops[loop] = state
        return state

    @property
    def bus(self) -> EventBus:
        """This loop's event bus (on the broker's transport)."""
        return self._loop().bus

    # -- reading -------------------------------------------------------------------------------

    async def subscribe(self, *, history: bool = False) -> EventStream:
        """Start reading: every event sent after this returns (with ``history``, the kept ones first).

        Iterate the result for event dicts (schema: docs/protocol.md); ``aclose()`` it when done.
        """
        bus = self.bus
        await bus.connect()
        return EventStream(await bus.subscribe(history=history))

    async def stream(self, *, history: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Yield events as they arrive (with ``history``, first those the bus kept), forever.

        Subscribes when first iterated (use :meth:`subscribe` to be sure of not missing any
        sent before then); closing the iterator unsubscribes.
        """
        events = await self.subscribe(history=history)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    # -- producers -----------------------------------------------------------------------------

    def task_sent(self, message: Message) -> None:
        """The producer hook: a task-sent event for ``message`` if ``task_send_sent_event`` is on."""
        conf = self._app.conf
        if conf._version != self._sent_version or conf is not self._sent_conf:
            self._sent_on = bool(conf.task_send_sent_event)
            self._sent_conf, self._sent_version = conf, conf._version
        if not self._sent_on:
            return
        state = self._loop()
        if state.producer is None:
            state.producer = self._emitter(f"{socket.gethostname()}:{os.getpid()}")
            state.starting = asyncio.get_running_loop().create_task(
                state.producer.start(), name="asyncq.events.start"
            )
        state.producer.task_sent(message)

    def tasks_sent(self, messages: Sequence[Message]) -> None:
        """The producer hook of ``send_many``: :meth:`task_sent` for each message."""
        if not messages:
            return
        self.task_sent(messages[0])  # reads the setting again if the configuration changed
        if self._sent_on:
            for message in messages[1:]:
                self.task_sent(message)

    def _emitter(self, hostname: str) -> EventEmitter:
        conf = self._app.conf
        return EventEmitter(
            self.bus,
            hostname,
            include_args=bool(conf.events_include_args),
            flush_interval=float(conf.event_flush_interval),
        )

    # -- workers -------------------------------------------------------------------------------

    async def start_worker(self, worker: Worker) -> NoEvents:
        """A worker's hooks: live ones (worker-online sent, heartbeats running) if it sends events."""
        if not worker.send_events:
            return NO_EVENTS
        emitter = self._emitter(worker.hostname)
        await emitter.start()
        emitter.worker_event(codec.ONLINE, **_worker_fields(worker), queues=list(worker.queues))
        interval = heartbeat_interval(self._app.conf)
        emitter.start_heartbeat(lambda: {**_worker_fields(worker), "freq": interval}, interval)
        return emitter

    async def stop_worker(self, worker: Worker, emitter: NoEvents) -> None:
        """Send the worker-offline event and what is still buffered."""
        if emitter.enabled:
            emitter.worker_event(codec.OFFLINE, **_worker_fields(worker))
            await emitter.aclose()

    async def aclose(self) -> None:
        """Send this loop's buffered task-sent events and close its event bus."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        state = self._loops.pop(loop, None) or self._shared
        if state is None:
            return
        if state.starting is not None:
            await asyncio.gather(state.starting, return_exceptions=True)
            state.starting = None
        if state.producer is not None:
            await state.producer.aclose()
            state.producer = None
        await state.bus.aclose()


def _worker_fields(worker: Worker) -> dict[str, Any]:
    return {"active": worker.in_flight, "processed": sum(worker.stats.values())}
