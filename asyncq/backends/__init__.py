"""Result-backend drivers, chosen by URL scheme.

A new driver is one module here plus one entry in :data:`BACKENDS` (or, outside asyncq, an
entry point in the ``asyncq.backends`` group). Drivers are imported only when chosen.
"""

from __future__ import annotations

from typing import Any, Final

from asyncq._drivers import driver_class
from asyncq.backends.base import BackendCapabilities, ResultBackend

__all__ = ["BACKENDS", "BackendCapabilities", "ResultBackend", "backend_from_url"]

#: URL scheme -> "module:Class" of the built-in result-backend drivers.
BACKENDS: Final[dict[str, str]] = {
    "memory": "asyncq.backends.memory:MemoryBackend",
    "sqlite": "asyncq.backends.sqlite:SQLiteBackend",
    "redis": "asyncq.backends.redis:RedisBackend",
    "rediss": "asyncq.backends.redis:RedisBackend",
    "redis+cluster": "asyncq.backends.redis:RedisBackend",
    "rediss+cluster": "asyncq.backends.redis:RedisBackend",
    "redis+sentinel": "asyncq.backends.redis:RedisBackend",
    "rpc": "asyncq.backends.rpc:RPCBackend",
    "postgresql": "asyncq.backends.postgres:PostgresBackend",
    "postgres": "asyncq.backends.postgres:PostgresBackend",
    "mysql": "asyncq.backends.mysql:MySQLBackend",
    "mariadb": "asyncq.backends.mysql:MySQLBackend",
}


def backend_from_url(url: str, **options: Any) -> ResultBackend:
    """Build (not connect) the result backend for ``url``; ``options`` are driver options."""
    cls = driver_class("result backend", url, BACKENDS, "asyncq.backends")
    backend: ResultBackend = cls(url, **options)
    return backend
