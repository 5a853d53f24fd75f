"""Conformance fixtures for the MySQL/MariaDB result backend.

Every test gets its own table prefix in the shared server's ``test`` database, so tests never
see each other's rows; the prefix's tables are dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from asyncq.backends import ResultBackend, backend_from_url
from tests.factories import connected
from tests.services import require_service

BackendFactory = Callable[..., Awaitable[ResultBackend]]


def unique_table_prefix() -> str:
    """A table prefix no other test uses."""
    return f"asyncq_test_{uuid.uuid4().hex[:12]}_"


async def drop_tables(url: str, prefix: str) -> None:
    """Drop the tables a backend made under ``prefix``."""
    import asyncmy

    from asyncq._mysql import parse_mysql_url

    s = parse_mysql_url(url, {})
    conn = await asyncmy.connect(
        host=s.host, port=s.port, user=s.user, password=s.password, database=s.database, connect_timeout=10
    )
    try:
        async with conn.cursor() as cursor:
            tables = ", ".join(f"`{prefix}{name}`" for name in ("results", "counters", "schema"))
            await cursor.execute(f"DROP TABLE IF EXISTS {tables}")
    finally:
        conn.close()


@pytest.fixture
def mysql_url() -> str:
    return require_service("mysql")


@pytest.fixture
async def mysql_backend_factory(mysql_url: str) -> AsyncIterator[BackendFactory]:
    pytest.importorskip("asyncmy")
    prefix = unique_table_prefix()

    async def cleanup(_: object) -> None:
        await drop_tables(mysql_url, prefix)

    async with connected(
        lambda **options: backend_from_url(mysql_url, table_prefix=prefix, **options), cleanup
    ) as make:
        yield make
