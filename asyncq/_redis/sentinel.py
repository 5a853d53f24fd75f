"""Sentinel: the master's pool, and a watcher that follows our master's failovers.

From ``+try-failover`` (Sentinel starts failing our master over; it promotes a replica a few
timer ticks later) until ``+switch-master`` (or an abort), commands wait instead of going to
the old master, where writes made after the promotion would be lost when it is turned into a
replica. ``+switch-master`` re-establishes every connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from asyncq._redis.errors import retry_pause
from asyncq._redis.options import Target
from asyncq._redis.pools import BlockingSentinelPool, no_retry
from asyncq.exceptions import ConfigurationError

__all__ = ["SentinelWatcher"]

logger = logging.getLogger("asyncq._redis")

#: Seconds of silence on the Sentinel subscription before a PING checks it is alive.
_SENTINEL_PING_INTERVAL: Final = 5.0
#: Longest commands are held back while Sentinel fails our master over (it normally takes a
#: second or two; an abort or +switch-master ends the hold sooner).
_FAILOVER_HOLD: Final = 30.0
#: Sentinel events that start or end a failover (``+switch-master`` is handled apart).
_FAILOVER_STARTS: Final = frozenset({b"+try-failover"})
_FAILOVER_ENDS: Final = frozenset(
    {
        b"-failover-abort-not-elected",
        b"-failover-abort-no-good-slave",
        b"-failover-abort-slave-timeout",
        b"+failover-end-for-timeout",
    }
)


class SentinelWatcher:
    """The sentinels of one master: its pool, the hold during a failover, the switch future.

    ``hold`` is a future while a failover runs (commands wait for it); ``switch`` is done at
    the next master switch (blocking readers wait on it alongside their reads).
    """

    def __init__(
        self,
        target: Target,
        kwargs: dict[str, Any],
        common: Mapping[str, Any],
        auth: Mapping[str, Any],
        *,
        max_connections: int,
        pool_timeout: float,
    ) -> None:
        if any(name.startswith("ssl_") for name in kwargs):
            raise ConfigurationError("ssl_* options are not supported with redis+sentinel:// yet")
        self.target = target
        # No socket_timeout here either (see Client): every wait on a sentinel happens
        # within one of ours (a command's, a connect's, the watcher's).
        self.sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": None,
            "socket_connect_timeout": kwargs.get("socket_connect_timeout"),
            "client_name": f"{kwargs['client_name']}:sentinel",
            "retry": no_retry(),
            "protocol": 2,
            **{name: value for name, value in auth.items() if value is not None},
        }
        self.sentinel = Sentinel(list(target.nodes), sentinel_kwargs=self.sentinel_kwargs)  # type: ignore[no-untyped-call, unused-ignore]
        kwargs.setdefault("username", target.username)
        kwargs.setdefault("password", target.password)
        kwargs.setdefault("db", target.db)
        self.pool = BlockingSentinelPool(  # type: ignore[no-untyped-call]
            target.service,
            self.sentinel,
            max_connections=max_connections,
            timeout=pool_timeout,
            retry=no_retry(),
            **common,
            **kwargs,
        )
        self.hold: asyncio.Future[None] | None = None
        self.switch: asyncio.Future[None] | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._timeout: float | None = None
        self._on_switch: Callable[[], None] = lambda: None
        self._closing = False

    def start(self, command_timeout: float | None, on_switch: Callable[[], None]) -> None:
        """Follow the sentinels; ``on_switch`` drops what is connected to the old master."""
        self._timeout = command_timeout
        self._on_switch = on_switch
        self.switch = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._watch(), name="asyncq.redis.sentinel-watch")

    async def stop(self) -> None:
        """Stop watching; release held commands and blocking readers."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.switch is not None and not self.switch.done():
            self.switch.set_result(None)  # blocking readers stop waiting on the switch
        self._release_hold()

    async def _watch(self) -> None:
        """Follow one sentinel after another: hold commands during a failover, switch after it."""
        nodes = self.target.nodes
        failures = 0
        index = 0
        logger.debug("Sentinel watcher of %r started", self.target.service)
        try:
            # The flag as well as the cancellation: a cancellation can be lost in redis-py.
            while not self._closing:
                host, port = nodes[index % len(nodes)]
                conn = Connection(host=host, port=port, **self.sentinel_kwargs)
                try:
                    async with asyncio.timeout(self._timeout):
                        await conn.connect()  # type: ignore[no-untyped-call]
                        channels = [b"+switch-master", *_FAILOVER_STARTS, *_FAILOVER_ENDS]
                        await conn.send_command("SUBSCRIBE", *channels)
                        for _ in channels:
                            await conn.read_response()
                        # A switch while nobody listened is only visible in the sentinels' answer.
                        await self._check_master()
                    failures = 0
                    await self._follow(conn)
                except (TimeoutError, RedisError, OSError) as exc:
                    pause = retry_pause(failures)
                    log = logger.warning if failures == 0 else logger.debug
                    log("Sentinel %s:%s: %s; trying the next in %.2fs", host, port, exc, pause)
                    failures += 1
                    index += 1
                    await asyncio.sleep(pause)
                finally:
                    await conn.disconnect(nowait=True)
        finally:
            logger.debug("Sentinel watcher of %r stopped", self.target.service)

    async def _follow(self, conn: AbstractConnection) -> None:
        awaiting_pong = False
        service = self.target.service.encode()
        while not self._closing:
            reply = await conn.read_response(timeout=_SENTINEL_PING_INTERVAL)
            if reply is None:
                if awaiting_pong:
                    raise TimeoutError(f"no reply to PING within {_SENTINEL_PING_INTERVAL}s")
                awaiting_pong = True
                await conn.send_command("PING")
                continue
            awaiting_pong = False
            if not isinstance(reply, list) or reply[0] != b"message":
                continue
            channel, fields = reply[1], reply[2].split()
            if channel == b"+switch-master":
                # Payload: "<name> <old ip> <old port> <new ip> <new port>".
                if fields and fields[0] == service:
                    await self._master_switched(f"{fields[1].decode()}:{fields[2].decode()}", fields[3:5])
            elif fields[:2] == [b"master", service]:  # "master <name> <ip> <port> ..."
                if channel in _FAILOVER_STARTS:
                    self._hold_commands()
                elif channel in _FAILOVER_ENDS:
                    logger.warning(
                        "Sentinel: failover of %r ended (%s)", self.target.service, channel.decode()
                    )
                    self._release_hold()

    def _hold_commands(self) -> None:
        if self.hold is None:
            logger.warning(
                "Sentinel: failing over %r; holding commands until it is done", self.target.service
            )
            loop = asyncio.get_running_loop()
            self.hold = loop.create_future()
            self._hold_timer = loop.call_later(_FAILOVER_HOLD, self._release_hold)

    def _release_hold(self) -> None:
        hold, self.hold = self.hold, None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if hold is not None and not hold.done():
            hold.set_result(None)

    async def _check_master(self) -> None:
        known = getattr(self.pool, "master_address", None)
        current = await self.sentinel.discover_master(self.target.service)
        if known is not None and tuple(known) != tuple(current):
            await self._master_switched(f"{known[0]}:{known[1]}", [str(v).encode() for v in current])

    async def _master_switched(self, old: str, new: Sequence[bytes]) -> None:
        pool = self.pool
        logger.warning(
            "Sentinel: master %r moved from %s to %s; reconnecting",
            self.target.service,
            old,
            ":".join(part.decode() for part in new),
        )
        # Connections in use finish their command and are re-established when returned;
        # idle ones now. New connections ask the sentinels, which already name the new master.
        await pool.update_active_connections_for_reconnect()  # type: ignore[no-untyped-call]
        await pool.disconnect(inuse_connections=False)
        self._on_switch()  # what is in flight on the old master fails, and is retried
        switch, self.switch = self.switch, asyncio.get_running_loop().create_future()
        if switch is not None and not switch.done():
            switch.set_result(None)
        self._release_hold()
