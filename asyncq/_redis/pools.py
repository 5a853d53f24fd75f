"""Bounded redis-py connection pools that wait for a free connection, then fail distinctly."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from asyncq._redis.errors import PoolExhaustedError

__all__ = ["BlockingPool", "BlockingSentinelPool", "no_retry"]


class BlockingPool(BlockingConnectionPool):
    """A pool that waits up to ``pool_timeout`` for a free connection, then fails distinctly.

    redis-py reports the wait running out as a plain ConnectionError, which a retry loop would
    take for an outage and repeat; a PoolExhaustedError is never retried.
    """

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        try:
            connection: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolExhaustedError.after(self.timeout, self.max_connections) from exc
            raise
        return connection


class BlockingSentinelPool(SentinelConnectionPool, BlockingPool):
    """The Sentinel-managed master pool, bounded and waiting like :class:`BlockingPool`."""


def no_retry() -> Retry:
    return Retry(NoBackoff(), 0)
