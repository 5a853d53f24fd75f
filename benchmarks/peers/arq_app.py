"""arq: redis-py asyncio, results kept in Redis (its default, ``keep_result`` 3,600 s).

arq pins ``redis<6`` while taskiq-redis needs redis 8 and kombu 5.7 redis>=6.4: it runs from its
own virtualenv (``--python arq=...``, see benchmarks/README.md).

Worker: ``python -m peers.arq_app`` = ``arq.run_worker(WorkerSettings)`` on uvloop with logging
at WARNING (the ``arq`` command logs every job at INFO). ``poll_delay`` is 1 ms instead of the
default 0.5 s: arq's worker sleeps ``poll_delay`` between two reads of the queue, which would
otherwise cap the drain and the round trip. ``max_jobs`` is the concurrency.
The client polls a job's result every 1 ms (``job.result(poll_delay=0.001)``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from peers._common import finished, redis_url, started

DB = 10
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")
SETTINGS = RedisSettings.from_dsn(redis_url(DB))


async def noop(ctx: dict[str, Any]) -> None:
    started()
    finished()


async def sleeper(ctx: dict[str, Any]) -> None:
    started()
    await asyncio.sleep(0.5)
    finished()


async def echo(ctx: dict[str, Any]) -> int:
    return 1


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, sleeper, echo]
    redis_settings = SETTINGS
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "1000"))
    poll_delay = 0.001


def worker_command(workload: str, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "peers.arq_app"]


class Client:
    pool: ArqRedis

    async def open(self) -> None:
        self.pool = await create_pool(SETTINGS)

    async def close(self) -> None:
        await self.pool.aclose()

    async def fill(self, task: str, n: int) -> None:
        for start in range(0, n, 1000):
            await asyncio.gather(*(self.pool.enqueue_job(task) for _ in range(min(1000, n - start))))

    async def enqueue(self) -> None:
        await self.pool.enqueue_job("noop")

    async def round_trip(self) -> None:
        job = await self.pool.enqueue_job("echo")
        assert job is not None
        await job.result(timeout=10, poll_delay=0.001)


if __name__ == "__main__":
    import uvloop
    from arq import run_worker

    logging.basicConfig(level=logging.WARNING)
    uvloop.install()  # arq's Worker takes asyncio.get_event_loop(): this makes it a uvloop loop
    run_worker(WorkerSettings)  # type: ignore[arg-type]
