"""Celery on RabbitMQ (its py-amqp transport, ``pyamqp://``) with rpc:// results, its home set-up.

Queue ``bench-celery`` (routing key and exchange of the same name), on the benchmark's shared
RabbitMQ server; purged before each workload. The span timestamps still go to Redis (DB 9).
Pools: threads everywhere, 8 for the drain and the round trip, 1,000 for the fan-out. Not
solo as on Redis: with rpc:// results the solo worker mostly spent 5-35 ms per task (29-199
tasks/s or no span within the wait in six of eight trials, 1,356-1,401/s in two; a 20,000-task
drain then outlasts the 120 s wait, which looked like a worker that never consumed). Solo
with ``ignore_result`` ran 1,280-1,560/s, the threads pool at one thread 550/s and at eight
1,370/s, with results.

Two producers: ``app`` publishes as Celery does by default (no publisher confirms) and
``confirmed`` with ``broker_transport_options={"confirm_publish": True}`` (each publish
waits for RabbitMQ's confirm): the enqueue workload measures both.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from celery import Celery

from peers._common import amqp_url, finished, started

DB = 9
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")
QUEUE = "bench-celery"
#: Threads of the drain and round-trip worker (see the module docstring: not the solo pool).
DRAIN_CONCURRENCY = 8


def make_app(confirm: bool) -> Celery:
    celery = Celery("bench", broker=amqp_url("pyamqp"), backend="rpc://")
    celery.conf.update(
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True} if confirm else {},
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        task_default_exchange=QUEUE,
        task_default_routing_key=QUEUE,
        # rpc:// replies are transient messages to the caller's queue (Celery's default too).
        result_persistent=False,
    )
    return celery


app = make_app(confirm=False)
confirmed = make_app(confirm=True)


def define(celery: Celery) -> dict[str, Any]:
    @celery.task(name="noop")
    def noop() -> None:
        started()
        finished()

    @celery.task(name="sleeper")
    def sleeper() -> None:
        started()
        time.sleep(0.5)
        finished()

    @celery.task(name="echo")
    def echo() -> int:
        return 1

    return {"noop": noop, "sleeper": sleeper, "echo": echo}


tasks = define(app)
confirmed_tasks = define(confirmed)


async def purge() -> None:
    """Empty Celery's queue and this client's rpc:// reply queue (FLUSHDB does not reach them)."""
    backend: Any = app.backend
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        # Declared first, so that a purge before the first worker or caller ran does not fail.
        for queue in (app.amqp.queues[QUEUE], backend.binding):
            queue.bind(channel).declare()
            channel.queue_purge(queue.name)


def worker_command(workload: str, concurrency: int) -> list[str]:
    pool = os.environ.get("BENCH_CELERY_FANOUT_POOL", "threads") if workload == "fanout" else "threads"
    pool_args = ["--pool", pool, "--concurrency", str(concurrency)]
    return [
        *(sys.executable, "-m", "celery", "-A", "peers.celery_amqp_app", "worker", *pool_args),
        *("--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"),
        *("--queues", QUEUE),
    ]


class Client:
    async def open(self) -> None:
        pass  # Celery connects on first use; the untimed warm-up calls pay for it

    async def close(self) -> None:
        pass  # the producer pools and the result consumer are kept for the next workload

    async def fill(self, task: str, n: int) -> None:
        # Unlike on Redis, the producer's result subscription is kept: it declares the
        # caller's rpc:// reply queue, which the worker's result publishes need (without it
        # they are dropped, and were slower still). purge() empties that queue.
        target = tasks[task]
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                target.apply_async(producer=producer)

    async def enqueue(self) -> None:
        confirmed_tasks["noop"].delay()

    async def enqueue_unconfirmed(self) -> None:
        tasks["noop"].delay()

    async def round_trip(self) -> None:
        tasks["echo"].delay().get(timeout=10)
