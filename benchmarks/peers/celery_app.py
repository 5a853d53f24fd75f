"""Celery with its Redis transport and Redis result backend (kombu/redis-py).

Celery runs sync functions; it has no event loop to put on uvloop. Pools, each the fastest
found for its workload here (see benchmarks/README.md):

* drain and round trip: ``--pool solo`` (the task runs in the consumer itself);
* fan-out: ``--pool threads --concurrency 1000`` (``BENCH_CELERY_FANOUT_POOL=gevent`` for the
  gevent pool, where ``time.sleep`` is patched to yield: about 1.8x slower here, as the run is
  bound by Celery's per-task CPU cost, not by the sleeps).

``--without-gossip --without-mingle --without-heartbeat`` turn off cluster chatter that a single
worker does not need. Bulk fill: ``apply_async`` in a loop with the producer's per-task result
subscription switched off (the fill never waits for those results; the worker still stores them).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from celery import Celery

from peers._common import finished, redis_url, started

DB = 9
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")
app = Celery("bench", broker=redis_url(DB), backend=redis_url(DB))
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)


@app.task(name="noop")
def noop() -> None:
    started()
    finished()


@app.task(name="sleeper")
def sleeper() -> None:
    started()
    time.sleep(0.5)
    finished()


@app.task(name="echo")
def echo() -> int:
    return 1


def worker_command(workload: str, concurrency: int) -> list[str]:
    if workload == "fanout":
        pool = os.environ.get("BENCH_CELERY_FANOUT_POOL", "threads")
        pool_args = ["--pool", pool, "--concurrency", str(concurrency)]
    else:
        pool_args = ["--pool", "solo"]
    return [
        *(sys.executable, "-m", "celery", "-A", "peers.celery_app", "worker", *pool_args),
        *("--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]


class Client:
    async def open(self) -> None:
        pass  # Celery connects on first use; the untimed warm-up calls pay for it

    async def close(self) -> None:
        pass  # the producer pool and the result subscription are kept for the next workload

    async def fill(self, task: str, n: int) -> None:
        target = noop if task == "noop" else sleeper
        backend: Any = app.backend
        subscribe = backend.on_task_call
        backend.on_task_call = lambda producer, task_id: None
        try:
            with app.producer_or_acquire() as producer:
                for _ in range(n):
                    target.apply_async(producer=producer)
        finally:
            backend.on_task_call = subscribe

    async def enqueue(self) -> None:
        noop.delay()

    async def round_trip(self) -> None:
        echo.delay().get(timeout=10)
