"""The transactional outbox: ``enqueue(..., connection=conn)`` for brokers that are not a database.

With the ``outbox_url`` setting (a ``postgresql://`` URL), a message enqueued with an asyncpg
``connection`` is written to an outbox table through that connection, in the caller's
transaction, with a ``NOTIFY`` in the same transaction. A :class:`Relay` (inside every worker
of the app, or ``asyncq relay module:app``) claims committed rows with
``FOR UPDATE SKIP LOCKED``, publishes them to the real broker and deletes them in the claiming
transaction.

Guarantee: a rolled-back message is never published; a committed one is published at least
once. A relay that dies after publishing a batch but before its transaction commits leaves
the rows in place, and the next relay publishes them again under the same message (task) id:
the broker then holds that id twice (see docs/outbox.md for what the worker does with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from asyncq._options import Option, integer, seconds
from asyncq._postgres import Database, Listener, Step, import_asyncpg, is_connection, parse_postgres_url
from asyncq._utils import describe_error, redact_url
from asyncq.brokers import Broker, OutgoingMessage
from asyncq.exceptions import AsyncqError, BrokerConnectionError, BrokerError, ConfigurationError
from asyncq.runner import run_until_signalled

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["Outbox", "Relay", "run_relay"]

logger = logging.getLogger(__name__)

#: Options of an ``outbox_url`` beside those of every PostgreSQL driver.
OUTBOX_OPTIONS: Final[tuple[Option[Any], ...]] = (
    Option("poll_interval", seconds, 5.0),  # fallback poll: covers notifications lost while LISTEN reconnects
    Option("batch_size", integer(1), 100),  # rows one relay claims, publishes and deletes per transaction
)

#: Seconds a relay waits after a failed batch (broker down), growing up to the last.
_FAILURE_PAUSES: Final = (0.1, 0.5, 1.0, 2.0, 5.0)

_STEPS: Final[tuple[Step, ...]] = (
    # Version 1. seq orders the relay (oldest first); id makes a repeated write a no-op.
    "CREATE TABLE IF NOT EXISTS {outbox} ("
    " seq bigserial PRIMARY KEY,"
    " id text NOT NULL UNIQUE,"
    " queue text NOT NULL,"
    " body bytea NOT NULL,"
    " priority integer,"
    " eta double precision,"
    " created_at timestamptz NOT NULL DEFAULT now())",
)


class Outbox:
    """The outbox table of one ``outbox_url``: written through callers' connections, read by relays."""

    def __init__(self, url: str) -> None:
        dsn, settings = parse_postgres_url(url, {}, OUTBOX_OPTIONS, kind="outbox")
        self.url = url
        self.poll_interval: float = settings["poll_interval"]
        self.batch_size: int = settings["batch_size"]
        self._db = Database(url, dsn, settings, error=BrokerError, connection_error=BrokerConnectionError)
        table = self._db.names.table("outbox")
        self.table = table
        self.channel = self._db.names.channel("outbox")
        self._insert = (
            f"INSERT INTO {table} (id, queue, body, priority, eta)"  # noqa: S608 - quoted names
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::integer[],"
            " $5::double precision[])"
            " ON CONFLICT (id) DO NOTHING"
        )
        self._claim = (
            f"SELECT seq, id, queue, body, priority, eta FROM {table}"  # noqa: S608
            " ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
        )
        self._delete = f"DELETE FROM {table} WHERE seq = ANY($1::bigint[])"  # noqa: S608

    @property
    def database(self) -> Database:
        """The pool and names of the outbox's database."""
        return self._db

    async def connect(self) -> None:
        """Open the pool and create or upgrade the outbox table (idempotent)."""
        await self._db.open("outbox", _STEPS)

    async def migrate(self) -> list[int]:
        """Create or upgrade the outbox table; the versions applied (``asyncq migrate``)."""
        await self.connect()
        return list(self._db.applied)

    async def aclose(self) -> None:
        """Close the pool."""
        await self._db.close()

    async def publish_in_transaction(self, connection: Any, messages: Sequence[OutgoingMessage]) -> None:
        """Write ``messages`` to the outbox through ``connection``, in its current transaction.

        The relay publishes them once that transaction commits; a rollback removes them.
        """
        if not is_connection(connection):
            raise ConfigurationError(
                f"connection= takes an asyncpg connection (outbox {redact_url(self.url)}),"
                f" got {type(connection).__name__}"
            )
        if not messages:
            return
        asyncpg = import_asyncpg()
        timeout = self._db.command_timeout
        try:
            await connection.execute(
                self._insert,
                [m.id for m in messages],
                [m.queue for m in messages],
                [m.body for m in messages],
                [m.priority for m in messages],
                [m.eta for m in messages],
                timeout=timeout,
            )
            # Delivered on commit only, and one per transaction however many writes it made.
            await connection.execute("SELECT pg_notify($1, '')", self.channel, timeout=timeout)
        except asyncpg.UndefinedTableError as exc:
            raise BrokerError(
                f"the outbox table {self.table} is not in the connection's database:"
                " connect it to the outbox_url's database (and run `asyncq migrate`)"
            ) from exc
        except asyncpg.PostgresError as exc:
            raise BrokerError(f"outbox write: {describe_error(exc, with_type=True)}") from exc

    async def relay_batch(self, broker: Broker) -> int:
        """Publish up to ``batch_size`` committed rows to ``broker`` and delete them; the count.

        The rows stay locked (``SKIP LOCKED`` for other relays) until the delete commits: a
        relay that dies in between leaves them to be published again.
        """

        async def claim_publish_delete(conn: Any) -> int:
            async with conn.transaction():
                rows = await conn.fetch(self._claim, self.batch_size)
                if not rows:
                    return 0
                await broker.publish_many(
                    [
                        OutgoingMessage(
                            id=row["id"],
                            queue=row["queue"],
                            body=bytes(row["body"]),
                            priority=row["priority"],
                            eta=row["eta"],
                        )
                        for row in rows
                    ]
                )
                await conn.execute(self._delete, [row["seq"] for row in rows])
            return len(rows)

        return await self._db.run("outbox relay", claim_publish_delete)

    async def pending(self) -> int:
        """Rows not relayed yet (committed ones; rows a relay holds locked included)."""

        async def count(conn: Any) -> int:
            return int(await conn.fetchval(f"SELECT count(*) FROM {self.table}"))  # noqa: S608

        return await self._db.run("outbox count", count)


class Relay:
    """Moves committed outbox rows to the broker: woken by NOTIFY, with a slow fallback poll."""

    def __init__(self, outbox: Outbox, broker: Broker) -> None:
        self.outbox = outbox
        self.broker = broker
        self._wake = asyncio.Event()
        self.relayed = 0
        #: Set once the relay listens (a message committed from then on wakes it at once).
        self.ready = asyncio.Event()
        #: Set while the relay waits for a NOTIFY (or the fallback poll) with nothing to do.
        self.idle = asyncio.Event()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Make :meth:`serve` return once the batch in flight is published and deleted."""
        self._stopping.set()
        self._wake.set()

    def _notified(self, _channel: str, _payload: str) -> None:
        self._wake.set()

    async def serve(self) -> None:
        """Relay until :meth:`stop` (or cancelled); a failed batch is logged and retried, never fatal.

        Cancelling it mid-batch rolls that batch back: its rows are published again later.
        """
        await self.outbox.connect()
        listener = Listener(self.outbox.database, [self.outbox.channel], self._notified, self._wake.set)
        listener.start()
        failures = 0
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.outbox.database.connect_timeout):
                    await listener.connected.wait()
            self.ready.set()
            logger.info("outbox relay of %s ready", redact_url(self.outbox.url))
            while not self._stopping.is_set():
                self._wake.clear()  # before the batch: a NOTIFY during it makes another pass
                try:
                    count = await self.outbox.relay_batch(self.broker)
                except (AsyncqError, OSError) as exc:
                    pause = _FAILURE_PAUSES[min(failures, len(_FAILURE_PAUSES) - 1)]
                    if failures % 20 == 0:
                        logger.warning("outbox relay: %s; retrying", describe_error(exc, with_type=True))
                    failures += 1
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(pause):
                            await self._stopping.wait()  # not a NOTIFY: the broker needs the pause
                    continue
                failures = 0
                self.relayed += count
                if count >= self.outbox.batch_size:
                    continue  # a full batch: more are likely waiting
                self.idle.set()
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.outbox.poll_interval):
                            await self._wake.wait()
                finally:
                    self.idle.clear()
        finally:
            self.ready.clear()
            await listener.aclose()


def run_relay(app: App, *, loop: str | None = None) -> None:
    """Relay ``app``'s outbox in a fresh event loop until SIGTERM/SIGINT (``asyncq relay``)."""
    if app.conf.outbox_url is None:
        raise ConfigurationError("the outbox_url setting is not set: there is no outbox to relay")
    relays: list[Relay] = []
    signalled: list[int] = []

    async def serve() -> None:
        await app.connect()
        outbox = app.outbox
        assert outbox is not None  # outbox_url is set
        relay = Relay(outbox, app.broker)
        relays.append(relay)
        if signalled:  # stopped while connecting
            return
        await relay.serve()

    def on_signal(signum: int) -> None:
        signalled.append(signum)
        for relay in relays:
            relay.stop()  # a second signal cancels: that batch is rolled back, relayed later

    run_until_signalled(app, serve, on_signal, loop=loop or app.conf.worker_loop)
