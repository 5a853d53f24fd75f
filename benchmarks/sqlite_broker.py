"""Throughput of the sqlite:// broker on a temporary file: publish_many, then consume + ack.

Run with ``python benchmarks/sqlite_broker.py [count]``. The consume phase settles each
delivery from its own task, as a worker running jobs concurrently does, so that acks arriving
together are group-committed; a sequential pass (ack awaited before the next delivery) is shown
for comparison.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from contextlib import aclosing
from pathlib import Path

from _common import ack_concurrently

from asyncq.brokers import OutgoingMessage
from asyncq.brokers.sqlite import SQLiteBroker

BODY = b'{"task":"bench.add","args":[1,2],"kwargs":{}}' * 4  # ~200 bytes, a typical small envelope
PREFETCH = 200


async def publish(broker: SQLiteBroker, queue: str, count: int) -> float:
    messages = [OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=BODY) for _ in range(count)]
    started = time.perf_counter()
    await broker.publish_many(messages)
    return count / (time.perf_counter() - started)


async def consume_concurrently(broker: SQLiteBroker, queue: str, count: int) -> float:
    started = time.perf_counter()
    await ack_concurrently(broker, queue, count, PREFETCH)
    return count / (time.perf_counter() - started)


async def consume_sequentially(broker: SQLiteBroker, queue: str, count: int) -> float:
    started = time.perf_counter()
    async with aclosing(broker.consume([queue], prefetch=PREFETCH)) as deliveries:
        for _ in range(count):
            delivery = await anext(deliveries)
            await delivery.ack()
    return count / (time.perf_counter() - started)


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = SQLiteBroker(f"sqlite:///{Path(tmp) / 'bench.db'}")
        await broker.connect()
        try:
            rate = await publish(broker, "bench", count)
            print(f"publish_many          {count:>7} messages  {rate:>10,.0f} msg/s")
            rate = await consume_concurrently(broker, "bench", count)
            print(f"consume + ack (tasks) {count:>7} messages  {rate:>10,.0f} msg/s  prefetch={PREFETCH}")
            await publish(broker, "bench", count)
            rate = await consume_sequentially(broker, "bench", count)
            print(f"consume + ack (serial){count:>7} messages  {rate:>10,.0f} msg/s  prefetch={PREFETCH}")
            assert await broker.queue_length("bench") == 0
        finally:
            await broker.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
