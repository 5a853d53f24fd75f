"""The postgresql:// broker's control channel: tables beside the jobs, woken by LISTEN/NOTIFY.

Presence records, broadcast requests, their replies and revocations are rows in the broker's
schema (same prefix). A request or a reply is inserted and notified in one statement; each
channel instance holds one LISTEN session for both, and reads the new rows when notified.
A slow poll covers a lost notification. Requests and replies older than
:data:`KEEP_SECONDS` are deleted by the next broadcast.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from asyncq._postgres import Listener, Step
from asyncq._utils import now
from asyncq.brokers.control import ControlRequest, LeaseHolder, PresenceRecord
from asyncq.brokers.postgres import APPLICATION_NAME

if TYPE_CHECKING:
    from asyncq.brokers.postgres import PostgresBroker

__all__ = ["FORGET_LOST_AFTER", "KEEP_SECONDS", "POLL_INTERVAL", "PostgresControlChannel"]

#: Seconds between looks at the tables when no notification came (a lost one).
POLL_INTERVAL: Final = 2.0
#: Seconds broadcast requests and replies are kept.
KEEP_SECONDS: Final = 60.0
#: Seconds a lost worker's record is still listed before it is deleted.
FORGET_LOST_AFTER: Final = 3600.0
#: Seconds a worker's connections must stay missing before its leases are released.
ABSENT_FOR: Final = 1.0

#: Step n takes the control tables to schema version n; released steps never change.
MIGRATIONS: Final[tuple[Step, ...]] = (
    """
    CREATE TABLE {workers} (
        worker text PRIMARY KEY,
        info bytea NOT NULL,
        seen double precision NOT NULL,
        expires double precision NOT NULL
    );
    CREATE TABLE {control} (
        seq bigserial PRIMARY KEY,
        body bytea NOT NULL,
        reply_to text NOT NULL,
        sent double precision NOT NULL
    );
    CREATE INDEX {ix:control_sent} ON {control} (sent);
    CREATE TABLE {control_replies} (
        seq bigserial PRIMARY KEY,
        reply_to text NOT NULL,
        body bytea NOT NULL,
        sent double precision NOT NULL
    );
    CREATE INDEX {ix:control_replies_to} ON {control_replies} (reply_to, seq);
    CREATE INDEX {ix:control_replies_sent} ON {control_replies} (sent);
    CREATE TABLE {revoked} (
        task_id text PRIMARY KEY,
        expires double precision NOT NULL
    );
    """,
)


class PostgresControlChannel:
    """Control channel over tables of a ``postgresql://`` broker's schema (its pool)."""

    #: Presence records are stored, so ``workers()`` answers at once (broadcasts stop early).
    stores_presence = True

    def __init__(self, broker: PostgresBroker) -> None:
        self._broker = broker
        self._absent: dict[str, float] = {}  # owner -> monotonic time first seen without connections
        self._db = db = broker.database
        names = db.names
        workers, control = names.table("workers"), names.table("control")
        replies, revoked = names.table("control_replies"), names.table("revoked")
        self._requests_channel = names.channel("control")
        self._replies_channel = names.channel("control_replies")
        self._sql = {
            "beat": f"""
                WITH gone AS (DELETE FROM {workers} WHERE expires < $3 - {FORGET_LOST_AFTER})
                INSERT INTO {workers} (worker, info, seen, expires) VALUES ($1, $2, $3, $4)
                ON CONFLICT (worker) DO UPDATE
                SET info = excluded.info, seen = excluded.seen, expires = excluded.expires
            """,  # noqa: S608 - quoted identifiers only
            "leave": f"DELETE FROM {workers} WHERE worker = $1",  # noqa: S608
            "workers": f"SELECT worker, info, seen, expires FROM {workers}",  # noqa: S608
            "expire": f"""
                WITH a AS (DELETE FROM {control} WHERE sent < $1)
                DELETE FROM {replies} WHERE sent < $1
            """,  # noqa: S608
            "send": f"""
                WITH sent AS (
                    INSERT INTO {control} (body, reply_to, sent) VALUES ($1, $2, $3) RETURNING seq
                )
                SELECT pg_notify($4, seq::text) FROM sent
            """,  # noqa: S608
            "reply": f"""
                WITH sent AS (
                    INSERT INTO {replies} (reply_to, body, sent) VALUES ($1, $2, $3) RETURNING reply_to
                )
                SELECT pg_notify($4, reply_to) FROM sent
            """,  # noqa: S608
            "replies": f"SELECT seq, body FROM {replies} WHERE reply_to = $1 AND seq > $2 ORDER BY seq",  # noqa: S608
            "requests": f"SELECT seq, body, reply_to FROM {control} WHERE seq > $1 ORDER BY seq",  # noqa: S608
            "last": f"SELECT COALESCE(max(seq), 0) FROM {control}",  # noqa: S608
            "revoke": f"""
                WITH gone AS (DELETE FROM {revoked} WHERE expires <= $3)
                INSERT INTO {revoked} (task_id, expires) SELECT unnest($1::text[]), $2
                ON CONFLICT (task_id) DO UPDATE SET expires = excluded.expires
            """,  # noqa: S608
            "revoked": f"SELECT task_id, expires FROM {revoked} WHERE expires > $1",  # noqa: S608
            "present": "SELECT DISTINCT application_name FROM pg_stat_activity"
            " WHERE application_name = ANY($1::text[])",
        }
        self._request_events: set[asyncio.Event] = set()  # one per listen(): a request was notified
        self._reply_events: dict[str, asyncio.Event] = {}
        self._listener = Listener(
            db, [self._requests_channel, self._replies_channel], self._notified, self._wake_all
        )

    async def connect(self) -> None:
        await self._db.migrate("control", MIGRATIONS)
        self._listener.start()

    async def aclose(self) -> None:
        await self._listener.aclose()

    def _notified(self, channel: str, payload: str) -> None:
        if channel == self._requests_channel:
            for listening in self._request_events:
                listening.set()
        else:
            event = self._reply_events.get(payload)
            if event is not None:
                event.set()

    def _wake_all(self) -> None:
        for listening in self._request_events:
            listening.set()
        for event in self._reply_events.values():
            event.set()

    async def _execute(self, what: str, *args: Any) -> Any:
        sql = self._sql[what]
        return await self._db.run(f"control {what}", lambda c: c.execute(sql, *args))

    async def _fetch(self, what: str, *args: Any) -> list[Any]:
        sql = self._sql[what]
        rows: list[Any] = await self._db.run(f"control {what}", lambda c: c.fetch(sql, *args))
        return rows

    async def beat(self, worker: str, info: bytes, *, ttl: float) -> None:
        current = now()
        await self._execute("beat", worker, bytes(info), current, current + ttl)

    async def leave(self, worker: str) -> None:
        await self._execute("leave", worker)

    async def workers(self, *, timeout: float = 1.0) -> list[PresenceRecord]:
        rows = await self._fetch("workers")
        return [PresenceRecord(r["worker"], bytes(r["info"]), r["seen"], r["expires"]) for r in rows]

    async def broadcast(self, body: bytes, *, timeout: float, replies: int | None = None) -> list[bytes]:
        reply_to = uuid.uuid4().hex
        arrived = self._reply_events[reply_to] = asyncio.Event()
        try:
            sent = now()
            await self._execute("expire", sent - KEEP_SECONDS)
            await self._fetch("send", bytes(body), reply_to, sent, self._requests_channel)
            received: list[bytes] = []
            after = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                arrived.clear()  # before the read: a reply landing during it sets it again
                for row in await self._fetch("replies", reply_to, after):
                    after = max(after, int(row["seq"]))
                    received.append(bytes(row["body"]))
                left = deadline - loop.time()
                if (replies is not None and len(received) >= replies) or left <= 0:
                    return received
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(POLL_INTERVAL, left)):
                        await arrived.wait()
        finally:
            del self._reply_events[reply_to]

    async def _reply(self, reply_to: str, body: bytes) -> None:
        await self._fetch("reply", reply_to, bytes(body), now(), self._replies_channel)

    async def listen(self, worker: str) -> AsyncIterator[ControlRequest]:
        notified = asyncio.Event()
        self._request_events.add(notified)
        try:
            after = int(await self._db.run("control last", lambda c: c.fetchval(self._sql["last"])))
            while True:
                notified.clear()  # before the read: a request landing during it sets it again
                for row in await self._fetch("requests", after):
                    after = max(after, int(row["seq"]))
                    yield ControlRequest(bytes(row["body"]), partial(self._reply, str(row["reply_to"])))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL):
                        await notified.wait()
        finally:
            self._request_events.discard(notified)

    async def release_dead(self, holders: Sequence[LeaseHolder]) -> dict[str, int]:
        """Release the leases of workers whose broker connections are gone from the server.

        A dead process's sockets are closed by its kernel, so the server drops its connections
        (named ``asyncq-broker-<owner>``) at once; a paused process keeps them. An owner counts
        as dead once absent twice, :data:`ABSENT_FOR` seconds apart, so that a live worker
        reconnecting after a blip keeps its jobs. Behind a connection pooler (PgBouncer) the
        server does not see the workers' names: only the visibility timeout applies there.
        """
        if not holders:
            return {}
        names = [f"{APPLICATION_NAME}{h.owner}" for h in holders]
        present = {str(r[0])[len(APPLICATION_NAME) :] for r in await self._fetch("present", names)}
        current = time.monotonic()
        for owner in [o for o in self._absent if o in present]:
            del self._absent[owner]
        released: dict[str, int] = {}
        for holder in holders:
            if holder.owner in present:
                continue
            since = self._absent.setdefault(holder.owner, current)
            if current - since < ABSENT_FOR:
                continue
            del self._absent[holder.owner]
            count = await self._broker.release_owner(holder.owner)
            if count:
                released[holder.worker] = count
        return released

    async def revoke(self, task_ids: Sequence[str], *, expires: float) -> None:
        current = now()
        await self._execute("revoke", list(task_ids), current + expires, current)

    async def revoked(self) -> dict[str, float]:
        rows = await self._fetch("revoked", now())
        return {str(r["task_id"]): float(r["expires"]) for r in rows}
