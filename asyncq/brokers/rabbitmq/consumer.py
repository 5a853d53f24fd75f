"""Consuming from RabbitMQ: the deliveries handed out and the state behind one ``consume()``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue

from asyncq._amqp import CopyGuard, ack, delivered, flush_acks, is_stale, requeue, translate_errors
from asyncq._amqp.acks import Message
from asyncq._utils import now
from asyncq.brokers._kit import PrefetchGate, SettleOnce
from asyncq.brokers.base import Delivery
from asyncq.brokers.rabbitmq.publisher import Publisher
from asyncq.brokers.rabbitmq.wire import H_COPY, H_DELIVERIES, H_ETA, H_RETURNS, carried_headers, int_header
from asyncq.exceptions import BrokerConnectionError

__all__ = ["Consumer", "RabbitMQDelivery"]

log = logging.getLogger("asyncq.brokers.rabbitmq")


class RabbitMQDelivery:
    """One message delivered from a RabbitMQ queue; settle it once with ack, nack or dead_letter."""

    __slots__ = ("_broker", "_message", "_once", "body", "delivery_count", "id", "queue")

    def __init__(
        self,
        broker: Publisher,
        message: Message,
        queue: str,
        delivery_count: int,
        gate: PrefetchGate,
    ) -> None:
        self._broker, self._message = broker, message
        self.id = message.message_id or ""
        self._once = SettleOnce(self.id, gate)
        self.queue = queue
        self.body = message.body
        self.delivery_count = delivery_count

    def _settle(self) -> None:
        self._once.settle()  # frees the iterator's prefetch slot whatever happens next

    async def ack(self) -> None:
        self._settle()
        if is_stale(self._message):
            raise BrokerConnectionError(
                f"cannot ack message {self.id}: the channel that delivered it is gone, "
                "so RabbitMQ will deliver it again"
            )
        with translate_errors(f"ack message {self.id}"):
            await ack(self._message)

    async def nack(self, *, delay: float | None = None) -> None:
        self._settle()
        headers = carried_headers(self._message.headers)
        headers[H_DELIVERIES] = self.delivery_count
        headers.pop(H_RETURNS, None)  # settled: the run of lost deliveries is over
        headers.pop(H_ETA, None)
        priority = self._broker._priority_of(self._message)
        eta = now() + delay if delay is not None and delay > 0 else None
        route = self._broker._route(
            self.id, self.queue, self.body, priority, eta, headers, via_exchange=False
        )
        await self._broker._replace(self._message, route, f"nack message {self.id}")

    async def dead_letter(self, reason: str) -> None:
        self._settle()
        await self._broker._dead_letter(self._message, self.queue, reason)


class Consumer:
    """The state behind one ``consume()`` iterator: its channel, buffer and unsettled count.

    The server pushes at most ``prefetch`` unacked messages per consumer (per channel when
    several classic queues are consumed: global QoS). Quorum queues refuse global QoS, so with
    several quorum queues the server may push ``prefetch`` per queue; the buffer then holds the
    surplus and the iterator still yields at most ``prefetch`` unsettled deliveries.
    """

    def __init__(self, broker: Publisher, queues: Sequence[str], prefetch: int) -> None:
        self._broker = broker
        self._queues = list(dict.fromkeys(queues))
        self._buffer: asyncio.Queue[tuple[str, Message] | None] = asyncio.Queue()
        self._gate = PrefetchGate(prefetch, self._on_release)
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel: AbstractRobustChannel | None = None
        self._subscriptions: list[tuple[AbstractRobustQueue, str]] = []
        self._closing = False
        self._broker_closed = False

    async def start(self) -> None:
        broker = self._broker
        connection = await broker._ready()
        with translate_errors(f"consume from {', '.join(self._queues)}"):
            channel = await connection.channel(publisher_confirms=False)
            self._channel = channel
            is_classic = broker.queue_type == "classic"
            await channel.set_qos(
                # prefetch-count is a 16-bit field; above that the iterator's own count bounds it.
                prefetch_count=min(self._gate.prefetch, 65535),
                global_=is_classic and len(self._queues) > 1,
            )
            for name in self._queues:
                # Declared on this channel as "robust": aio-pika re-declares the queue and
                # resumes the consumer (same tag, same callback) after a reconnect.
                queue = await channel.declare_queue(
                    name, durable=True, arguments=broker._work_arguments(name)
                )
                tag = await queue.consume(functools.partial(self._on_message, name))
                self._subscriptions.append((queue, tag))

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, queue: str, message: AbstractIncomingMessage) -> None:
        # aio-pika runs this in a task per delivery, started in delivery order; it must not
        # await before putting the message in the buffer, or deliveries could be reordered.
        self._route_delivery(queue, message)

    def _route_delivery(self, queue: str, message: Message) -> None:
        """Buffer a delivery, or start its bookkeeping (requeue, leftover, hop, count-lost)."""
        delivered(message)
        if self._closing:
            self._spawn(requeue(message), "asyncq.rabbitmq.requeue")
            return
        broker = self._broker
        if message.redelivered and broker._copies.was_copied(CopyGuard.incarnation(message, H_COPY)):
            self._spawn(broker._drop_leftover(message), "asyncq.rabbitmq.drop-leftover")
            return
        headers = message.headers
        eta_ms = int_header(headers, H_ETA)
        if eta_ms and eta_ms > now() * 1000:
            self._spawn(self._broker._hop(message, queue), "asyncq.rabbitmq.hop")
            return
        if message.redelivered and self._broker.queue_type == "classic":
            self._spawn(self._broker._count_lost(message, queue), "asyncq.rabbitmq.count-lost")
            return
        self._buffer.put_nowait((queue, message))

    def _on_release(self) -> None:
        if self._closing and self._gate.unsettled == 0:
            self._spawn(self._close_channel(), "asyncq.rabbitmq.close-consumer")

    def _delivery_count(self, message: Message) -> int:
        headers = message.headers
        count = int_header(headers, H_DELIVERIES) + 1
        if message.redelivered:
            # Quorum queues count returns themselves; the header is only trustworthy on a
            # redelivery (a first delivery keeps whatever header the publisher sent).
            count += max(1, int_header(headers, "x-delivery-count"))
        return count

    async def next(self) -> Delivery:
        while True:
            await self._gate.wait()
            item = None if self._broker_closed else await self._buffer.get()
            if item is None:
                raise BrokerConnectionError("the RabbitMQ broker was closed while consuming")
            queue, message = item
            # Not while a re-publish's original is unacked: see CopyGuard.
            await self._broker._copies.wait_idle()
            if is_stale(message):
                continue  # delivered on a channel that died since: the server redelivers it
            self._gate.take()
            return RabbitMQDelivery(self._broker, message, queue, self._delivery_count(message), self._gate)

    def wake_closed(self) -> None:
        """The broker is closing: make a waiting ``next()`` raise instead of hanging."""
        self._broker_closed = True
        self._buffer.put_nowait(None)
        self._gate.wake()

    def abandon(self) -> None:
        """The broker's connection was closed for good: its channels, this one's included, are gone."""

    async def stop(self) -> None:
        """Stop consuming; return buffered messages; close the channel once all are settled."""
        self._closing = True
        if self._broker_closed:
            return
        for queue, tag in self._subscriptions:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        while not self._buffer.empty():
            item = self._buffer.get_nowait()
            if item is not None:
                await requeue(item[1])
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._gate.unsettled == 0:
            await self._close_channel()
        # Otherwise the last settle closes it: yielded deliveries stay valid until settled.

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        self._broker._consumers.discard(self)
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                flush_acks(cast(aiormq.Channel, await channel.get_underlay_channel()))
                await channel.close()
