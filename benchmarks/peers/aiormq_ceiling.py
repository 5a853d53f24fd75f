"""The bare confirmed-publish ceiling: persistent publishes straight on an aiormq channel.

No framework: one message at a time, each awaiting RabbitMQ's publisher confirm, on a queue of
its own (``bench-ceiling``), the way ``benchmarks/rabbitmq_broker.py`` measures it beside
asyncq's driver. A 200-byte body with a message id, about the size of a framework's message.
``compare_redis.py --broker rabbitmq`` and ``rabbitmq_floor.py`` interleave it with the enqueues:
the reference, not a peer.
"""

from __future__ import annotations

import uuid

import aiormq
from pamqp.commands import Basic

from peers._common import amqp_url

QUEUE = "bench-ceiling"
BODY = b"x" * 200


async def publish_confirmed(channel: aiormq.abc.AbstractChannel, queue: str, body: bytes = BODY) -> None:
    """One persistent publish, awaiting its confirm (the channel has publisher confirms on)."""
    properties = Basic.Properties(delivery_mode=2, message_id=uuid.uuid4().hex)
    await channel.basic_publish(body, routing_key=queue, properties=properties)


async def purge() -> None:
    connection = await aiormq.connect(amqp_url())
    try:
        channel = await connection.channel()
        await channel.queue_declare(QUEUE, durable=True)
        await channel.queue_purge(QUEUE)
    finally:
        await connection.close()


class Client:
    connection: aiormq.abc.AbstractConnection
    channel: aiormq.abc.AbstractChannel

    async def open(self) -> None:
        self.connection = await aiormq.connect(amqp_url())
        self.channel = await self.connection.channel(publisher_confirms=True)

    async def close(self) -> None:
        await self.connection.close()

    async def enqueue(self) -> None:
        await publish_confirmed(self.channel, QUEUE)
