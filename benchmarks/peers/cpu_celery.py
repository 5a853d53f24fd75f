"""Celery for ``benchmarks/compare_cpu.py``: prefork for CPU tasks, threads (or gevent) for io.

CPU tasks go to queue ``cpu``, io tasks to ``io``. CPU workload: one prefork worker,
``-c <cores>``. Mixed workload: Celery has no pool that runs both well (prefork blocks a child
per 0.5 s sleep, a threads or gevent pool runs the CPU tasks under one GIL), so its best
configuration is two workers: prefork ``-c <cores>`` on ``cpu`` and ``--pool threads -c 1000``
on ``io`` (``BENCH_CELERY_IO_POOL=gevent`` for gevent). Results are not stored.
"""

from __future__ import annotations

import os
import sys
import time

from celery import Celery

from peers._common import redis_url
from peers._span import burn, loops, record

DB = 3
CORES = int(os.environ.get("BENCH_CORES") or os.cpu_count() or 1)
app = Celery("benchcpu", broker=redis_url(DB))
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_routes={"crunch": {"queue": "cpu"}, "wait": {"queue": "io"}},
)


@app.task(name="crunch")
def crunch() -> None:
    start = time.time()
    burn(loops())
    record(start)


@app.task(name="wait")
def wait() -> None:
    start = time.time()
    time.sleep(0.5)
    record(start)


def _worker(name: str, queue: str, *pool: str) -> list[str]:
    return [
        *(sys.executable, "-m", "celery", "-A", "peers.cpu_celery", "worker", "-n", f"{name}@%h"),
        *("-Q", queue, *pool, "--loglevel", "WARNING"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]


def variants(workload: str, concurrency: int) -> dict[str, list[list[str]]]:
    prefork = _worker("cpu", "cpu", "--pool", "prefork", "--concurrency", str(CORES))
    if workload == "cpu":
        return {f"prefork -c {CORES}": [prefork]}
    io_pool = os.environ.get("BENCH_CELERY_IO_POOL", "threads")
    io = _worker("io", "io", "--pool", io_pool, "--concurrency", str(concurrency))
    return {f"prefork -c {CORES} + {io_pool} -c {concurrency}": [prefork, io]}


async def fill(kinds: list[str]) -> None:
    with app.producer_or_acquire() as producer:
        for kind in kinds:
            (crunch if kind == "cpu" else wait).apply_async(producer=producer)
