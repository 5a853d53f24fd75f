"""Dead-letter tools: ``app.dead_letters`` lists, shows, requeues and purges parked messages.

A message the worker cannot process (undecodable, unknown task, rejected, delivered too
often) is parked in its queue's dead-letter store with the reason. These tools sit on the
broker's dead-letter methods (:class:`~asyncq.brokers.base.Broker`), so every driver gets
them. Without a queue they cover every queue the app knows: the default queue, the queues
its tasks name and those of ``task_routes``.

A requeued message is a new delivery of the same task id: its delivery count starts again,
and its old (failed) result record is forgotten first, so ``AsyncResult(id).get()`` waits for
the new run instead of returning the old failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asyncq.brokers.base import DeadLetter
from asyncq.exceptions import AsyncqError, SerializationError
from asyncq.message import decode_message

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["DeadLetters", "describe"]

logger = logging.getLogger(__name__)

Letters = list[DeadLetter]

#: Most dead letters read per queue by ``requeue_all`` to forget their old results.
_FORGET_LIMIT = 100_000


class DeadLetters:
    """The dead letters of one app's queues (``app.dead_letters``)."""

    def __init__(self, app: App) -> None:
        self._app = app

    def queues(self) -> list[str]:
        """The queues the app knows: default first, then its tasks' and its routes' queues."""
        conf = self._app.conf
        names = [str(conf.task_default_queue)]
        names += [task.options.queue for task in self._app.tasks.values() if task.options.queue]
        routes = conf.task_routes
        if isinstance(routes, Mapping):
            for route in routes.values():
                queue = route.get("queue") if isinstance(route, Mapping) else route
                if queue:
                    names.append(str(queue))
        return list(dict.fromkeys(names))

    def _targets(self, queue: str | None) -> list[str]:
        return [queue] if queue else self.queues()

    async def list(self, queue: str | None = None, *, limit: int = 100) -> Letters:
        """Up to ``limit`` dead letters of ``queue`` (default: every known queue), oldest first."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        await self._app.connect()
        broker = self._app.broker
        found: Letters = []
        for name in self._targets(queue):
            found += await broker.dead_letters(name, limit=limit)
        found.sort(key=lambda letter: letter.dead_lettered_at)
        return found[:limit]

    async def show(self, message_id: str, queue: str | None = None) -> DeadLetter | None:
        """The dead letter with this message id, in ``queue`` or the first known queue holding it."""
        await self._app.connect()
        for name in self._targets(queue):
            letter = await self._app.broker.get_dead_letter(name, message_id)
            if letter is not None:
                return letter
        return None

    async def requeue(self, message_id: str, queue: str | None = None) -> bool:
        """Send the dead letter with this id back to its queue; False if there is none."""
        letter = await self.show(message_id, queue)
        if letter is None:
            return False
        await self._forget([message_id])
        moved = await self._app.broker.requeue_dead_letter(letter.queue, message_id)
        if moved:
            logger.info("requeued dead letter %s to %s", message_id, letter.queue)
        return moved

    async def requeue_all(self, queue: str | None = None) -> int:
        """Send every dead letter of ``queue`` (default: every known queue) back; return how many."""
        await self._app.connect()
        broker = self._app.broker
        total = 0
        for name in self._targets(queue):
            letters = await broker.dead_letters(name, limit=_FORGET_LIMIT)
            if not letters:
                continue
            await self._forget([letter.id for letter in letters])
            moved = await broker.requeue_dead_letters(name)
            logger.info("requeued %d dead letters to %s", moved, name)
            total += moved
        return total

    async def purge(self, queue: str | None = None) -> int:
        """Drop every dead letter of ``queue`` (default: every known queue); return how many."""
        await self._app.connect()
        broker = self._app.broker
        total = 0
        for name in self._targets(queue):
            total += await broker.purge_dead_letters(name)
        return total

    async def _forget(self, task_ids: Sequence[str]) -> None:
        backend = self._app.backend
        for start in range(0, len(task_ids), 100):
            try:
                await asyncio.gather(*(backend.forget(task_id) for task_id in task_ids[start : start + 100]))
            except AsyncqError as exc:
                # Not fatal: a caller may then see the old failure until the new run stores its result.
                logger.warning("could not forget the old results of requeued tasks: %s", exc)
                return


def describe(letter: DeadLetter, app: App) -> dict[str, Any]:
    """A JSON-ready view of a dead letter: where, when, why, and the task message it holds."""
    view: dict[str, Any] = {
        "id": letter.id,
        "queue": letter.queue,
        "reason": letter.reason,
        "dead_lettered_at": datetime.fromtimestamp(letter.dead_lettered_at, UTC).isoformat(),
    }
    try:
        message = decode_message(letter.body, app.serializers)
    except SerializationError as exc:
        view["task"] = None
        view["undecodable"] = str(exc)
        view["body"] = letter.body[:1000].decode("utf-8", errors="replace")
        return view
    view.update(
        task=message.task,
        args=message.args,
        kwargs=message.kwargs,
        retries=message.retries,
        root_id=message.root_id,
        parent_id=message.parent_id,
    )
    return view
