"""Conformance fixtures for redis:// (broker and result backend).

Every test gets its own key prefix, so tests never see each other's queues (the Redis server
is shared); the prefix's keys are deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from asyncq.backends import ResultBackend, backend_from_url
from asyncq.brokers import Broker, broker_from_url
from tests.services import require_service

BrokerFactory = Callable[..., Awaitable[Broker]]
BackendFactory = Callable[..., Awaitable[ResultBackend]]


def unique_prefix() -> str:
    """A key prefix no other test uses (hex only: safe inside a SCAN pattern)."""
    return f"asyncq-test-{uuid.uuid4().hex[:12]}"


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix``; return how many."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        deleted = 0
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            deleted += await client.delete(key)
        return deleted
    finally:
        await client.aclose()


@pytest.fixture
async def redis_broker_factory() -> AsyncIterator[BrokerFactory]:
    url = require_service("redis")
    prefix = unique_prefix()
    made: list[Broker] = []

    async def make(**options: Any) -> Broker:
        broker = broker_from_url(url, key_prefix=prefix, **options)
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.aclose()
    await delete_prefix(url, prefix)


@pytest.fixture
async def redis_backend_factory() -> AsyncIterator[BackendFactory]:
    url = require_service("redis")
    prefix = unique_prefix()
    made: list[ResultBackend] = []

    async def make(**options: Any) -> ResultBackend:
        backend = backend_from_url(url, key_prefix=prefix, **options)
        await backend.connect()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()
    await delete_prefix(url, prefix)
