"""Fair queuing: a small tenant's queue wait while a large tenant has a backlog, fair or not.

For each broker (Redis, SQLite, PostgreSQL) and each mode, on a fresh queue:

1. the large tenant publishes ``--big`` messages (100,000 by default), all queued at once;
2. a consumer drains the queue with ``--prefetch`` (acking each message as it comes, as a
   worker does after a no-op task) while the small tenant publishes ``--small`` messages,
   one every ``--interval`` seconds;
3. each small message's wait is the time from its publish to its delivery.

``fair`` gives every message a ``fair_key`` (the tenant); ``fifo`` gives none (publish order,
the baseline). The table shows the small tenant's wait p50 / p99 / max in milliseconds, and
how many large-tenant messages were delivered before the small tenant's last one. What is
left of the backlog is purged afterwards; the Redis keys (own prefix), the SQLite file and
the PostgreSQL schema go too.

Usage::

    python benchmarks/fairness.py [--only redis,sqlite,postgres] [--big 100000] [--small 200]
        [--interval 0.005] [--prefetch 100] [--redis-url redis://127.0.0.1:6379/0]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from contextlib import aclosing
from pathlib import Path

from _common import delete_prefix

from asyncq.brokers import Broker, OutgoingMessage, broker_from_url

CHUNK = 5_000


async def _backlog(broker: Broker, queue: str, count: int, fair: bool) -> None:
    for start in range(0, count, CHUNK):
        await broker.publish_many(
            [
                OutgoingMessage(id=f"big-{i}", queue=queue, body=b"big", fair_key="big" if fair else None)
                for i in range(start, min(count, start + CHUNK))
            ]
        )


async def measure(broker: Broker, args: argparse.Namespace, fair: bool) -> dict[str, float]:
    """One run: the small tenant's waits (seconds) and the large tenant's deliveries before its last."""
    queue = f"fair-{uuid.uuid4().hex[:10]}"
    await _backlog(broker, queue, args.big, fair)
    sent: dict[str, float] = {}
    waits: list[float] = []
    big_before = 0

    async def small_tenant() -> None:
        for i in range(args.small):
            message_id = f"small-{i}"
            sent[message_id] = time.perf_counter()
            fair_key = "small" if fair else None
            await broker.publish(
                OutgoingMessage(id=message_id, queue=queue, body=b"small", fair_key=fair_key)
            )
            await asyncio.sleep(args.interval)

    async def consumer() -> None:
        nonlocal big_before
        async with aclosing(broker.consume([queue], prefetch=args.prefetch)) as deliveries:
            async for delivery in deliveries:
                if delivery.body == b"small":
                    waits.append(time.perf_counter() - sent[delivery.id])
                else:
                    big_before += 1
                await delivery.ack()
                if len(waits) == args.small:
                    return

    producer = asyncio.create_task(small_tenant(), name="bench.small-tenant")
    await consumer()
    await producer
    await broker.purge(queue)
    ordered = sorted(waits)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
        "big_before": big_before,
    }


async def run_broker(
    name: str, url: str, args: argparse.Namespace
) -> list[tuple[str, str, dict[str, float]]]:
    rows = []
    for mode in ("fifo", "fair"):
        broker = broker_from_url(url)
        await broker.connect()
        try:
            rows.append((name, mode, await measure(broker, args, fair=mode == "fair")))
        finally:
            await broker.aclose()
        print(f"  {name} {mode}: done", flush=True)
    return rows


async def _drop_postgres_schema(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    rows: list[tuple[str, str, dict[str, float]]] = []
    if "redis" in only:
        prefix = f"asyncq-bench-fair-{uuid.uuid4().hex[:8]}"
        sep = "&" if "?" in args.redis_url else "?"
        try:
            rows += await run_broker("redis", f"{args.redis_url}{sep}key_prefix={prefix}", args)
        finally:
            await delete_prefix(args.redis_url, prefix)
    if "sqlite" in only:
        with tempfile.TemporaryDirectory() as tmp:
            rows += await run_broker("sqlite", f"sqlite:///{Path(tmp) / 'fair.db'}", args)
    if "postgres" in only:
        schema = f"asyncq_bench_fair_{uuid.uuid4().hex[:8]}"
        sep = "&" if "?" in args.postgres_url else "?"
        try:
            rows += await run_broker("postgres", f"{args.postgres_url}{sep}schema={schema}", args)
        finally:
            await _drop_postgres_schema(args.postgres_url.split("?")[0], schema)
    print()
    print(
        f"small tenant's queue wait ({args.small} messages, one per {args.interval * 1000:g} ms)"
        f" with {args.big:,} large-tenant messages queued, prefetch {args.prefetch}"
    )
    print(f"{'broker':<8} {'mode':<5} {'p50 ms':>10} {'p99 ms':>10} {'max ms':>10} {'big before':>11}")
    for name, mode, r in rows:
        print(
            f"{name:<8} {mode:<5} {r['p50'] * 1000:>10.1f} {r['p99'] * 1000:>10.1f}"
            f" {r['max'] * 1000:>10.1f} {int(r['big_before']):>11,}"
        )
    by = {(name, mode): r for name, mode, r in rows}
    for name in sorted({name for name, _, _ in rows}):
        if (name, "fifo") in by and (name, "fair") in by:
            ratio = by[(name, "fifo")]["p99"] / max(by[(name, "fair")]["p99"], 1e-9)
            print(f"{name}: p99 wait fifo/fair = {ratio:.0f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="redis,sqlite,postgres")
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    asyncio.run(main(parser.parse_args()))
