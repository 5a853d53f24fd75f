"""``mysql://`` result backend: task records and chord counters in MySQL or MariaDB tables.

Records and counters live in two InnoDB tables (``<prefix>results``, ``<prefix>counters``)
created on first use and versioned in ``<prefix>schema``. Expiry times are the server's epoch
seconds, so clients with skewed clocks agree; reads skip expired rows and a sweeper deletes
them in batches every ``cleanup_interval``. MySQL has no notifications: writes from this
process wake waiters at once, and one poller per instance reads every waited id in one
query every ``poll_interval`` for writes from other processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any, Final, final

from asyncq._mysql import MySQLPool, error_number, parse_mysql_url
from asyncq._utils import cancel_and_wait, describe_error
from asyncq.backends._waiters import ResultWaiters
from asyncq.backends.base import BackendCapabilities, BackendDefaults
from asyncq.exceptions import BackendConnectionError, BackendError

__all__ = ["MySQLBackend"]

logger = logging.getLogger(__name__)

#: The version of the tables this release reads and writes; a later release migrates older ones.
SCHEMA_VERSION: Final = 1
_CHUNK: Final = 500  # ids per IN (...) list: short statements, well under max_allowed_packet
_SWEEP_BATCH: Final = 1000  # rows per DELETE: short row locks, no long purge behind a big sweep
_MAX_KEY: Final = 255  # bytes of a key column; longer ids are stored by their SHA-256
_NOW: Final = "UNIX_TIMESTAMP(NOW(6))"  # sessions run in UTC (see asyncq._mysql)
_LIVE: Final = f"(expires_at IS NULL OR expires_at > {_NOW})"
_NO_SUCH_TABLE: Final = 1146


def _key(value: str) -> bytes:
    # Binary keys compare byte for byte: a case-insensitive collation would merge "A" and "a".
    raw = value.encode()
    if len(raw) <= _MAX_KEY:
        return raw
    return b"sha256:" + hashlib.sha256(raw).hexdigest().encode()


@final
class MySQLBackend(BackendDefaults):
    """``mysql://user:password@host:3306/database``: task records in MySQL or MariaDB.

    Options (driver options, or the URL query; explicit options win):
        poll_interval: seconds between reads for final records written by other processes,
            while something waits (default 0.05).
        cleanup_interval: seconds between sweeps of expired rows (default 60).
        table_prefix: prefix of the table names (default ``asyncq_``).
        connect_timeout: seconds a connect may take (default: the app's
            ``broker_connection_timeout``).
        command_timeout: seconds any one call may take, waiting for a connection included
            (default 30).
        max_connections: sessions this instance opens at most (default 10).
    """

    capabilities = BackendCapabilities(persistent=True, notifies=False, shared=True)

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.settings = parse_mysql_url(url, options)
        self.poll_interval = self.settings.poll_interval
        prefix = self.settings.table_prefix
        self._results, self._counters, self._schema = (
            f"`{prefix}{name}`" for name in ("results", "counters", "schema")
        )
        self._pool = MySQLPool(
            url, self.settings, error=BackendError, connection_error=BackendConnectionError
        )
        self._connected = False
        self._connecting: asyncio.Lock | None = None
        self._waiters = ResultWaiters()
        self._poller: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Check the server, create or check the tables, and start the expiry sweeper."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connected:
                return
            await self._pool.open()
            try:
                await self._pool.run(self._ensure_schema, what="creating the tables")
            except BaseException:
                await self._pool.close()
                raise
            self._connected = True
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="asyncq.mysql.sweeper")

    async def _ensure_schema(self, cursor: Any) -> None:
        try:
            await cursor.execute(f"SELECT version FROM {self._schema} WHERE component = 'results'")  # noqa: S608 - validated prefix
            row = await cursor.fetchone()
        except Exception as exc:
            if error_number(exc) != _NO_SUCH_TABLE:
                raise
            row = None
        if row is not None:
            version = int(row[0])
            if version > SCHEMA_VERSION:
                raise BackendError(
                    f"the tables {self._results} and {self._counters} have schema version {version};"
                    f" this asyncq knows up to {SCHEMA_VERSION}: upgrade asyncq"
                )
            return  # version 1 is the only one so far: nothing to migrate
        # Several processes may get here at once: every statement tolerates the others.
        for statement in (
            f"CREATE TABLE IF NOT EXISTS {self._results} ("
            " task_id VARBINARY(255) NOT NULL PRIMARY KEY,"
            " record LONGBLOB NOT NULL,"
            " final TINYINT NOT NULL,"
            " expires_at DOUBLE NULL,"  # the server's epoch seconds; NULL never expires
            " KEY expires_at (expires_at)"
            ") ENGINE=InnoDB",
            f"CREATE TABLE IF NOT EXISTS {self._counters} ("
            " `key` VARBINARY(255) NOT NULL PRIMARY KEY,"
            " value BIGINT NOT NULL,"
            " expires_at DOUBLE NULL,"
            " KEY expires_at (expires_at)"
            ") ENGINE=InnoDB",
            f"CREATE TABLE IF NOT EXISTS {self._schema} ("
            " component VARCHAR(64) NOT NULL PRIMARY KEY, version INT NOT NULL) ENGINE=InnoDB",
            f"INSERT IGNORE INTO {self._schema} (component, version) VALUES ('results', {SCHEMA_VERSION})",  # noqa: S608
        ):
            await cursor.execute(statement)

    async def aclose(self) -> None:
        self._waiters.wake_all()
        for task in (self._poller, self._sweeper):
            await cancel_and_wait(task)
        self._poller = self._sweeper = None
        self._connected = False
        await self._pool.close()

    async def set(self, task_id: str, record: bytes, *, final: bool, ttl: float | None) -> None:
        # REPLACE rather than ON DUPLICATE KEY UPDATE ... VALUES(): the whole row is replaced,
        # and MySQL 8 warns about VALUES() (a warning costs asyncmy a SHOW WARNINGS round trip).
        sql = (
            f"REPLACE INTO {self._results} (task_id, record, final, expires_at)"  # noqa: S608
            f" VALUES (%s, %s, %s, {_NOW} + %s)"
        )

        async def run(cursor: Any) -> None:
            await cursor.execute(sql, (_key(task_id), bytes(record), int(final), ttl))

        await self._pool.run(run, what=f"storing the result of {task_id}")
        if final:
            self._waiters.wake(task_id, bytes(record))

    async def get(self, task_id: str) -> bytes | None:
        return (await self.get_many([task_id]))[0]

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        if not task_ids:
            return []
        found = await self._records(list(task_ids), final_only=False)
        return [found.get(_key(task_id)) for task_id in task_ids]

    async def _records(self, task_ids: list[str], *, final_only: bool) -> dict[bytes, bytes]:
        """The live (and, if asked, final) records among ``task_ids``, by stored key."""
        keys = list(dict.fromkeys(_key(task_id) for task_id in task_ids))
        found: dict[bytes, bytes] = {}

        async def run(cursor: Any) -> None:
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                marks = ",".join(["%s"] * len(chunk))
                sql = f"SELECT task_id, record FROM {self._results} WHERE task_id IN ({marks}) AND {_LIVE}"  # noqa: S608
                if final_only:
                    sql += " AND final = 1"
                await cursor.execute(sql, chunk)
                for key, record in await cursor.fetchall():
                    found[bytes(key)] = bytes(record)

        await self._pool.run(run, what="reading results")
        return found

    async def wait(self, task_id: str, *, timeout: float | None) -> bytes | None:
        async def read() -> bytes | None:
            return (await self._records([task_id], final_only=True)).get(_key(task_id))

        return await self._waiters.wait(task_id, timeout, read, self._ensure_poller)

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="asyncq.mysql.results-poller")

    async def _poll(self) -> None:
        # One poller per instance, alive only while something waits: each tick reads every
        # waited id in one query, so a thousand waiters cost what one does.
        while self._waiters:
            await asyncio.sleep(self.poll_interval)
            waited = self._waiters.waited()
            if not waited:
                continue
            try:
                found = await self._records(waited, final_only=True)
            except BackendError as exc:  # the server is away: waiters keep waiting, the next tick retries
                logger.warning("could not poll results in MySQL: %s", describe_error(exc))
                continue
            for task_id in waited:
                record = found.get(_key(task_id))
                if record is not None:
                    self._waiters.wake(task_id, record)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except BackendError as exc:
                logger.warning("could not delete expired results in MySQL: %s", describe_error(exc))
            await asyncio.sleep(self.settings.cleanup_interval)

    async def sweep(self) -> int:
        """Delete expired records and counters now, in batches; return how many rows went."""
        deleted = 0
        for table in (self._results, self._counters):
            sql = f"DELETE FROM {table} WHERE expires_at <= {_NOW} LIMIT {_SWEEP_BATCH}"  # noqa: S608

            async def run(cursor: Any, sql: str = sql) -> int:
                await cursor.execute(sql)
                return int(cursor.rowcount)

            while True:
                count = await self._pool.run(run, what="deleting expired rows")
                deleted += count
                if count < _SWEEP_BATCH:
                    break
        return deleted

    async def forget(self, task_id: str) -> None:
        async def run(cursor: Any) -> None:
            await cursor.execute(f"DELETE FROM {self._results} WHERE task_id = %s", (_key(task_id),))  # noqa: S608

        await self._pool.run(run, what=f"forgetting {task_id}")

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        # One statement under the row lock: atomic across sessions. An expired counter restarts
        # from zero, as if the sweep had already deleted it. (Assignments run left to right, so
        # `value` is computed from the old expires_at.)
        upsert = (
            f"INSERT INTO {self._counters} (`key`, value, expires_at) VALUES (%s, {{first}}, {_NOW} + %s)"  # noqa: S608
            " ON DUPLICATE KEY UPDATE"
            f" value = {{next}}(IF(expires_at IS NOT NULL AND expires_at <= {_NOW}, %s, value + %s)),"
            f" expires_at = {_NOW} + %s"
        )
        params = (_key(key), amount, ttl, amount, amount, ttl)
        if amount >= 0:
            # LAST_INSERT_ID(expr) hands the new value back in the OK packet: one round trip.
            # It is unsigned, hence the other branch for decrements.
            sql = upsert.format(first="LAST_INSERT_ID(%s)", next="LAST_INSERT_ID")

            async def run(cursor: Any) -> int:
                await cursor.execute(sql, params)
                return int(cursor.lastrowid)
        else:
            sql = upsert.format(first="%s", next="")
            select = f"SELECT value FROM {self._counters} WHERE `key` = %s"  # noqa: S608

            async def run(cursor: Any) -> int:
                # The upsert's row lock is held until COMMIT, so the read sees our own value.
                await cursor.execute("BEGIN")
                await cursor.execute(sql, params)
                await cursor.execute(select, (_key(key),))
                (value,) = await cursor.fetchone()
                await cursor.execute("COMMIT")
                return int(value)

        # Not retried: a lost session may have applied the increment already.
        return await self._pool.run(run, what=f"incrementing counter {key}", idempotent=False)
