"""The Redis broker's control channel: keys under the broker's prefix, one Cluster slot.

Keys (``P`` is the broker's key prefix; the ``{P:control}`` hash tag keeps them in one slot)::

    P:{P:control}:workers   hash    worker -> "<seen> <expires> " + heartbeat bytes
    P:{P:control}:expires   zset    worker -> expires (to drop long-lost records)
    P:{P:control}:requests  stream  broadcast requests (body, reply), capped at ~1000
    P:{P:control}:reply:<id> list   the replies to one request; expires after a minute
    P:{P:control}:revoked   zset    task id -> epoch seconds the revocation expires

Listeners and reply collectors poll every :data:`POLL_INTERVAL` seconds with non-blocking
reads on the broker's own connection, so nothing here holds a connection blocked.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from asyncq._utils import now
from asyncq.brokers.control import ControlRequest, LeaseHolder, PresenceRecord

if TYPE_CHECKING:
    from asyncq._redis import Client
    from asyncq.brokers.redis import RedisBroker

__all__ = ["ABSENT_FOR", "FORGET_LOST_AFTER", "POLL_INTERVAL", "RedisControlChannel"]

#: Seconds between a listener's (or a reply collector's) reads.
POLL_INTERVAL = 0.1
#: Seconds a lost worker's record is still listed before it is deleted.
FORGET_LOST_AFTER = 3600.0
_REPLY_TTL = 60
#: Seconds a worker's connections must stay missing before its leases are released.
ABSENT_FOR = 1.0


class RedisControlChannel:
    """Control channel over a connected :class:`~asyncq.brokers.redis.RedisBroker`."""

    #: Presence records are stored, so ``workers()`` answers at once (broadcasts stop early).
    stores_presence = True

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        prefix = broker._prefix
        base = f"{prefix}:{{{prefix}:control}}:"
        self._base = base
        self._workers = (base + "workers").encode()
        self._expires = (base + "expires").encode()
        self._requests = (base + "requests").encode()
        self._revoked = (base + "revoked").encode()
        self._absent: dict[str, float] = {}  # owner -> when its connections were first missing

    def _client(self) -> Client:
        return self._broker._redis.client()

    async def connect(self) -> None:
        await self._broker.connect()

    async def aclose(self) -> None:
        """Nothing of its own to release: the connection is the broker's."""

    async def beat(self, worker: str, info: bytes, *, ttl: float) -> None:
        current = now()
        record = f"{current:.6f} {current + ttl:.6f} ".encode() + bytes(info)
        client = self._client()
        calls: list[tuple[Any, ...]] = [
            ("HSET", self._workers, worker, record),
            ("ZADD", self._expires, f"{current + ttl:.6f}", worker),
        ]
        forget_before = f"{current - FORGET_LOST_AFTER:.6f}"
        stale = await client.execute("ZRANGEBYSCORE", self._expires, "-inf", forget_before)
        if stale:
            calls += [("HDEL", self._workers, *stale), ("ZREM", self._expires, *stale)]
        await client.retrying("heartbeat", lambda: client.pipeline(calls, ()))

    async def leave(self, worker: str) -> None:
        client = self._client()
        calls: list[tuple[Any, ...]] = [("HDEL", self._workers, worker), ("ZREM", self._expires, worker)]
        await client.retrying("leave", lambda: client.pipeline(calls, ()))

    async def workers(self, *, timeout: float = 1.0) -> list[PresenceRecord]:
        client = self._client()
        flat = await client.retrying("workers", lambda: client.execute("HGETALL", self._workers))
        pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
        records = []
        for name, record in pairs:
            seen, expires, info = bytes(record).split(b" ", 2)
            records.append(PresenceRecord(bytes(name).decode(), info, float(seen), float(expires)))
        return records

    async def broadcast(self, body: bytes, *, timeout: float, replies: int | None = None) -> list[bytes]:
        client = self._client()
        reply_key = (self._base + "reply:" + uuid.uuid4().hex).encode()
        await client.execute(
            "XADD", self._requests, "MAXLEN", "~", 1000, "*", "body", bytes(body), "reply", reply_key
        )
        received: list[bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                batch = await client.execute("LPOP", reply_key, 1000)
                received.extend(bytes(answer) for answer in batch or ())
                left = deadline - loop.time()
                if (replies is not None and len(received) >= replies) or left <= 0:
                    return received
                await asyncio.sleep(min(POLL_INTERVAL, left))
        finally:
            await client.execute("DEL", reply_key)

    async def _reply(self, reply_key: bytes, body: bytes) -> None:
        client = self._client()
        calls: list[tuple[Any, ...]] = [("RPUSH", reply_key, bytes(body)), ("EXPIRE", reply_key, _REPLY_TTL)]
        await client.pipeline(calls, ())

    async def listen(self, worker: str) -> AsyncIterator[ControlRequest]:
        client = self._client()
        # The id of the newest request now: only what is broadcast from here on is ours.
        newest = await client.execute("XREVRANGE", self._requests, "+", "-", "COUNT", 1)
        after: bytes = bytes(newest[0][0]) if newest else b"0-0"
        while True:
            reply = await client.execute("XREAD", "COUNT", 100, "STREAMS", self._requests, after)
            streams = reply.items() if isinstance(reply, dict) else (reply or ())
            for stream in streams:
                entries = stream[1]
                for entry_id, fields in entries:
                    after = bytes(entry_id)
                    if isinstance(fields, dict):
                        values = {bytes(k): bytes(v) for k, v in fields.items()}
                    else:
                        values = {bytes(k): bytes(v) for k, v in zip(fields[::2], fields[1::2], strict=True)}
                    yield ControlRequest(values[b"body"], partial(self._reply, values[b"reply"]))
            await asyncio.sleep(POLL_INTERVAL)

    async def release_dead(self, holders: Sequence[LeaseHolder]) -> dict[str, int]:
        """Release the leases of workers whose broker connections are gone from the server.

        A dead process's sockets are closed by its kernel, so the server drops its connections
        (named ``asyncq-broker-<owner>``) at once; a paused one keeps them. An owner counts as
        dead once absent from CLIENT LIST twice, :data:`ABSENT_FOR` seconds apart, so that a
        live worker reconnecting after a blip keeps its messages. Not on a Cluster (each node
        has its own client list): there the visibility timeout applies.
        """
        client = self._client()
        if client.kind == "cluster" or not holders:
            return {}
        listing = await client.execute("CLIENT", "LIST", "TYPE", "normal")
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        names = {part[5:] for line in text.splitlines() for part in line.split() if part.startswith("name=")}
        current = time.monotonic()
        released: dict[str, int] = {}
        present = {h.owner for h in holders if any(n.startswith(f"asyncq-broker-{h.owner}") for n in names)}
        for owner in list(self._absent):
            if owner in present:
                del self._absent[owner]
        for holder in holders:
            if holder.owner in present:
                continue
            since = self._absent.setdefault(holder.owner, current)
            if current - since < ABSENT_FOR:
                continue
            count = await self._broker.release_owner(holder.owner, holder.queues)
            if count:
                released[holder.worker] = count
        return released

    async def revoke(self, task_ids: Sequence[str], *, expires: float) -> None:
        if not task_ids:
            return
        current = now()
        until = f"{current + expires:.6f}"
        members: list[Any] = []
        for task_id in task_ids:
            members += [until, task_id]
        client = self._client()
        calls: list[tuple[Any, ...]] = [
            ("ZREMRANGEBYSCORE", self._revoked, "-inf", f"{current:.6f}"),
            ("ZADD", self._revoked, *members),
        ]
        await client.retrying("revoke", lambda: client.pipeline(calls, ()))

    async def revoked(self) -> dict[str, float]:
        client = self._client()
        flat = await client.retrying(
            "revoked",
            lambda: client.execute("ZRANGEBYSCORE", self._revoked, f"({now():.6f}", "+inf", "WITHSCORES"),
        )
        if flat and isinstance(flat[0], (list, tuple)):
            return {bytes(m).decode(): float(s) for m, s in flat}
        return {bytes(m).decode(): float(s) for m, s in zip(flat[::2], flat[1::2], strict=True)}
