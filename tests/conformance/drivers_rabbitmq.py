"""Conformance fixtures for RabbitMQ: the amqp:// broker and the rpc:// result backend.

Each test session gets its own vhost (``rabbitmqctl add_vhost asyncq-test-<uuid>``), deleted
at the end; creating one per test would cost about two seconds of rabbitmqctl per test.
Within the session, tests use unique queue names and each test deletes the queues it made.
Without ``rabbitmqctl`` (a remote server), the URL's own vhost is used.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from asyncq.backends import ResultBackend, backend_from_url
from asyncq.brokers import Broker, broker_from_url
from tests.factories import connected
from tests.services import require_service

BrokerFactory = Callable[..., Awaitable[Broker]]
BackendFactory = Callable[..., Awaitable[ResultBackend]]


def _rabbitmqctl(*args: str) -> bool:
    """Run rabbitmqctl; False when it is missing or fails (not local, not root)."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, *args], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """An amqp:// URL on a vhost private to this test session (or the configured one)."""
    base = require_service("rabbitmq")
    vhost = f"asyncq-test-{uuid.uuid4().hex[:12]}"
    user = urlsplit(base).username or "guest"
    if not (
        _rabbitmqctl("add_vhost", vhost)
        and _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    ):
        yield base
        return
    yield urlunsplit(urlsplit(base)._replace(path="/" + quote(vhost, safe="")))
    _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
async def rabbitmq_broker_factory(rabbitmq_url: str) -> AsyncIterator[BrokerFactory]:
    async for make in _broker_factory(rabbitmq_url, {}):
        yield make


@pytest.fixture
async def rabbitmq_aiopika_broker_factory(rabbitmq_url: str) -> AsyncIterator[BrokerFactory]:
    """The amqp:// broker whose consumers run on aio-pika (``client=aio-pika``, the way back)."""
    async for make in _broker_factory(rabbitmq_url, {"client": "aio-pika"}):
        yield make


async def _broker_factory(rabbitmq_url: str, defaults: dict[str, Any]) -> AsyncIterator[BrokerFactory]:
    made: list[Any] = []

    async def make(**options: Any) -> Broker:
        broker = broker_from_url(rabbitmq_url, **{**defaults, **options})
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    touched: set[str] = set()
    for broker in made:
        touched |= broker._declared  # the work queues this test used
        await broker.aclose()
    if touched:
        cleaner: Any = broker_from_url(rabbitmq_url)
        try:
            for queue in sorted(touched):
                await cleaner.delete_queue(queue)
        finally:
            await cleaner.aclose()


@pytest.fixture
async def rpc_backend_factory(rabbitmq_url: str) -> AsyncIterator[BackendFactory]:
    async with connected(
        lambda **options: backend_from_url("rpc://", broker_url=rabbitmq_url, **options)
    ) as make:
        yield make
