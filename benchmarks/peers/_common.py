"""What every framework's tasks share: the span recorder and the Redis URL of each framework.

The worker process records the wall-clock time at which its first measured task started and
at which its ``BENCH_TARGET``-th task finished, then writes both to ``SPAN_KEY`` in one SET.
That costs two ``time.time()`` calls and a counter increment per task (the same for every
framework) and keeps the driver's polling and the worker's start-up out of the measurement.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any

#: Where the driver looks for ``[first_start, last_finish, count]``.
SPAN_KEY = "bench:span"

#: The RabbitMQ rows of ``compare_redis.py --broker rabbitmq`` and ``rabbitmq_floor.py``:
#: row -> module here (the bare ceiling is a reference row, not a peer).
RABBITMQ_MODULES = {
    "asyncq": "peers.asyncq_amqp_app",
    "asyncq+redis-results": "peers.asyncq_amqp_redis_app",
    "celery": "peers.celery_amqp_app",
    "dramatiq": "peers.dramatiq_amqp_app",
    "taskiq-aio-pika": "peers.taskiq_aio_pika_app",
    "aiormq-bare": "peers.aiormq_ceiling",
}

_target = int(os.environ.get("BENCH_TARGET", "0"))
_first_start: list[float] = []
_finished = itertools.count(1)  # next() is atomic under the GIL: safe in thread and gevent pools


def redis_url(db: int) -> str:
    """The URL of database ``db`` on the benchmark's Redis (``BENCH_REDIS``, default local)."""
    base = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379").rstrip("/")
    return f"{base}/{db}"


def started() -> None:
    """Call first thing in a measured task."""
    if not _first_start:
        _first_start.append(time.time())


def finished() -> None:
    """Call last thing in a measured task; the target-th call stores the span."""
    count = next(_finished)
    if count == _target:
        _store_span([_first_start[0], time.time(), count])


def _store_span(span: list[Any]) -> None:
    import redis  # the synchronous client: one call per run, from any kind of worker

    client = redis.Redis.from_url(os.environ["BENCH_SPAN_URL"])
    try:
        client.set(SPAN_KEY, json.dumps(span), ex=3600)
    finally:
        client.close()


def amqp_url(scheme: str = "amqp") -> str:
    """The benchmark's RabbitMQ (``BENCH_AMQP``, default local), with ``scheme`` (pyamqp, ...)."""
    url = os.environ.get("BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
    return scheme + url[url.index("://") :]
