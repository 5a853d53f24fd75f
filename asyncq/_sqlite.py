"""SQLite plumbing shared by the sqlite:// broker and result backend.

One connection per driver instance, on its own thread (sqlite3 blocks), with WAL, group commit,
lock waits retried every few microseconds, and checkpoints kept off the commits; short calls
(a lone publish, a claim) may run on the event loop itself when nothing else is in flight.
URL parsing for ``sqlite:///path?option=value``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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
# SQLite's own busy handler sleeps 1, 2, 5, 10... ms between tries, while another process holds
# the write lock for some 50 us per transaction: a waiter would sleep 20x longer than needed.
# In WAL mode the drivers fail fast instead and retry here after these sleeps (seconds).
_BACKOFF = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001)
# WAL mode: our commits do not checkpoint (that fsyncs, and may run on the event loop); the
# thread runs a passive checkpoint once this many writes were made since the last one.
CHECKPOINT_EVERY = 200
# A WAL this long (SQLite's autocheckpoint threshold) did not start over since the last try:
# force it (RESTART), _CHECKPOINT_RETRY writes later, then twice as many... until that works.
_WAL_RESTART_FRAMES = 1000
_CHECKPOINT_RETRY = 10
# At most this many writes share one transaction on the event loop; a bigger batch (and any
# write not marked inline) commits on the thread.
_MAX_INLINE_WRITES = 64
# A lone inline write commits at once, with no future and no loop hop: those of one task (one
# awaited after the other) at most this many per event-loop iteration, so that a task
# enqueueing in a loop still lets the loop run (leases, pokes). Writes of other tasks in that
# iteration are concurrent ones: they take the group-commit path, which yields.
_DIRECT_WRITES = 64

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


class _Inline(Exception):
    """An inline call met a lock: nothing was changed, run it on the thread instead."""


def _commit_batch(conn: sqlite3.Connection, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    return transaction(conn, lambda c: [op(c) for op in ops])


def _commit_one(conn: sqlite3.Connection, op: Callable[[sqlite3.Connection], T], single: bool) -> T:
    # A single statement is atomic by itself: no BEGIN / COMMIT statements around it.
    return op(conn) if single else _commit_batch(conn, [op])[0]


# A direct write that met another process's lock tries again this many times on the loop, one
# iteration apart, then goes to the thread, which sleeps between tries (_BACKOFF).
_LOOP_RETRIES = 3


class SQLiteThread:
    """One sqlite3 connection with its own thread, and group-committed writes.

    sqlite3 blocks, so calls run on a single-thread executor, in submission order: the event
    loop never waits for a lock or an fsync. Calls marked ``inline`` (a few indexed statements)
    run on the loop instead when the thread has nothing in flight (see :meth:`_inline`); a lock
    keeps the two from ever using the connection at once.
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
        # try_direct's statements: one cursor kept, not one made per call. Used under _lock.
        self._cursor: sqlite3.Cursor | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wal = False  # set by _open: fast-failing locks, manual checkpoints, inline calls
        self._in_flight = 0  # calls submitted to the thread and not yet seen finished on the loop
        # Held while the connection is in use, by the thread or by an inline call on the loop.
        self._lock = threading.Lock()
        self._commits = 0  # since the last checkpoint
        self._checkpoint_mode = "PASSIVE"  # or RESTART, once the WAL failed to start over
        self._checkpoint_retry = _CHECKPOINT_RETRY  # writes between RESTART tries, doubling
        # Checkpoints run on a thread and connection of their own: copying the WAL and syncing
        # the file takes milliseconds, which a publish on the loop would otherwise wait for.
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None  # only used on that thread
        self._checkpointing = False  # one submitted and not finished
        self._pending_on_thread = False  # a pending write was not marked inline
        self._inline_flush_scheduled = False
        self._direct_left = _DIRECT_WRITES  # direct commits left in this loop iteration
        self._direct_task: asyncio.Task[Any] | None = None  # the task that made them

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
            self._wal = await asyncio.wrap_future(self._executor.submit(self._open))
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open(self) -> bool:
        # The whole open (connect, WAL switch, schema) waits at most open_timeout for another
        # process's lock, then fails in one line; later statements wait BUSY_TIMEOUT each.
        deadline = time.monotonic() + self.open_timeout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Shared with the event loop's thread, never at the same time (see _inline).
            conn = sqlite3.connect(
                self.path, timeout=self.open_timeout, isolation_level=None, check_same_thread=False
            )
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
        wal = mode == "wal"
        if wal:
            # Locks fail at once and _call retries them (_BACKOFF); in WAL mode only BEGIN
            # IMMEDIATE waits for a lock in practice, reads do not block.
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        else:  # e.g. a network file system: still correct, but readers block writers
            logger.warning("SQLite database %s is in %s journal mode, not WAL", self.path, mode)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        self._conn, self._cursor = conn, conn.cursor()
        return wal

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
        # On the thread. A call that met a lock changed nothing (its transaction rolled back):
        # it is run again after a short sleep, for BUSY_TIMEOUT at most.
        tries, deadline = 0, 0.0
        while True:
            try:
                with self._lock:
                    if self._conn is None:
                        raise self._error(f"SQLite database {self.path} is closed")
                    return fn(self._conn, *args)
            except sqlite3.Error as exc:
                if self._wal and _is_busy(exc):
                    if not tries:
                        deadline = time.monotonic() + BUSY_TIMEOUT
                    if time.monotonic() < deadline:
                        time.sleep(_BACKOFF[min(tries, len(_BACKOFF) - 1)])
                        tries += 1
                        continue
                raise self._error(f"SQLite error on {self.path}: {exc}") from exc

    def _inline(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """Run a short call on the event loop's thread; _Inline if it met a lock.

        Only when nothing is in flight on the thread (else the call would overtake earlier
        ones); the lock makes sure the connection is never used by both at once. In WAL mode
        with synchronous=NORMAL a commit writes to the WAL without fsync and checkpoints run
        on the thread; a lock fails at once (busy_timeout 0) and the call goes to the thread,
        which waits for it. What is left is page-cache work, some tens of microseconds: less
        than the two thread switches it saves.
        """
        if not self._lock.acquire(blocking=False):  # the thread runs a checkpoint or an undo
            raise _Inline
        try:
            if self._conn is None:
                raise self._error(f"SQLite database {self.path} is closed")
            return fn(self._conn, *args)
        except sqlite3.Error as exc:
            if _is_busy(exc):
                raise _Inline from None
            raise self._error(f"SQLite error on {self.path}: {exc}") from exc
        finally:
            self._lock.release()

    def _can_inline(self) -> bool:
        return self._wal and not self._in_flight and not self._pending

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        orphaned: Callable[[sqlite3.Connection, T], object] | None = None,
        inline: bool = False,
    ) -> T:
        """Run ``fn(conn, *args)`` on the thread and return its result.

        A call already running cannot be stopped; if the caller is cancelled meanwhile,
        ``orphaned(conn, result)`` undoes its effect once it finishes. With ``inline``, a short
        call (a few indexed statements) runs on the event loop when the thread is idle.
        """
        if self._executor is None:
            raise self._error(f"SQLite database {self.path} is not open; call connect() first")
        if inline and self._pending:
            self._flush_inline()  # the writes queued before this call commit first, in order
        if inline and self._can_inline():
            try:
                result = self._inline(fn, args)
            except _Inline:
                pass
            else:
                return result
        future = self._executor.submit(self._call, fn, args)
        self._in_flight += 1
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if orphaned is not None:
                future.add_done_callback(partial(self._undo, orphaned))
            raise
        finally:
            self._in_flight -= 1

    def _committed(self, count: int) -> None:
        if not self._wal:
            return
        self._commits += count
        due = self._checkpoint_retry if self._checkpoint_mode == "RESTART" else CHECKPOINT_EVERY
        if self._commits >= due and self._executor is not None and not self._checkpointing:
            self._commits = 0
            if self._checkpointer is None:
                self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncq-sqlite-wal")
            self._checkpointing = True
            try:
                self._checkpointer.submit(self._checkpoint, self._checkpoint_mode)
            except RuntimeError:  # shut down meanwhile
                self._checkpointing = False

    def _checkpoint(self, mode: str) -> None:
        # On the checkpoint thread, beside this instance's writes: PASSIVE never waits and
        # blocks no writer. But the WAL starts over only when a writer finds it fully copied and
        # nobody reading it, which a steady stream of writes (ours or other connections') can
        # keep from happening; once it holds _WAL_RESTART_FRAMES, the next tries are RESTART,
        # which takes the write lock, copies what is left and starts the WAL over itself,
        # waiting at most a few ms for readers (writers retry meanwhile, as for any lock).
        try:
            busy, frames = self._run_checkpoint(mode)
            # After PASSIVE, busy means another checkpoint was running: that tells nothing yet.
            restarted = not busy if mode == "RESTART" else busy or frames < _WAL_RESTART_FRAMES
            # Plain stores, read on the loop: a stale read only moves the next try.
            if restarted:
                self._checkpoint_mode, self._checkpoint_retry = "PASSIVE", _CHECKPOINT_RETRY
            else:  # a reader that stays (a long query elsewhere) gets fewer and fewer tries
                if mode == "RESTART":
                    self._checkpoint_retry = min(2 * self._checkpoint_retry, CHECKPOINT_EVERY)
                self._checkpoint_mode = "RESTART"
        finally:
            self._checkpointing = False

    def _run_checkpoint(self, mode: str) -> tuple[int, int]:
        conn = self._checkpoint_conn
        try:
            if conn is None:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout = 0")
                self._checkpoint_conn = conn
            if mode == "RESTART":
                conn.execute("PRAGMA busy_timeout = 5")
            busy, frames, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            logger.debug("WAL checkpoint of %s failed: %s", self.path, exc)
            return 1, 0
        finally:
            if mode == "RESTART" and conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA busy_timeout = 0")
        return int(busy), int(frames)

    def _close_checkpointer(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def _undo(self, orphaned: Callable[[sqlite3.Connection, Any], object], future: Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None or self._executor is None:
            return
        with contextlib.suppress(RuntimeError):  # shut down meanwhile: leases lapse on their own
            self._executor.submit(self._call, orphaned, (future.result(),))

    async def write(
        self,
        op: Callable[[sqlite3.Connection], T],
        *,
        inline: bool = False,
        direct: bool = False,
        single: bool = False,
    ) -> T:
        """Apply ``op`` in a transaction shared with the writes submitted meanwhile; return after COMMIT.

        Once submitted, the write happens even if the caller is cancelled. If the shared
        transaction fails, every write in it fails with the same error and nothing is applied.
        With ``inline`` (a few indexed statements), the writes of one event-loop iteration may
        commit on the loop itself when the thread is idle (see _inline); with ``direct`` too, a
        lone one commits at once, inside this call (a publish: a producer awaits each one,
        whereas a worker's settles come many at a time and are better grouped). ``single``:
        ``op`` runs one statement, atomic by itself, so a lone one needs no BEGIN / COMMIT.
        """
        loop = asyncio.get_running_loop()
        direct = direct and inline and self._direct_turn()
        locked = False
        if direct:
            self._direct_left -= 1
            for retry in range(_LOOP_RETRIES + 1):
                if retry:
                    # Another process holds the write lock, some tens of us a transaction: one
                    # loop iteration is about as long, and cheaper than two thread switches.
                    await asyncio.sleep(0)
                    if not self._can_inline():  # others queued writes meanwhile: join them
                        break
                try:
                    result: T = self._inline(_commit_one, (op, single))
                except _Inline:
                    locked = True
                    continue
                self._committed(1)
                return result
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, future))
        self._pending_on_thread |= not inline or locked
        if self._flusher is None or self._flusher.done():
            if self._pending_on_thread or not self._wal or self._in_flight:
                self._start_flusher()
            elif not self._inline_flush_scheduled:
                # At the end of this iteration: the writes made meanwhile share the transaction.
                self._inline_flush_scheduled = True
                loop.call_soon(self._flush_inline)
        return await future

    def try_direct(self, sql: str, params: Sequence[Any]) -> bool:
        """``write(op, inline=True, direct=True, single=True)`` for one statement, if it can commit now.

        True: ``sql`` ran and committed, here, under the same conditions as write's direct path
        (a publish); False: nothing was done, call write(). No op closure and no call layers:
        a producer awaits each publish, and this is most of its cost besides SQLite's own.
        """
        if not self._direct_turn():
            return False
        lock = self._lock
        if not lock.acquire(blocking=False):  # the thread runs a checkpoint or an undo
            return False
        try:
            cursor = self._cursor
            if cursor is None:
                return False  # closed: write() raises the error
            cursor.execute(sql, params)
        except sqlite3.Error as exc:
            if _is_busy(exc):  # changed nothing: write() waits for the lock
                return False
            raise self._error(f"SQLite error on {self.path}: {exc}") from exc
        finally:
            lock.release()
        self._direct_left -= 1
        self._committed(1)
        return True

    def _direct_turn(self) -> bool:
        """Whether the calling task's write may commit at once, on the loop: nothing is queued
        or in flight (no earlier write is overtaken), and no other task took this loop
        iteration's direct writes."""
        if not self._direct_left or not self._can_inline():
            return False
        task = asyncio.current_task()
        if self._direct_left == _DIRECT_WRITES:
            asyncio.get_running_loop().call_soon(self._reset_direct)
            self._direct_task = task
        return task is self._direct_task

    def _reset_direct(self) -> None:
        self._direct_left, self._direct_task = _DIRECT_WRITES, None

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="asyncq.sqlite.commit")

    def _flush_inline(self) -> None:
        self._inline_flush_scheduled = False
        if not self._pending or (self._flusher is not None and not self._flusher.done()):
            return  # a flusher took them
        if self._pending_on_thread or self._in_flight or len(self._pending) > _MAX_INLINE_WRITES:
            self._start_flusher()
            return
        batch, self._pending = self._pending, []
        try:
            results = self._inline(_commit_batch, ([op for op, _ in batch],))
        except _Inline:  # locked: the thread waits for the lock
            self._pending = batch + self._pending
            self._start_flusher()
            return
        except Exception as exc:  # not ours to handle: every writer in the batch gets it
            _fail_batch(batch, exc)
            return
        self._committed(1)
        _settle_batch(batch, results)

    async def _flush(self) -> None:
        # Group commit: the writes that arrive while one transaction commits share the next,
        # so N concurrent acks cost one fsync-free COMMIT and one thread hop, not N.
        while self._pending:
            batch, self._pending = self._pending, []
            self._pending_on_thread = False
            try:
                results = await self.run(_commit_batch, [op for op, _ in batch])
            except Exception as exc:  # not ours to handle: every writer in the batch gets it
                _fail_batch(batch, exc)
                continue
            self._committed(1)
            _settle_batch(batch, results)

    async def close(self) -> None:
        """Finish pending writes, then close the connection and stop the thread."""
        executor = self._executor
        if executor is None:
            return
        if self._pending:  # an inline flush may still be scheduled: commit them on the thread
            self._start_flusher()
        if self._flusher is not None:
            await self._flusher
        checkpointer, self._checkpointer = self._checkpointer, None
        try:
            if checkpointer is not None:  # after a running checkpoint, on its own thread
                await asyncio.wrap_future(checkpointer.submit(self._close_checkpointer))
                checkpointer.shutdown(wait=False)
            await self.run(_close, self)
        finally:
            self._executor = None
            executor.shutdown(wait=False)


def _close(conn: sqlite3.Connection, owner: SQLiteThread) -> None:
    owner._conn = owner._cursor = None
    conn.close()


def _settle_batch(batch: list[tuple[Any, asyncio.Future[Any]]], results: list[Any]) -> None:
    """Give each writer of a committed batch its result (a cancelled waiter is skipped)."""
    for (_, future), result in zip(batch, results, strict=True):
        if not future.done():
            future.set_result(result)


def _fail_batch(batch: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
