"""The lock-store contract, and the lookup of the store behind a broker.

A lock is one key holding the id of the task that owns it, with an expiry: taken only if
free (or expired), given back only by its holder, so a late release of an expired lock never
frees someone else's.
"""

from __future__ import annotations

import weakref
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from asyncq._utils import import_string
from asyncq.exceptions import ConfigurationError

__all__ = ["LOCK_STORES", "LockStore", "lock_store_for"]


class LockStore(Protocol):
    """Unique-task locks kept beside a broker's own data."""

    async def acquire(self, key: str, holder: str, ttl: float) -> str:
        """Take ``key`` for ``holder`` for ``ttl`` seconds if free; return whoever holds it now.

        Safe to repeat: a holder asking again is told it holds the lock.
        """

    async def release(self, key: str, holder: str) -> bool:
        """Free ``key`` if ``holder`` holds it; whether it did."""

    async def holder(self, key: str) -> str | None:
        """The id holding ``key`` now (an expired lock is free), or None."""


#: URL scheme -> "module:Class" of the built-in stores (constructed with the broker).
LOCK_STORES: Final[dict[str, str]] = {
    "memory": "asyncq.unique.memory:MemoryLockStore",
    "sqlite": "asyncq.unique.sqlite:SQLiteLockStore",
    "postgresql": "asyncq.unique.postgres:PostgresLockStore",
    "postgres": "asyncq.unique.postgres:PostgresLockStore",
    "redis": "asyncq.unique.redis:RedisLockStore",
    "rediss": "asyncq.unique.redis:RedisLockStore",
    "redis+cluster": "asyncq.unique.redis:RedisLockStore",
    "rediss+cluster": "asyncq.unique.redis:RedisLockStore",
    "redis+sentinel": "asyncq.unique.redis:RedisLockStore",
}

# One store per broker instance, made on first use and gone with the broker.
_STORES: weakref.WeakKeyDictionary[Any, LockStore] = weakref.WeakKeyDictionary()


def lock_store_for(broker: Any) -> LockStore:
    """The lock store of ``broker``; ConfigurationError when its driver keeps none."""
    store = _STORES.get(broker)
    if store is None:
        scheme = urlsplit(str(getattr(broker, "url", ""))).scheme
        path = LOCK_STORES.get(scheme)
        if path is None:
            known = ", ".join(sorted({p.partition(":")[0].rpartition(".")[2] for p in LOCK_STORES.values()}))
            raise ConfigurationError(
                f"unique tasks need a broker that keeps locks ({known}); the {scheme}:// broker has none"
            )
        store = _STORES[broker] = import_string(path)(broker)
    return store
