"""``sqlite://`` broker: durable queues in one local SQLite file, shared by every process on the machine.

This module owns the message and dead-letter tables and the claim / lease / settle protocol
over them.
The shared plumbing (URL parsing, the connection thread) is in asyncq/_sqlite.py.
The design and its guarantees are written up in docs/brokers/sqlite.md.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from functools import partial
from typing import Any, Final, final

from asyncq._options import Option, seconds
from asyncq._sqlite import CONNECT_TIMEOUT, SQLiteThread, parse_sqlite_url, transaction
from asyncq._utils import cancel_and_wait, describe_error
from asyncq._wakeup import WakeupChannel
from asyncq.brokers._kit import PrefetchGate, SettleOnce, check_consume
from asyncq.brokers._sqlite_fair import FAIR_SCHEMA, active_keys, advance, migrate, rank
from asyncq.brokers.base import BrokerCapabilities, BrokerDefaults, DeadLetter, Delivery, OutgoingMessage
from asyncq.exceptions import BrokerConnectionError, BrokerError

__all__ = ["SQLiteBroker"]

logger = logging.getLogger(__name__)

Row = tuple[int, str, str, bytes, int, int]  # seq, id, queue, body, priority, deliveries
Claimed = tuple[int, str, str, bytes, int, int, float]  # a Row and its fair-queuing rank

_SCHEMA = (
    """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS asyncq_messages (
    -- Publish order. Not AUTOINCREMENT (its sqlite_sequence row is one more page written per
    -- publish): a deleted row's seq may come again, but only above every row present, and a
    -- settle matches the message id as well as the seq (_LEASE).
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    available_at REAL NOT NULL,             -- epoch seconds: eta, or when a nack's delay ends; 0: at once
    locked_until REAL,                      -- the claim's lease; NULL or past means waiting
    owner TEXT,                             -- the claiming SQLiteBroker instance
    deliveries INTEGER NOT NULL DEFAULT 0,
    rank REAL NOT NULL DEFAULT 0            -- fair queuing's virtual start time; 0 for plain messages
);
-- (The delivery-order index, asyncq_messages_rank, is made by _sqlite_fair.migrate.)
-- The next delayed message of a queue, for an idle consumer's sleep. A message ready at once
-- is stored with available_at 0, so only delayed ones (eta, nack delay) pay for this index.
CREATE INDEX IF NOT EXISTS asyncq_messages_delayed ON asyncq_messages (queue, available_at)
    WHERE available_at > 0;
-- The heartbeat's rows; partial, so that only claimed rows pay for it.
CREATE INDEX IF NOT EXISTS asyncq_messages_owner ON asyncq_messages (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS asyncq_dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    dead_lettered_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS asyncq_dead_letters_queue ON asyncq_dead_letters (queue);
"""
    + FAIR_SCHEMA
    + """
COMMIT;
"""
)
_WAITING = "queue = ? AND (locked_until IS NULL OR locked_until < ?)"
# A lease is (seq, id, owner, deliveries): a settle after the lease lapsed and the row was
# claimed again, even by this same instance, matches nothing instead of settling the new claim;
# nor does it match a later message given the same seq (files made by older versions have
# AUTOINCREMENT seqs, never given twice).
_LEASE = "seq = ? AND id = ? AND owner = ? AND deliveries = ?"
Lease = tuple[int, str, str, int]


_INSERT: Final = (
    "INSERT INTO asyncq_messages (id, queue, body, priority, available_at) VALUES (?, ?, ?, ?, ?)"
)


def _insert_one(conn: sqlite3.Connection, row: tuple[str, str, bytes, int, float]) -> None:
    conn.execute(_INSERT, row)


def _insert(
    conn: sqlite3.Connection,
    rows: list[tuple[str, str, bytes, int, float]],
    fair: Sequence[tuple[int, str, str, int]] = (),
) -> None:
    if not fair:
        if len(rows) == 1:
            conn.execute(_INSERT, rows[0])
        else:
            conn.executemany(_INSERT, rows)
        return
    ranks = rank(conn, fair)
    conn.executemany(
        "INSERT INTO asyncq_messages (id, queue, body, priority, available_at, rank)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (mid, queue, body, prio, eta, ranks.get(i, 0.0))
            for i, (mid, queue, body, prio, eta) in enumerate(rows)
        ],
    )


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a file made by an older version up to this schema (idempotent)."""
    migrate(conn)
    # The delayed-messages index replaces one on every row (older producers' rows, stored with
    # their publish time, are in the new one too: the result is the same, only slower).
    conn.execute("DROP INDEX IF EXISTS asyncq_messages_due")


def _ready(conn: sqlite3.Connection, queues: Sequence[str], limit: int, now: float) -> list[int]:
    # One indexed head-of-queue read per queue, merged here: `queue IN (...)` with this ORDER BY
    # would make SQLite sort every ready row of every queue on each claim.
    found: list[tuple[int, float, int]] = []
    for queue in queues:
        found += conn.execute(
            "SELECT priority, rank, seq FROM asyncq_messages INDEXED BY asyncq_messages_rank"  # noqa: S608
            f" WHERE {_WAITING} AND available_at <= ? ORDER BY priority DESC, rank, seq LIMIT ?",
            (queue, now, now, limit),
        ).fetchall()
    if len(queues) > 1:
        found.sort(key=lambda r: (-r[0], r[1], r[2]))
    return [seq for _, _, seq in found[:limit]]


def _claim(
    conn: sqlite3.Connection, queues: Sequence[str], limit: int, owner: str, lease: float
) -> tuple[list[Row], float | None]:
    """Claim up to ``limit`` ready rows; with none, also return when the next delayed one is due."""
    # Look before locking: idle consumers in every process poll, and under WAL a plain read
    # never blocks a producer, whereas BEGIN IMMEDIATE would queue behind (and block) them.
    now = time.time()
    if not _ready(conn, queues, 1, now):
        dues = [
            conn.execute(
                "SELECT MIN(available_at) FROM asyncq_messages"
                " WHERE queue = ? AND available_at > 0 AND available_at > ?",  # the index's rows
                (q, now),
            ).fetchone()[0]
            for q in queues
        ]
        return [], min((d for d in dues if d is not None), default=None)

    def take(conn: sqlite3.Connection) -> list[Claimed]:
        now = time.time()
        seqs = _ready(conn, queues, limit, now)  # again: another consumer may have taken them
        marks = ",".join("?" * len(seqs))
        taken = conn.execute(
            "UPDATE asyncq_messages SET locked_until = ?, owner = ?, deliveries = deliveries + 1"  # noqa: S608 - only '?' marks are interpolated
            f" WHERE seq IN ({marks}) RETURNING seq, id, queue, body, priority, deliveries, rank",
            (now + lease, owner, *seqs),
        ).fetchall()
        fair = [(row[2], row[6]) for row in taken if row[6]]
        if fair:
            advance(conn, fair)
        return taken

    taken = transaction(conn, take)
    # RETURNING comes in no particular order: back to the claim's (priority, turn, publish).
    taken.sort(key=lambda r: (-r[4], r[6], r[0]))
    return [row[:6] for row in taken], None


def _release(conn: sqlite3.Connection, rows: Sequence[Row], owner: str) -> None:
    # Claimed but never handed to the caller: not a delivery, so the count goes back too.
    conn.executemany(
        "UPDATE asyncq_messages SET locked_until = NULL, owner = NULL, deliveries = deliveries - 1"
        " WHERE seq = ? AND id = ? AND owner = ?",
        [(row[0], row[1], owner) for row in rows],
    )


def _ack(conn: sqlite3.Connection, lease: Lease) -> bool:
    return conn.execute(f"DELETE FROM asyncq_messages WHERE {_LEASE}", lease).rowcount == 1  # noqa: S608


def _nack(conn: sqlite3.Connection, lease: Lease, delay: float) -> bool:
    return (
        conn.execute(
            "UPDATE asyncq_messages SET locked_until = NULL, owner = NULL, available_at = ?"  # noqa: S608
            f" WHERE {_LEASE}",
            (time.time() + delay, *lease),
        ).rowcount
        == 1
    )


def _dead_letter(conn: sqlite3.Connection, lease: Lease, reason: str) -> bool:
    moved = conn.execute(
        "INSERT INTO asyncq_dead_letters (id, queue, body, reason, dead_lettered_at)"  # noqa: S608
        f" SELECT id, queue, body, ?, ? FROM asyncq_messages WHERE {_LEASE}",
        (reason, time.time(), *lease),
    ).rowcount
    return moved == 1 and _ack(conn, lease)


def _renew(conn: sqlite3.Connection, owner: str, lease: float) -> int:
    return conn.execute(
        "UPDATE asyncq_messages SET locked_until = ? WHERE owner = ? AND locked_until IS NOT NULL",
        (time.time() + lease, owner),
    ).rowcount


_INLINE_ROWS = 16  # a publish of at most this many rows may commit on the event loop

VISIBILITY_TIMEOUT: Final = Option("visibility_timeout", seconds, 30.0)
POLL_INTERVAL: Final = Option("poll_interval", seconds, 0.05)
#: Options of this broker (URL query or keyword), with their defaults.
BROKER_OPTIONS: Final = (VISIBILITY_TIMEOUT, POLL_INTERVAL, CONNECT_TIMEOUT)


class _Consumer:
    """One consume() iterator: rows claimed but not yet yielded, and claims not yet settled."""

    __slots__ = ("buffer", "full", "gate", "wakeup")

    def __init__(self, prefetch: int) -> None:
        self.buffer: deque[Row] = deque()
        self.wakeup = asyncio.Event()  # a slot freed while full, or this instance published or nacked
        self.full = False  # waiting for a free slot rather than for messages
        # Counts claimed and not settled rows, buffered ones included: at most prefetch.
        self.gate = PrefetchGate(prefetch, self._released)

    def _released(self) -> None:
        # A settle only matters to a consumer waiting for room: one waiting for messages would
        # claim again and find none (a read per task run, and a claim racing every publish).
        if self.full:
            self.wakeup.set()


class _SQLiteDelivery:
    """A claimed row; each settle is one statement matched on the lease, group-committed."""

    __slots__ = ("_broker", "_lease", "_once", "body", "delivery_count", "id", "queue")

    def __init__(self, broker: SQLiteBroker, consumer: _Consumer, row: Row) -> None:
        seq, self.id, self.queue, self.body, _, self.delivery_count = row
        self._broker, self._once = broker, SettleOnce(self.id, consumer.gate)
        self._lease: Lease = (seq, self.id, broker._owner, self.delivery_count)

    async def ack(self) -> None:
        await self._settle("ack", partial(_ack, lease=self._lease))

    async def nack(self, *, delay: float | None = None) -> None:
        await self._settle("nack", partial(_nack, lease=self._lease, delay=delay or 0.0))
        self._broker._published()

    async def dead_letter(self, reason: str) -> None:
        await self._settle("dead_letter", partial(_dead_letter, lease=self._lease, reason=reason))

    async def _settle(self, verb: str, op: Callable[[sqlite3.Connection], bool]) -> None:
        self._once.begin()
        try:
            held = await self._broker._db.write(op, inline=True)
        except BrokerError:
            self._once.undo()  # the transaction rolled back: the caller may settle again
            raise
        finally:
            # A cancelled caller's write still commits (it is queued), so the slot is free either way.
            self._once.done()
        if not held:
            logger.warning(
                "%s of message %s had no effect: its lease lapsed and it was redelivered", verb, self.id
            )


@final
class SQLiteBroker(BrokerDefaults):
    """``sqlite:///path.db``: durable queues in a SQLite file that every local process can share.

    Options (transport options, or the URL query; explicit options win):
        visibility_timeout: seconds a claim stays valid without renewal (default 30). A live
            instance renews its claims every third of it, so only a dead consumer's messages
            come back, that long after it died.
        poll_interval: seconds between checks for messages published by other processes
            (default 0.05), the fallback when a wake-up poke is lost or cannot be used;
            publishes in this process wake its consumers at once, and those in other
            processes poke them through the wake-up sockets (asyncq/_wakeup.py).
        connect_timeout: seconds opening the file may wait for another process's lock
            (default 10; the App passes ``broker_connection_timeout``).
    """

    capabilities = BrokerCapabilities(
        durable=True,
        redelivers_lost=True,
        notifies=False,
        priorities=True,
        delayed_delivery=True,
        fair_queuing=True,
    )

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.path, settings = parse_sqlite_url(url, options, BROKER_OPTIONS, what="sqlite broker")
        self.visibility_timeout = settings[VISIBILITY_TIMEOUT]
        self.poll_interval = settings[POLL_INTERVAL]
        self._db = SQLiteThread(
            self.path,
            _SCHEMA,
            error=BrokerError,
            connection_error=BrokerConnectionError,
            open_timeout=settings[CONNECT_TIMEOUT],
        )
        self._owner = uuid.uuid4().hex
        self._consumers: set[_Consumer] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[None] | None = None
        self._wakeup = WakeupChannel(self.path, "messages")

    async def connect(self) -> None:
        opening = self._opening
        if opening is None or (opening.done() and (opening.cancelled() or opening.exception() is not None)):
            opening = self._opening = asyncio.ensure_future(self._open())
        # Every caller waits for the migration too: a claim before it would miss the rank index.
        await asyncio.shield(opening)
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._renew_leases(), name="asyncq.sqlite.heartbeat")

    async def _open(self) -> None:
        await self._db.open()
        await self._db.write(_migrate)

    async def aclose(self) -> None:
        """Stop renewing claims and close the file.

        Messages yielded and not settled keep their lease until it lapses, then come back as a
        dead consumer's would; messages claimed but never yielded are handed back now.
        """
        await cancel_and_wait(self._heartbeat)
        self._heartbeat = None
        buffered = [row for consumer in self._consumers for row in consumer.buffer]
        for consumer in self._consumers:
            consumer.buffer.clear()
            consumer.wakeup.set()  # a waiting consume() finds the broker closed and raises
        self._wakeup.close()
        if buffered and self._db.is_open:
            await self._db.write(lambda conn: _release(conn, buffered, self._owner))
            self._wakeup.poke()
        await self._db.close()
        self._opening = None

    async def _renew_leases(self) -> None:
        logger.debug("lease heartbeat started for %s (owner %s)", self.path, self._owner)
        try:
            while True:
                await asyncio.sleep(self.visibility_timeout / 3)
                try:
                    await self._db.write(partial(_renew, owner=self._owner, lease=self.visibility_timeout))
                except BrokerError as exc:  # transient (locked too long): the next beat retries
                    logger.warning("could not renew message leases in %s: %s", self.path, describe_error(exc))
        finally:
            logger.debug("lease heartbeat stopped for %s (owner %s)", self.path, self._owner)

    def _wake(self) -> None:
        for consumer in self._consumers:
            consumer.wakeup.set()

    def _published(self) -> None:
        """After a commit that made messages ready: wake consumers here and in other processes."""
        self._wake()
        self._wakeup.poke()

    async def publish(self, message: OutgoingMessage) -> None:
        if message.fair_key is not None:
            await self.publish_many([message])
            return
        # publish_many's path for one plain message, less its lists: a producer awaits each one.
        body = message.body
        if type(body) is not bytes:
            body = bytes(body)
        row = (message.id, message.queue, body, message.priority or 0, message.eta or 0.0)
        if not self._db.try_direct(_INSERT, row):  # locked, or other writes in flight: queue it
            await self._db.write(partial(_insert_one, row=row), inline=True, direct=True, single=True)
        self._published()

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        # available_at 0: ready at once (and left out of the delayed-messages index).
        rows = [(m.id, m.queue, bytes(m.body), m.priority or 0, m.eta or 0.0) for m in messages]
        fair = [
            (i, m.queue, m.fair_key, m.fair_weight) for i, m in enumerate(messages) if m.fair_key is not None
        ]
        # A few rows commit on the event loop when the thread is idle (asyncq/_sqlite.py).
        # One plain row is one INSERT statement: atomic without a transaction around it.
        await self._db.write(
            partial(_insert, rows=rows, fair=fair),
            inline=len(rows) <= _INLINE_ROWS,
            direct=True,
            single=len(rows) == 1 and not fair,
        )
        self._published()

    async def consume(self, queues: Sequence[str], *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        names = check_consume(queues, prefetch)
        consumer = _Consumer(prefetch)
        self._consumers.add(consumer)
        # Bound before the first claim: a message published after that claim pokes us.
        self._wakeup.listen(self._wake)
        try:
            while True:
                if not consumer.buffer:
                    await self._fill(consumer, names)
                yield _SQLiteDelivery(self, consumer, consumer.buffer.popleft())
        finally:
            self._consumers.discard(consumer)
            rows = list(consumer.buffer)
            consumer.buffer.clear()
            if rows and self._db.is_open:
                try:
                    await self._db.write(lambda conn: _release(conn, rows, self._owner))
                except BrokerError as exc:  # not fatal: their leases lapse and they come back
                    logger.warning(
                        "could not hand back %d claimed messages: %s", len(rows), describe_error(exc)
                    )

    async def _fill(self, consumer: _Consumer, queues: list[str]) -> None:
        """Claim as many rows as there are free prefetch slots, waiting until there is one."""
        undo = partial(_undo_claim, owner=self._owner)
        while True:
            # Cleared before the claim: a publish or settle landing during it sets it again.
            consumer.wakeup.clear()
            delay: float | None = None  # no free slot: only a settle (which sets wakeup) helps
            free = consumer.gate.free
            consumer.full = free <= 0
            if free > 0:
                args = (queues, free, self._owner, self.visibility_timeout)
                rows, due = await self._db.run(_claim, *args, orphaned=undo, inline=True)
                if rows:
                    consumer.buffer.extend(rows)
                    consumer.gate.take(len(rows))
                    return
                delay = self.poll_interval if due is None else min(self.poll_interval, due - time.time())
            try:
                async with asyncio.timeout(None if delay is None else max(0.0, delay)):
                    await consumer.wakeup.wait()
            except TimeoutError:
                self._check_wakeup()

    def _check_wakeup(self) -> None:
        # The wake-up directory may have been deleted under us: bind a new socket, or poll.
        if self._wakeup.is_listening and not self._wakeup.is_bound():
            self._wakeup.close()
            self._wakeup.listen(self._wake)

    async def purge(self, queue: str) -> int:
        op = partial(_execute, sql=f"DELETE FROM asyncq_messages WHERE {_WAITING}", queue=queue)  # noqa: S608
        return await self._db.write(op)

    async def active_fair_keys(self, queue: str) -> int:
        """Fair keys of ``queue`` with messages still waiting for their turn (for stats)."""
        return await self._db.run(partial(active_keys, queue=queue))

    async def queue_length(self, queue: str) -> int:
        sql = f"SELECT COUNT(*) FROM asyncq_messages WHERE {_WAITING}"  # noqa: S608
        count: int = (await self._db.run(lambda conn: conn.execute(sql, (queue, time.time())).fetchone()))[0]
        return count

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        sql = (
            "SELECT id, queue, body, reason, dead_lettered_at FROM asyncq_dead_letters"
            " WHERE queue = ? ORDER BY seq LIMIT ?"
        )
        rows = await self._db.run(lambda conn: conn.execute(sql, (queue, limit)).fetchall())
        return [DeadLetter(*row) for row in rows]

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        sql = (
            "SELECT id, queue, body, reason, dead_lettered_at FROM asyncq_dead_letters"
            " WHERE queue = ? AND id = ? ORDER BY seq LIMIT 1"
        )
        row = await self._db.run(lambda conn: conn.execute(sql, (queue, message_id)).fetchone())
        return None if row is None else DeadLetter(*row)

    async def requeue_dead_letter(self, queue: str, message_id: str) -> bool:
        moved = await self._db.write(partial(_requeue_dead, queue=queue, message_id=message_id))
        if moved:
            self._wake()
        return moved > 0

    async def requeue_dead_letters(self, queue: str) -> int:
        moved = await self._db.write(partial(_requeue_dead, queue=queue, message_id=None))
        if moved:
            self._wake()
        return moved

    async def purge_dead_letters(self, queue: str) -> int:
        return await self._db.write(partial(_purge_dead, queue=queue))


def _requeue_dead(conn: sqlite3.Connection, queue: str, message_id: str | None) -> int:
    """Move the oldest dead letter with ``message_id`` (None: all of them) back as new messages."""
    # The dead-letter table keeps no priority: requeued messages get the default, 0.
    params: tuple[str, ...]
    if message_id is None:
        where, params = "queue = ?", (queue,)
    else:
        where = "seq = (SELECT MIN(seq) FROM asyncq_dead_letters WHERE queue = ? AND id = ?)"
        params = (queue, message_id)
    moved = conn.execute(
        "INSERT INTO asyncq_messages (id, queue, body, priority, available_at)"  # noqa: S608 - fixed text only
        f" SELECT id, queue, body, 0, 0 FROM asyncq_dead_letters WHERE {where} ORDER BY seq",
        params,
    ).rowcount
    conn.execute(f"DELETE FROM asyncq_dead_letters WHERE {where}", params)  # noqa: S608 - as above
    return moved


def _purge_dead(conn: sqlite3.Connection, queue: str) -> int:
    return conn.execute("DELETE FROM asyncq_dead_letters WHERE queue = ?", (queue,)).rowcount


def _execute(conn: sqlite3.Connection, sql: str, queue: str) -> int:
    return conn.execute(sql, (queue, time.time())).rowcount


def _undo_claim(conn: sqlite3.Connection, claimed: tuple[list[Row], float | None], owner: str) -> None:
    if claimed[0]:
        transaction(conn, lambda c: _release(c, claimed[0], owner))
