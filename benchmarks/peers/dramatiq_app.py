"""dramatiq's Redis broker: measured for the single-call enqueue only (``actor.send()``).

dramatiq is synchronous (a thread-pool worker, no asyncio); its enqueue is one Lua script
call over redis-py's blocking client. Results need a middleware and a backend of their own,
so the worker workloads are left out.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from peers._common import redis_url

DB = 14
WORKLOADS = ("enqueue",)
broker = RedisBroker(url=redis_url(DB))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop")
def noop() -> None:
    pass


def worker_command(workload: str, concurrency: int) -> list[str]:
    raise NotImplementedError("dramatiq is measured for enqueue only")


class Client:
    async def open(self) -> None:
        broker.client.ping()

    async def close(self) -> None:
        broker.client.close()

    async def fill(self, task: str, n: int) -> None:
        raise NotImplementedError("dramatiq is measured for enqueue only")

    async def enqueue(self) -> None:
        noop.send()

    async def round_trip(self) -> None:
        raise NotImplementedError("dramatiq is measured for enqueue only")
