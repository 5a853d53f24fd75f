"""Conformance fixtures for the embedded drivers: memory:// and sqlite://."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asyncq.backends import ResultBackend, backend_from_url
from asyncq.brokers import Broker, broker_from_url
from tests.factories import connected

BrokerFactory = Callable[..., Awaitable[Broker]]
BackendFactory = Callable[..., Awaitable[ResultBackend]]


@pytest.fixture
async def memory_broker_factory() -> AsyncIterator[BrokerFactory]:
    broker = broker_from_url("memory://")
    await broker.connect()

    async def make(**options: Any) -> Broker:
        return broker  # one process, one store: every "instance" is the same broker

    yield make
    await broker.aclose()


@pytest.fixture
async def memory_backend_factory() -> AsyncIterator[BackendFactory]:
    backend = backend_from_url("memory://")
    await backend.connect()

    async def make(**options: Any) -> ResultBackend:
        return backend

    yield make
    await backend.aclose()


@pytest.fixture
async def sqlite_broker_factory(tmp_path: Path) -> AsyncIterator[BrokerFactory]:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    async with connected(lambda **options: broker_from_url(url, **options)) as make:
        yield make


@pytest.fixture
async def sqlite_backend_factory(tmp_path: Path) -> AsyncIterator[BackendFactory]:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    async with connected(lambda **options: backend_from_url(url, **options)) as make:
        yield make
