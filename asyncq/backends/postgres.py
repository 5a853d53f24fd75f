"""``postgresql://`` result backend: task records and chord counters in PostgreSQL tables.

This module owns the results and counters tables, waiting by LISTEN/NOTIFY and the periodic
clean-up of expired rows; the pool, retries and LISTEN connection are in asyncq/_postgres.py.
Guarantees and settings: docs/backends/postgresql.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any, Final, final

from asyncq._options import Option, seconds
from asyncq._postgres import NOW, Database, Listener, Step, parse_postgres_url
from asyncq._utils import cancel_and_wait, describe_error
from asyncq.backends.base import BackendCapabilities, BackendDefaults
from asyncq.exceptions import BackendConnectionError, BackendError

__all__ = ["PostgresBackend"]

logger = logging.getLogger(__name__)

#: The backend's own options (besides asyncq._postgres.COMMON_OPTIONS), with their defaults.
OPTIONS: Final[tuple[Option[float], ...]] = (
    Option("cleanup_interval", seconds, 60.0),
    Option("poll_interval", seconds, 5.0),
)

#: Most expired rows one clean-up statement deletes (short transactions, vacuum-friendly).
CLEANUP_BATCH: Final = 5000

#: Step n takes the backend's tables to schema version n; released steps never change.
MIGRATIONS: Final[tuple[Step, ...]] = (
    """
    CREATE TABLE {results} (
        id text PRIMARY KEY,
        record bytea NOT NULL,
        final boolean NOT NULL,
        expires_at double precision            -- epoch seconds on the server's clock; NULL: never
    );
    CREATE INDEX {ix:results_expiry} ON {results} (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE {counters} (
        key text PRIMARY KEY,
        value bigint NOT NULL,
        expires_at double precision
    );
    CREATE INDEX {ix:counters_expiry} ON {counters} (expires_at) WHERE expires_at IS NOT NULL;
    """,
)

_LIVE = f"(expires_at IS NULL OR expires_at > {NOW})"


@final
class PostgresBackend(BackendDefaults):
    """``postgresql://user@host/db``: results, states and chord counters in PostgreSQL.

    Options (transport options, or the URL query; explicit options win): ``schema``,
    ``table_prefix``, ``connect_timeout``, ``command_timeout``, ``retry_timeout`` and
    ``pool_size`` as for the broker, and:
        cleanup_interval: seconds between deletions of expired rows (default 60); expired
            rows are invisible at once, the clean-up only reclaims their space.
        poll_interval: seconds after which a waiting ``wait`` reads again with no
            notification (default 5): the fallback for a lost one.
    """

    capabilities = BackendCapabilities(persistent=True, notifies=True, shared=True, counters=True)

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        dsn, settings = parse_postgres_url(url, options, OPTIONS, kind="result backend")
        self.cleanup_interval: float = settings["cleanup_interval"]
        self.poll_interval: float = settings["poll_interval"]
        self._db = Database(url, dsn, settings, error=BackendError, connection_error=BackendConnectionError)
        names = self._db.names
        results, counters = names.table("results"), names.table("counters")
        self._channel = names.channel("results")
        # One statement, so one implicit transaction: a final record's notification goes out
        # at its commit, when a woken waiter's read can see the row.
        self._set = f"""
            WITH written AS (
                INSERT INTO {results} (id, record, final, expires_at) VALUES ($1, $2, $3, {NOW} + $4)
                ON CONFLICT (id) DO UPDATE
                SET record = excluded.record, final = excluded.final, expires_at = excluded.expires_at
                RETURNING id, final
            )
            SELECT count(pg_notify($5, id)) FROM written WHERE final
        """  # noqa: S608 - quoted identifiers only
        self._get = f"SELECT record, final FROM {results} WHERE id = $1 AND {_LIVE}"  # noqa: S608
        self._get_many = f"""
            SELECT t.id, r.record FROM unnest($1::text[]) WITH ORDINALITY AS t(id, n)
            LEFT JOIN {results} r ON r.id = t.id AND {_LIVE.replace("expires_at", "r.expires_at")}
            ORDER BY t.n
        """  # noqa: S608
        self._forget = f"DELETE FROM {results} WHERE id = $1"  # noqa: S608
        # An expired counter starts again from zero, as if it had been deleted.
        self._incr = f"""
            INSERT INTO {counters} AS c (key, value, expires_at) VALUES ($1, $2, {NOW} + $3)
            ON CONFLICT (key) DO UPDATE
            SET value = CASE WHEN c.expires_at <= {NOW} THEN excluded.value ELSE c.value + excluded.value END,
                expires_at = COALESCE(excluded.expires_at, c.expires_at)
            RETURNING value
        """  # noqa: S608
        self._cleanup = [
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"  # noqa: S608
            f" WHERE expires_at <= {NOW} LIMIT {CLEANUP_BATCH}))"
            for table in (results, counters)
        ]
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener = Listener(self._db, [self._channel], self._notified, self._wake_all)
        self._janitor: asyncio.Task[None] | None = None
        self._closed = False

    async def connect(self) -> None:
        self._closed = False
        await self._db.open("result backend", MIGRATIONS)
        if self._janitor is None:
            self._janitor = asyncio.create_task(self._clean_up(), name="asyncq.postgres.cleanup")

    async def migrate(self) -> list[int]:
        """Create or upgrade the backend's tables now; return the versions applied."""
        if not self._db.is_open:
            await self.connect()
            return self._db.applied
        return await self._db.migrate("result backend", MIGRATIONS)

    async def aclose(self) -> None:
        await cancel_and_wait(self._janitor)
        self._janitor = None
        await self._listener.aclose()
        self._closed = True
        self._wake_all()  # pending waits find the backend closed and return None
        await self._db.close()

    async def set(self, task_id: str, record: bytes, *, final: bool, ttl: float | None) -> None:
        await self._db.run("set", lambda c: c.fetchval(self._set, task_id, record, final, ttl, self._channel))

    async def get(self, task_id: str) -> bytes | None:
        row = await self._db.run("get", lambda c: c.fetchrow(self._get, task_id))
        return None if row is None else bytes(row["record"])

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        if not task_ids:
            return []
        rows = await self._db.run("get_many", lambda c: c.fetch(self._get_many, list(task_ids)))
        return [None if row["record"] is None else bytes(row["record"]) for row in rows]

    async def wait(self, task_id: str, *, timeout: float | None) -> bytes | None:
        self._listener.start()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._closed:
            # Registered before the read: a notification landing after it wakes this wait.
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(task_id, set()).add(future)
            try:
                row = await self._db.run("wait", lambda c: c.fetchrow(self._get, task_id))
                if row is not None and row["final"]:
                    return bytes(row["record"])
                remaining = self.poll_interval if deadline is None else deadline - loop.time()
                if remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self.poll_interval)):
                        await future
            finally:
                waiters = self._waiters.get(task_id)
                if waiters is not None:
                    waiters.discard(future)
                    if not waiters:
                        del self._waiters[task_id]
        return None

    def _notified(self, _channel: str, task_id: str) -> None:
        for future in self._waiters.get(task_id, ()):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        # After a (re)connect of the LISTEN connection: notifications may have been missed.
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    async def forget(self, task_id: str) -> None:
        await self._db.run("forget", lambda c: c.execute(self._forget, task_id))

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        value: int = await self._db.run("incr", lambda c: c.fetchval(self._incr, key, amount, ttl))
        return value

    async def _clean_up(self) -> None:
        while True:
            await asyncio.sleep(self.cleanup_interval)
            try:
                for sql in self._cleanup:
                    while True:
                        status = await self._db.run("clean up", partial(_execute, sql=sql))
                        if int(status.rsplit(" ", 1)[-1]) < CLEANUP_BATCH:
                            break
            except BackendError as exc:  # the next round retries
                logger.warning("clean-up of expired results: %s", describe_error(exc))


async def _execute(conn: Any, sql: str) -> str:
    status: str = await conn.execute(sql)
    return status
