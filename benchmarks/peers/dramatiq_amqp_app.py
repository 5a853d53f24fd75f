"""dramatiq on RabbitMQ (``RabbitmqBroker``, pika), results through its Results middleware in Redis.

dramatiq is synchronous: a worker process runs actors on threads (``dramatiq
peers.dramatiq_amqp_app --processes 1 --threads N``), so the fan-out sleeps with ``time.sleep``
on 1,000 threads, as Celery's does. Queue ``bench-dramatiq`` (and dramatiq's ``.DQ``/``.XQ``),
purged before each workload. dramatiq has no rpc:// result backend: the round trip stores the
result with ``RedisBackend`` (DB 14, which also holds the span) and waits on it with
``message.get_result(block=True)`` (a blocking pop, no polling).

Two producers: ``broker`` publishes as dramatiq does by default (no publisher confirms; the
worker's broker) and ``confirmed`` is ``RabbitmqBroker(confirm_delivery=True)``: the enqueue
workload measures both. Bulk fill: ``actor.send()`` in a loop on the unconfirmed broker.
"""

from __future__ import annotations

import contextlib
import sys
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from peers._common import amqp_url, finished, redis_url, started

DB = 14
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")
#: Threads of the drain and round-trip worker (dramatiq's default is 8; more only add GIL contention).
DRAIN_CONCURRENCY = 8
QUEUE = "bench-dramatiq"

results = RedisBackend(url=redis_url(DB))
broker = RabbitmqBroker(url=amqp_url())
broker.add_middleware(Results(backend=results))
dramatiq.set_broker(broker)
confirmed = RabbitmqBroker(url=amqp_url(), confirm_delivery=True)


@dramatiq.actor(actor_name="noop", queue_name=QUEUE, max_retries=0)
def noop() -> None:
    started()
    finished()


@dramatiq.actor(actor_name="sleeper", queue_name=QUEUE, max_retries=0)
def sleeper() -> None:
    started()
    time.sleep(0.5)
    finished()


@dramatiq.actor(actor_name="echo", queue_name=QUEUE, max_retries=0, store_results=True)
def echo() -> int:
    return 1


def reconnect(rabbitmq: RabbitmqBroker) -> None:
    """Drop this thread's connection; the next call opens a new one.

    pika's BlockingConnection answers heartbeats only while it is used: one left idle through
    the other frameworks' runs is closed by RabbitMQ, and dramatiq does not reopen it by itself.
    """
    rabbitmq.close()
    with contextlib.suppress(Exception):
        del rabbitmq.connection


async def purge() -> None:
    """Empty dramatiq's queues (FLUSHDB does not reach RabbitMQ)."""
    reconnect(broker)
    broker.flush_all()


def worker_command(workload: str, concurrency: int) -> list[str]:
    return [
        *(sys.executable, "-m", "dramatiq", "peers.dramatiq_amqp_app"),
        *("--processes", "1", "--threads", str(concurrency)),
    ]


class Client:
    async def open(self) -> None:
        pass  # pika connects on first use; the untimed warm-up calls pay for it

    async def close(self) -> None:
        reconnect(broker)
        reconnect(confirmed)

    async def fill(self, task: str, n: int) -> None:
        target = noop if task == "noop" else sleeper
        for _ in range(n):
            target.send()

    async def enqueue(self) -> None:
        confirmed.enqueue(noop.message())

    async def enqueue_unconfirmed(self) -> None:
        noop.send()

    async def round_trip(self) -> None:
        echo.send().get_result(backend=results, block=True, timeout=10_000)
