"""The Redis limit store: keys under the driver's prefix, one Lua script per call, one Cluster slot.

Keys (``P`` is the broker's, or the backend's, key prefix; the ``{P:flow}`` hash tag keeps
them in one slot, so one script may touch several)::

    P:{P:flow}:rate:<key>   string  GCRA theoretical arrival time (epoch seconds, server clock)
    P:{P:flow}:slots:<key>  zset    holder -> lease expiry (epoch seconds, server clock)

Both expire on their own once unused, so nothing needs cleaning up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from asyncq._redis import load_lua

if TYPE_CHECKING:
    from asyncq._redis import Client

__all__ = ["RedisLimitStore"]

_RESERVE = load_lua("asyncq.flow", "lua", "reserve")
_ACQUIRE = load_lua("asyncq.flow", "lua", "acquire")
_RENEW = load_lua("asyncq.flow", "lua", "renew")
_COUNT = load_lua("asyncq.flow", "lua", "count")
_SCRIPTS = (_RESERVE, _ACQUIRE, _RENEW, _COUNT)


class RedisLimitStore:
    """Limit store over a Redis broker's (or backend's) connection."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        prefix = str(driver._prefix)
        self._base = f"{prefix}:{{{prefix}:flow}}:"

    def _client(self) -> Client:
        client: Client = self._driver._redis.client()
        return client

    def _rate_key(self, key: str) -> bytes:
        return (self._base + "rate:" + key).encode()

    def _slots_key(self, key: str) -> bytes:
        return (self._base + "slots:" + key).encode()

    async def connect(self) -> None:
        await self._driver.connect()

    async def aclose(self) -> None:
        """Nothing of its own to release: the connection is the driver's."""

    async def reserve(self, key: str, interval: float, count: int, burst: int) -> list[float]:
        client = self._client()
        keys, args = [self._rate_key(key)], [repr(interval), count, burst]
        # Sent once: a booking repeated after a lost reply would only cost a start, but it is not needed.
        reply = await client.once("rate limit", lambda: client.eval(_RESERVE, keys, args, _SCRIPTS))
        return [float(wait) for wait in reply]

    async def acquire(self, key: str, limit: int, holders: Sequence[str], lease: float) -> list[str]:
        client = self._client()
        keys, args = [self._slots_key(key)], [limit, repr(lease), *holders]
        # Safe to repeat: a holder that got its slot keeps it.
        reply = await client.retrying("concurrency key", lambda: client.eval(_ACQUIRE, keys, args, _SCRIPTS))
        return [bytes(holder).decode() for holder in reply]

    async def release(self, key: str, holders: Sequence[str]) -> None:
        if not holders:
            return
        client = self._client()
        command = ("ZREM", self._slots_key(key), *holders)
        await client.retrying("concurrency key", lambda: client.execute(*command))

    async def renew(self, held: Mapping[str, Sequence[str]], lease: float) -> None:
        held = {key: holders for key, holders in held.items() if holders}
        if not held:
            return
        client = self._client()
        keys = [self._slots_key(key) for key in held]
        args: list[Any] = [repr(lease)]
        for holders in held.values():
            args += [len(holders), *holders]
        await client.retrying("concurrency lease", lambda: client.eval(_RENEW, keys, args, _SCRIPTS))

    async def count(self, key: str) -> int:
        client = self._client()
        keys = [self._slots_key(key)]
        return int(await client.retrying("concurrency key", lambda: client.eval(_COUNT, keys, [], _SCRIPTS)))
