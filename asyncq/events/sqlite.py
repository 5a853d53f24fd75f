"""``sqlite://`` event bus: a capped table in the broker's file, polled by readers in any local process."""

from __future__ import annotations

import asyncio
import sqlite3
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from asyncq._options import Option, seconds
from asyncq._sqlite import SQLiteThread, parse_sqlite_url
from asyncq.exceptions import BrokerConnectionError, BrokerError

__all__ = ["SQLiteEventBus"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS asyncq_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- publish order, never reused
    batch BLOB NOT NULL
);
"""


def _insert(conn: sqlite3.Connection, batch: bytes, keep: int) -> None:
    seq = conn.execute("INSERT INTO asyncq_events (batch) VALUES (?)", (batch,)).lastrowid or 0
    if seq > keep:
        conn.execute("DELETE FROM asyncq_events WHERE seq <= ?", (seq - keep,))


def _last(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM asyncq_events").fetchone()[0])


def _after(conn: sqlite3.Connection, seq: int) -> list[tuple[int, bytes]]:
    return conn.execute(
        "SELECT seq, batch FROM asyncq_events WHERE seq > ? ORDER BY seq LIMIT 500", (seq,)
    ).fetchall()


class _SQLiteReader:
    __slots__ = ("_bus", "_closed", "_pending", "_seq")

    def __init__(self, bus: SQLiteEventBus, seq: int) -> None:
        self._bus, self._seq, self._closed = bus, seq, False
        self._pending: list[bytes] = []

    def __aiter__(self) -> _SQLiteReader:
        return self

    async def __anext__(self) -> bytes:
        while not self._pending:
            if self._closed or not self._bus._db.is_open:
                raise StopAsyncIteration
            rows = await self._bus._db.run(_after, self._seq)
            if rows:
                self._seq = rows[-1][0]
                self._pending = [row[1] for row in rows]
            else:
                await asyncio.sleep(self._bus.poll_interval)  # no cross-process notification in SQLite
        return self._pending.pop(0)

    async def aclose(self) -> None:
        self._closed = True


POLL_INTERVAL: Final = Option("poll_interval", seconds, 0.1)


class SQLiteEventBus:
    """``sqlite:///path.db``: event batches in the table ``asyncq_events``, the last ``history_limit`` kept.

    Options: ``poll_interval`` (the broker URL's, default 0.1 s) is how often readers look.
    """

    keeps_history = True

    def __init__(self, url: str, *, history_limit: int = 10_000, **options: Any) -> None:
        self.url = url
        others = frozenset(name for name, _ in parse_qsl(urlsplit(url).query) if name != "poll_interval")
        own = {"poll_interval": options["poll_interval"]} if "poll_interval" in options else {}
        path, settings = parse_sqlite_url(url, own, (POLL_INTERVAL,), what="sqlite event bus", shared=others)
        self.poll_interval = settings[POLL_INTERVAL]
        self.history_limit = max(1, int(history_limit))
        self._db = SQLiteThread(path, _SCHEMA, error=BrokerError, connection_error=BrokerConnectionError)

    async def connect(self) -> None:
        await self._db.open()

    async def aclose(self) -> None:
        await self._db.close()

    async def publish(self, batch: bytes) -> None:
        await self._db.write(partial(_insert, batch=batch, keep=self.history_limit))

    async def subscribe(self, *, history: bool = False) -> _SQLiteReader:
        await self.connect()
        return _SQLiteReader(self, 0 if history else await self._db.run(_last))
