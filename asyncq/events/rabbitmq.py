"""``amqp://`` event bus: the topic exchange ``asyncq.events``; each reader binds its own queue.

A reader's queue is exclusive and auto-deleted (it lives as long as the reader), capped at
``history_limit`` batches with the oldest dropped, so a stalled reader cannot fill the server.
RabbitMQ keeps no history for readers that were not there: ``keeps_history`` is False.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from asyncq._utils import redact_url
from asyncq.exceptions import BrokerConnectionError, MissingDependencyError

try:
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

    from asyncq._amqp import split_amqp_url, translate_errors
    from asyncq.brokers.rabbitmq.wire import BROKER_OPTIONS, PUBLISH_TIMEOUT
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError.for_extra("aio-pika", "amqp") from exc

__all__ = ["EXCHANGE", "RabbitMQEventBus"]

#: The topic exchange events are published to, with the routing key ``events``.
EXCHANGE: Final = "asyncq.events"
ROUTING_KEY: Final = "events"


class _RabbitMQReader:
    """Deliveries are pushed into an inbox: a cancelled wait for the next one loses nothing."""

    __slots__ = ("_channel", "_inbox")

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def deliver(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message.body)

    def __aiter__(self) -> _RabbitMQReader:
        return self

    async def __anext__(self) -> bytes:
        batch = await self._inbox.get()
        if batch is None:
            self._inbox.put_nowait(None)  # stays ended
            raise StopAsyncIteration
        return batch

    async def aclose(self) -> None:
        self._inbox.put_nowait(None)
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):  # closing: its queue is deleted with it anyway
                await channel.close()


class RabbitMQEventBus:
    """Event batches through the topic exchange ``asyncq.events``."""

    keeps_history = False

    def __init__(self, url: str, *, history_limit: int = 10_000, **options: Any) -> None:
        self.url = url
        names = {option.name for option in BROKER_OPTIONS}
        broker_options = {name: value for name, value in options.items() if name in names}
        self._client_url, settings = split_amqp_url(
            url, broker_options, BROKER_OPTIONS, what="amqp event bus"
        )
        self.publish_timeout = settings[PUBLISH_TIMEOUT]
        self.history_limit = max(1, int(history_limit))
        self._connection: AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        async with self._lock:
            if self._connection is not None and not self._connection.is_closed:
                return
            with translate_errors(f"connect to RabbitMQ at {redact_url(self.url)} for events"):
                async with asyncio.timeout(self.publish_timeout):
                    connection = await aio_pika.connect_robust(
                        self._client_url, client_properties={"connection_name": "asyncq-events"}
                    )
                    channel = await connection.channel(publisher_confirms=False)
                    self._exchange = await channel.declare_exchange(
                        EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
                    )
            self._connection = connection

    async def aclose(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # closing anyway
                await connection.close()

    async def publish(self, batch: bytes) -> None:
        await self.connect()
        exchange = self._exchange
        assert exchange is not None
        with translate_errors("publish events"):
            try:
                async with asyncio.timeout(self.publish_timeout):
                    await exchange.publish(aio_pika.Message(batch), routing_key=ROUTING_KEY)
            except TimeoutError:
                raise BrokerConnectionError(
                    f"publish events: RabbitMQ did not take them within {self.publish_timeout}s"
                ) from None

    async def subscribe(self, *, history: bool = False) -> _RabbitMQReader:
        await self.connect()
        connection = self._connection
        assert connection is not None
        with translate_errors("subscribe to events"):
            async with asyncio.timeout(self.publish_timeout):
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=500)
                queue = await channel.declare_queue(
                    exclusive=True,
                    auto_delete=True,
                    arguments={"x-max-length": self.history_limit, "x-overflow": "drop-head"},
                )
                await queue.bind(EXCHANGE, routing_key="#")
                reader = _RabbitMQReader()
                reader._channel = channel
                await queue.consume(reader.deliver, no_ack=True)
        return reader
