"""The Redis lock store: one string per lock under the broker's key prefix, with PEXPIRE.

Key: ``P:unique:<key>`` (``P`` is the broker's ``key_prefix``) -> the holder's task id.
Expiry is Redis's own, on its clock; a lock needs no cleaning up.
"""

from __future__ import annotations

from typing import Any, Final

from asyncq._redis import Script

__all__ = ["RedisLockStore"]

# Take the lock if free; either way answer who holds it (so a repeated call is harmless).
_ACQUIRE: Final = Script.build(
    "unique_acquire",
    "local held = redis.call('GET', KEYS[1])\n"
    "if held then return held end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "return ARGV[1]\n",
)
# Delete only our own lock: an expired one may belong to the next copy already.
_RELEASE: Final = Script.build(
    "unique_release",
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\nreturn 0\n",
)
_SCRIPTS: Final = (_ACQUIRE, _RELEASE)


class RedisLockStore:
    """Locks over a Redis broker's connection."""

    def __init__(self, broker: Any) -> None:
        self._holder = broker._redis
        self._base = f"{broker._prefix}:unique:"

    def _key(self, key: str) -> bytes:
        return (self._base + key).encode()

    async def _eval(self, what: str, script: Script, key: str, *args: Any) -> Any:
        await self._holder.ensure()
        keys = [self._key(key)]
        return await self._holder.retrying(
            what, lambda client: client.eval(script, keys, list(args), _SCRIPTS)
        )

    async def acquire(self, key: str, holder: str, ttl: float) -> str:
        held = await self._eval("unique lock", _ACQUIRE, key, holder, max(1, round(ttl * 1000)))
        return bytes(held).decode()

    async def release(self, key: str, holder: str) -> bool:
        return bool(await self._eval("unique unlock", _RELEASE, key, holder))

    async def holder(self, key: str) -> str | None:
        await self._holder.ensure()
        name = self._key(key)
        held = await self._holder.retrying("unique lock", lambda client: client.execute("GET", name))
        return None if held is None else bytes(held).decode()
