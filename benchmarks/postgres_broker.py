"""The postgresql:// broker next to redis:// on this machine, in one invocation (ratios).

Workloads, each run on both brokers with the same messages:

* enqueue, concurrent: N ``publish`` calls in flight at once (50 producers' worth);
* enqueue, batch: ``publish_many`` of N messages in one call;
* drain: consume + ack N waiting messages (prefetch 200), each ack from its own task, as a
  worker's concurrently running jobs do;
* round trip: ``await (await task.enqueue()).get()`` one after another through an in-process
  worker, broker and result backend on the same server.

PostgreSQL runs in a fresh schema, Redis under a fresh key prefix; both are dropped after.

``--bloat N`` instead drains N jobs in waves of 10,000 (publish a wave, drain it) on
PostgreSQL alone and prints the size of the jobs table and its indexes after each wave: with
finished jobs deleted and autovacuum at work, the sizes stay bounded instead of growing with N.

``--long-drain N`` pushes N jobs through one queue (1,000,000 for the figure in the docs):
a producer publishes batches of 1,000 while fewer than ``--backlog`` jobs wait (``--backlog N``:
everything is enqueued before the drain gets going), a consumer drains and acks them, and
``pg_total_relation_size`` of the jobs table, its heap and its indexes are sampled every second.
It prints a line per 100,000 drained and the peak sizes and the drain rate at the end.

PostgreSQL options go in its URL (``--postgres 'postgresql://…/test?synchronous_commit=off'``).

Usage::

    python benchmarks/postgres_broker.py [--count 5000] [--round-trips 300] [--bloat N]
        [--long-drain N [--backlog 20000]]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import asyncpg
from _common import ack_concurrently
from redis.asyncio import Redis

from asyncq import App
from asyncq.brokers import Broker, Delivery, OutgoingMessage, broker_from_url

BODY = b'{"task":"bench.add","args":[1,2],"kwargs":{}}' * 4  # ~200 bytes, a small envelope
PREFETCH = 200
CONCURRENCY = 50


@dataclass
class Target:
    name: str
    broker_url: str
    backend_url: str


def with_option(url: str, key: str, value: str) -> str:
    """``url`` with ``key=value`` added to its query."""
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


def messages(queue: str, count: int) -> list[OutgoingMessage]:
    return [OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=BODY) for _ in range(count)]


async def rate(count: int, op: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await op()
    return count / (time.perf_counter() - started)


async def enqueue_concurrent(broker: Broker, queue: str, count: int) -> float:
    batch = messages(queue, count)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(message: OutgoingMessage) -> None:
        async with gate:
            await broker.publish(message)

    return await rate(count, lambda: _gather(one(m) for m in batch))


async def _gather(coros: object) -> None:
    await asyncio.gather(*coros)  # type: ignore[call-overload]


async def enqueue_batch(broker: Broker, queue: str, count: int) -> float:
    batch = messages(queue, count)
    return await rate(count, lambda: broker.publish_many(batch))


async def drain(broker: Broker, queue: str, count: int) -> float:
    await broker.publish_many(messages(queue, count))
    return await rate(count, lambda: ack_concurrently(broker, queue, count, PREFETCH))


async def round_trips(target: Target, count: int) -> float:
    app = App("bench", broker=target.broker_url, backend=target.backend_url)
    app.conf.task_default_queue = f"bench-rt-{uuid.uuid4().hex[:8]}"

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async def run() -> None:
        for i in range(count):
            assert await (await add.enqueue(i, 1)).get(timeout=30) == i + 1

    try:
        async with app.worker(concurrency=10):
            await (await add.enqueue(0, 0)).get(timeout=30)  # warm up: connections, LISTEN
            return await rate(count, run)
    finally:
        await app.aclose()


async def bench(target: Target, count: int, trips: int) -> dict[str, float]:
    broker = broker_from_url(target.broker_url)
    await broker.connect()
    results: dict[str, float] = {}
    try:
        results["enqueue, concurrent"] = await enqueue_concurrent(
            broker, f"bench-{uuid.uuid4().hex[:8]}", count
        )
        results["enqueue, batch"] = await enqueue_batch(broker, f"bench-{uuid.uuid4().hex[:8]}", count)
        results["drain"] = await drain(broker, f"bench-{uuid.uuid4().hex[:8]}", count)
    finally:
        await broker.aclose()
    results["round trip"] = await round_trips(target, trips)
    return results


WAVE = 10_000


async def bloat(server: str, schema: str, total: int, vacuum_interval: float) -> None:
    url = f"{with_option(server, 'schema', schema)}&vacuum_interval={vacuum_interval}"
    broker = broker_from_url(url)
    await broker.connect()
    conn = await asyncpg.connect(server.split("?")[0], timeout=10)
    table = f'"{schema}".asyncq_jobs'
    sizes = f"SELECT pg_table_size('{table}'), pg_indexes_size('{table}')"
    try:
        print(f"{'drained':>10}{'table KiB':>12}{'indexes KiB':>14}{'jobs/s':>10}")
        done = 0
        while done < total:
            wave = min(WAVE, total - done)
            speed = await drain(broker, "bloat", wave)
            done += wave
            table_bytes, index_bytes = await conn.fetchrow(sizes)
            print(f"{done:>10,}{table_bytes // 1024:>12,}{index_bytes // 1024:>14,}{speed:>10,.0f}")
    finally:
        await conn.close()
        await broker.aclose()


MIB = 1024 * 1024


@dataclass
class Sizes:
    """Peak sizes (bytes) of the jobs table seen by the sampler."""

    total: int = 0
    heap: int = 0
    indexes: int = 0


async def long_drain(server: str, schema: str, total: int, backlog: int, vacuum_interval: float) -> None:
    url = f"{with_option(server, 'schema', schema)}&vacuum_interval={vacuum_interval}"
    broker = broker_from_url(url)
    await broker.connect()
    conn = await asyncpg.connect(server.split("?")[0], timeout=10)
    table = f'"{schema}".asyncq_jobs'
    sizes_sql = (
        f"SELECT pg_total_relation_size('{table}'), pg_table_size('{table}'), pg_indexes_size('{table}')"
    )
    peak = Sizes()
    published = acked = 0
    room = asyncio.Event()  # set while fewer than ``backlog`` jobs wait
    room.set()
    done = asyncio.Event()
    sampling = asyncio.Lock()

    async def produce() -> None:
        nonlocal published
        while published < total:
            await room.wait()
            wave = min(1000, total - published)
            await broker.publish_many(messages("long", wave))
            published += wave
            if published - acked >= backlog:
                room.clear()

    async def measure() -> Sizes:
        async with sampling:  # one statement at a time on ``conn``
            current = Sizes(*await conn.fetchrow(sizes_sql))
        peak.total, peak.heap = max(peak.total, current.total), max(peak.heap, current.heap)
        peak.indexes = max(peak.indexes, current.indexes)
        return current

    async def sample() -> None:
        while True:
            await measure()
            await asyncio.sleep(1.0)

    async def ack(delivery: Delivery) -> None:
        nonlocal acked
        await delivery.ack()
        acked += 1
        if published - acked < backlog:
            room.set()
        if acked % 100_000 == 0 or acked == total:
            current = await measure()
            print(
                f"{acked:>10,}{current.heap / MIB:>10.1f}{current.indexes / MIB:>12.1f}"
                f"{current.total / MIB:>10.1f}{acked / (time.perf_counter() - started):>10,.0f}",
                flush=True,
            )
        if acked == total:
            done.set()

    print(f"{'drained':>10}{'heap MiB':>10}{'indexes MiB':>12}{'total MiB':>10}{'jobs/s':>10}", flush=True)
    started = time.perf_counter()
    jobs: set[asyncio.Task[None]] = set()
    sampler = asyncio.create_task(sample(), name="bench.sample")
    producer = asyncio.create_task(produce(), name="bench.produce")
    try:
        async with aclosing(broker.consume(["long"], prefetch=PREFETCH)) as deliveries:
            async for delivery in deliveries:
                job = asyncio.create_task(ack(delivery), name="bench.ack")
                jobs.add(job)
                job.add_done_callback(jobs.discard)
                if published == total and len(jobs) + acked >= total:
                    break
        await done.wait()
        elapsed = time.perf_counter() - started
        await producer
    finally:
        sampler.cancel()
        producer.cancel()
        await conn.close()
        await broker.aclose()
    print(
        f"{total:,} jobs (backlog {backlog:,}) in {elapsed:,.0f} s: {total / elapsed:,.0f} jobs/s; "
        f"peak sizes: "
        f"heap {peak.heap / MIB:.1f} MiB, indexes {peak.indexes / MIB:.1f} MiB, "
        f"total {peak.total / MIB:.1f} MiB"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--bloat", type=int, default=0, help="drain this many jobs, printing table sizes")
    parser.add_argument("--vacuum-interval", type=float, default=10.0, help="the broker's vacuum_interval")
    parser.add_argument(
        "--long-drain", type=int, default=0, help="push this many jobs through, sampling sizes"
    )
    parser.add_argument("--backlog", type=int, default=20_000, help="--long-drain: most jobs waiting at once")
    args = parser.parse_args()
    schema = f"asyncq_bench_{uuid.uuid4().hex[:8]}"
    if args.bloat or args.long_drain:
        try:
            if args.long_drain:
                await long_drain(args.postgres, schema, args.long_drain, args.backlog, args.vacuum_interval)
            else:
                await bloat(args.postgres, schema, args.bloat, args.vacuum_interval)
        finally:
            conn = await asyncpg.connect(args.postgres.split("?")[0], timeout=10)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()
        return
    prefix = f"asyncq-bench-{uuid.uuid4().hex[:8]}"
    pg_url = with_option(args.postgres, "schema", schema)
    redis_url = with_option(args.redis, "key_prefix", prefix)
    targets = [Target("redis", redis_url, args.redis), Target("postgresql", pg_url, pg_url)]
    table: dict[str, dict[str, float]] = {}
    try:
        for target in targets:
            table[target.name] = await bench(target, args.count, args.round_trips)
    finally:
        conn = await asyncpg.connect(args.postgres.split("?")[0], timeout=10)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
        client = Redis.from_url(args.redis.split("?")[0])
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
        await client.aclose()
    print(f"count={args.count} round_trips={args.round_trips} (per second; ratio = postgresql / redis)")
    print(f"{'workload':<22}{'redis':>12}{'postgresql':>12}{'ratio':>8}")
    for workload, value in table["redis"].items():
        pg = table["postgresql"][workload]
        print(f"{workload:<22}{value:>12,.0f}{pg:>12,.0f}{pg / value:>8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
