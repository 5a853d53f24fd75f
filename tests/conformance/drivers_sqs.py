"""Conformance fixtures for the sqs:// broker, against moto's server (real HTTP and signing).

One moto server per test session (tests/servers.py); every test gets its own queue-name
prefix, and the SQS queues under it are deleted afterwards. Long polls are kept short so a
closing consumer's last poll ends quickly.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from asyncq.brokers import Broker, broker_from_url
from tests.factories import connected
from tests.servers import moto_sqs

BrokerFactory = Callable[..., Awaitable[Broker]]


async def delete_queues(url: str, prefix: str) -> int:
    """Delete every SQS queue whose name starts with ``prefix``; return how many."""
    # Built by URL, not imported: without aiobotocore this module still imports (the suite's
    # conftest imports every driver's fixtures).
    broker: Any = broker_from_url(url, queue_prefix=prefix)
    await broker.connect()
    try:
        reply = await broker._client.call("list_queues", QueueNamePrefix=prefix)
        urls = reply.get("QueueUrls", [])
        for queue_url in urls:
            await broker._client.call("delete_queue", QueueUrl=queue_url)
        return len(urls)
    finally:
        await broker.aclose()


async def _factory(**fixed: Any) -> AsyncIterator[BrokerFactory]:
    url = moto_sqs().url
    prefix = f"t{uuid.uuid4().hex[:10]}-"

    def build(**options: Any) -> Broker:
        return broker_from_url(url, queue_prefix=prefix, wait_time=1, **{**fixed, **options})

    async def cleanup(_: object) -> None:
        await delete_queues(url, prefix)

    async with connected(build, cleanup) as make:
        yield make


@pytest.fixture
async def sqs_broker_factory() -> AsyncIterator[BrokerFactory]:
    """Standard queues, one priority band (the defaults)."""
    async for make in _factory():
        yield make


@pytest.fixture
async def sqs_fifo_broker_factory() -> AsyncIterator[BrokerFactory]:
    """FIFO queues, a group per task (a queue-wide group serves one at a time), three bands."""
    async for make in _factory(fifo=True, priority_steps="0,5,9", message_group="id"):
        yield make
