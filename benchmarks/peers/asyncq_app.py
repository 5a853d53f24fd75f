"""asyncq: one app on its own Redis database, which also holds the results (or another broker).

Worker: ``asyncq run peers.asyncq_app:app --concurrency N --loop uvloop --log-level warning``.
Bulk fill: ``app.send_many`` in batches of 1,000 (pipelined publish scripts).
"""

from __future__ import annotations

import asyncio
import os
import sys

from asyncq import App
from peers._common import finished, redis_url, started

DB = 8
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")
# --asyncq-broker (e.g. amqp://...) moves asyncq's queue (a queue of its own on that shared
# server); results then follow the broker (rpc://) unless BENCH_ASYNCQ_BACKEND names one
# (e.g. "redis" for this app's Redis database).
BROKER = os.environ.get("BENCH_ASYNCQ_BROKER")
BACKEND = os.environ.get("BENCH_ASYNCQ_BACKEND")
app = App(
    "bench",
    broker=BROKER or redis_url(DB),
    backend=redis_url(DB) if BACKEND == "redis" else BACKEND,
    config={"task_default_queue": "bench-asyncq"} if BROKER else {},
)


@app.task
async def noop() -> None:
    started()
    finished()


@app.task
async def sleeper() -> None:
    started()
    await asyncio.sleep(0.5)
    finished()


@app.task
async def echo() -> int:
    return 1


async def purge() -> None:
    """Empty asyncq's queue when it lives on another broker (FLUSHDB does not reach it)."""
    if BROKER:
        await app.purge()
        await app.aclose()


def worker_command(workload: str, concurrency: int) -> list[str]:
    return [
        *(sys.executable, "-m", "asyncq", "run", "peers.asyncq_app:app"),
        *("--concurrency", str(concurrency), "--loop", "uvloop", "--log-level", "warning"),
    ]


class Client:
    async def open(self) -> None:
        await app.connect()

    async def close(self) -> None:
        await app.aclose()

    async def fill(self, task: str, n: int) -> None:
        target = noop if task == "noop" else sleeper
        for start in range(0, n, 1000):
            await app.send_many([target.build_message() for _ in range(min(1000, n - start))])

    async def enqueue(self) -> None:
        await noop.enqueue()

    async def round_trip(self) -> None:
        result = await echo.enqueue()
        await result.get(timeout=10)
