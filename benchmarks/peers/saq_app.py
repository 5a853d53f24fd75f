"""SAQ (Simple Async Queue) on Redis; it always keeps each job's state in Redis.

Worker: ``saq peers.saq_app.settings --workers 1`` (its default logging level is WARNING).
``settings`` is a callable (SAQ accepts one) that installs uvloop's event-loop policy before
SAQ creates its loop, reads the concurrency from ``BENCH_CONCURRENCY`` and sizes the
connection pool for it (each dequeue loop holds a connection). A round trip is
``queue.enqueue``, then a wait on SAQ's pub/sub job-update channel (``queue.listen``, set up
before the job is read: see ``Client.round_trip``). Bulk fill: ``queue.enqueue`` calls gathered 500 at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

from saq import Queue
from saq.job import TERMINAL_STATUSES

from peers._common import finished, redis_url, started

DB = 13
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")
#: SAQ's drain is fastest with few dequeue loops (20-50 here; 1,000 is about 30% slower).
DRAIN_CONCURRENCY = 50


async def noop(ctx: dict[str, Any]) -> None:
    started()
    finished()


async def sleeper(ctx: dict[str, Any]) -> None:
    started()
    await asyncio.sleep(0.5)
    finished()


async def echo(ctx: dict[str, Any]) -> int:
    return 1


def queue_url() -> str:
    # Each of the worker's `concurrency` dequeue loops blocks on a connection of its own; the
    # pool (redis-py 8: 100 by default, then MaxConnectionsError) must hold them all.
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "1000"))
    return f"{redis_url(DB)}?max_connections={2 * concurrency + 100}"


def settings() -> dict[str, Any]:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return {
        "queue": Queue.from_url(queue_url()),
        "functions": [noop, sleeper, echo],
        "concurrency": int(os.environ.get("BENCH_CONCURRENCY", "1000")),
    }


def worker_command(workload: str, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "saq", "peers.saq_app.settings", "--workers", "1"]


class Client:
    queue: Queue
    _listener: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.queue = Queue.from_url(queue_url())
        await self.queue.connect()
        # SAQ's job-update subscription is shared and closed when its last listener leaves; the
        # next wait then re-subscribes and can miss an update that arrives meanwhile (seen here
        # as 10 s timeouts). A listener that stays keeps the subscription up, as it is in any
        # busy producer.
        self._listener = asyncio.create_task(self.queue.listen(["bench-keepalive"], _never, timeout=None))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.queue.disconnect()

    async def fill(self, task: str, n: int) -> None:
        for start in range(0, n, 500):
            await asyncio.gather(*(self.queue.enqueue(task) for _ in range(min(500, n - start))))

    async def enqueue(self) -> None:
        await self.queue.enqueue("noop")

    async def round_trip(self) -> None:
        # job.refresh(until_complete=...) reads the job, then subscribes: an update published
        # in between is lost (seen here as 10 s timeouts, about 1 in 1,000). Subscribe first,
        # then read, then wait: the same number of round trips, without the race.
        job = await self.queue.enqueue("echo")
        assert job is not None
        waiter = asyncio.create_task(self.queue.listen([job.key], _terminal, timeout=10))
        try:
            await asyncio.sleep(0)  # the waiter registers with the running subscription
            await job.refresh()
            if not job.completed:
                await waiter
                await job.refresh()
        finally:
            waiter.cancel()
        if not job.completed:
            raise TimeoutError(f"{job} not complete")


def _terminal(job_key: str, status: Any) -> bool:
    return status in TERMINAL_STATUSES


def _never(job_key: str, status: Any) -> bool:
    return False
