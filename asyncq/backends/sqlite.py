"""``sqlite://`` result backend: task records and chord counters in a local SQLite file.

This module owns the results and counters tables, their expiry, and waiting for a final
record: written by this process it wakes waiters at once; written by another process it is
found by one shared poller per backend instance, which the writer pokes through a
wake-up socket (asyncq/_wakeup.py) and which otherwise reads every ``poll_interval``. The
connection thread, group commit and URL parsing are shared with the SQLite broker
(asyncq.brokers.sqlite); a broker and a backend may use the same file, as the embedded default does.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, Final, final

from asyncq._options import Option, seconds
from asyncq._sqlite import CONNECT_TIMEOUT, SQLiteThread, parse_sqlite_url
from asyncq._utils import cancel_and_wait, describe_error
from asyncq._wakeup import WakeupChannel
from asyncq.backends._waiters import ResultWaiters
from asyncq.backends.base import BackendCapabilities, BackendDefaults
from asyncq.exceptions import BackendConnectionError, BackendError

__all__ = ["SQLiteBackend"]

logger = logging.getLogger(__name__)

CLEANUP_INTERVAL = 60.0  # seconds between sweeps of expired rows; reads skip them meanwhile
_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit
_INLINE_IDS = 50  # a read of at most this many records may run on the event loop (asyncq/_sqlite.py)

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS asyncq_results (
    task_id TEXT PRIMARY KEY,
    record BLOB NOT NULL,
    final INTEGER NOT NULL,
    expires_at REAL                 -- epoch seconds; NULL never expires
);
CREATE INDEX IF NOT EXISTS asyncq_results_expiry ON asyncq_results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS asyncq_counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at REAL
);
COMMIT;
"""
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


def _upsert(conn: sqlite3.Connection, row: tuple[str, bytes, int, float | None], sweep: bool) -> None:
    conn.execute(
        "INSERT INTO asyncq_results (task_id, record, final, expires_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (task_id) DO UPDATE SET"
        " record = excluded.record, final = excluded.final, expires_at = excluded.expires_at",
        row,
    )
    if sweep:
        _delete_expired(conn)


def _delete_expired(conn: sqlite3.Connection) -> None:
    now = time.time()
    conn.execute("DELETE FROM asyncq_results WHERE expires_at <= ?", (now,))
    conn.execute("DELETE FROM asyncq_counters WHERE expires_at <= ?", (now,))


def _records(conn: sqlite3.Connection, task_ids: Sequence[str], final_only: bool) -> dict[str, bytes]:
    """Return the live (and, if asked, final) records among ``task_ids``."""
    found: dict[str, bytes] = {}
    now = time.time()
    for start in range(0, len(task_ids), _CHUNK):
        chunk = task_ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT task_id, record FROM asyncq_results WHERE task_id IN ({marks}) AND {_LIVE}"  # noqa: S608 - only '?' marks
        if final_only:
            sql += " AND final = 1"
        found.update(conn.execute(sql, (*chunk, now)).fetchall())
    return found


def _incr(conn: sqlite3.Connection, key: str, amount: int, expires_at: float | None) -> int:
    # One statement, run under the write lock: atomic across threads and processes. An expired
    # counter restarts from zero, as if the sweep had already deleted it.
    (value,) = conn.execute(
        "INSERT INTO asyncq_counters (key, value, expires_at) VALUES (:key, :amount, :expires_at)"
        " ON CONFLICT (key) DO UPDATE SET"
        " value = CASE WHEN expires_at <= :now THEN excluded.value ELSE value + excluded.value END,"
        " expires_at = excluded.expires_at"
        " RETURNING value",
        {"key": key, "amount": amount, "expires_at": expires_at, "now": time.time()},
    ).fetchone()
    return int(value)


POLL_INTERVAL: Final = Option("poll_interval", seconds, 0.05)
#: Options of this backend (URL query or keyword), with their defaults.
BACKEND_OPTIONS: Final = (POLL_INTERVAL, CONNECT_TIMEOUT)


@final
class SQLiteBackend(BackendDefaults):
    """``sqlite:///path.db``: task records in a SQLite file that every local process can share.

    Options (driver options, or the URL query; explicit options win):
        poll_interval: seconds between checks for final records written by other processes
            while something waits (default 0.05), the fallback when a wake-up poke is lost or
            cannot be used; writes from this process wake waiters at once.
        connect_timeout: seconds opening the file may wait for another process's lock
            (default 10; the App passes ``broker_connection_timeout``).

    A ``visibility_timeout`` in the URL query is the broker's and is ignored here, so that one
    ``sqlite://`` URL can serve as both broker and backend.
    """

    capabilities = BackendCapabilities(persistent=True, notifies=False, shared=True)

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.path, settings = parse_sqlite_url(
            url, options, BACKEND_OPTIONS, what="sqlite backend", shared=("visibility_timeout",)
        )
        self.poll_interval = settings[POLL_INTERVAL]
        self._db = SQLiteThread(
            self.path,
            _SCHEMA,
            error=BackendError,
            connection_error=BackendConnectionError,
            open_timeout=settings[CONNECT_TIMEOUT],
        )
        self._waiters = ResultWaiters()
        self._poller: asyncio.Task[None] | None = None
        self._next_sweep = 0.0
        self._wakeup = WakeupChannel(self.path, "results")
        self._poked = asyncio.Event()  # another process stored a final record

    async def connect(self) -> None:
        """Open the file, create the tables and sweep out expired rows."""
        if not self._db.is_open:
            await self._db.open()
            self._next_sweep = time.monotonic() + CLEANUP_INTERVAL
            await self._db.write(_delete_expired)

    async def aclose(self) -> None:
        self._waiters.wake_all()
        await cancel_and_wait(self._poller)
        self._poller = None
        self._wakeup.close()
        await self._db.close()

    async def set(self, task_id: str, record: bytes, *, final: bool, ttl: float | None) -> None:
        expires_at = None if ttl is None else time.time() + ttl
        sweep = time.monotonic() >= self._next_sweep
        if sweep:
            self._next_sweep = time.monotonic() + CLEANUP_INTERVAL
        await self._db.write(
            partial(_upsert, row=(task_id, bytes(record), int(final), expires_at), sweep=sweep),
            inline=not sweep,  # one row: may commit on the event loop (asyncq/_sqlite.py)
        )
        if final:
            self._waiters.wake(task_id, record)
            self._wakeup.poke()

    async def get(self, task_id: str) -> bytes | None:
        return (await self.get_many([task_id]))[0]

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        if not task_ids:
            return []
        found = await self._db.run(_records, list(task_ids), False, inline=len(task_ids) <= _INLINE_IDS)
        return [found.get(task_id) for task_id in task_ids]

    async def wait(self, task_id: str, *, timeout: float | None) -> bytes | None:
        self._wakeup.listen(self._poked.set)

        async def read() -> bytes | None:
            return (await self._db.run(_records, [task_id], True, inline=True)).get(task_id)

        return await self._waiters.wait(task_id, timeout, read, self._ensure_poller)

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="asyncq.sqlite.results-poller")

    async def _poll(self) -> None:
        # One poller per instance, alive only while something waits: each tick reads every
        # waited id in one query, so a thousand waiters cost what one does.
        logger.debug("result poller started for %s", self.path)
        try:
            while self._waiters:
                try:
                    async with asyncio.timeout(self.poll_interval):
                        await self._poked.wait()
                except TimeoutError:
                    self._check_wakeup()
                # Cleared before the read: a poke landing during it makes the next tick immediate.
                self._poked.clear()
                waited = self._waiters.waited()
                try:
                    found = await self._db.run(_records, waited, True, inline=len(waited) <= _INLINE_IDS)
                except BackendError as exc:  # transient (locked too long): the next tick retries
                    logger.warning("could not poll results in %s: %s", self.path, describe_error(exc))
                    continue
                for task_id, record in found.items():
                    self._waiters.wake(task_id, record)
        finally:
            logger.debug("result poller stopped for %s", self.path)

    def _check_wakeup(self) -> None:
        # The wake-up directory may have been deleted under us: bind a new socket, or poll.
        if self._wakeup.is_listening and not self._wakeup.is_bound():
            self._wakeup.close()
            self._wakeup.listen(self._poked.set)

    async def forget(self, task_id: str) -> None:
        await self._db.write(
            lambda conn: conn.execute("DELETE FROM asyncq_results WHERE task_id = ?", (task_id,))
        )

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        expires_at = None if ttl is None else time.time() + ttl
        return await self._db.write(partial(_incr, key=key, amount=amount, expires_at=expires_at))
