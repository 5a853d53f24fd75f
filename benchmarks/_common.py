"""What several benchmark scripts share: counting runs, batched enqueue, acks, Redis cleanup.

Scripts import it as ``from _common import ...``: run as ``python benchmarks/x.py``, a script
has this folder first on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import aclosing

from asyncq import App
from asyncq.brokers import Broker, Delivery
from asyncq.message import Message


class Countdown:
    """Counts task runs: ``done`` is set at the n-th; ``first``/``first_cpu`` mark the first run."""

    def __init__(self, n: int) -> None:
        self.n, self.count = n, 0
        self.done = asyncio.Event()
        self.first = self.first_cpu = 0.0

    def tick(self) -> None:
        if self.count == 0:
            self.first, self.first_cpu = time.perf_counter(), time.process_time()
        self.count += 1
        if self.count == self.n:
            self.done.set()


async def send_all(app: App, messages: Sequence[Message], batch: int = 1000) -> None:
    """Enqueue ``messages`` with ``send_many``, ``batch`` at a time."""
    for start in range(0, len(messages), batch):
        await app.send_many(messages[start : start + batch])


async def ack_concurrently(broker: Broker, queue: str, count: int, prefetch: int) -> None:
    """Take ``count`` deliveries from ``queue``, ack each from a task of its own, wait for all."""
    acks = Countdown(count)
    jobs: set[asyncio.Task[None]] = set()

    async def job(delivery: Delivery) -> None:
        await delivery.ack()
        acks.tick()

    async with aclosing(broker.consume([queue], prefetch=prefetch)) as deliveries:
        taken = 0
        async for delivery in deliveries:
            task = asyncio.create_task(job(delivery), name="bench.ack")
            jobs.add(task)
            task.add_done_callback(jobs.discard)
            taken += 1
            if taken == count:
                break
        await acks.done.wait()


async def ack_in_order(broker: Broker, queue: str, count: int, prefetch: int) -> float:
    """Take ``count`` deliveries from ``queue``, acking each before the next; seconds taken."""
    started = time.perf_counter()
    async with aclosing(broker.consume([queue], prefetch=prefetch)) as deliveries:
        seen = 0
        async for delivery in deliveries:
            await delivery.ack()
            seen += 1
            if seen == count:
                break
    return time.perf_counter() - started


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every Redis key under ``prefix:`` (what a run left on the shared server)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()
