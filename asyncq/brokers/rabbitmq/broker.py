"""The RabbitMQ broker class: options, consuming and queue inspection (see the package docstring)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from aio_pika.abc import AbstractRobustChannel

from asyncq.brokers._kit import check_consume
from asyncq.brokers.base import Delivery
from asyncq.brokers.rabbitmq.consumer import Consumer
from asyncq.brokers.rabbitmq.dead_letters import DeadLetters
from asyncq.brokers.rabbitmq.lean_consumer import LeanConsumer
from asyncq.brokers.rabbitmq.wire import DELAY_LEVELS_MS, level_name

__all__ = ["RabbitMQBroker"]


class RabbitMQBroker(DeadLetters):
    """``amqp://`` / ``amqps://``: RabbitMQ through aio-pika, with a robust connection.

    Options (keyword or URL query; keywords win):

    * ``exchange`` ("asyncq"): the exchange messages are published to; "" uses the default
      exchange (routing key = queue name, no bindings).
    * ``exchange_type`` ("direct"): "direct" or "topic". Each queue is bound with its own name;
      with "topic" you may add wildcard bindings of your own.
    * ``queue_type`` ("classic"): "classic" (priorities 0-9, x-max-priority 10) or "quorum"
      (replicated; no priorities in this driver's contract).
    * ``max_deliveries`` (200): a message delivered this many times in a row to consumers that
      died (or closed) without settling it is moved to ``<queue>.dead``. Quorum queues enforce
      it in the server (x-delivery-limit = max_deliveries - 1); on classic queues the next
      consumer enforces it. Retries (``nack``) reset the run. It is a backstop above the
      worker's own poison rule (worker_max_deliveries isolated crashes, or 20 x that many
      deliveries): a limit counted by the transport also counts the deaths a healthy message
      only witnessed, so it must not be the one that decides.
    * ``publish_timeout`` (30.0 s): how long a publish waits for the broker's confirm, reconnects
      included, before raising BrokerConnectionError.
    * ``connect_timeout`` (10.0 s; the App passes ``broker_connection_timeout``): how long the
      first connect, AMQP handshake included, may take before BrokerConnectionError names
      the address and what answered there.
    * ``connection_name`` ("asyncq"): shown in the management UI and ``rabbitmqctl``.
    * ``client`` ("lean"): what carries the consumers' deliveries and acks: "lean", an AMQP
      connection of asyncq's own per ``consume()`` (:mod:`asyncq._amqp.protocol`), or
      "aio-pika", a robust aio-pika channel on the broker's connection.
    * ``visibility_timeout``: accepted and ignored; an AMQP delivery is held for as long as the
      consumer's channel lives (see RabbitMQ's ``consumer_timeout``).
    * Client options passed through to aio-pika: ``heartbeat`` (60 s), ``timeout``,
      ``reconnect_interval`` (1.0 s here; aio-pika's own default is 5), ``name``, ``auth``,
      ``cafile``, ``capath``, ``cadata``, ``keyfile``, ``certfile``, ``no_verify_ssl``, ``fail_fast``.

    Attributes:
        server_version: RabbitMQ's version string, known after ``connect()``.
    """

    async def consume(self, queues: Sequence[str], *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        """Yield deliveries from ``queues``; at most ``prefetch`` unsettled (basic.qos)."""
        queues = check_consume(queues, prefetch)
        for queue in queues:
            await self._declare(queue)
        consumer = (LeanConsumer if self.client == "lean" else Consumer)(self, queues, prefetch)
        self._consumers.add(consumer)
        try:
            await consumer.start()
            while True:
                yield await consumer.next()
        finally:
            await consumer.stop()

    async def _counts(self, queue: str, *, purge: bool) -> int:
        # queue.declare answers with the count of ready messages, so re-declaring (idempotent)
        # counts without the management plugin. Delay queues have no consumers: all ready.
        await self._declare_delays(queue)
        queues = [(queue, self._work_arguments(queue))]
        queues += [
            (level_name(queue, level), self._delay_arguments(queue, level)) for level in DELAY_LEVELS_MS
        ]

        async def count(channel: AbstractRobustChannel) -> int:
            total = 0
            for name, arguments in queues:
                declared = await channel.declare_queue(name, durable=True, arguments=arguments, robust=False)
                if purge:
                    total += (await declared.purge()).message_count or 0
                else:
                    total += declared.declaration_result.message_count or 0
            return total

        return await self._on_admin(f"{'purge' if purge else 'count'} queue {queue!r}", count)

    async def purge(self, queue: str) -> int:
        """Drop the ready and delayed messages of ``queue`` (not in-flight or dead ones)."""
        return await self._counts(queue, purge=True)

    async def queue_length(self, queue: str) -> int:
        """Ready messages of ``queue`` plus those waiting in its delay queues."""
        return await self._counts(queue, purge=False)
