"""PostgreSQL plumbing shared by the postgresql:// broker and result backend.

Owns the URL options, the asyncpg pool with its deadlines, retries across a lost connection,
the translation of asyncpg errors, quoted table names, the versioned schema (one
``schema_version`` row per component) and the LISTEN connection that reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from asyncq._connect import describe_peer
from asyncq._options import Option, choice, integer, parse_options, seconds, text
from asyncq._utils import describe_error, redact_url
from asyncq.exceptions import AsyncqError, ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "NOW",
    "Database",
    "Listener",
    "Names",
    "Step",
    "import_asyncpg",
    "is_connection",
    "parse_postgres_url",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The server's clock as epoch seconds: every lease, delay and expiry is measured on it, so
#: clients with skewed clocks still agree (an ``eta`` given by a client is its own clock's).
NOW: Final = "extract(epoch from clock_timestamp())"


def _schema(value: object) -> str:
    if not text(value):
        raise ValueError("a non-empty schema name")
    return str(value)


#: Options every PostgreSQL driver takes, with their defaults.
COMMON_OPTIONS: Final[tuple[Option[Any], ...]] = (
    Option("schema", _schema, "public"),
    Option("table_prefix", text, "asyncq_"),
    Option("connect_timeout", seconds, 10.0),
    Option("command_timeout", seconds, 30.0),
    Option("retry_timeout", seconds, 10.0),
    Option("pool_size", integer(1), 10),
    Option("synchronous_commit", choice("on", "off", "local", "remote_write", "remote_apply"), "on"),
)

#: Options of any PostgreSQL driver (broker, backend, event bus). A URL shared by broker and
#: backend may carry the other's: those are skipped, never handed to asyncpg as server settings.
DRIVER_OPTIONS: Final = frozenset({"visibility_timeout", "poll_interval", "cleanup_interval", "batch_size"})

#: Seconds between attempts while the server is unreachable, growing up to the last.
RETRY_PAUSES: Final = (0.05, 0.1, 0.25, 0.5, 1.0)

#: A PostgreSQL SSLRequest: any PostgreSQL server answers it with one byte, S or N.
_SSL_REQUEST: Final = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


def _is_ssl_reply(data: bytes) -> bool:
    return data in (b"S", b"N")


#: Longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer ones are silently cut.
_MAX_IDENTIFIER = 63


def import_asyncpg() -> Any:
    """The asyncpg module, or MissingDependencyError naming the extra."""
    try:
        import asyncpg
    except ImportError:
        raise MissingDependencyError.for_extra("asyncpg", "postgres") from None
    return asyncpg


def _connection_errors() -> tuple[type[BaseException], ...]:
    asyncpg = import_asyncpg()
    return (
        OSError,
        TimeoutError,
        asyncpg.PostgresConnectionError,  # SQLSTATE class 08
        asyncpg.exceptions.OperatorInterventionError,  # 57: admin shutdown, cannot connect now
        asyncpg.InterfaceError,  # "connection is closed", a pool closing under us
        # A connection the server dropped mid-message can be left in a state asyncpg rejects.
        asyncpg.exceptions.InternalClientError,
    )


def is_connection(value: object) -> bool:
    """Whether ``value`` is an asyncpg connection (or a pool's proxy of one)."""
    asyncpg = import_asyncpg()
    return isinstance(value, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy)


def parse_postgres_url(
    url: str, options: Mapping[str, Any], specs: Iterable[Option[Any]], *, kind: str
) -> tuple[str, dict[str, Any]]:
    """Split a ``postgresql://`` URL into asyncpg's DSN and validated asyncq options.

    ``specs`` are the driver's own options beside :data:`COMMON_OPTIONS`. Query keys that are
    neither are left in the DSN for asyncpg (``sslmode``, ``application_name``...); keyword
    options must be known. Explicit ``options`` win over the URL query.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"{redact_url(url)!r} is not a postgresql:// URL")
    known = (*COMMON_OPTIONS, *specs)
    names = {spec.name for spec in known}
    ours: list[tuple[str, str]] = []
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in names:
            ours.append((key, value))
        elif key not in DRIVER_OPTIONS:
            kept.append((key, value))
    settings = parse_options(ours, options, known, what=f"postgresql {kind}")
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(kept)))
    return dsn, settings.values


def quote(identifier: str) -> str:
    """``identifier`` as a quoted SQL identifier (embedded quotes doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


def _short(name: str) -> str:
    # PostgreSQL cuts long names without a word; keep them unique instead.
    if len(name.encode()) <= _MAX_IDENTIFIER:
        return name
    return name[:50] + "_" + hashlib.sha256(name.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Names:
    """Where a driver's tables live: ``schema`` and ``prefix`` from the URL options."""

    schema: str
    prefix: str

    def table(self, name: str) -> str:
        """The quoted, schema-qualified name of table ``name`` (prefixed)."""
        return f"{quote(self.schema)}.{quote(_short(self.prefix + name))}"

    def index(self, name: str) -> str:
        """The unqualified name of an index (indexes live in their table's schema)."""
        return quote(_short(self.prefix + name))

    def channel(self, name: str) -> str:
        """The NOTIFY channel of ``name`` (unquoted: pg_notify and add_listener take text)."""
        return _short(f"{self.schema}.{self.prefix}{name}")


#: One migration step: SQL run in the migration's transaction, with ``{t:name}`` placeholders.
Step = str


def _render(step: Step, names: Names) -> str:
    # "{jobs}" -> the quoted table, "{ix:jobs_ready}" -> the quoted index name, "{qix:jobs_ready}"
    # -> the same, schema-qualified (DROP INDEX needs it: the schema may not be on the search path).
    out = step
    while "{" in out:
        start = out.index("{")
        end = out.index("}", start)
        token = out[start + 1 : end]
        kind, _, name = token.rpartition(":")
        if kind == "ix":
            value = names.index(name)
        elif kind == "qix":
            value = f"{quote(names.schema)}.{names.index(name)}"
        else:
            value = names.table(name)
        out = out[:start] + value + out[end + 1 :]
    return out


class Database:
    """One driver's pool, with connect deadlines, retries and error translation.

    ``error`` / ``connection_error`` are the driver's exception types (BrokerError and
    BrokerConnectionError, or the backend's pair).
    """

    def __init__(
        self,
        url: str,
        dsn: str,
        settings: Mapping[str, Any],
        *,
        error: type[AsyncqError],
        connection_error: type[AsyncqError],
    ) -> None:
        self.url = url
        self.dsn = dsn
        self.names = Names(settings["schema"], settings["table_prefix"])
        self.connect_timeout: float = settings["connect_timeout"]
        self.command_timeout: float = settings["command_timeout"]
        self.retry_timeout: float = settings["retry_timeout"]
        self.pool_size: int = settings["pool_size"]
        self.server_settings = {"synchronous_commit": settings["synchronous_commit"]}
        self.error = error
        self.connection_error = connection_error
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        #: The schema versions the last open() applied (empty: the tables were current).
        self.applied: list[int] = []

    @property
    def is_open(self) -> bool:
        """Whether the pool is open."""
        return self._pool is not None

    async def open(self, component: str, steps: Sequence[Step]) -> None:
        """Open the pool (idempotent) and bring ``component``'s tables up to date."""
        async with self._lock:
            if self._pool is not None:
                return
            asyncpg = import_asyncpg()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    pool = await asyncpg.create_pool(
                        self.dsn,
                        min_size=1,
                        max_size=self.pool_size,
                        timeout=self.connect_timeout,
                        command_timeout=self.command_timeout,
                        server_settings=self.server_settings,
                        # Connections stay open while the process lives: the server's list of
                        # them is the broker's liveness signal (see postgres_control.release_dead).
                        max_inactive_connection_lifetime=0,
                        reset=_keep_session,
                    )
            except (*_connection_errors(), asyncpg.PostgresError) as exc:
                cause = describe_error(exc, with_type=True)
                within = ""  # only a timeout waited out the deadline: a refusal comes at once
                if isinstance(exc, TimeoutError):
                    within = f" within {self.connect_timeout:g}s"
                    parts = urlsplit(self.dsn)
                    cause = await describe_peer(
                        parts.hostname or "127.0.0.1",
                        parts.port or 5432,
                        _SSL_REQUEST,
                        expected=("PostgreSQL", _is_ssl_reply),
                    )
                raise self.connection_error(
                    f"cannot connect to {redact_url(self.url)}{within}: {cause}"
                ) from exc
            self._pool = pool
        try:
            self.applied = await self.migrate(component, steps)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the pool; connections in use are terminated after the command timeout."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.command_timeout)
            except _connection_errors():
                pool.terminate()

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise self.error(f"{redact_url(self.url)} is not connected (call connect() first)")
        return self._pool

    async def run(self, what: str, op: Callable[[Any], Awaitable[T]], *, forever: bool = False) -> T:
        """Run ``op(connection)``, retrying on a lost connection for ``retry_timeout`` seconds.

        Every caller's ``op`` must be safe to repeat (a reply lost after a commit repeats it).
        ``forever`` retries until cancelled (consumers and heartbeats).
        """
        asyncpg = import_asyncpg()
        lost = _connection_errors()
        deadline = time.monotonic() + self.retry_timeout
        failures = 0
        while True:
            pool = self._require_pool()
            try:
                async with pool.acquire(timeout=self.connect_timeout) as conn:
                    try:
                        return await op(conn)
                    except lost:
                        # Half-broken: the pool must open a fresh one. A connection the server
                        # closed is already back in the pool, and terminate() would raise.
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.terminate()
                        raise
            except lost as exc:
                if not forever and time.monotonic() >= deadline:
                    raise self.connection_error(
                        f"{what}: {redact_url(self.url)} unreachable for {self.retry_timeout:g}s: "
                        f"{describe_error(exc, with_type=True)}"
                    ) from exc
                pause = RETRY_PAUSES[min(failures, len(RETRY_PAUSES) - 1)]
                if failures == 0 or failures % 20 == 0:
                    logger.warning("%s: %s; retrying", what, describe_error(exc, with_type=True))
                failures += 1
                await asyncio.sleep(pause)
            except asyncpg.PostgresError as exc:
                raise self.error(f"{what}: {describe_error(exc, with_type=True)}") from exc

    async def migrate(self, component: str, steps: Sequence[Step]) -> list[int]:
        """Apply the steps of ``component`` not applied yet; return their version numbers.

        Step *n* (from 1) takes the schema to version *n*. An advisory lock makes concurrent
        first connections wait for one another instead of racing on CREATE.
        """
        names = self.names
        version_table = names.table("schema_version")
        lock_key = int.from_bytes(hashlib.sha256(version_table.encode()).digest()[:8], "big", signed=True)

        async def apply(conn: Any) -> list[int]:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(names.schema)}")
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {version_table} ("
                    " component text PRIMARY KEY, version integer NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                current = await conn.fetchval(
                    f"SELECT version FROM {version_table} WHERE component = $1",  # noqa: S608 - quoted names
                    component,
                )
                current = current or 0
                if current > len(steps):
                    raise ConfigurationError(
                        f"the {component} tables in schema {names.schema!r} are at version {current},"
                        f" newer than this asyncq knows ({len(steps)}): upgrade asyncq"
                    )
                applied = []
                for number, step in enumerate(steps[current:], start=current + 1):
                    await conn.execute(_render(step, names))
                    applied.append(number)
                if applied:
                    await conn.execute(
                        f"INSERT INTO {version_table} (component, version) VALUES ($1, $2)"  # noqa: S608
                        " ON CONFLICT (component)"
                        " DO UPDATE SET version = excluded.version, applied_at = now()",
                        component,
                        len(steps),
                    )
                    logger.info(
                        "%s tables in %s: migrated to version %d", component, names.schema, len(steps)
                    )
                return applied

        return await self.run(f"migrate {component}", apply)


class Listener:
    """A session connection that LISTENs on some channels and reconnects when it is lost.

    ``on_notify(channel, payload)`` runs for every notification; ``on_reconnect()`` after
    every (re)connection, because notifications sent while disconnected are gone.
    """

    def __init__(
        self,
        db: Database,
        channels: Sequence[str],
        on_notify: Callable[[str, str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._db = db
        self._channels = list(channels)
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        """Start listening in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="asyncq.postgres.listen")

    async def aclose(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _notified(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self._on_notify(channel, payload)

    async def _run(self) -> None:
        asyncpg = import_asyncpg()
        failures = 0
        while True:
            conn = None
            try:
                async with asyncio.timeout(self._db.connect_timeout):
                    conn = await asyncpg.connect(
                        self._db.dsn,
                        timeout=self._db.connect_timeout,
                        server_settings=self._db.server_settings,
                    )
                    for channel in self._channels:
                        await conn.add_listener(channel, self._notified)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                failures = 0
                self.connected.set()
                self._on_reconnect()
                await self._watch(conn, lost)
            except (*_connection_errors(), asyncpg.PostgresError) as exc:
                if failures == 0:
                    logger.warning(
                        "LISTEN connection lost (%s); reconnecting", describe_error(exc, with_type=True)
                    )
                pause = RETRY_PAUSES[min(failures, len(RETRY_PAUSES) - 1)]
                failures += 1
                await asyncio.sleep(pause)
            finally:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        # A dead peer may not close the socket: a cheap query every few seconds finds out.
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await lost.wait()
                    break
            async with asyncio.timeout(self._db.connect_timeout):
                await conn.execute("SELECT 1")
        raise ConnectionResetError("the server closed the LISTEN connection")


async def _keep_session(connection: Any) -> None:
    """Pool reset on release: nothing beyond asyncpg's own (it rolls back an open transaction).

    The default reset (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) is one
    more round trip on every release, as costly as the statement itself. The pooled
    connections keep no session state to undo: no SET, no LISTEN (the LISTEN sessions are
    connections of their own), no cursor, and the vacuum's advisory lock is released in a
    ``finally`` by the statement after it.
    """
