"""Celery's AMQP layout on RabbitMQ, and results over Celery's ``rpc://`` reply queues.

Celery declares each queue durable, bound to a durable direct exchange of the same name
with the queue's name as routing key; a task message carries Celery's headers as AMQP
headers and ``[args, kwargs, embed]`` as its JSON body. With the ``rpc://`` backend a
result is a JSON message (``task_id``, ``status``, ``result``, ``traceback``, ``children``)
sent through the default exchange to the caller's ``reply_to`` queue, with the task id as
correlation id. A delivery is turned into the same kombu envelope the Redis layout stores,
so :mod:`asyncq.celery.consumer` runs both alike.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from typing import Any

from asyncq._amqp import close_robust, open_robust
from asyncq.celery.redis_transport import POLL_SECONDS, Taken
from asyncq.exceptions import BrokerConnectionError, BrokerError

try:
    import aio_pika
    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
    from aiormq.exceptions import AMQPError
except ImportError as exc:  # pragma: no cover - the amqp extra is missing
    from asyncq.exceptions import MissingDependencyError

    raise MissingDependencyError.for_extra("amqp", "aio-pika") from exc

__all__ = ["CeleryAMQP"]


class CeleryAMQP:
    """A connection to the RabbitMQ that Celery producers and workers use."""

    def __init__(self, url: str, *, timeout: float = 10.0, prefetch: int = 10) -> None:
        self.url = url
        self.timeout = timeout
        self.prefetch = prefetch
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._held: dict[str, AbstractIncomingMessage] = {}
        self._tags = 0
        self._declared: set[str] = set()

    async def _open(self) -> AbstractChannel:
        if self._channel is None:
            self._connection = await open_robust(
                self.url,
                self.url,
                connection_name="asyncq-celery",
                timeout=self.timeout,
                error=BrokerConnectionError,
            )
            channel = await self._bounded("open a channel", self._connection.channel())
            await self._bounded("set prefetch", channel.set_qos(prefetch_count=self.prefetch))
            self._channel = channel
        return self._channel

    async def _bounded(self, what: str, call: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except (AMQPError, OSError, aio_pika.exceptions.AMQPException) as exc:
            raise BrokerError(f"Celery AMQP {what} failed: {exc}") from exc

    async def aclose(self) -> None:
        """Close the connection; unacked deliveries go back to their queues (AMQP's rule)."""
        if self._connection is not None:
            await close_robust(self._connection)
        self._connection = self._channel = None

    async def declare(self, queues: Sequence[str]) -> None:
        """Declare each queue as Celery does and start consuming it."""
        for name in queues:
            queue = await self._declare_one(name)
            await self._bounded("consume", queue.consume(self._inbox.put))

    async def _declare_one(self, name: str) -> Any:
        channel = await self._open()
        exchange = await self._bounded(
            "declare", channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
        )
        queue = await self._bounded("declare", channel.declare_queue(name, durable=True))
        await self._bounded("bind", queue.bind(exchange, routing_key=name))
        return queue

    async def take(self, queues: Sequence[str]) -> Taken | None:
        """The next delivery, as a kombu envelope (None after a quiet poll)."""
        try:
            message = await asyncio.wait_for(self._inbox.get(), POLL_SECONDS)
        except TimeoutError:
            return None
        self._tags += 1
        tag = f"amqp-{self._tags}"
        self._held[tag] = message
        envelope = {
            "body": base64.b64encode(message.body).decode(),
            "content-type": message.content_type or "application/json",
            "content-encoding": message.content_encoding or "utf-8",
            "headers": _plain(dict(message.headers or {})),
            "properties": {
                "correlation_id": message.correlation_id,
                "reply_to": message.reply_to or "",
                "priority": message.priority or 0,
                "body_encoding": "base64",
                "delivery_tag": tag,
                "delivery_info": {
                    "exchange": message.exchange or "",
                    "routing_key": message.routing_key or "",
                },
            },
        }
        if message.redelivered:
            envelope["headers"]["redelivered"] = True
        queue = message.routing_key or (queues[0] if queues else "")
        return Taken(queue, json.dumps(envelope).encode(), tag, message.exchange or "", queue)

    async def ack(self, taken: Taken) -> None:
        """Done with it."""
        message = self._held.pop(taken.tag, None)
        if message is not None:
            await self._bounded("ack", message.ack())

    async def requeue(self, taken: Taken) -> None:
        """Give it back to its queue (RabbitMQ marks it redelivered)."""
        message = self._held.pop(taken.tag, None)
        if message is not None:
            await self._bounded("requeue", message.nack(requeue=True))

    async def publish(self, queue: str, raw: bytes, *, priority: int = 0) -> None:
        """Publish a kombu envelope as Celery's AMQP message to ``queue``'s exchange."""
        channel = await self._open()
        envelope = json.loads(raw)
        properties = envelope.get("properties") or {}
        message = aio_pika.Message(
            base64.b64decode(envelope["body"]),
            headers=envelope.get("headers") or {},
            content_type=envelope.get("content-type"),
            content_encoding=envelope.get("content-encoding"),
            correlation_id=properties.get("correlation_id"),
            reply_to=properties.get("reply_to") or None,
            priority=priority or None,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        if queue not in self._declared:  # as a Celery producer does: the queue exists before a worker
            await self._declare_one(queue)
            self._declared.add(queue)
        exchange = await self._bounded("get exchange", channel.get_exchange(queue, ensure=False))
        await self._bounded("publish", exchange.publish(message, routing_key=queue))

    async def store_result(
        self, task_id: str, meta: dict[str, Any], *, ttl: float | None, reply_to: str = ""
    ) -> None:
        """Send the result to the caller's reply queue (``rpc://``); nothing when nobody asked."""
        if not reply_to:
            return
        channel = await self._open()
        message = aio_pika.Message(
            json.dumps(meta).encode(),
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id=task_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._bounded("send result", channel.default_exchange.publish(message, routing_key=reply_to))


def _plain(value: Any) -> Any:
    # AMQP header strings may arrive as bytes: Celery's headers are text.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
