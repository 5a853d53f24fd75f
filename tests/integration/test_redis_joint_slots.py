"""A worker's slot stays taken until its task's record and ack are applied on Redis.

Under load a finished task's (record, ack) pair is queued behind the flush in flight and its
job ends at once; the slot is given back only when that flush has been applied, so the
work a worker holds unsettled never exceeds its concurrency. A private redis-server is
paused for writes (CLIENT PAUSE WRITE) to hold every flush back; the shared one is never
touched.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from asyncq import App
from tests.helpers import until
from tests.servers import RedisServer

PAUSE = 1.5
TASKS = 40
CONCURRENCY = 4


async def test_no_task_starts_while_the_slots_wait_on_records_and_acks(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    try:
        app = App("joint-slots", broker=server.url, backend=server.url, config={"result_expires": 60})
        starts: list[float] = []
        paused_from = [0.0]
        done = asyncio.Event()

        @app.task(name="joint.job")
        async def job(i: int) -> int:
            if not starts:
                # Writes stop: from here no record and no ack is applied for PAUSE seconds.
                paused_from[0] = time.monotonic()
                assert server.command("CLIENT", "PAUSE", str(int(PAUSE * 1000)), "WRITE").startswith(b"+OK")
            starts.append(time.monotonic())
            if len(starts) == TASKS:
                done.set()
            return i

        results = [await job.enqueue(i) for i in range(TASKS)]
        worker = app.worker(concurrency=CONCURRENCY, prefetch=TASKS)
        async with worker:
            await asyncio.wait_for(done.wait(), 30)
            assert [await r.get(timeout=30) for r in results] == list(range(TASKS))
            slots = worker._slots
            assert slots is not None
            await until(lambda: slots._value == CONCURRENCY)  # the last flush gives its slots back
        # The first CONCURRENCY ran at once; every later one waited for a slot, which only an
        # applied (record, ack) flush gives back: after the pause.
        resumed = paused_from[0] + PAUSE
        assert sum(start < resumed for start in starts) <= CONCURRENCY, starts
        await app.aclose()
    finally:
        server.stop()
