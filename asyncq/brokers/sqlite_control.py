"""The sqlite:// broker's control channel: tables in the broker's own file, polled.

Presence records, broadcast requests, their replies and revocations are rows beside the
messages. Listeners and reply collectors poll every :data:`POLL_INTERVAL` seconds (the file
is local, a poll is a cheap indexed read); requests and replies older than
:data:`KEEP_SECONDS` are deleted by the next broadcast. Every process sharing the file runs
on this machine, so a dead worker is recognised by its pid, and its leases (the ``owner``
column of the broker's messages) are released at once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from asyncq._sqlite import SQLiteThread
from asyncq._utils import now
from asyncq.brokers.control import ControlRequest, LeaseHolder, PresenceRecord
from asyncq.exceptions import BrokerConnectionError, BrokerError

if TYPE_CHECKING:
    from asyncq.brokers.sqlite import SQLiteBroker

__all__ = ["FORGET_LOST_AFTER", "KEEP_SECONDS", "POLL_INTERVAL", "SQLiteControlChannel"]

#: Seconds between a listener's (or a reply collector's) looks at the tables.
POLL_INTERVAL = 0.1
#: Seconds broadcast requests and replies are kept.
KEEP_SECONDS = 60.0
#: Seconds a lost worker's record is still listed before it is deleted.
FORGET_LOST_AFTER = 3600.0

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS asyncq_workers (
    worker TEXT PRIMARY KEY,
    info BLOB NOT NULL,
    seen REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS asyncq_control (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL,
    reply_to TEXT NOT NULL,
    sent REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS asyncq_control_replies (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    reply_to TEXT NOT NULL,
    body BLOB NOT NULL,
    sent REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS asyncq_control_replies_to ON asyncq_control_replies (reply_to, seq);
CREATE TABLE IF NOT EXISTS asyncq_revoked (
    task_id TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
COMMIT;
"""


def _beat(conn: sqlite3.Connection, worker: str, info: bytes, seen: float, expires: float) -> None:
    conn.execute("DELETE FROM asyncq_workers WHERE expires < ?", (seen - FORGET_LOST_AFTER,))
    conn.execute(
        "INSERT INTO asyncq_workers (worker, info, seen, expires) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (worker) DO UPDATE SET info = excluded.info, seen = excluded.seen, "
        "expires = excluded.expires",
        (worker, info, seen, expires),
    )


def _send(conn: sqlite3.Connection, body: bytes, reply_to: str, sent: float) -> None:
    conn.execute("DELETE FROM asyncq_control WHERE sent < ?", (sent - KEEP_SECONDS,))
    conn.execute("DELETE FROM asyncq_control_replies WHERE sent < ?", (sent - KEEP_SECONDS,))
    conn.execute("INSERT INTO asyncq_control (body, reply_to, sent) VALUES (?, ?, ?)", (body, reply_to, sent))


_REPLIES_SQL = "SELECT seq, body FROM asyncq_control_replies WHERE reply_to = ? AND seq > ? ORDER BY seq"
_REQUESTS_SQL = "SELECT seq, body, reply_to FROM asyncq_control WHERE seq > ? ORDER BY seq"


def _fetch(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> list[Any]:
    return conn.execute(sql, args).fetchall()


def _release_owner(conn: sqlite3.Connection, owner: str) -> int:
    # The messages stay counted as delivered: the dead worker may have started them.
    return conn.execute(
        "UPDATE asyncq_messages SET locked_until = NULL, owner = NULL WHERE owner = ?", (owner,)
    ).rowcount


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return _state_of(pid) != "Z"  # a zombie is dead; only its parent has not reaped it yet


def _state_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "?"


def _last_seq(conn: sqlite3.Connection) -> int:
    (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM asyncq_control").fetchone()
    return int(seq)


class SQLiteControlChannel:
    """Control channel over the tables of a ``sqlite://`` broker's file (its own connection)."""

    #: Presence records are stored, so ``workers()`` answers at once (broadcasts stop early).
    stores_presence = True

    def __init__(self, broker: SQLiteBroker) -> None:
        self.path = broker.path
        self._db = SQLiteThread(self.path, _SCHEMA, error=BrokerError, connection_error=BrokerConnectionError)

    async def connect(self) -> None:
        await self._db.open()

    async def aclose(self) -> None:
        await self._db.close()

    async def beat(self, worker: str, info: bytes, *, ttl: float) -> None:
        current = now()
        beat = partial(_beat, worker=worker, info=bytes(info), seen=current, expires=current + ttl)
        await self._db.write(beat)

    async def leave(self, worker: str) -> None:
        await self._db.write(
            lambda conn: conn.execute("DELETE FROM asyncq_workers WHERE worker = ?", (worker,))
        )

    async def workers(self, *, timeout: float = 1.0) -> list[PresenceRecord]:
        rows = await self._db.run(
            lambda conn: conn.execute("SELECT worker, info, seen, expires FROM asyncq_workers").fetchall()
        )
        return [PresenceRecord(str(w), bytes(i), float(s), float(e)) for w, i, s, e in rows]

    async def broadcast(self, body: bytes, *, timeout: float, replies: int | None = None) -> list[bytes]:
        reply_to = uuid.uuid4().hex
        await self._db.write(partial(_send, body=bytes(body), reply_to=reply_to, sent=now()))
        received: list[bytes] = []
        after = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            rows = await self._db.run(_fetch, _REPLIES_SQL, (reply_to, after))
            for seq, answer in rows:
                after = max(after, int(seq))
                received.append(bytes(answer))
            left = deadline - loop.time()
            if (replies is not None and len(received) >= replies) or left <= 0:
                return received
            await asyncio.sleep(min(POLL_INTERVAL, left))

    async def _reply(self, reply_to: str, body: bytes) -> None:
        sent = now()
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO asyncq_control_replies (reply_to, body, sent) VALUES (?, ?, ?)",
                (reply_to, bytes(body), sent),
            )
        )

    async def listen(self, worker: str) -> AsyncIterator[ControlRequest]:
        after = await self._db.run(_last_seq)
        while True:
            rows = await self._db.run(_fetch, _REQUESTS_SQL, (after,))
            for seq, body, reply_to in rows:
                after = max(after, int(seq))
                yield ControlRequest(bytes(body), partial(self._reply, str(reply_to)))
            await asyncio.sleep(POLL_INTERVAL)

    async def release_dead(self, holders: Sequence[LeaseHolder]) -> dict[str, int]:
        """Release the leases of the workers on this host whose process is gone (pid check).

        The file is local, so every worker sharing it runs on this machine; a paused
        (SIGSTOP) process still exists and keeps its leases.
        """
        here = socket.gethostname()
        dead = [h for h in holders if h.host == here and h.pid != os.getpid() and not _pid_alive(h.pid)]
        released: dict[str, int] = {}
        for holder in dead:
            count = await self._db.write(partial(_release_owner, owner=holder.owner))
            if count:
                released[holder.worker] = count
        return released

    async def revoke(self, task_ids: Sequence[str], *, expires: float) -> None:
        until = now() + expires
        rows = [(task_id, until) for task_id in task_ids]

        def store(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM asyncq_revoked WHERE expires <= ?", (until - expires,))
            conn.executemany(
                "INSERT INTO asyncq_revoked (task_id, expires) VALUES (?, ?) "
                "ON CONFLICT (task_id) DO UPDATE SET expires = excluded.expires",
                rows,
            )

        await self._db.write(store)

    async def revoked(self) -> dict[str, float]:
        current = now()
        rows = await self._db.run(
            lambda conn: conn.execute(
                "SELECT task_id, expires FROM asyncq_revoked WHERE expires > ?", (current,)
            ).fetchall()
        )
        return {str(task_id): float(until) for task_id, until in rows}
