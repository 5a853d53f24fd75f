"""asyncq on RabbitMQ with its results in Redis (DB 8), queue ``bench-asyncq-redis``; see asyncq_amqp_app."""

from __future__ import annotations

from peers._common import redis_url
from peers.asyncq_amqp_app import AmqpBench, AmqpClient

DB = 8
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")

bench = AmqpBench("peers.asyncq_amqp_redis_app", "bench-asyncq-redis", backend=redis_url(DB))
app = bench.app
purge = bench.purge
worker_command = bench.worker_command


class Client(AmqpClient):
    def __init__(self) -> None:
        super().__init__(bench)
