"""Conformance fixtures for PostgreSQL: the postgresql:// broker and result backend.

Every test gets its own schema (``asyncq_test_<hex>``) on the shared server, so tests never
see each other's tables; the schema is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlencode, urlsplit

import asyncpg
import pytest

from asyncq.backends import ResultBackend, backend_from_url
from asyncq.brokers import Broker, broker_from_url
from tests.factories import connected
from tests.services import require_service

BrokerFactory = Callable[..., Awaitable[Broker]]
BackendFactory = Callable[..., Awaitable[ResultBackend]]


def with_schema(url: str, schema: str) -> str:
    """``url`` with asyncq's ``schema`` option added to its query."""
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return parts._replace(query=query + urlencode({"schema": schema})).geturl()


async def drop_schema(url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it (no error if it is not there)."""
    conn = await asyncpg.connect(url.split("?")[0], timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', timeout=30)
    finally:
        await conn.close(timeout=10)


@pytest.fixture
async def postgres_schema() -> AsyncIterator[tuple[str, str]]:
    """The server URL and a fresh schema name; the schema is dropped after the test."""
    url = require_service("postgres")
    schema = f"asyncq_test_{uuid.uuid4().hex[:12]}"
    yield url, schema
    await drop_schema(url, schema)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """For tests outside an event loop (workers in subprocesses): a URL with a fresh schema."""
    url = require_service("postgres")
    schema = f"asyncq_test_{uuid.uuid4().hex[:12]}"
    yield with_schema(url, schema)
    asyncio.run(drop_schema(url, schema))


@pytest.fixture
async def postgres_broker_factory(postgres_schema: tuple[str, str]) -> AsyncIterator[BrokerFactory]:
    url = with_schema(*postgres_schema)
    async with connected(lambda **options: broker_from_url(url, **options)) as make:
        yield make


@pytest.fixture
async def postgres_backend_factory(postgres_schema: tuple[str, str]) -> AsyncIterator[BackendFactory]:
    url = with_schema(*postgres_schema)
    async with connected(lambda **options: backend_from_url(url, **options)) as make:
        yield make
