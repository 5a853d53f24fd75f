"""taskiq with taskiq-redis: ``RedisStreamBroker`` (here) and ``ListQueueBroker`` (taskiq_list_app).

Results go to ``RedisAsyncResultBackend`` on the same database. The worker,
``taskiq worker peers.taskiq_app:broker --workers 1 --max-async-tasks N --log-level WARNING``,
is a supervisor process plus ONE worker child; taskiq puts that child on uvloop by itself when
uvloop is installed. The client waits for a result by polling every 1 ms
(``wait_result(check_interval=0.001)``); taskiq has no push notification of results.
Bulk fill: ``kiq()`` calls gathered 500 at a time.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from taskiq import AsyncBroker
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from peers._common import finished, redis_url, started

DB = 11
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")


def define(broker: AsyncBroker) -> dict[str, Any]:
    """Register the benchmark's tasks on ``broker``."""

    @broker.task(task_name="noop")
    async def noop() -> None:
        started()
        finished()

    @broker.task(task_name="sleeper")
    async def sleeper() -> None:
        started()
        await asyncio.sleep(0.5)
        finished()

    @broker.task(task_name="echo")
    async def echo() -> int:
        return 1

    return {"noop": noop, "sleeper": sleeper, "echo": echo}


def make_broker(kind: str, db: int) -> AsyncBroker:
    url = redis_url(db)
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(url, result_ex_time=3600)
    if kind == "stream":
        return RedisStreamBroker(url).with_result_backend(backend)
    return ListQueueBroker(url).with_result_backend(backend)


broker = make_broker("stream", DB)
tasks = define(broker)


def command(module: str, concurrency: int) -> list[str]:
    return [
        *(sys.executable, "-m", "taskiq", "worker", f"{module}:broker", "--workers", "1"),
        *("--max-async-tasks", str(concurrency), "--log-level", "WARNING"),
    ]


def worker_command(workload: str, concurrency: int) -> list[str]:
    return command("peers.taskiq_app", concurrency)


class TaskiqClient:
    def __init__(self, broker: AsyncBroker, tasks: dict[str, Any]) -> None:
        self.broker = broker
        self.tasks = tasks

    async def open(self) -> None:
        await self.broker.startup()  # the stream broker creates its consumer group here

    async def close(self) -> None:
        await self.broker.shutdown()

    async def fill(self, task: str, n: int) -> None:
        target = self.tasks[task]
        for start in range(0, n, 500):
            await asyncio.gather(*(target.kiq() for _ in range(min(500, n - start))))

    async def enqueue(self) -> None:
        await self.tasks["noop"].kiq()

    async def round_trip(self) -> None:
        handle = await self.tasks["echo"].kiq()
        result = await handle.wait_result(check_interval=0.001, timeout=10)
        result.raise_for_error()


class Client(TaskiqClient):
    def __init__(self) -> None:
        super().__init__(broker, tasks)
