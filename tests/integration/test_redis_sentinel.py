"""The Redis drivers behind Sentinel (``redis+sentinel://``): URLs, replication, failover.

The servers (a master, a replica, a sentinel) are started for the session by the
``redis_sentinel`` fixture (tests/conformance/drivers_redis.py), which the shared contract
suites use too. The failover test runs last: it swaps the master and the replica.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from redis.asyncio import Redis

from asyncq.backends import backend_from_url
from asyncq.backends.redis import RedisBackend
from asyncq.brokers import OutgoingMessage, broker_from_url
from asyncq.brokers.redis import RedisBroker
from asyncq.exceptions import BrokerConnectionError, ConfigurationError
from tests.conformance.drivers_redis import (
    SentinelServers,
    redis_sentinel,
    run_through_failover,
    wait_until,
)
from tests.helpers import delete_prefix, unique_prefix, until
from tests.services import require_service

__all__ = ["redis_sentinel"]  # the session fixture, imported so that pytest finds it here

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TIMEOUT = 30.0


def msg(queue: str, body: bytes = b"x") -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body)


@pytest.fixture
async def prefix(redis_sentinel: SentinelServers) -> AsyncIterator[str]:
    prefix = unique_prefix()
    yield prefix
    await delete_prefix(redis_sentinel.url, prefix)


def test_sentinel_urls() -> None:
    broker = broker_from_url("redis+sentinel://u:p@h1:26380,h2/mymaster/3?sentinel_password=s&key_prefix=k")
    assert isinstance(broker, RedisBroker)
    target = broker._redis.target
    assert (target.kind, target.nodes, target.service, target.db) == (
        "sentinel",
        (("h1", 26380), ("h2", 26379)),
        "mymaster",
        3,
    )
    assert (target.username, target.password) == ("u", "p")
    client = broker._redis.new_client()
    assert client._sentinel is not None
    assert client._sentinel.sentinel_kwargs["password"] == "s"
    assert client.redis.connection_pool.connection_kwargs["db"] == 3  # type: ignore[union-attr]
    assert isinstance(backend_from_url("redis+sentinel://h1/mymaster"), RedisBackend)
    with pytest.raises(ConfigurationError, match="must name the master"):
        RedisBroker("redis+sentinel://h1:26379")
    with pytest.raises(ConfigurationError, match="ssl"):
        RedisBroker("redis+sentinel://h1/mymaster", ssl_cert_reqs="none")


async def test_min_replicas_waits_for_the_replica(redis_sentinel: SentinelServers, prefix: str) -> None:
    broker = RedisBroker(redis_sentinel.url, key_prefix=prefix, min_replicas=1)
    backend = RedisBackend(redis_sentinel.url, key_prefix=prefix, min_replicas=1)
    async with broker, backend:
        await broker.publish(msg("q"))
        await backend.set("t", b"r", final=True, ttl=60)
        replica = Redis(port=redis_sentinel.replica)
        try:
            # Confirmed by the replica: it is there already, without waiting for it.
            assert await replica.get(f"{prefix}:result:{{t}}") == b"Fr"
        finally:
            await replica.aclose()


async def test_an_idle_consumer_is_woken_on_the_master(redis_sentinel: SentinelServers, prefix: str) -> None:
    # The consumer's blocking connection must reach the master the sentinels name: if it
    # blocked anywhere else, the publish's wake-up would go unseen until poll_interval.
    broker = RedisBroker(redis_sentinel.url, key_prefix=prefix, poll_interval=60)
    async with broker:
        iterator = broker.consume(["q"], prefetch=1)
        taking = asyncio.ensure_future(anext(iterator))
        # The consumer found the queue empty and is blocked on the master.
        await until(lambda: _blocked_on_master(redis_sentinel), "the consumer to block on the master")
        assert not taking.done()
        await broker.publish(msg("q", b"wake"))
        delivery = await asyncio.wait_for(taking, 10)
        assert delivery.body == b"wake"
        await delivery.ack()
        await iterator.aclose()  # type: ignore[attr-defined]


async def test_min_replicas_unmet_is_a_connection_error(prefix: str) -> None:
    url = require_service("redis")  # the shared server has no replica
    broker = RedisBroker(url, key_prefix=prefix, min_replicas=1, replica_timeout=0.05, retry_timeout=0.3)
    async with broker:
        with pytest.raises(BrokerConnectionError, match="min_replicas=1"):
            await broker.publish(msg("q"))
    await delete_prefix(url, prefix)


async def test_failover_mid_run_loses_nothing(redis_sentinel: SentinelServers, prefix: str) -> None:
    sentinel = Redis(port=redis_sentinel.sentinel)
    service = redis_sentinel.service

    async def master() -> tuple[str, int]:
        host, port = await sentinel.sentinel_get_master_addr_by_name(service)
        return host, int(port)

    before = await master()

    async def failover(queues: list[str]) -> None:
        await sentinel.execute_command("SENTINEL", "FAILOVER", service)
        await wait_until(lambda: _differs(master(), before))

    try:
        await run_through_failover(redis_sentinel.url, prefix, failover)
        assert await master() != before
    finally:
        await sentinel.aclose()


async def _differs(current: Awaitable[Any], before: Any) -> bool:
    return await current != before


async def _blocked_on_master(servers: SentinelServers) -> bool:
    """Whether a client is blocked on the master the sentinel names now (a private server)."""
    sentinel = Redis(port=servers.sentinel)
    try:
        host, port = await sentinel.sentinel_get_master_addr_by_name(servers.service)
    finally:
        await sentinel.aclose()
    master = Redis(host=host, port=int(port))
    try:
        return int((await master.info("clients"))["blocked_clients"]) >= 1
    finally:
        await master.aclose()
