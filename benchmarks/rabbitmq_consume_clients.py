"""consume + ack on the amqp:// broker: aio-pika's consumer against the lean one (``client=lean``).

Each round fills a fresh queue with ``--count`` messages (not timed), then drains it through
one ``consume()`` iterator per client, the clients taking turns so both see the same server
load. Prints msg/s per client and round, then the lean/aio-pika ratio of the totals.

Run: ``python benchmarks/rabbitmq_consume_clients.py [--url amqp://...] [--count 20000]
[--prefetch 500] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

from _common import ack_in_order

from asyncq.brokers import OutgoingMessage
from asyncq.brokers.rabbitmq import RabbitMQBroker

CLIENTS = ("aio-pika", "lean")


async def run(url: str, count: int, prefetch: int, size: int, rounds: int) -> None:
    body = b"x" * size
    totals = dict.fromkeys(CLIENTS, 0.0)
    for round_ in range(rounds):
        for client in CLIENTS if round_ % 2 == 0 else reversed(CLIENTS):
            broker = RabbitMQBroker(url, client=client)
            await broker.connect()
            queue = f"bench-{uuid.uuid4().hex[:8]}"
            try:
                await broker.purge(queue)
                messages = [
                    OutgoingMessage(id=uuid.uuid4().hex, queue=queue, body=body) for _ in range(count)
                ]
                await broker.publish_many(messages)
                elapsed = await ack_in_order(broker, queue, count, prefetch)
            finally:
                await broker.delete_queue(queue)
                await broker.aclose()
            totals[client] += elapsed
            print(
                f"round {round_ + 1}  {client:<9} consume+ack {count:>7} msgs  {count / elapsed:>9.0f} msg/s"
            )
    base, lean = (count * rounds / totals[client] for client in CLIENTS)
    print(
        f"total  aio-pika {base:.0f} msg/s  lean {lean:.0f} msg/s  ({lean / base:.2f}x, prefetch {prefetch})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument("--size", type=int, default=200, help="body bytes")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.count, args.prefetch, args.size, args.rounds))


if __name__ == "__main__":
    main()
