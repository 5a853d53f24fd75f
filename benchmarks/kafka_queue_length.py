"""``queue_length`` of the kafka:// broker: the fetch high watermark against the earlier way.

Run: ``python benchmarks/kafka_queue_length.py [--rounds 30] [--partitions 4] [--messages 400]``.

A Tansu broker (memory storage, started by the test helpers on a free loopback port) holds a
queue of ``--messages`` records over ``--partitions`` partitions, half of them consumed and
committed. Each round times, in alternating order, ``KafkaBroker.queue_length`` (ends from the
high watermark of one fetch, every committed offset in one request) and the earlier
computation reproduced below (a fetch from the reported end repeated until one finds nothing,
one committed-offset request per partition). Both must give the same lag. Prints the median
and spread (min..max) in ms of each, and their ratio (earlier / now: above 1 is faster now).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from contextlib import aclosing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiokafka import TopicPartition  # noqa: E402  (after the path set-up above)

from asyncq.brokers import OutgoingMessage  # noqa: E402
from asyncq.brokers.kafka import DELAY, KafkaBroker  # noqa: E402


async def earlier_queue_length(kafka: KafkaBroker, queue: str) -> int:
    """The lag as computed before: fetches until an empty one, committed() per partition."""
    topic = kafka.settings.topic(queue)
    inspector = kafka._inspector(group_id=kafka.settings.group_id, fetch_max_wait_ms=100)
    await inspector.start()
    try:
        partitions: list[TopicPartition] = await kafka._partitions([topic, topic + DELAY])
        ends = dict(await inspector.end_offsets(partitions))
        inspector.assign(partitions)
        for partition in partitions:
            inspector.seek(partition, ends[partition])
        while True:
            batches = await inspector.getmany(timeout_ms=100)
            if not any(batches.values()):
                break
            for partition, batch in batches.items():
                ends[partition] = max(ends[partition], batch[-1].offset + 1)
        starts = await inspector.beginning_offsets(partitions)
        lag = 0
        for partition in partitions:
            committed = await inspector.committed(partition)
            lag += ends[partition] - max(starts[partition], committed or 0)
        return lag
    finally:
        await inspector.stop()


async def timed(call: Any) -> tuple[float, int]:
    start = time.perf_counter()
    result = await call
    return (time.perf_counter() - start) * 1000, result


async def main(args: argparse.Namespace) -> None:
    from tests.servers import tansu_kafka  # the test helpers start the server

    tag = uuid.uuid4().hex[:8]
    options: dict[str, Any] = {"topic_prefix": f"b{tag}.", "group_id": f"g{tag}", "commit_interval": 0.05}
    async with KafkaBroker(tansu_kafka().url, partitions=args.partitions, **options) as kafka:
        queue = "lag"
        sent = [OutgoingMessage(str(uuid.uuid4()), queue, b"x") for _ in range(args.messages)]
        await kafka.publish_many(sent)
        async with aclosing(kafka.consume([queue], prefetch=50)) as it:
            for _ in range(args.messages // 2):
                await (await asyncio.wait_for(anext(it), 30)).ack()
        now_ms: list[float] = []
        before_ms: list[float] = []
        for round_ in range(args.rounds):
            calls = [("now", kafka.queue_length), ("before", lambda q: earlier_queue_length(kafka, q))]
            for name, call in calls if round_ % 2 == 0 else calls[::-1]:
                ms, lag = await timed(call(queue))
                (now_ms if name == "now" else before_ms).append(ms)
                if lag != args.messages - args.messages // 2:
                    raise SystemExit(f"{name}: lag {lag}, expected {args.messages - args.messages // 2}")
    now, before = statistics.median(now_ms), statistics.median(before_ms)
    print(f"queue_length over {args.partitions} partitions (+{args.partitions} delay), {args.rounds} rounds")
    print(f"  now     median {now:7.1f} ms  (min {min(now_ms):.1f} .. max {max(now_ms):.1f})")
    print(f"  before  median {before:7.1f} ms  (min {min(before_ms):.1f} .. max {max(before_ms):.1f})")
    print(f"  ratio before/now {before / now:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--messages", type=int, default=400)
    asyncio.run(main(parser.parse_args()))
