"""``postgresql://`` broker: durable queues in a PostgreSQL table, claimed with SKIP LOCKED.

This module owns the claim / lease / settle protocol and the consumers' wake-ups; the SQL is
in asyncq/brokers/postgres_sql.py, the pool, retries and LISTEN connection in
asyncq/_postgres.py. Guarantees and settings: docs/brokers/postgresql.md.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Final, Generic, TypeVar, final

from asyncq._options import Option, seconds
from asyncq._postgres import Database, Listener, import_asyncpg, is_connection, parse_postgres_url
from asyncq._utils import cancel_and_wait, describe_error
from asyncq.brokers._kit import check_consume
from asyncq.brokers._postgres_fair import FairRow, FairStatements
from asyncq.brokers.base import BrokerCapabilities, BrokerDefaults, DeadLetter, Delivery, OutgoingMessage
from asyncq.brokers.postgres_sql import MIGRATIONS, Statements
from asyncq.exceptions import BrokerConnectionError, BrokerError, ConfigurationError

__all__ = ["PostgresBroker"]

logger = logging.getLogger(__name__)

#: The broker's own options (besides asyncq._postgres.COMMON_OPTIONS), with their defaults.
OPTIONS: Final[tuple[Option[float], ...]] = (
    Option("visibility_timeout", seconds, 30.0),
    Option("poll_interval", seconds, 5.0),
    Option("vacuum_interval", seconds, 60.0),
)

#: Prefix of the ``application_name`` of a broker's connections; its lease owner id follows.
APPLICATION_NAME: Final = "asyncq-broker-"

T = TypeVar("T")

Row = Any  # an asyncpg Record: seq, id, queue, body, priority, deliveries, rank


class _Consumer:
    """One consume() iterator: rows claimed but not yet yielded, and claims not yet settled."""

    __slots__ = ("buffer", "queues", "unsettled", "wakeup")

    def __init__(self, queues: list[str]) -> None:
        self.queues = frozenset(queues)
        self.buffer: deque[Row] = deque()
        self.unsettled = 0  # claimed and not settled, buffered ones included: at most prefetch
        self.wakeup = asyncio.Event()  # a slot freed, a notification, or the listener reconnected

    def settled(self) -> None:
        self.unsettled -= 1
        self.wakeup.set()


class _GroupCommit(Generic[T]):
    """Items submitted while one statement is in flight go together in the next one.

    Concurrent acks (or publishes) thus share a transaction and its commit, with no timer:
    a lone call is written at once.
    """

    def __init__(self, flush: Callable[[list[T]], Awaitable[None]], name: str) -> None:
        self._flush = flush
        self._name = name
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)
        # Shielded: a cancelled caller's item is still written with its batch.
        await asyncio.shield(future)

    async def _run(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._flush([item for item, _ in batch])
                except Exception as exc:  # every caller of the batch gets the error to handle
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._task = None


class _PostgresDelivery:
    """A claimed row; settled by one statement matched on its lease."""

    __slots__ = ("_broker", "_consumer", "_is_settled", "_seq", "body", "delivery_count", "id", "queue")

    def __init__(self, broker: PostgresBroker, consumer: _Consumer, row: Row) -> None:
        self._seq: int = row["seq"]
        self.id: str = row["id"]
        self.queue: str = row["queue"]
        self.body: bytes = row["body"]
        self.delivery_count: int = row["deliveries"]
        self._broker, self._consumer, self._is_settled = broker, consumer, False

    async def ack(self) -> None:
        await self._settle(lambda: self._broker._acks.submit((self._seq, self.delivery_count)))

    async def nack(self, *, delay: float | None = None) -> None:
        broker = self._broker
        lease = (self._seq, broker._owner, self.delivery_count)
        await self._settle(lambda: broker._nack(lease, delay or 0.0))

    async def dead_letter(self, reason: str) -> None:
        broker = self._broker
        lease = (self._seq, broker._owner, self.delivery_count)
        sql = broker._sql.dead_letter
        await self._settle(lambda: broker._db.run("dead_letter", lambda c: c.execute(sql, *lease, reason)))

    async def _settle(self, op: Callable[[], Awaitable[object]]) -> None:
        if self._is_settled:
            raise BrokerError(f"delivery {self.id} was already settled")
        self._is_settled = True
        try:
            await op()
        except BrokerError:
            self._is_settled = False  # nothing was written: the caller may settle again
            raise
        finally:
            if self._is_settled:
                self._consumer.settled()


@final
class PostgresBroker(BrokerDefaults):
    """``postgresql://user@host/db``: durable queues in PostgreSQL, at-least-once.

    Options (transport options, or the URL query; explicit options win):
        schema: schema of the tables (default ``public``), created if missing.
        table_prefix: prefix of the table names (default ``asyncq_``).
        visibility_timeout: seconds a claim stays valid without renewal (default 30). A live
            instance renews its claims every third of it, so only a dead consumer's messages
            come back, that long after it died.
        poll_interval: seconds between claims when no notification came (default 5): the
            fallback for a lost notification; LISTEN/NOTIFY wakes consumers at once.
        vacuum_interval: seconds between ``VACUUM`` runs of the jobs table by one of the
            connected instances (default 60), so the table of a busy queue stays small even
            where autovacuum is off or slow; set it high to leave the table to autovacuum.
        connect_timeout: seconds a connect may take (default 10; ``broker_connection_timeout``).
        command_timeout: seconds one statement may take (default 30).
        retry_timeout: seconds publish, ack and admin calls keep retrying a lost connection
            before BrokerConnectionError (default 10); consumers retry for ever.
        pool_size: most connections in the pool (default 10), plus one for LISTEN.
    """

    capabilities = BrokerCapabilities(
        durable=True,
        redelivers_lost=True,
        notifies=True,
        priorities=True,
        delayed_delivery=True,
        fair_queuing=True,
    )

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        dsn, settings = parse_postgres_url(url, options, OPTIONS, kind="broker")
        self.visibility_timeout: float = settings["visibility_timeout"]
        self.poll_interval: float = settings["poll_interval"]
        self.vacuum_interval: float = settings["vacuum_interval"]
        self._db = Database(url, dsn, settings, error=BrokerError, connection_error=BrokerConnectionError)
        self._sql = Statements(self._db.names)
        self._fair = FairStatements(self._db.names)
        self._channel = self._db.names.channel("jobs")
        self._owner = uuid.uuid4().hex
        # The server lists this name while the process lives: a dead worker's is gone at once.
        self._db.server_settings["application_name"] = f"{APPLICATION_NAME}{self._owner}"
        self._consumers: set[_Consumer] = set()
        self._has_consumed = False  # the heartbeat's upkeep (renew, release, vacuum) runs only then
        self._heartbeat: asyncio.Task[None] | None = None
        self._listener = Listener(self._db, [self._channel], self._notified, self._wake_all)
        self._acks: _GroupCommit[tuple[int, int]] = _GroupCommit(self._ack_many, "asyncq.postgres.ack")
        self._publishes: _GroupCommit[OutgoingMessage] = _GroupCommit(
            self._publish_batch, "asyncq.postgres.publish"
        )

    @property
    def database(self) -> Database:
        """The pool and schema names, shared with this broker's control channel."""
        return self._db

    @property
    def owner(self) -> str:
        """This instance's lease owner id (the ``owner`` column of the rows it claimed)."""
        return self._owner

    async def connect(self) -> None:
        await self._db.open("broker", MIGRATIONS)
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._renew_leases(), name="asyncq.postgres.heartbeat")

    async def migrate(self) -> list[int]:
        """Create or upgrade the broker's tables now; return the versions applied."""
        if not self._db.is_open:
            await self.connect()
            return self._db.applied
        return await self._db.migrate("broker", MIGRATIONS)

    async def aclose(self) -> None:
        """Stop renewing claims and close the pool.

        Messages yielded and not settled keep their lease until it lapses, then come back as a
        dead consumer's would; messages claimed but never yielded are handed back now.
        """
        await cancel_and_wait(self._heartbeat)
        self._heartbeat = None
        await self._listener.aclose()
        buffered = [row["seq"] for consumer in self._consumers for row in consumer.buffer]
        for consumer in self._consumers:
            consumer.buffer.clear()
            consumer.wakeup.set()
        if buffered and self._db.is_open:
            await self._release(buffered)
        await self._db.close()

    # -- wake-ups ------------------------------------------------------------------------------

    def _notified(self, _channel: str, queue: str) -> None:
        for consumer in self._consumers:
            if queue in consumer.queues:
                consumer.wakeup.set()

    def _wake_all(self) -> None:
        for consumer in self._consumers:
            consumer.wakeup.set()

    async def _renew_leases(self) -> None:
        interval = self.visibility_timeout / 3
        sql = self._sql
        loop = asyncio.get_running_loop()
        next_vacuum = loop.time() + self.vacuum_interval
        logger.debug("lease heartbeat started (owner %s)", self._owner)
        try:
            while True:
                await asyncio.sleep(max(0.0, min(interval, next_vacuum - loop.time())))
                if not self._has_consumed:
                    continue  # a producer-only instance holds no leases and leaves upkeep to workers
                if loop.time() >= next_vacuum:
                    next_vacuum = loop.time() + self.vacuum_interval
                    await self._vacuum()
                    continue
                try:
                    await self._db.run(
                        "renew leases", lambda c: c.execute(sql.renew, self._owner, self.visibility_timeout)
                    )
                    # Any live instance hands back the rows of dead ones.
                    await self._db.run(
                        "release lapsed leases", lambda c: c.fetchrow(sql.release_lapsed, self._channel)
                    )
                except BrokerError as exc:  # the next beat retries
                    logger.warning("lease heartbeat: %s", describe_error(exc))
        finally:
            logger.debug("lease heartbeat stopped (owner %s)", self._owner)

    async def _vacuum(self) -> None:
        # Deleted jobs leave dead rows; one instance at a time (the advisory lock) reclaims them.
        async def run(conn: Any) -> None:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._sql.vacuum_lock):
                try:
                    await conn.execute(self._sql.expired_locks)
                    await conn.execute(self._sql.vacuum)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", self._sql.vacuum_lock)

        try:
            await self._db.run("vacuum", run)
        except BrokerError as exc:  # e.g. not the table's owner: autovacuum is left to do it
            logger.warning("VACUUM of the jobs table: %s", describe_error(exc))

    # -- publishing ----------------------------------------------------------------------------

    def _insert_args(self, messages: Sequence[OutgoingMessage]) -> tuple[Any, ...]:
        for m in messages:
            if m.priority is not None and not 0 <= m.priority <= 255:
                raise ValueError(f"priority must be 0-255, got {m.priority} (message {m.id})")
        return (
            [m.id for m in messages],
            [m.queue for m in messages],
            [bytes(m.body) for m in messages],
            [m.priority or 0 for m in messages],
            [m.eta for m in messages],
            self._channel,
        )

    async def publish(self, message: OutgoingMessage) -> None:
        self._insert_args([message])  # a bad message fails alone, not its whole batch
        await self._publishes.submit(message)

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        if messages:
            await self._publish_batch(messages)

    async def _publish_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        args = self._insert_args(messages)
        fair = _fair_rows(messages)
        # A retry after a lost commit reply may store a message twice: at-least-once, documented.
        if fair:
            ranked = self._sql.insert_ranked
            await self._db.run("publish", lambda c: self._fair.insert(c, ranked, args, fair, None))
        else:
            await self._db.run("publish", lambda c: c.fetchval(self._sql.insert, *args))

    async def publish_in_transaction(self, connection: Any, messages: Sequence[OutgoingMessage]) -> None:
        """Insert ``messages`` through the caller's asyncpg ``connection``, in its transaction.

        They become visible (and wake consumers) when that transaction commits, and vanish
        with it on rollback. The connection must reach this broker's database.
        """
        if not is_connection(connection):
            raise ConfigurationError(
                "connection= takes an asyncpg connection for the postgresql:// broker,"
                f" got {type(connection).__name__}"
            )
        if not messages:
            return
        asyncpg = import_asyncpg()
        args = self._insert_args(messages)
        fair = _fair_rows(messages)
        timeout = self._db.command_timeout
        try:
            if fair:  # a savepoint inside the caller's transaction
                await self._fair.insert(connection, self._sql.insert_ranked, args, fair, timeout)
            else:
                await connection.fetchval(self._sql.insert, *args, timeout=timeout)
        except asyncpg.UndefinedTableError as exc:
            raise BrokerError(
                f"the jobs table {self._db.names.table('jobs')} is not in the connection's database:"
                " connect it to the broker's database (and run `asyncq migrate`)"
            ) from exc
        except asyncpg.PostgresError as exc:
            raise BrokerError(f"transactional publish: {describe_error(exc, with_type=True)}") from exc

    # -- consuming -----------------------------------------------------------------------------

    async def consume(self, queues: Sequence[str], *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        names = check_consume(queues, prefetch)
        consumer = _Consumer(names)
        self._consumers.add(consumer)
        self._has_consumed = True
        self._listener.start()
        try:
            while True:
                if not consumer.buffer:
                    await self._fill(consumer, names, prefetch)
                yield _PostgresDelivery(self, consumer, consumer.buffer.popleft())
        finally:
            self._consumers.discard(consumer)
            seqs = [row["seq"] for row in consumer.buffer]
            consumer.buffer.clear()
            if seqs and self._db.is_open:
                await self._release(seqs)

    async def _fill(self, consumer: _Consumer, queues: list[str], prefetch: int) -> None:
        """Claim as many rows as there are free prefetch slots, waiting until there is one."""
        while True:
            # Cleared before the claim: a notification or settle landing during it sets it again.
            consumer.wakeup.clear()
            delay: float | None = None  # no free slot: only a settle (which sets wakeup) helps
            free = prefetch - consumer.unsettled
            if free > 0:
                rows, due = await self._db.run(
                    "claim", partial(self._claim, queues=queues, limit=free), forever=True
                )
                if rows:
                    consumer.buffer.extend(rows)
                    consumer.unsettled += len(rows)
                    return
                delay = self.poll_interval if due is None else min(self.poll_interval, max(0.0, due))
                if not self._listener.connected.is_set():
                    delay = min(delay, 1.0)  # notifications may be lost meanwhile
            try:
                async with asyncio.timeout(delay):
                    await consumer.wakeup.wait()
            except TimeoutError:
                pass

    async def _claim(self, conn: Any, queues: list[str], limit: int) -> tuple[list[Row], float | None]:
        sql = self._sql
        rows = await conn.fetch(sql.claim, queues, limit, self._owner, self.visibility_timeout)
        if rows:
            fair = [(row["queue"], row["rank"]) for row in rows if row["rank"]]
            if fair:
                await self._fair.advance(conn, fair)
            # RETURNING comes in no particular order.
            return sorted(rows, key=lambda r: (-r["priority"], r["rank"], r["seq"])), None
        return [], await conn.fetchval(sql.next_due, queues)

    async def _release(self, seqs: list[int]) -> None:
        try:
            await self._db.run(
                "release", lambda c: c.fetchval(self._sql.release, seqs, self._owner, self._channel)
            )
        except BrokerError as exc:  # not fatal: their leases lapse and they come back
            logger.warning("could not hand back %d claimed messages: %s", len(seqs), describe_error(exc))

    # -- settling ------------------------------------------------------------------------------

    async def _ack_many(self, leases: list[tuple[int, int]]) -> None:
        seqs = [seq for seq, _ in leases]
        counts = [count for _, count in leases]
        status = await self._db.run("ack", lambda c: c.execute(self._sql.ack, seqs, counts, self._owner))
        done = int(status.rsplit(" ", 1)[-1])
        if done < len(leases):
            logger.warning(
                "%d of %d acks had no effect: their leases lapsed and they were redelivered",
                len(leases) - done,
                len(leases),
            )

    async def _nack(self, lease: tuple[int, str, int], delay: float) -> None:
        row = await self._db.run("nack", lambda c: c.fetchrow(self._sql.nack, *lease, delay, self._channel))
        if not row[0]:
            logger.warning("nack of message seq %d had no effect: its lease lapsed", lease[0])

    async def release_owner(self, owner: str) -> int:
        """Hand back now every row leased by ``owner`` (a dead instance); return how many.

        They stay counted as delivered: the dead instance may have started them.
        """
        row = await self._db.run(
            "release owner", lambda c: c.fetchrow(self._sql.release_owner, owner, self._channel)
        )
        return int(row[0])

    # -- administration ------------------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        status = await self._db.run("purge", lambda c: c.execute(self._sql.purge, queue))
        return int(status.rsplit(" ", 1)[-1])

    async def active_fair_keys(self, queue: str) -> int:
        """Fair keys of ``queue`` with messages still waiting for their turn (for stats)."""
        count: int = await self._db.run(
            "active_fair_keys", lambda c: c.fetchval(self._fair.active_keys, queue)
        )
        return count

    async def queue_length(self, queue: str) -> int:
        count: int = await self._db.run("queue_length", lambda c: c.fetchval(self._sql.length, queue))
        return count

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        rows = await self._db.run("dead_letters", lambda c: c.fetch(self._sql.dead_letters, queue, limit))
        return [DeadLetter(*row) for row in rows]

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        row = await self._db.run(
            "get_dead_letter", lambda c: c.fetchrow(self._sql.get_dead_letter, queue, message_id)
        )
        return None if row is None else DeadLetter(*row)

    async def requeue_dead_letter(self, queue: str, message_id: str) -> bool:
        row = await self._db.run(
            "requeue_dead_letter",
            lambda c: c.fetchrow(self._sql.requeue_dead_letter, queue, self._channel, message_id),
        )
        return bool(row[0])

    async def requeue_dead_letters(self, queue: str) -> int:
        row = await self._db.run(
            "requeue_dead_letters", lambda c: c.fetchrow(self._sql.requeue_dead_letters, queue, self._channel)
        )
        return int(row[0])

    async def purge_dead_letters(self, queue: str) -> int:
        status = await self._db.run(
            "purge_dead_letters", lambda c: c.execute(self._sql.purge_dead_letters, queue)
        )
        return int(status.rsplit(" ", 1)[-1])


def _fair_rows(messages: Sequence[OutgoingMessage]) -> list[FairRow]:
    return [(i, m.queue, m.fair_key, m.fair_weight) for i, m in enumerate(messages) if m.fair_key is not None]
