"""Dead-letter inspection and administration for the RabbitMQ broker (``<queue>.dead``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from datetime import datetime

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue

from asyncq._amqp import translate_errors
from asyncq._utils import now
from asyncq.brokers.base import DeadLetter
from asyncq.brokers.rabbitmq.publisher import Publisher
from asyncq.brokers.rabbitmq.wire import (
    H_DEAD_AT,
    H_DELIVERIES,
    H_ETA,
    H_PRIORITY,
    H_QUEUE,
    H_REASON,
    H_RETURNS,
    REQUEUE_WINDOW,
    carried_headers,
    int_header,
)

__all__ = ["DeadLetters"]


class DeadLetters(Publisher):
    """Reading, requeueing and purging the dead letters of a queue."""

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` messages of ``<queue>.dead``, oldest first, leaving them there.

        They are fetched with basic.get on a private channel which is then closed, so RabbitMQ
        puts them back in their places. Two readers at once may each see only part.
        """
        await self._declare(queue)
        connection = await self._ready()
        found: list[DeadLetter] = []
        with translate_errors(f"read the dead letters of {queue!r}"):
            channel = await connection.channel(publisher_confirms=False)
            try:
                dead = await channel.declare_queue(
                    f"{queue}.dead", durable=True, arguments=self._type_arguments(), robust=False
                )
                while len(found) < limit:
                    message = await dead.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    found.append(_dead_letter_of(message, queue))
            finally:
                await channel.close()
        return found

    @contextlib.asynccontextmanager
    async def _dead_queue(self, queue: str, action: str) -> AsyncGenerator[AbstractRobustQueue, None]:
        """``<queue>.dead`` on a private channel; what it fetched and did not ack goes back on close."""
        await self._declare(queue)
        connection = await self._ready()
        with translate_errors(action):
            async with asyncio.timeout(self.publish_timeout):
                channel = await connection.channel(publisher_confirms=False)
            try:
                async with asyncio.timeout(self.publish_timeout):
                    dead = await channel.declare_queue(
                        f"{queue}.dead", durable=True, arguments=self._type_arguments(), robust=False
                    )
                yield dead  # each basic.get in the caller has aio-pika's own deadline (5 s)
            finally:
                await channel.close()

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        """The oldest message of ``<queue>.dead`` with this id (read and left there), or None."""
        async with self._dead_queue(queue, f"find dead letter {message_id!r} of {queue!r}") as dead:
            while (message := await dead.get(no_ack=False, fail=False)) is not None:
                if message.message_id == message_id:
                    return _dead_letter_of(message, queue)
        return None

    async def requeue_dead_letter(self, queue: str, message_id: str) -> bool:
        """Publish the oldest dead letter with this id to its queue afresh (confirmed), then ack it."""
        async with self._dead_queue(queue, f"requeue dead letter {message_id!r} of {queue!r}") as dead:
            while (message := await dead.get(no_ack=False, fail=False)) is not None:
                if message.message_id == message_id:
                    await self._send_again(message, queue)
                    await message.ack()
                    return True
        return False

    async def requeue_dead_letters(self, queue: str) -> int:
        """Requeue the messages ``<queue>.dead`` holds now, a window at a time; return how many."""
        moved = 0
        async with self._dead_queue(queue, f"requeue the dead letters of {queue!r}") as dead:
            # Only those there at the start: a task dead-lettered again meanwhile stays dead.
            remaining = dead.declaration_result.message_count or 0
            while moved < remaining:
                window: list[AbstractIncomingMessage] = []
                while len(window) < min(REQUEUE_WINDOW, remaining - moved):
                    message = await dead.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    window.append(message)
                if not window:
                    break
                sent = await asyncio.gather(
                    *(self._send_again(message, queue) for message in window), return_exceptions=True
                )
                for message, outcome in zip(window, sent, strict=True):
                    if not isinstance(outcome, BaseException):
                        await message.ack()  # a failed one stays dead: it goes back on close
                        moved += 1
                errors = [outcome for outcome in sent if isinstance(outcome, BaseException)]
                if errors:
                    raise errors[0]
        return moved

    async def _send_again(self, message: AbstractIncomingMessage, queue: str) -> None:
        """Publish a dead letter to its work queue as a new message: no eta, no delivery counts."""
        headers = carried_headers(message.headers)
        priority = self._priority_of(message)
        origin = headers.get(H_QUEUE)
        for name in (H_QUEUE, H_REASON, H_DEAD_AT, H_DELIVERIES, H_RETURNS, H_ETA, H_PRIORITY):
            headers.pop(name, None)
        target = origin if isinstance(origin, str) else queue
        message_id = message.message_id or ""
        route = self._route(message_id, target, message.body, priority, None, headers, via_exchange=False)
        await self._prepare(route)
        await self._send(route, f"requeue dead letter {message_id}")

    async def purge_dead_letters(self, queue: str) -> int:
        """Drop every message of ``<queue>.dead``; return how many."""
        await self._declare(queue)

        async def purge(channel: AbstractRobustChannel) -> int:
            dead = await channel.declare_queue(
                f"{queue}.dead", durable=True, arguments=self._type_arguments(), robust=False
            )
            return (await dead.purge()).message_count or 0

        return await self._on_admin(f"purge the dead letters of {queue!r}", purge)


def _dead_letter_of(message: AbstractIncomingMessage, queue: str) -> DeadLetter:
    headers = message.headers
    reason = headers.get(H_REASON)
    dead_at_ms = int_header(headers, H_DEAD_AT)
    dead_at = dead_at_ms / 1000 if dead_at_ms else None
    if not isinstance(reason, str):
        # Dead-lettered by RabbitMQ itself (quorum delivery limit, a reject by another tool).
        deaths = headers.get("x-death")
        death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
        cause = death.get("reason", "unknown")
        cause = cause.decode() if isinstance(cause, bytes) else str(cause)
        reason = (
            "delivered max_deliveries times to consumers that were lost before settling it (delivery_limit)"
            if cause == "delivery_limit"
            else f"dead-lettered by RabbitMQ ({cause})"
        )
        when = death.get("time")
        if isinstance(when, datetime):
            dead_at = when.timestamp()
    origin = headers.get(H_QUEUE)
    return DeadLetter(
        id=message.message_id or "",
        queue=origin if isinstance(origin, str) else queue,
        body=message.body,
        reason=reason,
        dead_lettered_at=dead_at if dead_at is not None else now(),
    )
