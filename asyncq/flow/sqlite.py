"""The sqlite:// limit store: two tables in the broker's (or backend's) file, its own connection.

Every process sharing the file runs on this machine, so the local clock is the store's clock.
Each call is one write transaction (grouped with the others pending, see
:class:`asyncq._sqlite.SQLiteThread`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from asyncq._sqlite import SQLiteThread
from asyncq.exceptions import BrokerConnectionError, BrokerError
from asyncq.flow.gcra import reserve

__all__ = ["SQLiteLimitStore"]

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS asyncq_flow_rates (
    key TEXT PRIMARY KEY,
    tat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS asyncq_flow_slots (
    key TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (key, holder)
);
COMMIT;
"""


def _reserve(conn: sqlite3.Connection, key: str, interval: float, count: int, burst: int) -> list[float]:
    row = conn.execute("SELECT tat FROM asyncq_flow_rates WHERE key = ?", (key,)).fetchone()
    current = time.time()
    tat, waits = reserve(0.0 if row is None else float(row[0]), current, interval, count, burst)
    conn.execute(
        "INSERT INTO asyncq_flow_rates (key, tat) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
        (key, tat),
    )
    return waits


def _acquire(
    conn: sqlite3.Connection, key: str, limit: int, holders: Sequence[str], lease: float
) -> list[str]:
    current = time.time()
    conn.execute("DELETE FROM asyncq_flow_slots WHERE key = ? AND expires <= ?", (key, current))
    rows = conn.execute("SELECT holder FROM asyncq_flow_slots WHERE key = ?", (key,)).fetchall()
    held = {str(holder) for (holder,) in rows}
    given = []
    for holder in holders:
        if holder in held or len(held) < limit:
            held.add(holder)
            given.append(holder)
    conn.executemany(
        "INSERT INTO asyncq_flow_slots (key, holder, expires) VALUES (?, ?, ?) "
        "ON CONFLICT (key, holder) DO UPDATE SET expires = excluded.expires",
        [(key, holder, current + lease) for holder in given],
    )
    return given


def _release(conn: sqlite3.Connection, key: str, holders: Sequence[str]) -> None:
    conn.executemany(
        "DELETE FROM asyncq_flow_slots WHERE key = ? AND holder = ?", [(key, holder) for holder in holders]
    )


def _renew(conn: sqlite3.Connection, held: Mapping[str, Sequence[str]], lease: float) -> None:
    current = time.time()
    # Only slots whose lease is still running: an expired one may have gone to someone else.
    conn.executemany(
        "UPDATE asyncq_flow_slots SET expires = ? WHERE key = ? AND holder = ? AND expires > ?",
        [(current + lease, key, holder, current) for key, holders in held.items() for holder in holders],
    )


def _count(conn: sqlite3.Connection, key: str) -> int:
    sql = "SELECT COUNT(*) FROM asyncq_flow_slots WHERE key = ? AND expires > ?"
    return int(conn.execute(sql, (key, time.time())).fetchone()[0])


class SQLiteLimitStore:
    """Limit store in the tables of a ``sqlite://`` broker's (or backend's) file."""

    def __init__(self, driver: Any) -> None:
        self.path = driver.path
        self._db = SQLiteThread(self.path, _SCHEMA, error=BrokerError, connection_error=BrokerConnectionError)

    async def connect(self) -> None:
        await self._db.open()

    async def aclose(self) -> None:
        await self._db.close()

    async def reserve(self, key: str, interval: float, count: int, burst: int) -> list[float]:
        return await self._db.write(partial(_reserve, key=key, interval=interval, count=count, burst=burst))

    async def acquire(self, key: str, limit: int, holders: Sequence[str], lease: float) -> list[str]:
        op = partial(_acquire, key=key, limit=limit, holders=list(holders), lease=lease)
        return await self._db.write(op)

    async def release(self, key: str, holders: Sequence[str]) -> None:
        if holders:
            await self._db.write(partial(_release, key=key, holders=list(holders)))

    async def renew(self, held: Mapping[str, Sequence[str]], lease: float) -> None:
        if any(held.values()):
            await self._db.write(partial(_renew, held={k: list(v) for k, v in held.items()}, lease=lease))

    async def count(self, key: str) -> int:
        return await self._db.run(_count, key)
