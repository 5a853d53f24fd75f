"""The sqlite:// lock store: one table in the broker's file, written through the broker's connection.

Every process sharing the file runs on this machine, so the local clock is the store's clock.
"""

from __future__ import annotations

import sqlite3
import time
from functools import partial
from typing import Any

__all__ = ["SQLiteLockStore"]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS asyncq_unique_locks ("
    " key TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL)"
)


def _acquire(conn: sqlite3.Connection, key: str, holder: str, ttl: float) -> str:
    now = time.time()
    conn.execute(_TABLE)
    # An expired lock is free: the upsert takes it over; a live one is left as it is.
    conn.execute(
        "INSERT INTO asyncq_unique_locks (key, holder, expires) VALUES (?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, expires = excluded.expires"
        " WHERE asyncq_unique_locks.expires <= ?",
        (key, holder, now + ttl, now),
    )
    row = conn.execute("SELECT holder FROM asyncq_unique_locks WHERE key = ?", (key,)).fetchone()
    return str(row[0])


def _release(conn: sqlite3.Connection, key: str, holder: str) -> bool:
    conn.execute(_TABLE)
    deleted = conn.execute(
        "DELETE FROM asyncq_unique_locks WHERE key = ? AND holder = ?", (key, holder)
    ).rowcount
    return deleted == 1


def _holder(conn: sqlite3.Connection, key: str) -> str | None:
    try:
        row = conn.execute(
            "SELECT holder FROM asyncq_unique_locks WHERE key = ? AND expires > ?", (key, time.time())
        ).fetchone()
    except sqlite3.OperationalError:  # no such table: no lock was ever taken
        return None
    return None if row is None else str(row[0])


class SQLiteLockStore:
    """Locks in the SQLite broker's file; each call is one write of the broker's group commit."""

    def __init__(self, broker: Any) -> None:
        self._broker = broker

    async def _db(self) -> Any:
        await self._broker.connect()
        return self._broker._db

    async def acquire(self, key: str, holder: str, ttl: float) -> str:
        held: str = await (await self._db()).write(partial(_acquire, key=key, holder=holder, ttl=ttl))
        return held

    async def release(self, key: str, holder: str) -> bool:
        released: bool = await (await self._db()).write(partial(_release, key=key, holder=holder))
        return released

    async def holder(self, key: str) -> str | None:
        held: str | None = await (await self._db()).run(partial(_holder, key=key))
        return held
