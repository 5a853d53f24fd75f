"""asyncq on RabbitMQ with rpc:// results (they follow the broker); see asyncq_amqp_redis_app.

Queue ``bench-asyncq`` on the benchmark's shared RabbitMQ server, purged before each workload;
the span timestamps go to Redis (DB 8). Worker and bulk fill as in ``asyncq_app``. Two
producers: ``app`` publishes with confirms (asyncq's default, every ``enqueue()`` waits for
RabbitMQ's confirm) and ``unconfirmed`` with the ``confirm_publish=false`` opt-in.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from asyncq import App
from peers._common import amqp_url, finished, started

DB = 8
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")


def make_app(queue: str, backend: str | None, confirm: bool = True) -> App:
    url = amqp_url() + ("" if confirm else "?confirm_publish=false")
    return App("bench", broker=url, backend=backend, config={"task_default_queue": queue})


def define(app: App) -> dict[str, Any]:
    @app.task(name="noop")
    async def noop() -> None:
        started()
        finished()

    @app.task(name="sleeper")
    async def sleeper() -> None:
        started()
        await asyncio.sleep(0.5)
        finished()

    @app.task(name="echo")
    async def echo() -> int:
        return 1

    return {"noop": noop, "sleeper": sleeper, "echo": echo}


class AmqpBench:
    """One asyncq row: its app (the worker's), its unconfirmed twin, purge and the client."""

    def __init__(self, module: str, queue: str, backend: str | None) -> None:
        self.module = module
        self.app = make_app(queue, backend)
        self.tasks = define(self.app)
        self.unconfirmed = make_app(queue, backend, confirm=False)
        self.unconfirmed_tasks = define(self.unconfirmed)

    async def purge(self) -> None:
        await self.app.purge()
        await self.app.aclose()

    def worker_command(self, workload: str, concurrency: int) -> list[str]:
        return [
            *(sys.executable, "-m", "asyncq", "run", f"{self.module}:app"),
            *("--concurrency", str(concurrency), "--loop", "uvloop", "--log-level", "warning"),
        ]


class AmqpClient:
    def __init__(self, bench: AmqpBench) -> None:
        self.bench = bench

    async def open(self) -> None:
        await self.bench.app.connect()
        await self.bench.unconfirmed.connect()

    async def close(self) -> None:
        await self.bench.app.aclose()
        await self.bench.unconfirmed.aclose()

    async def fill(self, task: str, n: int) -> None:
        target = self.bench.tasks[task]
        for start in range(0, n, 1000):
            await self.bench.app.send_many([target.build_message() for _ in range(min(1000, n - start))])

    async def enqueue(self) -> None:
        await self.bench.tasks["noop"].enqueue()

    async def enqueue_unconfirmed(self) -> None:
        await self.bench.unconfirmed_tasks["noop"].enqueue()

    async def round_trip(self) -> None:
        result = await self.bench.tasks["echo"].enqueue()
        await result.get(timeout=10)


bench = AmqpBench("peers.asyncq_amqp_app", "bench-asyncq", backend=None)
app = bench.app
purge = bench.purge
worker_command = bench.worker_command


class Client(AmqpClient):
    def __init__(self) -> None:
        super().__init__(bench)
