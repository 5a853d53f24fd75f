"""Celery's ``rpc://`` results for tasks asyncq sends to Celery workers: one reply queue per loop.

A Celery worker with the ``rpc://`` backend sends each state of a task (STARTED, RETRY,
SUCCESS, FAILURE, ...) as a JSON message to the queue named in the task's ``reply_to``, through
the default exchange, with the task id as correlation id. :class:`CeleryReplies` owns such a
queue (exclusive, deleted with its connection) and keeps the latest state of each task it
heard of, so a handle can read it at any time after it was sent, as Celery's own rpc:// client
does. Replies are the sender's alone: another process cannot read them, and a reply sent while
the connection is down is lost (RabbitMQ drops messages to a queue that is gone).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import uuid
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from asyncq._amqp import close_robust, open_robust
from asyncq.exceptions import BackendConnectionError, TimeoutError  # noqa: A004 - asyncq's, a builtin's subclass

try:
    from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
except ImportError as exc:  # pragma: no cover - the amqp extra is missing
    from asyncq.exceptions import MissingDependencyError

    raise MissingDependencyError.for_extra("amqp", "aio-pika") from exc

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["READY_STATES", "CeleryReplies", "replies_for"]

logger = logging.getLogger(__name__)

#: The states after which a Celery task sends nothing more.
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

#: Tasks whose latest state is kept; the oldest is forgotten first (a bounded memory).
KEEP = 10_000


class CeleryReplies:
    """A reply queue of this process on the RabbitMQ Celery uses, and what arrived on it."""

    def __init__(self, url: str, *, timeout: float = 10.0, keep: int = KEEP) -> None:
        self.url = url
        self.timeout = timeout
        self.keep = keep
        self.name = f"asyncq.celery.reply.{uuid.uuid4().hex}"
        self._connection: AbstractRobustConnection | None = None
        self._opening = asyncio.Lock()
        self._latest: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._changed: dict[str, asyncio.Event] = {}

    async def queue(self) -> str:
        """The reply queue's name, declared and consumed before the first task is sent."""
        async with self._opening:
            if self._connection is None:
                self._connection = await self._open()
        return self.name

    async def _open(self) -> AbstractRobustConnection:
        connection = await open_robust(
            self.url,
            self.url,
            connection_name="asyncq-celery-replies",
            timeout=self.timeout,
            error=BackendConnectionError,
        )
        try:
            async with asyncio.timeout(self.timeout):
                channel = await connection.channel()
                queue = await channel.declare_queue(self.name, exclusive=True, auto_delete=True)
                await queue.consume(self._arrived, no_ack=True)
        except BaseException as exc:
            await close_robust(connection)
            if isinstance(exc, Exception):
                raise BackendConnectionError(f"declaring the rpc:// reply queue failed: {exc!r}") from exc
            raise
        return connection

    async def _arrived(self, message: AbstractIncomingMessage) -> None:
        try:
            meta = json.loads(message.body)
            task_id = str(message.correlation_id or meta["task_id"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("dropping an unreadable rpc:// reply on %s: %r", self.name, exc)
            return
        self._latest[task_id] = meta
        self._latest.move_to_end(task_id)
        while len(self._latest) > self.keep:
            self._latest.popitem(last=False)
        changed = self._changed.get(task_id)
        if changed is not None:
            changed.set()

    def latest(self, task_id: str) -> dict[str, Any] | None:
        """The last state the task's worker sent, or None (nothing yet)."""
        return self._latest.get(task_id)

    async def wait(self, task_id: str, *, timeout: float | None) -> dict[str, Any]:
        """The task's final record (SUCCESS, FAILURE or REVOKED), waiting up to ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        changed = self._changed.setdefault(task_id, asyncio.Event())
        try:
            while True:
                meta = self._latest.get(task_id)
                if meta is not None and meta.get("status") in READY_STATES:
                    return meta
                changed.clear()
                try:
                    async with asyncio.timeout_at(deadline):
                        await changed.wait()
                except builtins.TimeoutError:
                    raise TimeoutError(f"Celery task {task_id} not ready within {timeout}s") from None
        finally:
            self._changed.pop(task_id, None)

    async def aclose(self) -> None:
        """Close the connection (RabbitMQ deletes the queue)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await close_robust(connection)


_REPLIES: weakref.WeakKeyDictionary[App, dict[asyncio.AbstractEventLoop, CeleryReplies]] = (
    weakref.WeakKeyDictionary()
)


def replies_for(app: App, url: str, *, timeout: float) -> CeleryReplies:
    """The reply queue of ``app`` in the running loop; closed by ``app.aclose()``."""
    loop = asyncio.get_running_loop()
    per_loop = _REPLIES.setdefault(app, {})
    replies = per_loop.get(loop)
    if replies is None:
        replies = per_loop[loop] = CeleryReplies(url, timeout=timeout)
        app.close_with_loop(replies.aclose)
    return replies
