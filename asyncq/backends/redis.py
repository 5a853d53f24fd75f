"""Redis result backend: records with expiry, and waits woken by pub/sub.

One server (``redis://``, ``rediss://``), a Redis Cluster (``redis+cluster://``,
``rediss+cluster://`` or ``?cluster=true``) or a Sentinel-managed master
(``redis+sentinel://``); :class:`asyncq._redis.Client` hides the difference.

Keys (the task id is a hash tag, so a record and its channel share a Cluster slot)::

    <prefix>:result:{<task id>}    string   b"F" + record (final) or b"P" + record (not yet)
    <prefix>:counter:{<key>}       string   integer counter (INCRBY), for chord joins

A final ``set`` writes the record and PUBLISHes it on the channel named like its key, in
one script, so a reader either finds it stored or receives it. ``wait`` subscribes first
(and waits for Redis to confirm the subscription) and only then reads the stored value:
there is no moment in which a final write can slip by unseen. All waiters of one backend
instance share ONE subscription connection; each task id is subscribed once, however many
coroutines wait for it, and unsubscribed when the last leaves. When that connection drops,
it is re-established with backoff, every channel is subscribed again, and every waited
record is read once more, so a result published during the outage is not missed. On a
Cluster, PUBLISH reaches subscribers on every node, so that connection goes to any primary;
under Sentinel it moves to the new master at a switch, like a reconnect.

Concurrent ``set`` calls (a worker finishing hundreds of tasks at once) share one pipelined
round trip and one connection, as do concurrent ``get`` calls (one MGET): N callers cost one
round trip, not N connections.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from asyncq._redis import (
    CLIENT_ERRORS,
    ClientHolder,
    GroupCommit,
    MasterSwitchedError,
    Option,
    load_lua,
    retry_pause,
    script_call,
    translate_error,
)
from asyncq._sending import Arrival
from asyncq._utils import redact_url
from asyncq.backends._redis_joint import JointSettle, Settled
from asyncq.backends.base import BackendCapabilities, BackendDefaults
from asyncq.exceptions import BackendConnectionError, BackendError, ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Driver options (keyword arguments or URL query), documented in one place.
OPTIONS: Final[dict[str, Option]] = {
    "key_prefix": Option(str, "asyncq", "first part of every key"),
    "retry_timeout": Option(float, 10.0, "seconds a call keeps reconnecting before BackendConnectionError"),
    "ping_interval": Option(float, 15.0, "seconds of silence on the subscription connection before a PING"),
}

_FINAL, _PENDING = b"F", b"P"

# Sources in redis_lua/: set_many stores a batch of records (one slot on a Cluster) and
# PUBLISHes the final ones; incr is INCRBY with (P)EXPIRE/PERSIST, atomic for chord joins.
_SET_MANY: Final = load_lua("asyncq.backends", "redis_lua", "set_many")
_INCR: Final = load_lua("asyncq.backends", "redis_lua", "incr")
_SCRIPTS: Final = (_SET_MANY, _INCR)

#: Seconds a channel subscribed ahead of its wait (RedisBackend.prepare) waits for a waiter.
_PREPARED_TTL: Final = 10.0
#: Most channels subscribed ahead and not waited on yet; beyond it, prepare does nothing.
_PREPARED_MAX: Final = 1000

#: Most records one set_many call stores.
_SET_CHUNK: Final = 500


def _ttl_ms(ttl: float | None) -> int:
    # PX 0 is an error in Redis; a non-positive ttl means "already expired", i.e. 1 ms.
    return 0 if ttl is None else max(1, math.ceil(ttl * 1000))


def _final_record(value: bytes | None) -> bytes | None:
    return value[1:] if value is not None and value[:1] == _FINAL else None


class _Channel:
    """The waiters of one task id, and the confirmation of its current SUBSCRIBE.

    A channel subscribed ahead of its first waiter (:meth:`_Listener.prepare`) keeps the final
    record if it arrives before anyone waits, and is dropped if nobody comes within
    ``_PREPARED_TTL``.
    """

    __slots__ = ("arrival", "expiry", "record", "subscribed", "task_id", "waiters")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.waiters: set[asyncio.Future[bytes | None]] = set()
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.record: bytes | None = None
        self.expiry: asyncio.TimerHandle | None = None  # set while nobody waits on a prepared channel
        self.arrival: asyncio.Future[None] | None = None  # see RedisBackend.arrival


class _Listener:
    """The one subscription connection of a backend, multiplexing every waiter.

    Ordering is what makes it correct: commands are written by a single writer task in the
    order they were queued, and Redis answers each SUBSCRIBE/UNSUBSCRIBE of a channel in that
    order, so the n-th confirmation read belongs to the n-th command sent (``_expected``).
    """

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self.channels: dict[bytes, _Channel] = {}
        self._outbox: list[tuple[bytes, ...]] = []
        self._outbox_ready = asyncio.Event()
        self._expected: deque[asyncio.Future[None] | None] = deque()
        self._live = False  # a session is running: commands queued now are sent on it
        self._prepared = 0  # channels subscribed ahead that nobody waits on yet
        self._task = asyncio.create_task(self._run(), name="asyncq.redis.results-listener")

    @property
    def live(self) -> bool:
        """True while a session runs: a SUBSCRIBE queued now goes out at once."""
        return self._live

    def prepare(self, name: bytes, task_id: str) -> None:
        """Subscribe to ``task_id``'s channel ahead of a wait that may follow (see RedisBackend.expect)."""
        if name in self.channels or self._prepared >= _PREPARED_MAX:
            return
        channel = self.channels[name] = _Channel(task_id)
        self._prepared += 1
        channel.expiry = asyncio.get_running_loop().call_later(_PREPARED_TTL, self._expire, name, channel)
        if self._live:
            self._send(b"SUBSCRIBE", name, channel.subscribed)

    def _expire(self, name: bytes, channel: _Channel) -> None:
        channel.expiry = None
        self._prepared -= 1
        if self.channels.get(name) is channel and not channel.waiters:
            del self.channels[name]
            if self._live:
                self._send(b"UNSUBSCRIBE", name, None)

    def add(self, name: bytes, task_id: str, waiter: asyncio.Future[bytes | None]) -> asyncio.Future[None]:
        """Register ``waiter``; return the future of the channel's subscription being active."""
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = _Channel(task_id)
            if self._live:
                self._send(b"SUBSCRIBE", name, channel.subscribed)
            # Otherwise the next session subscribes every registered channel.
        elif channel.expiry is not None:  # prepared: the waiter owns it now
            channel.expiry.cancel()
            channel.expiry = None
            self._prepared -= 1
        if channel.record is not None:  # it finished before anyone waited
            waiter.set_result(channel.record)
        channel.waiters.add(waiter)
        return channel.subscribed

    def remove(self, name: bytes, waiter: asyncio.Future[bytes | None]) -> None:
        channel = self.channels.get(name)
        if channel is None:
            return
        channel.waiters.discard(waiter)
        if not channel.waiters:
            del self.channels[name]
            if self._live:
                self._send(b"UNSUBSCRIBE", name, None)

    def deliver(self, name: bytes, record: bytes) -> None:
        channel = self.channels.get(name)
        if channel is not None:
            if channel.expiry is not None and channel.record is None:
                channel.record = record  # prepared, nobody waits yet: keep it for the wait
            arrival = channel.arrival
            if arrival is not None:
                channel.arrival = None
                if not arrival.done():
                    arrival.set_result(None)
            for waiter in channel.waiters:
                if not waiter.done():
                    waiter.set_result(record)

    def _send(self, command: bytes, name: bytes, confirmed: asyncio.Future[None] | None) -> None:
        self._expected.append(confirmed)
        self._outbox.append((command, name))
        self._outbox_ready.set()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        for channel in self.channels.values():
            if channel.expiry is not None:
                channel.expiry.cancel()
            for waiter in channel.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self.channels.clear()

    async def _run(self) -> None:
        failures = 0
        while True:
            client = self._backend._redis.client()
            pause = retry_pause(failures)
            conn: AbstractConnection | None = None
            try:
                conn = client.dedicated_connection(name_suffix=":results")
                async with asyncio.timeout(client.command_timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
                if failures:
                    logger.info("result subscription connection re-established")
                failures = 0
                await self._session(conn, client.switched())
            except CLIENT_ERRORS as exc:
                client.failed(exc)
                error = translate_error(exc, "result subscription", BackendConnectionError, BackendError)
                log = logger.warning if failures == 0 else logger.debug
                log("%s; reconnecting in %.2fs", error, pause)
            except Exception:  # a bug, not an outage: say so loudly, and keep waiters served
                logger.exception("result subscription failed; reconnecting in %.2fs", pause)
            finally:
                # Until the next session starts, new channels are only registered; it
                # subscribes every registered channel itself.
                self._live = False
                self._outbox.clear()
                self._expected.clear()
                if conn is not None:
                    await conn.disconnect(nowait=True)
            failures += 1
            await asyncio.sleep(pause)

    async def _session(self, conn: AbstractConnection, switched: asyncio.Future[None] | None) -> None:
        # Channels confirmed on an earlier connection may have missed a message while it was
        # down: read their records again once the new subscriptions are confirmed.
        recheck = [name for name, channel in self.channels.items() if channel.subscribed.done()]
        for name, channel in self.channels.items():
            if channel.subscribed.done():
                channel.subscribed = asyncio.get_running_loop().create_future()
            self._send(b"SUBSCRIBE", name, channel.subscribed)
        self._live = True
        writer = asyncio.create_task(self._write_loop(conn), name="asyncq.redis.results-writer")
        checker = None
        if recheck:
            checker = asyncio.create_task(self._recheck(recheck), name="asyncq.redis.results-recheck")
        try:
            reader = asyncio.create_task(self._read_loop(conn), name="asyncq.redis.results-reader")
            try:
                # The Sentinel switch future is shared: asyncio.wait never cancels it.
                waiting: set[asyncio.Future[Any]] = {writer, reader}
                if switched is not None:
                    waiting.add(switched)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {switched}:
                    task.result()
                if switched in done:
                    raise MasterSwitchedError("the Sentinel master changed")
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if checker is not None:
                checker.cancel()
                await asyncio.gather(checker, return_exceptions=True)

    async def _write_loop(self, conn: AbstractConnection) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if batch:
                packed = conn.pack_commands(batch)
                async with asyncio.timeout(self._backend._redis.client().command_timeout):
                    await conn.send_packed_command(packed, check_health=False)

    async def _read_loop(self, conn: AbstractConnection) -> None:
        awaiting_pong = False
        interval = self._backend._ping_interval
        while True:
            reply = await conn.read_response(timeout=interval)
            if reply is None:  # silence for a whole interval: is the connection still alive?
                if awaiting_pong:
                    raise TimeoutError(f"no reply to PING within {interval}s on the result subscription")
                awaiting_pong = True
                self._outbox.append((b"PING",))
                self._outbox_ready.set()
                continue
            awaiting_pong = False
            if not isinstance(reply, list) or not reply:
                continue  # b"PONG" outside subscribed mode
            kind = reply[0]
            if kind == b"message":
                value = reply[2]
                if value[:1] == _FINAL:
                    self.deliver(reply[1], value[1:])
            elif kind in (b"subscribe", b"unsubscribe"):
                confirmed = self._expected.popleft() if self._expected else None
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)

    async def _recheck(self, names: list[bytes]) -> None:
        channels = [self.channels[name] for name in names if name in self.channels]
        if not channels:
            return
        # asyncio.wait, not gather: cancelling this task must not cancel the shared futures.
        await asyncio.wait([channel.subscribed for channel in channels])
        ids = [channel.task_id for channel in channels]
        values = await self._backend._get_raw_many(ids)
        for channel, value in zip(channels, values, strict=True):
            record = _final_record(value)
            if record is not None:
                self.deliver(self._backend._key(channel.task_id), record)


class RedisBackend(BackendDefaults):
    """Task records in Redis, waits woken by pub/sub: one server, a Cluster, or Sentinel.

    URLs: ``redis://`` and ``rediss://`` (TLS) for one server; ``redis+cluster://host:port
    [,host:port...]`` (``rediss+cluster://``, or ``?cluster=true``) for a Cluster;
    ``redis+sentinel://host:26379[,host:port...]/<master name>[/<db>]`` for Sentinel.

    Options (keyword arguments, or the URL query; keyword arguments win):
        key_prefix: first part of every key (default ``"asyncq"``).
        retry_timeout: seconds a call keeps reconnecting before BackendConnectionError (10).
        ping_interval: seconds of silence on the shared subscription connection before a
            PING checks it is alive; no answer within another interval means reconnect (15).
        max_connections: pooled connections at most (per node on a Cluster), default 50;
            callers beyond that wait up to pool_timeout (5) seconds for one.
        min_replicas, replica_timeout: ``set`` and ``incr`` return only once this many
            replicas confirmed the write, waiting at most replica_timeout (1) seconds
            (default 0: no wait; not on a Cluster).
        sentinel_username, sentinel_password: credentials for the sentinels themselves.
        db, username, password, client_name, socket_timeout, socket_connect_timeout,
        socket_keepalive, health_check_interval, ssl_*: passed to redis-py.
    """

    capabilities = BackendCapabilities(persistent=True, notifies=True, shared=True)

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **options: Any) -> None:
        self.url = url
        self._redis = ClientHolder(
            url,
            options,
            OPTIONS,
            what="Redis result backend",
            client_name="asyncq-backend",
            scripts=_SCRIPTS,
            connection_error=BackendConnectionError,
            error=BackendError,
            log=logger,
        )
        settings = self._redis.settings
        self._prefix: str = settings["key_prefix"]
        self._ttl_seen: float | None = None
        self._ttl_ms_seen = _ttl_ms(None)
        retry_timeout: float = settings["retry_timeout"]
        self._ping_interval: float = settings["ping_interval"]
        if retry_timeout < 0 or self._ping_interval <= 0:
            raise ConfigurationError(
                f"retry_timeout must be >= 0 and ping_interval > 0; got {retry_timeout}, "
                f"{self._ping_interval}"
            )
        self._listener: _Listener | None = None
        self._sets: GroupCommit[tuple[bytes, bytes, bool, int], None] = GroupCommit(
            self._flush_sets, "asyncq.redis.results-set", _closed
        )
        self._gets: GroupCommit[bytes, bytes | None] = GroupCommit(
            self._flush_gets, "asyncq.redis.results-get", _closed
        )
        self._joint = JointSettle(self._redis, _SET_MANY, _SCRIPTS)

    def __repr__(self) -> str:
        return f"<RedisBackend {redact_url(self._redis.target.url)} prefix={self._prefix!r}>"

    def _key(self, task_id: str) -> bytes:
        return f"{self._prefix}:result:{{{task_id}}}".encode()

    async def connect(self) -> None:
        """Open the connection pool and load the scripts; idempotent."""
        await self._redis.connect()

    async def aclose(self) -> None:
        """Apply pending writes, wake every pending ``wait`` with None and close the connections."""
        await self._sets.close()
        await self._joint.close()
        await self._gets.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        await self._redis.aclose()

    async def __aenter__(self) -> RedisBackend:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def set(self, task_id: str, record: bytes, *, final: bool, ttl: float | None) -> None:
        """Store the record (SET with PX); a final one is also PUBLISHed to its waiters.

        Calls that arrive together share one pipelined round trip; each returns once its own
        record was stored.
        """
        if not self._redis.connected:
            await self._redis.connect()
        if ttl != self._ttl_seen:  # every record of a worker has the same ttl: converted once
            self._ttl_seen, self._ttl_ms_seen = ttl, _ttl_ms(ttl)
        key = f"{self._prefix}:result:{{{task_id}}}".encode()  # _key(), inline
        await self._sets.submit((key, record, final, self._ttl_ms_seen))

    def set_and_ack(
        self, task_id: str, record: bytes, *, ttl: float | None, delivery: object
    ) -> Awaitable[None] | None:
        """A final ``set`` and the ack of ``delivery``, in one round trip (the record first).

        None when the two cannot travel together (the delivery is not from a Redis broker on
        this server, a Cluster, min_replicas, not connected): the caller sets and acks apart.
        """
        key = self._final_key(task_id, ttl)  # converts ttl first
        return self._joint.submit(delivery, key, _FINAL + record, self._ttl_ms_seen)

    def queue_set_and_ack(
        self, task_id: str, record: bytes, *, ttl: float | None, delivery: object, then: Settled
    ) -> bool:
        """:meth:`set_and_ack` with nothing to await: True if queued behind a flush in flight.

        ``then(delivery, error)`` is called once the pair was applied (error None) or the
        flush failed (the delivery is open again). False, with nothing done, when no flush is
        in flight (:meth:`set_and_ack` then flushes the caller's own at once) or the two
        cannot travel together. Under load a worker's task need not wait for its round trip.
        """
        key = self._final_key(task_id, ttl)
        return self._joint.queue(delivery, key, _FINAL + record, self._ttl_ms_seen, then)

    def _final_key(self, task_id: str, ttl: float | None) -> bytes:
        """The record key of ``task_id`` (``_key()``, inline), with ``ttl`` converted for it."""
        if ttl != self._ttl_seen:  # every record of a worker has the same ttl: converted once
            self._ttl_seen, self._ttl_ms_seen = ttl, _ttl_ms(ttl)
        return f"{self._prefix}:result:{{{task_id}}}".encode()

    async def _flush_sets(self, items: list[tuple[bytes, bytes, bool, int]]) -> list[None]:
        client = self._redis.client()
        groups: Iterable[tuple[list[bytes], list[Any]]]
        if client.clustered:
            by_slot: dict[int, tuple[list[bytes], list[Any]]] = {}
            for key, record, final, ttl_ms in items:
                keys, args = by_slot.setdefault(client.slot_of(key), ([], []))
                keys.append(key)
                args += ((_FINAL if final else _PENDING) + record, ttl_ms)
            groups = by_slot.values()
        else:  # one server: every key in one group, no slot to compute per record
            keys, args = [], []
            for key, record, final, ttl_ms in items:
                keys.append(key)
                args += ((_FINAL if final else _PENDING) + record, ttl_ms)
            groups = ((keys, args),)
        commands = [
            script_call(_SET_MANY, keys[i : i + _SET_CHUNK], args[2 * i : 2 * (i + _SET_CHUNK)])
            for keys, args in groups
            for i in range(0, len(keys), _SET_CHUNK)
        ]
        # Replayed as a whole after a lost reply: SET and PUBLISH are idempotent for waiters,
        # and one task's writes keep their order (within a script, and flush after flush).
        await self._redis.pipeline("set result", commands, replicate=True)
        return [None] * len(items)

    async def _flush_gets(self, keys: list[bytes]) -> list[bytes | None]:
        return await self._redis.retrying("get result", lambda client: client.get_many(keys))

    async def _get_raw_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        keys = [self._key(task_id) for task_id in task_ids]
        await self._redis.ensure()
        return await self._redis.retrying("get results", lambda client: client.get_many(keys))

    async def get(self, task_id: str) -> bytes | None:
        """The record, final or not; concurrent calls share one MGET."""
        if not self._redis.connected:
            await self._redis.connect()
        value = await self._gets.submit(self._key(task_id))
        return None if value is None else value[1:]

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """Every record in one round trip (MGET), in order."""
        if not task_ids:
            return []
        return [None if value is None else value[1:] for value in await self._get_raw_many(task_ids)]

    async def _get_final(self, task_id: str) -> bytes | None:
        return _final_record(await self._gets.submit(self._key(task_id)))

    def expect(self, task_id: str) -> None:
        """A hint from the App, right before it sends a task: a wait for its result may follow.

        If this backend has waited on a result before (its subscription connection is up),
        the task's channel is subscribed now, while the task is being published, so a wait
        that follows skips the subscription round trip, and finds the record at once if the
        task finished first. A backend that never waited does nothing: a pure producer pays
        nothing. A channel nobody waits on is dropped after 10 s; at most 1,000 are held.
        """
        listener = self._listener
        if listener is not None and listener.live:
            listener.prepare(self._key(task_id), task_id)

    def arrival(self, task_id: str) -> asyncio.Future[None] | None:
        """Done when the final record of ``task_id`` comes in on its channel subscribed ahead.

        Asked right after :meth:`expect`; None unless that subscribed the channel. A record
        published on it proves the task ran, so the App stops waiting for the broker's publish
        confirm then: RabbitMQ may hold a persistent message's confirm back until the worker's
        ack, which comes after the record.
        """
        listener = self._listener
        if listener is None or not listener.live:
            return None
        channel = listener.channels.get(self._key(task_id))
        if channel is None or channel.expiry is None or channel.record is not None:
            return None  # not subscribed ahead just now (or already finished)
        future: asyncio.Future[None] = Arrival(loop=asyncio.get_running_loop())
        channel.arrival = future
        return future

    async def wait(self, task_id: str, *, timeout: float | None) -> bytes | None:
        """Subscribe (confirmed), then read; return the final record once there is one."""
        await self._redis.ensure()
        if self._listener is None:
            self._listener = _Listener(self)
        if timeout is not None and timeout <= 0:
            return await self._get_final(task_id)
        listener = self._listener
        name = self._key(task_id)
        waiter: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        subscribed = listener.add(name, task_id, waiter)
        if waiter.done():
            # Subscribed ahead and the record came first: no wait, no loop iteration.
            listener.remove(name, waiter)
            return waiter.result()
        try:
            async with asyncio.timeout(timeout):
                # The subscription future is shared by every waiter of this id (asyncio.wait
                # never cancels it); ``waiter`` also completes when the backend is closed.
                await asyncio.wait((subscribed, waiter), return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    stored = await self._get_final(task_id)
                    if stored is not None:
                        return stored
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return waiter.result()
            return None
        finally:
            listener.remove(name, waiter)

    async def forget(self, task_id: str) -> None:
        key = self._key(task_id)
        await self._redis.ensure()
        await self._redis.retrying("forget result", lambda client: client.execute("DEL", key))

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """INCRBY and (P)EXPIRE/PERSIST in one script: atomic, as chord joins need."""
        counter = f"{self._prefix}:counter:{{{key}}}".encode()
        call = script_call(_INCR, (counter,), (amount, _ttl_ms(ttl)))
        await self._redis.ensure()
        # One attempt only: an increment whose reply was lost may have been applied, and
        # counting it twice would fire a chord early. The pool still replaces connections
        # the server closed before sending, so a restart between calls is not an error.
        (value,) = await self._redis.pipeline("incr counter", [call], replicate=True, retry=False)
        return int(value)


def _closed() -> BackendError:
    return BackendError("the result backend was closed before this call was applied")
