"""``amqp://`` event bus: the topic exchange ``asyncq.events``; each reader binds its own queue.

A reader's queue is exclusive and auto-deleted (it lives as long as the reader), capped at
``history_limit`` batches with the oldest dropped, so a stalled reader cannot fill the server.

History: the exchange also feeds the stream ``asyncq.events.history`` (``x-queue-type=stream``),
which RabbitMQ bounds by size and age (:data:`STREAM_ARGUMENTS`). A reader asking for history
reads the stream from its start, keeping the last ``history_limit`` batches, until it meets a
marker it put at the end when it subscribed: those are the history, and it reads on live from
there. A server without streams (before RabbitMQ 3.9) keeps no history: ``keeps_history`` is
then False.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
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

__all__ = ["EXCHANGE", "HISTORY_STREAM", "STREAM_ARGUMENTS", "RabbitMQEventBus"]

logger = logging.getLogger(__name__)

#: The topic exchange events are published to, with the routing key ``events``.
EXCHANGE: Final = "asyncq.events"
ROUTING_KEY: Final = "events"
#: The stream that keeps the history, bound to the exchange.
HISTORY_STREAM: Final = "asyncq.events.history"
#: The stream's bounds: RabbitMQ drops whole segments past 64 MiB or a day old. Every bus declares
#: it with these arguments (a declaration with others fails).
STREAM_ARGUMENTS: Final = {
    "x-queue-type": "stream",
    "x-max-length-bytes": 64 * 1024 * 1024,
    "x-max-age": "1D",
    "x-stream-max-segment-size-bytes": 8 * 1024 * 1024,
}
# A header marking a history reader's end-of-history marker (never a batch).
_MARKER_HEADER: Final = "x-asyncq-history-marker"


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


class _StreamReader(_RabbitMQReader):
    """Reads the history stream: the last ``limit`` batches before its marker, then on live."""

    __slots__ = ("_kept", "_marker", "arguments")

    def __init__(self, limit: int, marker: str) -> None:
        super().__init__()
        self._marker: str | None = marker
        self._kept: deque[bytes] = deque(maxlen=limit)
        # The consume arguments: the robust channel consumes again with them after a reconnect,
        # so the offset moves on with what was read, and a reconnect resumes where it stopped.
        self.arguments: dict[str, Any] = {"x-stream-offset": "first"}

    async def deliver(self, message: AbstractIncomingMessage) -> None:
        await message.ack()  # a stream's consumer credit: it keeps nothing per consumer
        headers = message.headers or {}
        offset = headers.get("x-stream-offset")
        if isinstance(offset, int):
            self.arguments["x-stream-offset"] = offset + 1
        marker = headers.get(_MARKER_HEADER)
        if marker is not None:
            if marker == self._marker:  # the end of the history: hand it over, then live
                self._marker = None
                for batch in self._kept:
                    self._inbox.put_nowait(batch)
                self._kept.clear()
            return  # other readers' markers are not batches
        if self._marker is None:
            self._inbox.put_nowait(message.body)
        else:
            self._kept.append(message.body)


class RabbitMQEventBus:
    """Event batches through the topic exchange ``asyncq.events``, with history in a stream."""

    keeps_history = True  # False after connect() if the server has no streams

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
                    if self.keeps_history:
                        await self._declare_stream(connection)
            self._connection = connection

    async def _declare_stream(self, connection: AbstractRobustConnection) -> None:
        # On a channel of its own: a server that refuses the declaration closes that channel.
        channel = await connection.channel(publisher_confirms=False)
        try:
            stream = await channel.declare_queue(HISTORY_STREAM, durable=True, arguments=STREAM_ARGUMENTS)
            await stream.bind(EXCHANGE, routing_key="#")
        except aio_pika.exceptions.AMQPError as exc:
            self.keeps_history = False
            logger.warning("RabbitMQ refused the event history stream (%s): no history for late readers", exc)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

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
        if history and self.keeps_history:
            return await self._subscribe_stream(connection)
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

    async def _subscribe_stream(self, connection: AbstractRobustConnection) -> _StreamReader:
        marker = uuid.uuid4().hex
        with translate_errors("subscribe to events with their history"):
            async with asyncio.timeout(self.publish_timeout):
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=500)  # a stream consumer needs a prefetch
                # Declared as connect() did, so the robust channel's redeclaration after a
                # reconnect matches too.
                stream = await channel.declare_queue(HISTORY_STREAM, durable=True, arguments=STREAM_ARGUMENTS)
                reader = _StreamReader(self.history_limit, marker)
                reader._channel = channel
                await stream.consume(reader.deliver, arguments=reader.arguments)
                # Straight into the stream (not through the exchange): live readers never see it.
                await channel.default_exchange.publish(
                    aio_pika.Message(b"", headers={_MARKER_HEADER: marker}), routing_key=HISTORY_STREAM
                )
        return reader
