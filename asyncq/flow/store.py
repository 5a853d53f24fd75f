"""The limit-store contract, and the lookup of the store behind a broker or result backend.

A store keeps the shared state of the global limits, beside the driver's own data:

* a rate limit is one number per key (GCRA's theoretical arrival time, see
  :mod:`asyncq.flow.gcra`); :meth:`LimitStore.reserve` books starts in one round trip;
* a concurrency key is a set of holders, each with a lease expiry: :meth:`LimitStore.acquire`
  drops expired holders and adds new ones while fewer than the limit remain, so a dead
  worker's slots come back once their leases run out.

Stores take the clock of the server where they have one (Redis ``TIME``), so workers on
machines whose clocks differ still agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from asyncq._utils import import_string

__all__ = ["LIMIT_STORES", "LimitStore", "limit_store_for"]


class LimitStore(Protocol):
    """Shared state of global rate limits and concurrency keys."""

    async def connect(self) -> None:
        """Open what the store needs (its driver is connected already); idempotent."""

    async def aclose(self) -> None:
        """Release what the store opened (not the driver)."""

    async def reserve(self, key: str, interval: float, count: int, burst: int) -> list[float]:
        """Book ``count`` starts of the rate limit ``key``; each one's wait in seconds, in order."""

    async def acquire(self, key: str, limit: int, holders: Sequence[str], lease: float) -> list[str]:
        """Give slots of ``key`` to ``holders`` in order while fewer than ``limit`` are held; the ones given.

        A holder already holding a slot keeps it (and counts as given).
        """

    async def release(self, key: str, holders: Sequence[str]) -> None:
        """Give back the slots of ``holders``."""

    async def renew(self, held: Mapping[str, Sequence[str]], lease: float) -> None:
        """Extend the leases of the slots held (key -> holders) by ``lease`` seconds from now."""

    async def count(self, key: str) -> int:
        """Slots of ``key`` held now (expired leases not counted)."""


#: URL scheme -> "module:Class" of the built-in stores (constructed with the driver).
LIMIT_STORES: Final[dict[str, str]] = {
    "memory": "asyncq.flow.memory:MemoryLimitStore",
    "sqlite": "asyncq.flow.sqlite:SQLiteLimitStore",
    "redis": "asyncq.flow.redis:RedisLimitStore",
    "rediss": "asyncq.flow.redis:RedisLimitStore",
    "redis+cluster": "asyncq.flow.redis:RedisLimitStore",
    "rediss+cluster": "asyncq.flow.redis:RedisLimitStore",
    "redis+sentinel": "asyncq.flow.redis:RedisLimitStore",
    "postgresql": "asyncq.flow.postgres:PostgresLimitStore",
    "postgres": "asyncq.flow.postgres:PostgresLimitStore",
}


def limit_store_for(*drivers: Any) -> LimitStore | None:
    """Build (not connect) the store of the first driver (broker, then backend) that has one."""
    for driver in drivers:
        path = LIMIT_STORES.get(urlsplit(str(getattr(driver, "url", ""))).scheme)
        if path is not None:
            store: LimitStore = import_string(path)(driver)
            return store
    return None
