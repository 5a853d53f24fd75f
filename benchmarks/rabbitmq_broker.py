"""Raw throughput of the amqp:// broker driver (no App, no worker, no serializer).

Measures, on a fresh queue:

* ``publish_many``: one call with N messages (confirms pipelined);
* ``publish``: one message at a time, each awaiting its confirm, beside the bare ceiling:
  the same persistent publishes straight on an aiormq channel (no asyncq), in the same run;
* ``publish`` with ``confirm_publish=false`` (the unconfirmed opt-in), one at a time;
* consume + ack: N messages through one ``consume()`` iterator with ``--prefetch``;
* consume + nack: ``--retries`` messages each nacked once (re-published, the original's ack
  confirmed before the next delivery is handed out), settled concurrently as a worker does,
  then their copies acked.

Run: ``python benchmarks/rabbitmq_broker.py [--url amqp://...] [--count 20000] [--prefetch 500]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import aiormq
from _common import ack_in_order
from pamqp.commands import Basic

from asyncq.brokers import OutgoingMessage
from asyncq.brokers.rabbitmq import RabbitMQBroker


def messages(queue: str, count: int, size: int) -> list[OutgoingMessage]:
    body = b"x" * size
    return [OutgoingMessage(id=uuid.uuid4().hex, queue=queue, body=body) for _ in range(count)]


async def run(
    url: str, count: int, single: int, prefetch: int, size: int, queue_type: str, retries: int
) -> None:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    broker = RabbitMQBroker(url, queue_type=queue_type)
    await broker.connect()
    try:
        await broker.purge(queue)  # declares everything up front: not part of the timings

        batch = messages(queue, count, size)
        started = time.perf_counter()
        await broker.publish_many(batch)
        elapsed = time.perf_counter() - started
        print(f"publish_many  {count:>7} msgs  {elapsed:7.2f} s  {count / elapsed:>9.0f} msg/s")

        # Interleaved in chunks of 100, so both see the same server load.
        bare_s = ours_s = 0.0
        bare = await aiormq.connect(url)
        try:
            channel = await bare.channel(publisher_confirms=True)
            body = b"x" * size
            for _ in range(max(1, single // 100)):
                started = time.perf_counter()
                for _ in range(100):
                    properties = Basic.Properties(delivery_mode=2, message_id=uuid.uuid4().hex)
                    await channel.basic_publish(body, routing_key=queue, properties=properties)
                bare_s += time.perf_counter() - started
                chunk = messages(queue, 100, size)
                started = time.perf_counter()
                for message in chunk:
                    await broker.publish(message)
                ours_s += time.perf_counter() - started
        finally:
            await bare.close()
        sent = max(1, single // 100) * 100
        ceiling, rate = sent / bare_s, sent / ours_s
        print(f"bare publish  {sent:>7} msgs  {bare_s:7.2f} s  {ceiling:>9.0f} msg/s  (aiormq, confirmed)")
        ratio = rate / ceiling
        print(f"publish       {sent:>7} msgs  {ours_s:7.2f} s  {rate:>9.0f} msg/s  ({ratio:.2f}x bare)")

        unconfirmed = RabbitMQBroker(url, queue_type=queue_type, confirm_publish=False)
        await unconfirmed.connect()
        try:
            started = time.perf_counter()
            for message in messages(queue, single, size):
                await unconfirmed.publish(message)
            elapsed = time.perf_counter() - started
        finally:
            await unconfirmed.aclose()
        print(f"publish unconfirmed {single:>3} msgs  {elapsed:5.2f} s  {single / elapsed:>9.0f} msg/s")

        total = count + 3 * single
        elapsed = await ack_in_order(broker, queue, total, prefetch)
        rate = total / elapsed
        print(f"consume+ack   {total:>7} msgs  {elapsed:7.2f} s  {rate:>9.0f} msg/s  (prefetch {prefetch})")
        await broker.publish_many(messages(queue, retries, size))
        started = time.perf_counter()
        settling: set[asyncio.Task[None]] = set()
        seen = 0
        iterator = broker.consume([queue], prefetch=prefetch)
        try:
            async for delivery in iterator:
                settle = delivery.nack() if delivery.delivery_count == 1 else delivery.ack()
                task = asyncio.create_task(settle, name="bench.settle")
                settling.add(task)
                task.add_done_callback(settling.discard)
                seen += 1
                if seen == 2 * retries:
                    break
            await asyncio.gather(*settling)
        finally:
            await iterator.aclose()  # type: ignore[attr-defined]
        elapsed = time.perf_counter() - started
        print(f"consume+nack  {retries:>7} msgs  {elapsed:7.2f} s  {retries / elapsed:>9.0f} retries/s")
    finally:
        await broker.delete_queue(queue)
        await broker.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--count", type=int, default=20_000, help="messages for publish_many and consume")
    parser.add_argument("--single", type=int, default=5_000, help="messages published one at a time")
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument("--size", type=int, default=200, help="body bytes")
    parser.add_argument("--queue-type", default="classic", choices=["classic", "quorum"])
    parser.add_argument("--retries", type=int, default=5_000, help="messages nacked once each")
    args = parser.parse_args()
    asyncio.run(
        run(args.url, args.count, args.single, args.prefetch, args.size, args.queue_type, args.retries)
    )


if __name__ == "__main__":
    main()
