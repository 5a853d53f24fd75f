"""The result-backend contract: where task states and results are kept, and waited for.

A backend stores opaque record bytes per task id (the encoding lives in asyncq.result), a
flag saying whether the record is final, and integer counters used for chord joins. Every
driver passes tests/conformance/test_backend_contract.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["REPLY_TO", "BackendCapabilities", "BackendDefaults", "ResultBackend"]

#: The message header naming where the worker sends a task's records (see ``reply_address``).
REPLY_TO = "reply_to"


@dataclass(frozen=True, slots=True)
class BackendCapabilities:
    """What a backend can do.

    Attributes:
        persistent: records outlive every asyncq process.
        notifies: ``wait`` wakes on a write from another process without polling.
        shared: other processes can read what this one stores (False only for memory://).
        counters: ``incr`` works (False for rpc://, which keeps no state; chords need another).
    """

    persistent: bool = False
    notifies: bool = False
    shared: bool = False
    counters: bool = True


@runtime_checkable
class ResultBackend(Protocol):
    """A store of task records, chosen by URL scheme (see asyncq.backends.backend_from_url)."""

    url: str
    capabilities: BackendCapabilities

    async def connect(self) -> None:
        """Open connections and create what is missing; idempotent."""

    async def aclose(self) -> None:
        """Release connections and wake every pending ``wait`` with None."""

    async def set(self, task_id: str, record: bytes, *, final: bool, ttl: float | None) -> None:
        """Store the record of ``task_id``, replacing any; ``ttl`` seconds until it expires.

        A final record wakes every ``wait`` on that id.
        """

    async def get(self, task_id: str) -> bytes | None:
        """Return the stored record, or None if there is none (or it expired)."""

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """Return the records of several ids in one round trip, in order."""

    async def wait(self, task_id: str, *, timeout: float | None) -> bytes | None:
        """Return the final record as soon as there is one; None if ``timeout`` passes first."""

    async def forget(self, task_id: str) -> None:
        """Delete the record of ``task_id``."""

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Atomically add ``amount`` to counter ``key`` (created at 0) and return the new value."""

    # -- hooks the App calls around sending; BackendDefaults has the do-nothing versions -------

    async def prepare(self, task_id: str) -> None:
        """Get ready to receive the record of ``task_id``, which is about to be sent.

        The App awaits it before publishing every message whose result is kept (``send_message``
        and ``send_many``): rpc:// binds its reply route here, since a record published before
        the route exists is lost. Most backends do nothing.
        """

    def expect(self, task_id: str) -> None:
        """A hint, right before ``task_id`` is published: a ``wait`` on it may follow.

        Must not block or raise; redis:// subscribes ahead here. Most backends do nothing.
        """

    def arrival(self, task_id: str) -> asyncio.Future[None] | None:
        """A future done when a record of ``task_id`` reaches this process, or None.

        Asked right before ``task_id`` is published. A record proves the message arrived,
        so the App stops waiting for the broker's publish confirm once it comes (rpc://,
        whose records come to the sender). Most backends answer None.
        """

    def reply_address(self) -> str | None:
        """Where workers should send the records of tasks this process sends, or None.

        The App writes it into each message whose result is kept (the ``reply_to`` header);
        rpc:// answers with its reply queue's address. Most backends answer None.
        """

    async def set_reply(
        self, task_id: str, record: bytes, *, final: bool, ttl: float | None, reply_to: str
    ) -> None:
        """``set``, for a message that carried a ``reply_to`` header: rpc:// routes by it.

        Most backends store it as ``set`` does.
        """


class BackendDefaults:
    """The optional hooks of :class:`ResultBackend`, doing nothing: a driver inherits what it lacks."""

    async def prepare(self, task_id: str) -> None:
        """Nothing to prepare: the record can be stored and read without setup."""

    def expect(self, task_id: str) -> None:
        """No use for the hint."""

    def arrival(self, task_id: str) -> asyncio.Future[None] | None:
        """Records are not pushed here: nothing to race the publish with."""
        return None

    def reply_address(self) -> str | None:
        """No reply address: records are stored where any process can read them."""
        return None

    async def set_reply(
        self, task_id: str, record: bytes, *, final: bool, ttl: float | None, reply_to: str
    ) -> None:
        """The address is of no use here: store the record as ``set`` does."""
        await self.set(task_id, record, final=final, ttl=ttl)  # type: ignore[attr-defined]
