"""MySQL/MariaDB plumbing for the mysql:// result backend: URL parsing and a small pool.

The pool is ours rather than asyncmy's so that every call has one deadline covering the wait
for a connection, the connect and the statements, and so that a connection whose statement
was interrupted (timeout, cancellation, lost server) is closed instead of reused half-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT, describe_peer
from asyncq._options import Option, integer, parse_options, seconds
from asyncq._utils import describe_error, redact_url
from asyncq.exceptions import AsyncqError, ConfigurationError, MissingDependencyError

try:
    import asyncmy
    from asyncmy.connection import Connection
    from asyncmy.cursors import Cursor
    from asyncmy.errors import MySQLError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError.for_extra("asyncmy", "mysql") from exc

__all__ = ["MySQLPool", "MySQLSettings", "error_number", "is_connection_error", "parse_mysql_url"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT: Final = 3306
#: Idle connections older than this are closed rather than reused: the server drops idle
#: sessions after its ``wait_timeout``, and a non-idempotent statement cannot be retried.
IDLE_LIMIT: Final = 300.0
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_]{0,48}")
#: Client-side error numbers (CR_*) that mean the session is gone, not that a statement failed.
_CLIENT_ERRORS: Final = range(2000, 3000)


def _table_prefix(value: object) -> str:
    if not isinstance(value, str) or not _PREFIX_RE.fullmatch(value):
        raise ValueError("up to 48 letters, digits or underscores")
    return value


#: The backend's options, with their defaults.
OPTIONS: Final[tuple[Option[Any], ...]] = (
    Option("connect_timeout", seconds, DEFAULT_CONNECT_TIMEOUT),
    Option("command_timeout", seconds, 30.0),
    Option("poll_interval", seconds, 0.05),
    Option("cleanup_interval", seconds, 60.0),
    Option("table_prefix", _table_prefix, "asyncq_"),
    Option("max_connections", integer(1), 10),
)


@dataclass(frozen=True, slots=True)
class MySQLSettings:
    """Where the server is and how the backend uses it (see docs/backends/mysql.md)."""

    host: str
    port: int
    user: str
    password: str
    database: str
    table_prefix: str
    connect_timeout: float
    command_timeout: float
    poll_interval: float
    cleanup_interval: float
    max_connections: int


def parse_mysql_url(url: str, options: Mapping[str, Any]) -> MySQLSettings:
    """Split ``mysql://user:pass@host:port/db?opt=x`` into settings; explicit options win."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigurationError(f"{shown!r} is not a valid MySQL URL: {exc}") from None
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ConfigurationError(f"{shown!r} names no database; use mysql://user:password@host:3306/database")
    values = parse_options(parts.query, options, OPTIONS, what="mysql backend").values
    return MySQLSettings(
        host=parts.hostname or "localhost",
        port=port,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=database,
        **values,
    )


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the session was lost or never opened (so a retry may succeed)."""
    if isinstance(exc, MySQLError):
        return bool(exc.args) and exc.args[0] in _CLIENT_ERRORS
    return isinstance(exc, OSError | EOFError | asyncio.IncompleteReadError)


def error_number(exc: BaseException) -> int | None:
    """The server's error number of a MySQL error (1146 for a missing table...), else None."""
    if isinstance(exc, MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MySQLError) and len(exc.args) >= 2:
        return f"MySQL error {exc.args[0]}: {exc.args[1]}"
    return describe_error(exc, with_type=True)


_DEADLOCK_RETRIES: Final = 5
_ER_LOCK_DEADLOCK: Final = 1213


def _is_deadlock(exc: BaseException) -> bool:
    """InnoDB chose this statement as a deadlock's victim (error 1213) and rolled it back."""
    args: tuple[Any, ...] = exc.args
    return bool(args) and args[0] == _ER_LOCK_DEADLOCK


class MySQLPool:
    """Up to ``max_connections`` autocommit sessions, each call under ``command_timeout``."""

    def __init__(
        self,
        url: str,
        settings: MySQLSettings,
        *,
        error: type[AsyncqError],
        connection_error: type[AsyncqError],
    ) -> None:
        self._shown = redact_url(url)
        self.settings = settings
        self._error, self._connection_error = error, connection_error
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._idle: list[tuple[Connection, float]] = []  # (connection, when it was put back)
        self._kills: set[asyncio.Task[None]] = set()
        self._closed = False

    async def open(self) -> None:
        """Connect once to check the URL, keeping the session for the first calls."""
        self._closed = False
        conn = await self._connect()
        self._idle.append((conn, time.monotonic()))

    async def close(self) -> None:
        """Close the idle sessions; those in use are closed when their call ends."""
        self._closed = True
        if self._kills:  # each is bounded by its own deadline
            await asyncio.gather(*self._kills, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await _close(conn)

    async def _connect(self) -> Connection:
        s = self.settings
        try:
            async with asyncio.timeout(s.connect_timeout):
                conn: Connection = await asyncmy.connect(
                    host=s.host,
                    port=s.port,
                    user=s.user,
                    password=s.password,
                    database=s.database,
                    autocommit=True,
                    connect_timeout=s.connect_timeout,
                    # Expiry times are the server's epoch seconds: UTC sessions keep
                    # UNIX_TIMESTAMP(NOW(6)) exact across daylight-saving changes.
                    init_command="SET time_zone = '+00:00'",
                    charset="utf8mb4",
                )
        except TimeoutError:
            # MySQL speaks first; a server that stays silent (Redis, say) waits for us instead.
            answer = await describe_peer(s.host, s.port, b"PING\r\n")
            raise self._connection_error(
                f"no MySQL server answered at {s.host}:{s.port} within {s.connect_timeout:g}s:"
                f" {answer} (URL {self._shown})"
            ) from None
        except Exception as exc:
            raise self._connection_error(
                f"cannot connect to MySQL at {s.host}:{s.port}: {_oneline(_reason(exc))} (URL {self._shown})"
            ) from exc
        return conn

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Cursor]:
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                candidate, since = self._idle.pop()
                if time.monotonic() - since < IDLE_LIMIT and candidate.connected:
                    conn = candidate
                else:
                    await _close(candidate)
            if conn is None:
                conn = await self._connect()
            # Read now: asyncmy forgets it when a statement is cancelled.
            thread_id = int(conn.thread_id())
            try:
                async with conn.cursor() as cursor:
                    yield cursor
            except BaseException as exc:
                # Interrupted or failed mid-statement: the session state is unknown.
                conn.close()
                if isinstance(exc, asyncio.CancelledError):
                    self._kill_statement(thread_id)
                raise
            if self._closed:
                await _close(conn)
            else:
                self._idle.append((conn, time.monotonic()))

    async def run(self, fn: Callable[[Cursor], Awaitable[T]], *, what: str, idempotent: bool = True) -> T:
        """Run ``fn`` on a cursor within ``command_timeout``; errors become one-line AsyncqErrors.

        An idempotent call whose session turns out to be lost is retried once on a new one.
        """
        timeout = self.settings.command_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(timeout):
                    async with self._session() as cursor:
                        return await fn(cursor)
            except TimeoutError:
                # Stopped on the server before we answer, so that a timed-out write does not
                # land later (a closed socket alone does not stop a statement waiting on a lock).
                if self._kills:
                    await asyncio.wait(set(self._kills))
                raise self._connection_error(
                    f"MySQL did not answer within {timeout:g}s while {what} ({self._shown})"
                ) from None
            except AsyncqError:
                raise
            except Exception as exc:
                if _is_deadlock(exc) and attempt <= _DEADLOCK_RETRIES and not self._closed:
                    # InnoDB rolled the statement's transaction back whole: running it again is
                    # safe for every call, idempotent or not (the server's own advice).
                    logger.debug("MySQL deadlock while %s; retrying", what)
                    await asyncio.sleep(0.005 * attempt)
                    continue
                lost = is_connection_error(exc)
                if lost and idempotent and attempt == 1 and not self._closed:
                    logger.info("MySQL session lost while %s (%s); retrying", what, describe_error(exc))
                    continue
                kind = self._connection_error if lost else self._error
                raise kind(f"MySQL failed while {what}: {_oneline(_reason(exc))} ({self._shown})") from exc

    def _kill_statement(self, thread_id: int) -> None:
        task = asyncio.create_task(self._kill(thread_id), name="asyncq.mysql.kill-query")
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)

    async def _kill(self, thread_id: int) -> None:
        """KILL QUERY the statement an interrupted session was running; never raises."""
        try:
            async with asyncio.timeout(self.settings.connect_timeout + 1.0):
                conn = await self._connect()
                try:
                    async with conn.cursor() as cursor:
                        await cursor.execute(f"KILL QUERY {int(thread_id)}")
                finally:
                    await _close(conn)
        except Exception as exc:
            logger.debug("could not stop MySQL session %s: %s", thread_id, describe_error(exc))


def _oneline(text: str) -> str:
    return " ".join(text.split())


async def _close(conn: Connection) -> None:
    # QUIT is a courtesy: a session that cannot say it within a second is just dropped.
    try:
        async with asyncio.timeout(1.0):
            await conn.ensure_closed()
    except Exception:
        conn.close()
