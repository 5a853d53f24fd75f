"""Raw throughput of the redis:// broker driver (no worker, no serializer).

Measures, on a unique key prefix that is deleted afterwards:

* publish_many: N messages in one call (pipelined script calls of batch_size messages);
* publish, sequential: one awaited call after another (one round trip each);
* publish, concurrent: N calls in flight at once (group commit shares round trips);
* consume + ack: drain N messages with ``prefetch``, acking either inline (``await ack()``
  before taking the next: the worst case) or from one task per message, as a worker's
  concurrently running jobs do (acks that arrive together share a round trip).

Usage::

    python benchmarks/redis_broker.py [--url redis://127.0.0.1:6379/0] [--count 20000]
        [--prefetch 500] [--body 64] [--uvloop] [--profile consume]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import pstats
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from redis.asyncio import Redis

from asyncq.brokers import Broker, OutgoingMessage, broker_from_url


def messages(queue: str, count: int, body: bytes) -> list[OutgoingMessage]:
    return [OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body) for _ in range(count)]


async def timed(label: str, count: int, op: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await op()
    elapsed = time.perf_counter() - started
    rate = count / elapsed
    print(f"{label:<44} {count:>7} msgs  {elapsed * 1000:9.1f} ms  {rate:>10,.0f} msg/s")
    return rate


async def drain(broker: Broker, queue: str, count: int, prefetch: int, *, concurrent_acks: bool) -> None:
    received = 0
    acks: set[asyncio.Task[None]] = set()
    async with aclosing(broker.consume([queue], prefetch=prefetch)) as it:
        async for delivery in it:
            received += 1
            if concurrent_acks:
                task = asyncio.create_task(delivery.ack(), name="bench.ack")
                acks.add(task)
                task.add_done_callback(acks.discard)
            else:
                await delivery.ack()
            if received == count:
                break
    if acks:
        await asyncio.gather(*acks)
    assert await broker.queue_length(queue) == 0


async def main(args: argparse.Namespace) -> None:
    prefix = f"asyncq-bench-{uuid.uuid4().hex[:8]}"
    broker = broker_from_url(args.url, key_prefix=prefix, batch_size=args.batch)
    await broker.connect()
    body = b"x" * args.body
    n = args.count
    profiler = cProfile.Profile() if args.profile else None
    try:
        print(
            f"redis broker, {n} messages of {args.body} bytes, prefetch {args.prefetch}, batch {args.batch}"
        )
        queue = "bench-publish-many"
        batch = messages(queue, n, body)
        await timed("publish_many (one call)", n, lambda: broker.publish_many(batch))
        await broker.purge(queue)

        queue = "bench-publish-seq"
        seq = messages(queue, min(n, args.sequential), body)

        async def publish_sequentially() -> None:
            for message in seq:
                await broker.publish(message)

        await timed("publish (sequential awaits)", len(seq), publish_sequentially)
        await broker.purge(queue)

        queue = "bench-publish-conc"
        conc = messages(queue, n, body)

        async def publish_concurrently() -> None:
            await asyncio.gather(*(broker.publish(message) for message in conc))

        await timed("publish (all concurrent, group commit)", n, publish_concurrently)
        await broker.purge(queue)

        for concurrent_acks in (True, False):
            queue = f"bench-consume-{concurrent_acks}"
            await broker.publish_many(messages(queue, n, body))
            label = "consume + ack (ack per task)" if concurrent_acks else "consume + ack (inline await)"
            if profiler is not None and concurrent_acks:
                profiler.enable()
            run = functools.partial(drain, broker, queue, n, args.prefetch, concurrent_acks=concurrent_acks)
            await timed(label, n, run)
            if profiler is not None and concurrent_acks:
                profiler.disable()
    finally:
        await broker.aclose()
        client = Redis.from_url(args.url)
        try:
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                await client.delete(key)
        finally:
            await client.aclose()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--sequential", type=int, default=2_000, help="messages for the sequential publish")
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument("--batch", type=int, default=500, help="the broker's batch_size option")
    parser.add_argument("--body", type=int, default=64, help="body size in bytes")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (if installed)")
    parser.add_argument("--profile", action="store_true", help="cProfile the consume + ack (per task) run")
    arguments = parser.parse_args()
    if arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
