"""``redis://`` / ``rediss://`` result backend: records with expiry, and waits woken by pub/sub.

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
record is read once more, so a result published during the outage is not missed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from asyncq._redis import (
    CLIENT_ERRORS,
    Option,
    Script,
    call_with_retry,
    eval_script,
    load_scripts,
    make_client,
    parse_options,
    retry_pause,
    translate_error,
)
from asyncq.backends.base import BackendCapabilities
from asyncq.exceptions import BackendConnectionError, BackendError, ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio import Redis
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

# KEYS: record. ARGV: flagged value, ttl ms (0: none), channel.
_SET_FINAL = Script.build(
    "set_final",
    """
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
""",
)

# KEYS: counter. ARGV: amount, ttl ms (0: no expiry).
_INCR = Script.build(
    "incr",
    """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] == '0' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
""",
)

_SCRIPTS: Final = (_SET_FINAL, _INCR)


def _ttl_ms(ttl: float | None) -> int:
    # PX 0 is an error in Redis; a non-positive ttl means "already expired", i.e. 1 ms.
    return 0 if ttl is None else max(1, math.ceil(ttl * 1000))


def _final_record(value: bytes | None) -> bytes | None:
    return value[1:] if value is not None and value[:1] == _FINAL else None


class _Channel:
    """The waiters of one task id, and the confirmation of its current SUBSCRIBE."""

    __slots__ = ("subscribed", "task_id", "waiters")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.waiters: set[asyncio.Future[bytes | None]] = set()
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()


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
        self._task = asyncio.create_task(self._run(), name="asyncq.redis.results-listener")

    def add(self, name: bytes, task_id: str, waiter: asyncio.Future[bytes | None]) -> asyncio.Future[None]:
        """Register ``waiter``; return the future of the channel's subscription being active."""
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = _Channel(task_id)
            if self._live:
                self._send(b"SUBSCRIBE", name, channel.subscribed)
            # Otherwise the next session subscribes every registered channel.
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
            for waiter in channel.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self.channels.clear()

    async def _run(self) -> None:
        failures = 0
        while True:
            conn = self._backend._new_connection()
            pause = retry_pause(failures)
            try:
                async with asyncio.timeout(self._backend._command_timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
                if failures:
                    logger.info("result subscription connection re-established")
                failures = 0
                await self._session(conn)
            except CLIENT_ERRORS as exc:
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
                await conn.disconnect(nowait=True)
            failures += 1
            await asyncio.sleep(pause)

    async def _session(self, conn: AbstractConnection) -> None:
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
                done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
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
                async with asyncio.timeout(self._backend._command_timeout):
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


class RedisBackend:
    """``redis://`` and ``rediss://`` (TLS): task records in Redis, waits woken by pub/sub.

    Options (keyword arguments, or the URL query; keyword arguments win):
        key_prefix: first part of every key (default ``"asyncq"``).
        retry_timeout: seconds a call keeps reconnecting before BackendConnectionError (10).
        ping_interval: seconds of silence on the shared subscription connection before a
            PING checks it is alive; no answer within another interval means reconnect (15).
        db, username, password, client_name, socket_timeout, socket_connect_timeout,
        socket_keepalive, health_check_interval, max_connections, ssl_*: passed to redis-py.
    """

    capabilities = BackendCapabilities(persistent=True, notifies=True, shared=True)

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **options: Any) -> None:
        self.url = url
        self._clean_url, settings, self._connection = parse_options(
            url, options, OPTIONS, what="Redis result backend"
        )
        self._prefix: str = settings["key_prefix"]
        self._retry_timeout: float = settings["retry_timeout"]
        self._ping_interval: float = settings["ping_interval"]
        if self._retry_timeout < 0 or self._ping_interval <= 0:
            raise ConfigurationError(
                f"retry_timeout must be >= 0 and ping_interval > 0; got {self._retry_timeout}, "
                f"{self._ping_interval}"
            )
        self._redis: Redis | None = None
        self._command_timeout: float | None = None
        self._listener: _Listener | None = None
        self._connect_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<RedisBackend {self._clean_url} prefix={self._prefix!r}>"

    def _key(self, task_id: str) -> bytes:
        return f"{self._prefix}:result:{{{task_id}}}".encode()

    def _client(self) -> Redis:
        if self._redis is None:
            raise BackendError("the Redis result backend is not connected; call connect() first")
        return self._redis

    def _new_connection(self) -> AbstractConnection:
        # Named apart from the pool's connections, so CLIENT LIST shows which one listens.
        pool = self._client().connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["client_name"] = f"{kwargs.get('client_name') or 'asyncq-backend'}:results"
        connection: AbstractConnection = pool.connection_class(**kwargs)
        return connection

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        if self._redis is None:
            await self.connect()
        return await call_with_retry(
            op,
            what=what,
            timeout=self._retry_timeout,
            attempt_timeout=self._command_timeout,
            connection_error=BackendConnectionError,
            error=BackendError,
            logger=logger,
        )

    async def connect(self) -> None:
        """Open the connection pool and load the scripts; idempotent."""
        async with self._connect_lock:
            if self._redis is not None:
                return
            client, self._command_timeout = make_client(
                self._clean_url, self._connection, client_name="asyncq-backend"
            )
            try:
                await call_with_retry(
                    lambda: load_scripts(client, _SCRIPTS),
                    what=f"connect to {self._clean_url}",
                    timeout=self._retry_timeout,
                    attempt_timeout=self._command_timeout,
                    connection_error=BackendConnectionError,
                    error=BackendError,
                    logger=logger,
                )
            except BaseException:
                await client.connection_pool.aclose()
                raise
            self._redis = client

    async def aclose(self) -> None:
        """Wake every pending ``wait`` with None and close the connections."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        client, self._redis = self._redis, None
        if client is not None:
            await client.connection_pool.aclose()

    async def __aenter__(self) -> RedisBackend:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def set(self, task_id: str, record: bytes, *, final: bool, ttl: float | None) -> None:
        """Store the record (SET with PX); a final one is also PUBLISHed to its waiters."""
        key = self._key(task_id)
        ttl_ms = _ttl_ms(ttl)
        if final:
            args = (_FINAL + record, ttl_ms, key)
            await self._retrying(
                "set result", lambda: eval_script(self._client(), _SET_FINAL, (key,), args, _SCRIPTS)
            )
        else:
            value = _PENDING + record
            await self._retrying("set result", lambda: self._client().set(key, value, px=ttl_ms or None))

    async def _get_raw_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        keys = [self._key(task_id) for task_id in task_ids]
        values: list[bytes | None] = await self._retrying(
            "get results",
            lambda: self._client().mget(keys),  # type: ignore[arg-type,return-value]
        )
        return values

    async def get(self, task_id: str) -> bytes | None:
        key = self._key(task_id)
        value: bytes | None = await self._retrying("get result", lambda: self._client().get(key))  # type: ignore[arg-type,return-value]
        return None if value is None else value[1:]

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        """MGET: every record in one round trip, in order."""
        if not task_ids:
            return []
        return [None if value is None else value[1:] for value in await self._get_raw_many(task_ids)]

    async def wait(self, task_id: str, *, timeout: float | None) -> bytes | None:
        """Subscribe (confirmed), then read; return the final record once there is one."""
        if self._redis is None:
            await self.connect()
        if self._listener is None:
            self._listener = _Listener(self)
        if timeout is not None and timeout <= 0:
            return _final_record((await self._get_raw_many([task_id]))[0])
        listener = self._listener
        name = self._key(task_id)
        waiter: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        subscribed = listener.add(name, task_id, waiter)
        try:
            async with asyncio.timeout(timeout):
                # The subscription future is shared by every waiter of this id (asyncio.wait
                # never cancels it); ``waiter`` also completes when the backend is closed.
                await asyncio.wait((subscribed, waiter), return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    stored = _final_record((await self._get_raw_many([task_id]))[0])
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
        await self._retrying("forget result", lambda: self._client().delete(key))

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """INCRBY and (P)EXPIRE/PERSIST in one script: atomic, as chord joins need."""
        counter = f"{self._prefix}:counter:{{{key}}}".encode()
        args = (amount, _ttl_ms(ttl))
        if self._redis is None:
            await self.connect()
        # One attempt only: an increment whose reply was lost may have been applied, and
        # counting it twice would fire a chord early. The pool still replaces connections
        # the server closed before sending, so a restart between calls is not an error.
        try:
            async with asyncio.timeout(self._command_timeout):
                value = await eval_script(self._client(), _INCR, (counter,), args, _SCRIPTS)
        except CLIENT_ERRORS as exc:
            raise translate_error(exc, "incr counter", BackendConnectionError, BackendError) from exc
        return int(value)
