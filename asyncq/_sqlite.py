"""SQLite plumbing shared by the sqlite:// broker and result backend.

One connection per driver instance, on its own thread (sqlite3 blocks), with WAL, a busy
timeout and group commit; URL parsing for ``sqlite:///path?option=value``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT
from asyncq._options import Option, Settings, parse_options, seconds
from asyncq.exceptions import AsyncqError, ConfigurationError

logger = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT = 5.0  # seconds a statement waits for another process's write lock before failing

#: Seconds opening the file (WAL switch and schema included) may wait for another process's
#: lock; the App passes ``broker_connection_timeout``.
CONNECT_TIMEOUT: Final = Option("connect_timeout", seconds, DEFAULT_CONNECT_TIMEOUT)


def parse_sqlite_url(
    url: str,
    options: Mapping[str, Any],
    specs: Iterable[Option[Any]],
    *,
    what: str,
    shared: Collection[str] = (),
) -> tuple[Path, Settings]:
    """Split ``sqlite:///path?opt=x`` into an absolute path and validated options.

    Explicit ``options`` win over the URL query. Query keys in ``shared`` belong to the other
    driver of a URL that broker and backend share, and are skipped rather than refused.
    """
    parts = urlsplit(url)
    if ":memory:" in (parts.netloc, parts.path.lstrip("/")):
        raise ConfigurationError(f"{url!r}: an in-memory SQLite database cannot be shared; use memory://")
    if parts.netloc or len(parts.path) < 2:
        raise ConfigurationError(
            f"{url!r} is not a SQLite URL; use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    settings = parse_options(parts.query, options, specs, what=what, shared=shared)
    # One leading slash separates the empty host from the path: what remains is the path as
    # written, relative (to the current directory, resolved now) or absolute.
    return Path(os.path.abspath(unquote(parts.path[1:]))), settings


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` in a write transaction; BEGIN IMMEDIATE takes the write lock up front."""
    # A deferred transaction that reads and then writes cannot wait on the busy handler when
    # another process committed in between (SQLITE_BUSY at once); taking the lock first can.
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _is_busy(exc: sqlite3.Error) -> bool:
    # Primary result codes SQLITE_BUSY (5) and SQLITE_LOCKED (6), whatever the extended code.
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (5, 6)


def _commit_batch(conn: sqlite3.Connection, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    return transaction(conn, lambda c: [op(c) for op in ops])


class SQLiteThread:
    """One sqlite3 connection, used only from its own thread, with group-committed writes.

    sqlite3 blocks, so every call runs on a single-thread executor: the event loop never waits
    on the disk, calls run in submission order, and only the opening thread touches the connection.
    """

    def __init__(
        self,
        path: Path,
        schema: str,
        *,
        error: type[AsyncqError],
        connection_error: type[AsyncqError],
        open_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.path = path
        self.open_timeout = open_timeout
        self._schema = schema
        self._error, self._connection_error = error, connection_error
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # only read and written on the executor thread
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        """Whether open() was called and close() was not."""
        return self._executor is not None

    async def open(self) -> None:
        """Open the file (creating it and its directory), set WAL mode and create the schema."""
        if self._executor is not None:
            return
        # Set before awaiting: a concurrent call returns at once, and whatever it submits
        # queues behind _open on the single thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncq-sqlite")
        try:
            await asyncio.wrap_future(self._executor.submit(self._open))
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open(self) -> None:
        # The whole open (connect, WAL switch, schema) waits at most open_timeout for another
        # process's lock, then fails in one line; later statements wait BUSY_TIMEOUT each.
        deadline = time.monotonic() + self.open_timeout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.open_timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise self._connection_error(f"cannot open SQLite database {self.path}: {exc}") from exc
        # Switching a fresh file to WAL needs an exclusive lock, and SQLite may refuse it at
        # once (SQLITE_BUSY without calling the busy handler) while other processes open the
        # same file: retry the setup here, on the driver's thread, until the deadline.
        while True:
            try:
                mode = self._setup(conn, deadline)
                break
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _is_busy(exc) and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                conn.close()
                if _is_busy(exc):
                    raise self._connection_error(
                        f"cannot open SQLite database {self.path}: another connection held a lock on it "
                        f"for connect_timeout={self.open_timeout:g}s ({exc})"
                    ) from None
                raise self._connection_error(f"cannot use SQLite database {self.path}: {exc}") from exc
        if mode != "wal":  # e.g. a network file system: still correct, but readers block writers
            logger.warning("SQLite database %s is in %s journal mode, not WAL", self.path, mode)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        self._conn = conn

    def _setup(self, conn: sqlite3.Connection, deadline: float) -> str:
        def bounded() -> sqlite3.Connection:
            # Each statement may wait for a lock: only for what is left of the deadline.
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            conn.execute(f"PRAGMA busy_timeout = {remaining_ms}")
            return conn

        (mode,) = bounded().execute("PRAGMA journal_mode").fetchone()
        if mode != "wal":  # the mode is stored in the file: only its first opener switches it
            (mode,) = bounded().execute("PRAGMA journal_mode = WAL").fetchone()
        # In WAL mode, NORMAL survives a crash of any process; only a power loss can undo
        # the last commits. FULL would fsync every commit, capping acks at the disk's rate.
        bounded().execute("PRAGMA synchronous = NORMAL")
        bounded().executescript(self._schema)
        return str(mode)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._conn is None:
            raise self._error(f"SQLite database {self.path} is closed")
        try:
            return fn(self._conn, *args)
        except sqlite3.Error as exc:
            raise self._error(f"SQLite error on {self.path}: {exc}") from exc

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        orphaned: Callable[[sqlite3.Connection, T], object] | None = None,
    ) -> T:
        """Run ``fn(conn, *args)`` on the thread and return its result.

        A call already running cannot be stopped; if the caller is cancelled meanwhile,
        ``orphaned(conn, result)`` undoes its effect once it finishes.
        """
        if self._executor is None:
            raise self._error(f"SQLite database {self.path} is not open; call connect() first")
        future = self._executor.submit(self._call, fn, args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if orphaned is not None:
                future.add_done_callback(partial(self._undo, orphaned))
            raise

    def _undo(self, orphaned: Callable[[sqlite3.Connection, Any], object], future: Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None or self._executor is None:
            return
        with contextlib.suppress(RuntimeError):  # shut down meanwhile: leases lapse on their own
            self._executor.submit(self._call, orphaned, (future.result(),))

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Apply ``op`` in a transaction shared with the writes submitted meanwhile; return after COMMIT.

        Once submitted, the write happens even if the caller is cancelled. If the shared
        transaction fails, every write in it fails with the same error and nothing is applied.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="asyncq.sqlite.commit")
        return await future

    async def _flush(self) -> None:
        # Group commit: the writes that arrive while one transaction commits share the next,
        # so N concurrent acks cost one fsync-free COMMIT and one thread hop, not N.
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self.run(_commit_batch, [op for op, _ in batch])
            except Exception as exc:  # not ours to handle: every writer in the batch gets it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        """Finish pending writes, then close the connection and stop the thread."""
        executor = self._executor
        if executor is None:
            return
        if self._flusher is not None:
            await self._flusher
        try:
            await self.run(_close, self)
        finally:
            self._executor = None
            executor.shutdown(wait=False)


def _close(conn: sqlite3.Connection, owner: SQLiteThread) -> None:
    owner._conn = None
    conn.close()
