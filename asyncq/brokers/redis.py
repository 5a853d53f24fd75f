"""Redis broker: at-least-once delivery with leases, delays and priorities.

One server (``redis://``, ``rediss://``), a Redis Cluster (``redis+cluster://``,
``rediss+cluster://`` or ``?cluster=true``) or a Sentinel-managed master
(``redis+sentinel://``); :class:`asyncq._redis.Client` hides the difference.

A queue is a set of keys under one Cluster hash tag (layout in
:mod:`asyncq.brokers._redis_scripts`). A *handle* is the priority digit and 96 random bits
made by the publisher ("3" + 24 hex digits): unique per publish (so a re-published id never
collides with a live copy, even after Redis lost writes), the same when one publish is
retried (so the retry stores nothing twice), and it carries its priority wherever it goes
(delayed -> ready, expired lease -> ready).

Every state change is one Lua script (``redis_lua/*.lua``), so each is atomic with respect
to every other client. The consumer (claims, BLPOP wake-ups) is
:mod:`asyncq.brokers._redis_consumer`; leases, their renewal and settling are
:mod:`asyncq.brokers._redis_leases`; dead-letter administration is
:mod:`asyncq.brokers._redis_dead`. All deadlines use the Redis server's clock (TIME inside
the scripts), the one clock every consumer shares. See docs/brokers/redis.md for the
guarantees.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Final

from asyncq._redis import ClientHolder, GroupCommit, Option, plain_prefix, script_call
from asyncq._utils import redact_url
from asyncq.brokers import _redis_dead
from asyncq.brokers._kit import check_consume
from asyncq.brokers._redis_consumer import Consumer
from asyncq.brokers._redis_leases import Leases
from asyncq.brokers._redis_scripts import (
    CHUNK,
    FAIR_KEYS,
    LENGTH,
    PRIORITY_DIGITS,
    PUBLISH,
    PURGE,
    RECLAIM,
    SCRIPTS,
    Queue,
    fair_suffix,
    pack_record,
    parse_dead_entry,
    token,
)
from asyncq.brokers.base import BrokerCapabilities, BrokerDefaults, DeadLetter, Delivery, OutgoingMessage
from asyncq.exceptions import BrokerConnectionError, BrokerError, ConfigurationError

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

#: The name this module has long exported it under.
_Queue = Queue

#: Driver options (keyword arguments or URL query), documented in one place.
OPTIONS: Final[dict[str, Option]] = {
    "key_prefix": Option(str, "asyncq", "first part of every key; the queue name follows as a hash tag"),
    "visibility_timeout": Option(
        float, 30.0, "seconds a taken message stays leased without a heartbeat before it is redelivered"
    ),
    "poll_interval": Option(
        float, 1.0, "longest an idle consumer blocks before re-checking on its own (wake-ups end it sooner)"
    ),
    "batch_size": Option(int, 500, "most messages one claim or one publish script handles (1-1000)"),
    "retry_timeout": Option(
        float, 10.0, "seconds publish/ack/admin calls keep reconnecting before BrokerConnectionError"
    ),
    "dead_letter_limit": Option(int, 10_000, "dead letters kept per queue, newest kept; 0 keeps all"),
}


class RedisBroker(BrokerDefaults):
    """At-least-once queues in Redis: one server, a Cluster, or a Sentinel-managed master.

    URLs: ``redis://`` and ``rediss://`` (TLS) for one server; ``redis+cluster://host:port
    [,host:port...]`` (``rediss+cluster://``, or ``?cluster=true``) for a Cluster;
    ``redis+sentinel://host:26379[,host:port...]/<master name>[/<db>]`` for Sentinel.

    Options (keyword arguments, or the URL query; keyword arguments win):
        key_prefix: first part of every key (default ``"asyncq"``).
        visibility_timeout: seconds a taken message stays leased without a heartbeat; a live
            consumer renews every visibility_timeout/3, so only a dead (or frozen) one loses
            its messages to redelivery (default 30).
        poll_interval: longest an idle consumer blocks before looking again on its own; new
            messages, earlier etas and nacks wake it at once (default 1).
        batch_size: most messages one claim or one publish script handles, 1-1000 (default 500).
        retry_timeout: seconds publish, ack and admin calls keep reconnecting before raising
            BrokerConnectionError (default 10). Consumers retry for ever, with backoff.
        dead_letter_limit: dead letters kept per queue, oldest dropped first; 0 keeps all (10000).
        max_connections: pooled connections at most (per node on a Cluster), default 50;
            callers beyond that wait up to pool_timeout (5) seconds for one.
        min_replicas, replica_timeout: a publish returns only once this many replicas confirmed
            it, waiting at most replica_timeout (1) seconds, else it is retried (default 0:
            no wait; not on a Cluster). What a failover can lose is then never confirmed.
        sentinel_username, sentinel_password: credentials for the sentinels themselves.
        db, username, password, client_name, socket_timeout, socket_connect_timeout,
        socket_keepalive, health_check_interval, ssl_*: passed to redis-py.
    """

    capabilities = BrokerCapabilities(
        durable=True,
        redelivers_lost=True,
        notifies=True,
        priorities=True,
        delayed_delivery=True,
        fair_queuing=True,
    )

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **options: Any) -> None:
        self.url = url
        #: Lease owner id of the messages this instance takes; also in its connections' names,
        #: so that a live worker can tell (CLIENT LIST) that this process is gone.
        self._owner = uuid.uuid4().hex
        self._redis = ClientHolder(
            url,
            options,
            OPTIONS,
            what="Redis broker",
            client_name=f"asyncq-broker-{self._owner}",
            scripts=SCRIPTS,
            connection_error=BrokerConnectionError,
            error=BrokerError,
            log=logger,
        )
        settings = self._redis.settings
        self._prefix = plain_prefix(settings["key_prefix"])
        self._visibility: float = settings["visibility_timeout"]
        self._poll_interval: float = settings["poll_interval"]
        self._batch_size: int = settings["batch_size"]
        retry_timeout: float = settings["retry_timeout"]
        dead_letter_limit: int = settings["dead_letter_limit"]
        if self._visibility <= 0 or self._poll_interval <= 0 or retry_timeout < 0:
            raise ConfigurationError(
                "visibility_timeout and poll_interval must be > 0 and retry_timeout >= 0; got "
                f"{self._visibility}, {self._poll_interval}, {retry_timeout}"
            )
        if not 1 <= self._batch_size <= CHUNK or dead_letter_limit < 0:
            raise ConfigurationError(
                f"batch_size must be 1-{CHUNK} and dead_letter_limit >= 0; got "
                f"{self._batch_size}, {dead_letter_limit}"
            )
        self._leases = Leases(
            self._redis,
            visibility=self._visibility,
            owner=self._owner,
            poll_interval=self._poll_interval,
            batch_size=self._batch_size,
            dead_letter_limit=dead_letter_limit,
        )
        self._queues: dict[str, Queue] = {}
        self._consumers: set[Consumer] = set()
        self._publishes: GroupCommit[OutgoingMessage, None] = GroupCommit(
            self._flush_publishes, "asyncq.redis.publish", _closed
        )

    def __repr__(self) -> str:
        return f"<RedisBroker {redact_url(self._redis.target.url)} prefix={self._prefix!r}>"

    def _queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = Queue(self._prefix, name)
        return queue

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection pool and load the scripts; idempotent."""
        await self._redis.connect()

    async def aclose(self) -> None:
        """Stop consumers and the heartbeat, apply pending acks, close connections.

        Unsettled deliveries are not returned: their leases expire after the visibility
        timeout and they are redelivered (they may still be running somewhere).
        """
        for consumer in list(self._consumers):
            consumer.fail(BrokerError("the Redis broker was closed"))
            await consumer.close()
        self._consumers.clear()
        await self._publishes.close()
        await self._leases.close()
        await self._redis.aclose()

    async def __aenter__(self) -> RedisBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- publishing -----------------------------------------------------------------------

    def _publish_calls(self, messages: Sequence[OutgoingMessage]) -> list[tuple[Any, ...]]:
        by_queue: dict[str, list[OutgoingMessage]] = {}
        for message in messages:
            by_queue.setdefault(message.queue, []).append(message)
        calls: list[tuple[Any, ...]] = []
        for name, queued in by_queue.items():
            keys = self._queue(name).keys
            for start in range(0, len(queued), self._batch_size):
                chunk = queued[start : start + self._batch_size]
                args: list[Any] = [len(chunk)]
                for message in chunk:
                    priority = message.priority or 0
                    handle = PRIORITY_DIGITS[min(9, max(0, priority))] + token()
                    if message.fair_key is not None:
                        handle += fair_suffix(message.fair_key, message.fair_weight)
                    args.append(handle)
                    args.append(0 if message.eta is None else math.ceil(message.eta * 1000))
                    args.append(pack_record(message))
                calls.append(script_call(PUBLISH, keys, args))
        return calls

    async def _flush_publishes(self, messages: list[OutgoingMessage]) -> list[None]:
        # A retry after a reply was lost may store a message twice: at-least-once, documented.
        await self._redis.pipeline("publish", self._publish_calls(messages), replicate=True)
        return [None] * len(messages)

    async def publish(self, message: OutgoingMessage) -> None:
        """Store one message; concurrent publishes share round trips (group commit)."""
        if not self._redis.connected:
            await self._redis.connect()
        await self._publishes.submit(message)

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store several messages in one pipelined round trip (one script call per batch_size per queue)."""
        if messages:
            await self._redis.ensure()
            await self._redis.pipeline("publish_many", self._publish_calls(messages), replicate=True)

    # -- consuming ------------------------------------------------------------------------

    async def consume(self, queues: Sequence[str], *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        """Yield deliveries from ``queues``; at most ``prefetch`` claimed and unsettled at a time."""
        names = check_consume(queues, prefetch)
        await self._redis.ensure()
        consumer = Consumer(self._leases, [self._queue(name) for name in names], prefetch)
        self._consumers.add(consumer)
        try:
            take = consumer.take
            while True:
                # A buffered delivery is handed over without a coroutine (next() waits for one).
                delivery = take()
                yield delivery if delivery is not None else await consumer.next()
        finally:
            self._consumers.discard(consumer)
            await consumer.close()

    # -- administration ---------------------------------------------------------------------

    async def release_owner(self, owner: str, queues: Sequence[str]) -> int:
        """End now the leases that broker instance ``owner`` (a dead process) holds in ``queues``.

        Their messages go back to the head of their queues; return how many.
        """
        await self._redis.ensure()
        released = 0
        for name in queues:
            released += int(
                await self._redis.run("release dead leases", RECLAIM, self._queue(name).keys, (owner,))
            )
        return released

    async def purge(self, queue: str) -> int:
        """Drop the waiting (ready and delayed) messages of ``queue``; in-flight ones stay."""
        await self._redis.ensure()
        keys = self._queue(queue).keys
        total = 0
        while True:
            seen, dropped = await self._redis.run("purge", PURGE, keys, (CHUNK,))
            total += dropped
            if seen < CHUNK:
                return int(total)

    async def queue_length(self, queue: str) -> int:
        """Ready plus delayed messages of ``queue`` (in-flight ones are not waiting)."""
        await self._redis.ensure()
        return int(await self._redis.run("queue_length", LENGTH, self._queue(queue).keys, ()))

    async def active_fair_keys(self, queue: str) -> int:
        """Fair keys (tenants) of ``queue`` with messages waiting for their turn (for stats)."""
        await self._redis.ensure()
        return int(await self._redis.run("active_fair_keys", FAIR_KEYS, self._queue(queue).keys, ()))

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``queue``, oldest first."""
        if limit <= 0:
            return []
        await self._redis.ensure()
        key = self._queue(queue).dead
        entries: list[bytes] = await self._redis.retrying(
            "dead_letters", lambda client: client.execute("LRANGE", key, 0, limit - 1)
        )
        return [parse_dead_entry(entry, queue) for entry in entries]

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        """The oldest dead letter of ``queue`` with this id, or None."""
        await self._redis.ensure()
        found = await _redis_dead.find(self._redis, self._queue(queue).keys, queue, message_id)
        return None if found is None else found[1]

    async def requeue_dead_letter(self, queue: str, message_id: str) -> bool:
        """Move the oldest dead letter with this id back to ``queue`` (priority 0, no deliveries)."""
        await self._redis.ensure()
        return await _redis_dead.requeue_one(self._redis, self._queue(queue).keys, queue, message_id)

    async def requeue_dead_letters(self, queue: str) -> int:
        """Move every dead letter of ``queue`` back to it; return how many."""
        await self._redis.ensure()
        return await _redis_dead.requeue_all(self._redis, self._queue(queue).keys)

    async def purge_dead_letters(self, queue: str) -> int:
        """Drop the dead letters of ``queue``; return how many."""
        await self._redis.ensure()
        return await _redis_dead.purge(self._redis, self._queue(queue).keys)


def _closed() -> BrokerError:
    return BrokerError("the broker was closed before this call was applied")
