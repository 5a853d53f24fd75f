"""Apps over the embedded drivers for end-to-end worker tests; the Redis tests' shared fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from asyncq import App
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[App]:
    app = App("it", broker=store_url, config={"task_default_retry_delay": 0.05})
    yield app
    await app.aclose()


# -- Redis: the shared server, a fresh key prefix per test, deleted afterwards ----------------
# (the Cluster and Sentinel modules define their own ``prefix``, on their own servers)


@pytest.fixture
def redis_url() -> str:
    return require_service("redis")


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
async def admin(redis_url: str, prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()
    await delete_prefix(redis_url, prefix)
