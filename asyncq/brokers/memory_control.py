"""The memory:// broker's control channel: presence, broadcasts and revocations in this process."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

from asyncq._utils import now
from asyncq.brokers.control import ControlRequest, PresenceRecord

__all__ = ["MemoryControlChannel"]


class _State:
    """What every channel of one memory broker shares."""

    def __init__(self) -> None:
        self.presence: dict[str, PresenceRecord] = {}
        self.listeners: set[asyncio.Queue[ControlRequest]] = set()
        self.revoked: dict[str, float] = {}


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


class MemoryControlChannel:
    """In-process channel: every channel made for the same broker instance sees the same state."""

    #: Presence records are stored, so ``workers()`` answers at once (broadcasts stop early).
    stores_presence = True

    def __init__(self, broker: Any) -> None:
        state = _STATES.get(broker)
        if state is None:
            state = _STATES[broker] = _State()
        self._state = state

    async def connect(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to release."""

    async def beat(self, worker: str, info: bytes, *, ttl: float) -> None:
        current = now()
        self._state.presence[worker] = PresenceRecord(worker, info, current, current + ttl)

    async def leave(self, worker: str) -> None:
        self._state.presence.pop(worker, None)

    async def workers(self, *, timeout: float = 1.0) -> list[PresenceRecord]:
        return list(self._state.presence.values())

    async def broadcast(self, body: bytes, *, timeout: float, replies: int | None = None) -> list[bytes]:
        received: list[bytes] = []
        enough = asyncio.Event()

        async def reply(answer: bytes) -> None:
            received.append(answer)
            if replies is not None and len(received) >= replies:
                enough.set()

        for listener in list(self._state.listeners):
            listener.put_nowait(ControlRequest(body, reply))
        if replies != 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), timeout)
        return list(received)

    async def listen(self, worker: str) -> AsyncIterator[ControlRequest]:
        inbox: asyncio.Queue[ControlRequest] = asyncio.Queue()
        self._state.listeners.add(inbox)
        try:
            while True:
                yield await inbox.get()
        finally:
            self._state.listeners.discard(inbox)

    async def revoke(self, task_ids: Sequence[str], *, expires: float) -> None:
        until = now() + expires
        for task_id in task_ids:
            self._state.revoked[task_id] = until

    async def revoked(self) -> dict[str, float]:
        current = now()
        live = {task_id: until for task_id, until in self._state.revoked.items() if until > current}
        self._state.revoked = live
        return dict(live)
