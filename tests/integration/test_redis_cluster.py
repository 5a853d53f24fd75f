"""The Redis drivers on a Redis Cluster (``redis+cluster://``): URLs, slots, wake-ups, failover.

The Cluster (3 masters, 3 replicas) is started for the session by the ``redis_cluster``
fixture (tests/conformance/drivers_redis.py), which the shared contract suites use too. The
failover tests run last, a manual failover before a killed master: they change which node
is master, and the second leaves one master without a replica.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest
from redis.asyncio import Redis
from redis.cluster import key_slot
from redis.exceptions import RedisError

from asyncq.backends import backend_from_url
from asyncq.backends.redis import RedisBackend
from asyncq.brokers import OutgoingMessage, broker_from_url
from asyncq.brokers.redis import RedisBroker, _Queue
from asyncq.exceptions import ConfigurationError
from tests.conformance.drivers_redis import (
    ClusterServers,
    redis_cluster,
    run_through_failover,
    wait_until,
)
from tests.helpers import delete_prefix, unique_prefix

__all__ = ["redis_cluster"]  # the session fixture, imported so that pytest finds it here

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TIMEOUT = 30.0


def msg(queue: str, body: bytes = b"x") -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body)


@pytest.fixture
async def prefix(redis_cluster: ClusterServers) -> AsyncIterator[str]:
    prefix = unique_prefix()
    yield prefix
    await delete_prefix(redis_cluster.url, prefix)


def test_cluster_urls() -> None:
    broker = broker_from_url("redis+cluster://u:p@h1:7000,h2,[::1]:7002/?key_prefix=k")
    assert isinstance(broker, RedisBroker)
    target = broker._redis.target
    assert (target.kind, target.nodes, target.tls) == (
        "cluster",
        (("h1", 7000), ("h2", 6379), ("::1", 7002)),
        False,
    )
    assert (target.username, target.password) == ("u", "p")
    assert RedisBroker("redis://h1:7000?cluster=true")._redis.target.nodes == (("h1", 7000),)
    assert RedisBroker("rediss+cluster://h1:7000")._redis.target.tls
    assert isinstance(backend_from_url("redis+cluster://h1:7000"), RedisBackend)
    with pytest.raises(ConfigurationError, match="only database 0"):
        RedisBroker("redis+cluster://h1:7000/2")
    with pytest.raises(ConfigurationError, match="min_replicas"):
        RedisBroker("redis+cluster://h1:7000", min_replicas=1)


def test_every_script_touches_one_slot() -> None:
    # A script may only touch keys of one slot; so may a BLPOP. The hash tag does it.
    for name in ("q", "default", "a:b", "ünï"):
        queue = _Queue("asyncq", name)
        assert len({key_slot(key) for key in queue.keys}) == 1
    backend = RedisBackend("redis+cluster://h1:7000", key_prefix="app")
    record = backend._key("1f0c2e7a-5a4b-4f0e-9d9e-1c2b3a4d5e6f")
    assert record == b"app:result:{1f0c2e7a-5a4b-4f0e-9d9e-1c2b3a4d5e6f}"  # its channel too


async def test_idle_consumer_of_queues_on_several_nodes_is_woken(
    redis_cluster: ClusterServers, prefix: str
) -> None:
    # Queues in different slots cannot share a BLPOP: each slot gets its own, and any wakes.
    queues = [f"wake-{i}" for i in range(6)]
    assert len({key_slot(f"{prefix}:{{{q}}}:wake".encode()) for q in queues}) == 6
    consumer = RedisBroker(redis_cluster.url, key_prefix=prefix, poll_interval=30)
    producer = RedisBroker(redis_cluster.url, key_prefix=prefix)
    async with consumer, producer, aclosing(consumer.consume(queues, prefetch=1)) as deliveries:
        for queue in queues:
            pending = asyncio.ensure_future(anext(deliveries))
            await asyncio.sleep(0.2)  # let it block
            started = time.monotonic()
            await producer.publish(msg(queue))
            delivery = await asyncio.wait_for(pending, 5)
            assert delivery.queue == queue
            assert time.monotonic() - started < 5  # woken, not polled (poll_interval=30)
            await delivery.ack()


async def test_manual_failover_mid_run_loses_nothing(redis_cluster: ClusterServers, prefix: str) -> None:
    async def failover(queues: list[str]) -> None:
        # The replica of the master serving the first queue takes over (CLUSTER FAILOVER:
        # the master stops taking writes until its replica caught up, so nothing is lost).
        master = await _master_serving(redis_cluster, f"{prefix}:{{{queues[0]}}}:ready:0".encode())
        replica = redis_cluster.replica_of(master)
        client = Redis(port=replica)
        try:
            await client.execute_command("CLUSTER", "FAILOVER")
            await wait_until(lambda: _is_master(client))
        finally:
            await client.aclose()

    await run_through_failover(redis_cluster.url, prefix, failover)


async def test_killed_master_fails_over_and_work_carries_on(
    redis_cluster: ClusterServers, prefix: str
) -> None:
    # A master dies (kill -9). Its replica takes over once the others agree it is gone. What
    # the dead master had not replicated yet is lost (replication is asynchronous), so this
    # checks that producers and consumers carry on, not that nothing was lost.
    queue = "survivor"
    master = await _master_serving(redis_cluster, f"{prefix}:{{{queue}}}:ready:0".encode())
    replica = Redis(port=redis_cluster.replica_of(master))
    producer = RedisBroker(redis_cluster.url, key_prefix=prefix, retry_timeout=TIMEOUT)
    consumer = RedisBroker(redis_cluster.url, key_prefix=prefix, visibility_timeout=2, poll_interval=0.5)
    try:
        async with producer, consumer, aclosing(consumer.consume([queue], prefetch=10)) as deliveries:
            await producer.publish(msg(queue, b"before"))
            assert (await asyncio.wait_for(anext(deliveries), TIMEOUT)).body == b"before"
            await asyncio.to_thread(redis_cluster.kill, master)
            # Published while the slot has no master: retried until the replica took over.
            during = asyncio.create_task(producer.publish(msg(queue, b"during")), name="test.publish")
            await wait_until(lambda: _is_master(replica))
            await asyncio.wait_for(during, TIMEOUT)
            await producer.publish(msg(queue, b"after"))
            bodies = set()
            # "before" may come again: its lease expired while its master was gone.
            while not {b"during", b"after"} <= bodies:
                delivery = await asyncio.wait_for(anext(deliveries), TIMEOUT)
                bodies.add(delivery.body)
                await delivery.ack()
    finally:
        await replica.aclose()


async def _master_serving(cluster: ClusterServers, key: bytes) -> int:
    slot = key_slot(key)
    client = Redis(port=cluster.masters()[0])
    try:
        for start, end, primary, *_ in await client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
    finally:
        await client.aclose()
    raise LookupError(f"no master serves slot {slot}")


async def _is_master(client: Redis) -> bool:
    try:
        return (await client.info("replication"))["role"] == "master"
    except (OSError, RedisError):
        return False
