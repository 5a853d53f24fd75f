"""The drivers' one view of a Redis deployment: a server, a Cluster, or a Sentinel master.

redis-py's own silent retries are switched off everywhere: we retry where it is safe and say so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)

from asyncq import _resp
from asyncq._connect import connect_timeout_value
from asyncq._redis.errors import (
    PoolExhaustedError,
    ReplicaAckError,
    is_connection_error,
    retry_pause,
    translate_error,
)
from asyncq._redis.options import CONNECTION_DEFAULTS, Target
from asyncq._redis.pools import BlockingPool, no_retry
from asyncq._redis.scripts import Script, script_call
from asyncq._redis.sentinel import SentinelWatcher
from asyncq._resp import pack_commands
from asyncq._utils import cancel_and_wait, describe_error, redact_url
from asyncq.exceptions import AsyncqError, ConfigurationError

__all__ = ["Client"]

T = TypeVar("T")

logger = logging.getLogger("asyncq._redis")

#: What to check when the first connect fails.
_UNREACHABLE_HINT: Final = "is Redis running there, and is it the right host, port and password?"


class Client:
    """The drivers' view of one Redis deployment: a server, a Cluster, or a Sentinel master.

    Every command goes through here, so the three deployments look alike to the drivers:

    * **One multiplexed connection** (``multiplex``, the default, on a server or under
      Sentinel): every command of the drivers' hot path is written at once to one shared
      connection and matched to its reply by position (:mod:`asyncq._resp`), so concurrent
      callers pipeline without checking anything out.
    * **Pool.** Otherwise (a Cluster, ``min_replicas`` > 0, ``multiplex=false``), at most
      ``max_connections`` pooled connections (per node on a Cluster); a caller beyond that
      waits up to ``pool_timeout`` for one to be free, then gets a
      :class:`PoolExhaustedError`, which is never retried.
    * **Scripts** run by SHA and are loaded again wherever Redis lost them (a restart, a
      promoted replica).
    * **Durability.** With ``min_replicas`` > 0 (server and Sentinel), :meth:`pipeline` with
      ``replicate=True`` ends with ``WAIT`` on the same connection and fails (retryably)
      unless that many replicas confirmed the writes: what a failover can lose is never
      reported as stored.
    * **Topology.** On a Cluster, a failed or redirected call refreshes the slot map before
      the caller retries. Under Sentinel, a watcher follows the failover of our master:
      commands wait while it runs, and after ``+switch-master`` pooled connections are
      re-established against the new master and blocking readers are told through
      :meth:`switched`, as if their connections had dropped.
    """

    def __init__(
        self,
        target: Target,
        connection: Mapping[str, Any],
        *,
        client_name: str,
        retry_timeout: float,
        connection_error: type[AsyncqError],
        error: type[AsyncqError],
        log: logging.Logger,
    ) -> None:
        kwargs: dict[str, Any] = {**CONNECTION_DEFAULTS, "client_name": client_name, **connection}
        # socket_timeout is not given to redis-py: its send path wraps writes in
        # asyncio.wait_for, which on Python 3.11 can swallow the caller's cancellation (a
        # consumer that will not stop). We apply it around each command with asyncio.timeout
        # instead; redis-py answers that by dropping the connection, as on its own timeout.
        self.command_timeout: float | None = kwargs.pop("socket_timeout") or None
        self.connect_timeout = connect_timeout_value(kwargs.pop("connect_timeout"))
        self.max_connections: int = kwargs.pop("max_connections")
        self.pool_timeout: float = kwargs.pop("pool_timeout")
        self.min_replicas: int = kwargs.pop("min_replicas")
        self.replica_timeout: float = kwargs.pop("replica_timeout")
        multiplex: bool = kwargs.pop("multiplex")
        kwargs.pop("cluster", None)
        sentinel_auth = {
            "username": kwargs.pop("sentinel_username", None),
            "password": kwargs.pop("sentinel_password", None),
        }
        if self.max_connections < 1 or self.pool_timeout <= 0:
            raise ConfigurationError(
                f"max_connections must be >= 1 and pool_timeout > 0; got {self.max_connections}, "
                f"{self.pool_timeout}"
            )
        if self.min_replicas < 0 or self.replica_timeout <= 0:
            raise ConfigurationError(
                f"min_replicas must be >= 0 and replica_timeout > 0; got {self.min_replicas}, "
                f"{self.replica_timeout}"
            )
        self.target = target
        self.kind = target.kind
        self.retry_timeout = retry_timeout
        self._connection_error = connection_error
        self._error = error
        self._log = log
        self._gate: asyncio.Semaphore | None = None
        self._pool: BlockingPool | None = None  # the pool, outside a Cluster
        self._cluster: RedisCluster | None = None  # self.redis, on a Cluster (isinstance is slow on it)
        self._sentinel: SentinelWatcher | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._closing = False
        # The multiplexed connection of the hot path (see asyncq._resp), outside a Cluster.
        # Not with min_replicas: its WAIT would block every caller sharing the connection.
        self._mux: _resp.Multiplexed | None = None
        self._mux_lock = asyncio.Lock()
        self._multiplex = (
            multiplex and _resp.AVAILABLE and target.kind != "cluster" and self.min_replicas == 0
        )
        common: dict[str, Any] = {"decode_responses": False, "socket_timeout": None, "protocol": 2}
        try:
            if target.kind == "server":
                pool = BlockingPool.from_url(
                    target.url,
                    max_connections=self.max_connections,
                    timeout=self.pool_timeout,
                    retry=no_retry(),
                    **common,
                    **kwargs,
                )
                self._pool = pool
                self.redis: Redis | RedisCluster = Redis(connection_pool=pool)
            elif target.kind == "sentinel":
                self.redis = self._sentinel_client(kwargs, common, sentinel_auth)
            else:
                self.redis = self._cluster_client(kwargs, common)
        except (ValueError, TypeError, RedisError, RedisClusterException) as exc:
            shown = redact_url(target.url)
            raise ConfigurationError(f"invalid Redis URL or option for {shown!r}: {exc}") from exc

    def _sentinel_client(self, kwargs: dict[str, Any], common: dict[str, Any], auth: dict[str, Any]) -> Redis:
        self._sentinel = SentinelWatcher(
            self.target,
            kwargs,
            common,
            auth,
            max_connections=self.max_connections,
            pool_timeout=self.pool_timeout,
        )
        self._pool = self._sentinel.pool
        return Redis(connection_pool=self._pool)

    def _cluster_client(self, kwargs: dict[str, Any], common: dict[str, Any]) -> RedisCluster:
        if kwargs.pop("db", 0):
            raise ConfigurationError("Redis Cluster has only database 0; remove the db option")
        if self.min_replicas:
            # WAIT must follow the writes on their connection; a Cluster pipeline spreads
            # them over one connection per node, out of our hands.
            raise ConfigurationError("min_replicas is not supported on Redis Cluster")
        if "ssl_password" in kwargs:
            raise ConfigurationError("ssl_password is not supported on Redis Cluster")
        target = self.target
        kwargs.setdefault("username", target.username)
        kwargs.setdefault("password", target.password)
        # Each node has its own pool of max_connections that fails when full; the gate makes
        # callers wait instead. One gated call uses at most one connection per node.
        self._gate = asyncio.Semaphore(self.max_connections)
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            max_connections=self.max_connections,
            retry=no_retry(),
            ssl=target.tls,
            **common,
            **kwargs,
        )
        return self._cluster

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, scripts: Sequence[Script]) -> None:
        """Connect (find the Cluster's nodes, the Sentinel master) and load ``scripts``.

        Retries connection failures for up to ``retry_timeout``.
        """

        async def attempt() -> None:
            if self._cluster is not None:
                await self._cluster.initialize()
            await self.load_scripts(scripts)

        shown = redact_url(self.target.url)
        try:
            # One deadline for the whole connect, retries included: an attempt against a
            # silent host can itself take socket_connect_timeout.
            async with asyncio.timeout(self.connect_timeout):
                # Quiet: if it keeps failing, the one error raised says it all.
                await self.retrying(f"connect to {shown}", attempt, timeout=self.connect_timeout, quiet=True)
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, TimeoutError):
                raise self._connection_error(
                    f"connect to {shown}: no answer within connect_timeout={self.connect_timeout:g}s; "
                    f"{_UNREACHABLE_HINT}"
                ) from None
            if isinstance(exc, self._connection_error) and isinstance(exc.__cause__, MasterNotFoundError):
                # redis-py's message is the repr of its client: name what was asked instead.
                sentinels = ",".join(f"{host}:{port}" for host, port in self.target.nodes)
                raise self._connection_error(
                    f"connect to {shown}: no sentinel at {sentinels} gave the address of master "
                    f"{self.target.service!r}; are the sentinels running, and is that the master's name?"
                ) from exc
            if isinstance(exc, self._connection_error):
                raise self._connection_error(f"{exc}; {_UNREACHABLE_HINT}") from exc
            raise
        if self._sentinel is not None:
            self._sentinel.start(self.command_timeout, self._drop_mux)

    async def aclose(self) -> None:
        """Stop the Sentinel watcher and close every pooled connection."""
        self._closing = True
        await cancel_and_wait(self._refreshing)
        self._refreshing = None
        if self._sentinel is not None:
            await self._sentinel.stop()
        self._drop_mux()
        if self._cluster is not None:
            await self._cluster.aclose()
        elif self._pool is not None:
            await self._pool.aclose()
        if self._sentinel is not None:
            await self._sentinel.sentinel.aclose()

    # -- calls -------------------------------------------------------------------------------

    async def _held(self) -> None:
        # asyncio.wait, not await: cancelling a waiter must not cancel the shared future.
        sentinel = self._sentinel
        if sentinel is not None and sentinel.hold is not None:
            await asyncio.wait((sentinel.hold,))

    async def _gated(self, op: Callable[[], Awaitable[T]]) -> T:
        await self._held()
        gate = self._gate
        if gate is None:
            return await op()
        try:
            async with asyncio.timeout(self.pool_timeout):
                await gate.acquire()
        except TimeoutError:
            raise PoolExhaustedError.after(self.pool_timeout, self.max_connections) from None
        try:
            return await op()
        finally:
            gate.release()

    async def execute(self, *args: Any) -> Any:
        """One command, never a blocking one; its raw reply (the drivers send none that redis-py reshapes)."""
        if self._multiplex:
            (reply,) = await self._send(pack_commands((args,)), 1)
            if isinstance(reply, Exception):
                raise reply
            return reply
        return await self._gated(lambda: self.redis.execute_command(*args))

    async def eval(
        self, script: Script, keys: Sequence[bytes], args: Sequence[Any], scripts: Sequence[Script]
    ) -> Any:
        """EVALSHA ``script``; on NOSCRIPT load ``scripts`` and try once more."""
        try:
            return await self.execute(*script_call(script, keys, args))
        except NoScriptError:
            await self.load_scripts(scripts)
            return await self.execute(*script_call(script, keys, args))

    async def load_scripts(self, scripts: Sequence[Script]) -> None:
        """SCRIPT LOAD every script (on a Cluster: on every primary)."""
        cluster = self._cluster
        if cluster is not None:
            for script in scripts:
                await self._gated(lambda s=script: cluster.script_load(s.source))  # type: ignore[misc]
            return
        await self._pipeline_once([("SCRIPT", "LOAD", script.source) for script in scripts], False)

    async def pipeline(
        self, commands: Sequence[tuple[Any, ...]], scripts: Sequence[Script], *, replicate: bool = False
    ) -> list[Any]:
        """Send ``commands`` in one pipelined round trip; return their replies in order.

        EVALSHAs that fail with NOSCRIPT (and only those: the others were applied) are sent
        again after loading ``scripts``. Any other error reply is raised after the whole
        pipeline ran. ``replicate``: wait for ``min_replicas`` replicas (see the class).
        """
        wait = replicate and self.min_replicas > 0
        results = await self._pipeline_once(commands, wait)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            await self.load_scripts(scripts)
            retried = await self._pipeline_once([commands[i] for i in missing], wait)
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _pipeline_once(self, commands: Sequence[tuple[Any, ...]], wait: bool) -> list[Any]:
        if wait:
            commands = [*commands, ("WAIT", self.min_replicas, max(1, round(self.replica_timeout * 1000)))]
        if self._cluster is not None:
            cluster = self._cluster

            async def run() -> list[Any]:
                pipe = cluster.pipeline()
                for command in commands:
                    pipe.execute_command(*command)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
                return replies

            results = await self._gated(run)
        else:
            results = await self._send(pack_commands(commands), len(commands))
        if wait:
            acked = results.pop()
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < self.min_replicas:
                raise ReplicaAckError(
                    f"only {acked} of min_replicas={self.min_replicas} replicas confirmed the write "
                    f"within {self.replica_timeout}s (a failover could lose it)"
                )
        return results

    async def _send(self, packed: bytes, count: int) -> list[Any]:
        """Write pre-packed commands and read ``count`` replies (error replies in place).

        On the multiplexed connection when there is one (no checkout: concurrent callers
        pipeline over it); else on a pooled connection, as redis-py's Pipeline does, without
        the bookkeeping we do not use. Any other failure drops the pooled connection, whose
        replies can no longer be matched to their commands.
        """
        await self._held()
        if self._multiplex:
            mux = self._mux
            if mux is None or not mux.usable:
                mux = await self._open_mux()
            answered = await mux.call(packed, count)
            if self.kind == "sentinel" and any(isinstance(reply, ReadOnlyError) for reply in answered):
                # Our master was demoted (redis-py's Sentinel connections do the same): nothing
                # was written; reconnect to the master the sentinels name now, and retry.
                self._drop_mux()
                raise RedisConnectionError("the Sentinel master was demoted to a replica (READONLY)")
            return answered
        pool = self._pool
        assert pool is not None
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    async def _open_mux(self) -> _resp.Multiplexed:
        """(Re)connect the multiplexed connection; concurrent callers share one attempt."""
        async with self._mux_lock:
            mux = self._mux
            if mux is not None and mux.usable:
                return mux
            if self._closing:
                raise RedisConnectionError("the Redis client is closed")
            pool = self._pool
            assert pool is not None
            kwargs = pool.connection_kwargs
            ssl_context = None
            if self.target.tls:
                # redis-py builds the context from the ssl_* options; reuse it, not its socket.
                ssl_context = pool.connection_class(**kwargs).ssl_context.get()  # type: ignore[attr-defined]
            name = kwargs.get("client_name") or "asyncq"
            # Bounded as a whole: asking the sentinels, connecting and the handshake.
            async with asyncio.timeout(kwargs.get("socket_connect_timeout")):
                if self.kind == "sentinel":
                    host, port = await pool.get_master_address()  # type: ignore[attr-defined]
                else:
                    host, port = kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379)
                self._mux = await _resp.open_multiplexed(
                    host,
                    int(port),
                    name=f"{name}@{host}:{port}",
                    db=int(kwargs.get("db") or 0),
                    username=kwargs.get("username"),
                    password=kwargs.get("password"),
                    client_name=name,
                    ssl_context=ssl_context,
                    keepalive=bool(kwargs.get("socket_keepalive", True)),
                    timeout=self.command_timeout,
                )
            return self._mux

    def _drop_mux(self) -> None:
        mux, self._mux = self._mux, None
        if mux is not None:
            mux.close()

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of ``keys`` in one round trip (MGET; one GET per key on a Cluster)."""
        if self._cluster is not None:
            return await self.pipeline([("GET", key) for key in keys], ())
        values: list[bytes | None] = await self.execute("MGET", *keys)
        return values

    # -- retries -------------------------------------------------------------------------------

    async def retrying(
        self, what: str, op: Callable[[], Awaitable[T]], *, timeout: float | None = None, quiet: bool = False
    ) -> T:
        """Run ``op``, retrying with backoff on connection errors for up to ``retry_timeout``.

        Each attempt may take ``socket_timeout`` seconds before its connection counts as
        dead. Only operations that are safe to repeat use this (an op that was applied but
        whose reply was lost runs again); every other error is translated and raised at once.
        A full pool is not an outage: it is raised at once too.
        """
        deadline = time.monotonic() + (self.retry_timeout if timeout is None else timeout)
        attempt = 0
        while True:
            try:
                if self._multiplex:  # the connection bounds each call's wait itself
                    return await op()
                async with asyncio.timeout(self.command_timeout):
                    return await op()
            except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
                if not is_connection_error(exc):
                    raise translate_error(exc, what, self._connection_error, self._error) from exc
                self.failed(exc)
                pause = retry_pause(attempt)
                if time.monotonic() + pause > deadline:
                    raise translate_error(exc, what, self._connection_error, self._error) from exc
                log = self._log.warning if attempt == 0 and not quiet else self._log.debug
                log("%s: Redis connection failed (%s); retrying in %.2fs", what, exc, pause)
                attempt += 1
                await asyncio.sleep(pause)

    async def once(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` once within ``socket_timeout``, translating errors (for unsafe-to-repeat ops)."""
        try:
            if self._multiplex:
                return await op()
            async with asyncio.timeout(self.command_timeout):
                return await op()
        except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
            if is_connection_error(exc):
                self.failed(exc)
            raise translate_error(exc, what, self._connection_error, self._error) from exc

    def failed(self, exc: BaseException) -> None:
        """Note a failed call: drop a hung multiplexed connection; refresh a Cluster's slot map.

        A timeout means the server did not answer in time: the shared connection may be
        half-open, and its next user should not wait the same time again. (Other failures of
        that connection have already closed it.) A Cluster refreshes once for a burst.
        """
        if isinstance(exc, TimeoutError) and self._mux is not None:
            self._drop_mux()
        if self._cluster is None:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh(), name="asyncq.redis.cluster-refresh")

    async def _refresh(self) -> None:
        assert self._cluster is not None
        try:
            async with asyncio.timeout(self.command_timeout):
                await self._cluster.nodes_manager.initialize()
        except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
            # The next failure asks again; until the Cluster settles, calls keep failing.
            logger.debug("Redis Cluster slot map refresh failed: %s", describe_error(exc))
        else:
            logger.debug("Redis Cluster slot map refreshed")

    # -- dedicated connections -------------------------------------------------------------------

    @property
    def clustered(self) -> bool:
        """Whether this Client talks to a Cluster (keys then live in many hash slots)."""
        return self._cluster is not None

    def slot_of(self, key: bytes) -> int:
        """The Cluster hash slot of ``key`` (0 outside a Cluster): one script's keys share one."""
        if self._cluster is not None:
            return self._cluster.keyslot(key)
        return 0

    def node_of(self, key: bytes) -> str:
        """The node that serves ``key`` ("" outside a Cluster): keys of one node share a connection."""
        if self._cluster is not None:
            node = self._cluster.get_node_from_key(key)  # type: ignore[arg-type]
            return node.name if node is not None else ""
        return ""

    def dedicated_connection(self, key: bytes | None = None, *, name_suffix: str = "") -> AbstractConnection:
        """A connection outside the pool, for a blocking read or a subscription.

        On a Cluster it goes to the primary serving ``key`` (any primary if None). Under
        Sentinel it asks the sentinels for the master each time it (re)connects.
        """
        cluster = self._cluster
        if cluster is not None:
            node = cluster.get_node_from_key(key) if key is not None else cluster.get_random_primary_node()  # type: ignore[arg-type]
            if node is None:
                raise SlotNotCoveredError(f"no Redis Cluster node serves {key!r}")
            kwargs = dict(node.connection_kwargs)
            kwargs["retry"] = no_retry()
            connection_class: type[AbstractConnection] = node.connection_class
        else:
            assert self._pool is not None
            kwargs = dict(self._pool.connection_kwargs)
            connection_class = self._pool.connection_class
        if name_suffix:
            kwargs["client_name"] = f"{kwargs.get('client_name') or 'asyncq'}{name_suffix}"
        return connection_class(**kwargs)

    def switched(self) -> asyncio.Future[None] | None:
        """Under Sentinel, a future done at the next master switch (None elsewhere).

        A blocking reader waits for it alongside its read and treats it like a dropped
        connection; the future is shared (``asyncio.wait`` never cancels it).
        """
        return None if self._sentinel is None else self._sentinel.switch
