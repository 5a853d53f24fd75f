"""``postgresql://`` event bus: a capped table in the broker's schema, readers woken by NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from asyncq._postgres import Database, Listener, Step, parse_postgres_url
from asyncq.brokers.postgres import OPTIONS as BROKER_OPTIONS
from asyncq.exceptions import BrokerConnectionError, BrokerError

__all__ = ["PostgresEventBus"]

#: Seconds a reader waits with no notification before it looks anyway (a lost one).
POLL_INTERVAL: Final = 2.0

#: Step n takes the events table to schema version n; released steps never change.
MIGRATIONS: Final[tuple[Step, ...]] = (
    """
    CREATE TABLE {events} (
        seq bigserial PRIMARY KEY,  -- publish order
        batch bytea NOT NULL
    );
    """,
)


class _PostgresReader:
    __slots__ = ("_bus", "_closed", "_notified", "_pending", "_seq")

    def __init__(self, bus: PostgresEventBus, seq: int) -> None:
        self._bus, self._seq, self._closed = bus, seq, False
        self._pending: list[bytes] = []
        self._notified = asyncio.Event()
        bus._readers.add(self._notified)

    def __aiter__(self) -> _PostgresReader:
        return self

    async def __anext__(self) -> bytes:
        bus = self._bus
        while not self._pending:
            if self._closed or not bus._db.is_open:
                raise StopAsyncIteration
            self._notified.clear()  # before the read: a batch landing during it sets it again
            rows = await bus._db.run("read events", lambda c: c.fetch(bus._after, self._seq))
            if rows:
                self._seq = rows[-1]["seq"]
                self._pending = [bytes(row["batch"]) for row in rows]
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._notified.wait()
        return self._pending.pop(0)

    async def aclose(self) -> None:
        self._closed = True
        self._notified.set()
        self._bus._readers.discard(self._notified)


class PostgresEventBus:
    """``postgresql://``: event batches in the table ``<prefix>events``, the last ``history_limit`` kept.

    Takes the broker's URL and transport options (``schema``, ``table_prefix``, deadlines).
    """

    keeps_history = True

    def __init__(self, url: str, *, history_limit: int = 10_000, **options: Any) -> None:
        self.url = url
        self.history_limit = max(1, int(history_limit))
        dsn, settings = parse_postgres_url(url, options, BROKER_OPTIONS, kind="event bus")
        self._db = Database(url, dsn, settings, error=BrokerError, connection_error=BrokerConnectionError)
        events = self._db.names.table("events")
        self._channel = self._db.names.channel("events")
        self._insert = f"""
            WITH added AS (INSERT INTO {events} (batch) VALUES ($1) RETURNING seq),
            trimmed AS (DELETE FROM {events} WHERE seq <= (SELECT seq FROM added) - $2)
            SELECT pg_notify($3, seq::text) FROM added
        """  # noqa: S608 - quoted identifiers only
        self._last = f"SELECT COALESCE(max(seq), 0) FROM {events}"  # noqa: S608
        self._after = f"SELECT seq, batch FROM {events} WHERE seq > $1 ORDER BY seq LIMIT 500"  # noqa: S608
        self._readers: set[asyncio.Event] = set()
        self._listener = Listener(self._db, [self._channel], self._wake, self._wake_all)

    def _wake(self, _channel: str, _payload: str) -> None:
        self._wake_all()

    def _wake_all(self) -> None:
        for notified in self._readers:
            notified.set()

    async def connect(self) -> None:
        await self._db.open("events", MIGRATIONS)

    async def aclose(self) -> None:
        await self._listener.aclose()
        await self._db.close()
        self._wake_all()  # readers find the bus closed and end

    async def publish(self, batch: bytes) -> None:
        await self._db.run(
            "publish events", lambda c: c.fetchval(self._insert, batch, self.history_limit, self._channel)
        )

    async def subscribe(self, *, history: bool = False) -> _PostgresReader:
        await self.connect()
        self._listener.start()
        seq = 0 if history else int(await self._db.run("subscribe events", lambda c: c.fetchval(self._last)))
        return _PostgresReader(self, seq)
