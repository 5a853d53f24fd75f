"""Consuming over asyncq's lean AMQP connection (``client=lean``): no task per delivery.

Same rules as :class:`~.consumer.Consumer` (it reuses its routing, buffer, prefetch gate and
stop logic); what aio-pika's robust channel did is done here: after a connection loss the
deliveries of the dead connection are stale (their ack raises, the server redelivers them)
and the consumer reconnects every ``reconnect_interval`` seconds, re-applies qos and
consumes again, until it is stopped or its broker is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence

from asyncq._amqp.protocol import LeanConnection, LeanMessage, LeanParams
from asyncq._utils import redact_url
from asyncq.brokers.rabbitmq.consumer import Consumer
from asyncq.brokers.rabbitmq.publisher import Publisher
from asyncq.exceptions import BrokerConnectionError, BrokerError

__all__ = ["LeanConsumer"]

log = logging.getLogger("asyncq.brokers.rabbitmq")

#: Seconds a polite close (acks flushed, channel and connection closed) may take.
_CLOSE_TIMEOUT = 5.0


class LeanConsumer(Consumer):
    """A ``consume()`` iterator's state, fed by a :class:`LeanConnection`."""

    def __init__(self, broker: Publisher, queues: Sequence[str], prefetch: int) -> None:
        super().__init__(broker, queues, prefetch)
        self._params = LeanParams(broker._client_url, connection_name=broker.connection_name)
        self._lean: LeanConnection | None = None
        self._queue_of: dict[str, str] = {}  # consumer tag -> queue
        self._reconnecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._open()

    async def _open(self) -> None:
        broker = self._broker
        timeout = broker.connect_timeout
        lean = await LeanConnection.open(self._params, self._on_lean_message, self._on_lost, timeout=timeout)
        try:
            is_classic = broker.queue_type == "classic"
            # prefetch-count is a 16-bit field; above that the iterator's own count bounds it.
            await lean.qos(
                min(self._gate.prefetch, 65535), global_=is_classic and len(self._queues) > 1, timeout=timeout
            )
            # Tags known before the consume is sent: deliveries may follow its reply in one read.
            self._queue_of = {f"asyncq.{uuid.uuid4().hex}": name for name in self._queues}
            for tag, name in list(self._queue_of.items()):
                await lean.consume(name, tag, timeout=timeout)
        except BaseException:
            lean.abort()
            raise
        self._lean = lean
        if self._closing or self._broker_closed:
            await self._close_channel()

    def _on_lean_message(self, message: LeanMessage) -> None:
        queue = self._queue_of.get(message.consumer_tag)
        if queue is None:  # not ours (cannot happen: a consume's reply precedes its deliveries)
            message.channel.reject(message.delivery_tag, requeue=True)
            return
        self._route_delivery(queue, message)

    def _on_lost(self, error: BaseException) -> None:
        if self._closing or self._broker_closed or self._lean is None:
            return  # a lost opening is the opener's business
        log.warning(
            "consumer connection to RabbitMQ at %s lost (%s); reconnecting",
            redact_url(self._broker.url),
            error,
        )
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect(), name="asyncq.rabbitmq.lean-reconnect"
            )

    async def _reconnect(self) -> None:
        interval = self._params.reconnect_interval
        while not (self._closing or self._broker_closed):
            await asyncio.sleep(interval)
            if self._closing or self._broker_closed:
                return
            try:
                for name in self._queues:  # the server may have lost them (a node reset)
                    self._broker._declared.discard(name)
                    await self._broker._declare(name)
                await self._open()
            except (BrokerError, OSError, TimeoutError) as exc:
                log.debug("reconnecting the RabbitMQ consumer failed: %s", exc)
                continue
            except Exception:
                # Anything else would end this task silently and leave the iterator waiting
                # for ever: say so, and keep trying.
                log.exception("reconnecting the RabbitMQ consumer failed unexpectedly")
                continue
            log.info("consumer reconnected to RabbitMQ at %s", redact_url(self._broker.url))
            return

    def wake_closed(self) -> None:
        super().wake_closed()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        lean, self._lean = self._lean, None
        if lean is not None and not lean.is_closed:
            # The broker closes: queued acks leave, the server requeues the rest.
            with contextlib.suppress(BrokerConnectionError):
                lean.flush_acks()
            lean.close_soon()

    def abandon(self) -> None:
        # As aio-pika's channels on the closed connection: dropped, nothing acked or requeued.
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        lean, self._lean = self._lean, None
        if lean is not None:
            lean.abort()

    async def stop(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(BaseException):
                await self._reconnecting
        lean = self._lean
        if lean is not None and not lean.is_closed and not self._broker_closed:
            for tag in list(self._queue_of):
                with contextlib.suppress(Exception):
                    await lean.cancel(tag, timeout=_CLOSE_TIMEOUT)
        self._subscriptions = []
        await super().stop()

    async def _close_channel(self) -> None:
        lean, self._lean = self._lean, None
        self._broker._consumers.discard(self)
        if lean is not None:
            await lean.close(timeout=_CLOSE_TIMEOUT)
