"""taskiq with taskiq-aio-pika 0.6.1 (``AioPikaBroker``) and taskiq-redis's result backend.

Exchange and classic queue ``bench-taskiq`` (taskiq-aio-pika defaults to a quorum queue named
``taskiq``; classic is what the other frameworks here use), purged before each workload.
aio-pika opens its channels with publisher confirms, so every ``kiq()`` waits for RabbitMQ's
confirm: taskiq-aio-pika has no unconfirmed mode. ``qos`` (the consumer's prefetch) is the
worker's concurrency, as each async task slot can hold one message. Worker and client as in
``taskiq_app`` (one worker child, results polled every 1 ms from Redis DB 11).
"""

from __future__ import annotations

import os
from typing import Any

import aio_pika
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType
from taskiq_redis import RedisAsyncResultBackend

from peers._common import amqp_url, redis_url
from peers.taskiq_app import TaskiqClient, command, define

DB = 11
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")
QUEUE = "bench-taskiq"

backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(redis_url(DB), result_ex_time=3600)
broker = AioPikaBroker(
    amqp_url(),
    exchange=Exchange(name=QUEUE),
    task_queues=[Queue(name=QUEUE, type=QueueType.CLASSIC)],
    qos=int(os.environ.get("BENCH_CONCURRENCY", "1000")),
).with_result_backend(backend)
tasks = define(broker)


async def purge() -> None:
    """Empty taskiq's queue (FLUSHDB does not reach RabbitMQ)."""
    connection = await aio_pika.connect(amqp_url())
    try:
        channel = await connection.channel()
        try:  # passive: taskiq declares it with its own arguments on its first start-up
            queue = await channel.declare_queue(QUEUE, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return
        await queue.purge()
    finally:
        await connection.close()


def worker_command(workload: str, concurrency: int) -> list[str]:
    return command("peers.taskiq_aio_pika_app", concurrency)


class Client(TaskiqClient):
    def __init__(self) -> None:
        super().__init__(broker, tasks)
