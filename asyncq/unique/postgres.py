"""The postgresql:// lock store: one table in the broker's schema, through the broker's pool.

Table (``P`` is the broker's ``table_prefix``; made by the broker's migration 2)::

    P unique_locks   key -> (holder, expires)

Expiry is on the server's clock, so producers and workers with skewed clocks agree. An expired
row stays until the next acquire of its key takes it over (or the broker's vacuum deletes it).
"""

from __future__ import annotations

from typing import Any, Final

from asyncq._postgres import NOW
from asyncq.exceptions import BrokerError

__all__ = ["PostgresLockStore"]

#: Rounds of acquire's take-then-read: a round fails only if the lock was freed between the two.
_ATTEMPTS: Final = 5


class PostgresLockStore:
    """Locks in a ``postgresql://`` broker's schema."""

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        locks = broker.database.names.table("unique_locks")
        # An expired lock is free: the upsert takes it over; a live one is left as it is.
        self._take = f"""
            INSERT INTO {locks} AS l (key, holder, expires) VALUES ($1, $2, {NOW} + $3::float8)
            ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
            WHERE l.expires <= {NOW}
            RETURNING holder
        """  # noqa: S608 - quoted identifiers only
        self._holder = f"SELECT holder FROM {locks} WHERE key = $1 AND expires > {NOW}"  # noqa: S608
        # Compare-and-delete: an expired lock may belong to the next copy already.
        self._release = f"DELETE FROM {locks} WHERE key = $1 AND holder = $2"  # noqa: S608

    async def _run(self, what: str, op: Any) -> Any:
        await self._broker.connect()
        return await self._broker.database.run(what, op)

    async def acquire(self, key: str, holder: str, ttl: float) -> str:
        async def take(conn: Any) -> str | None:
            taken = await conn.fetchval(self._take, key, holder, float(ttl))
            if taken is not None:
                return str(taken)
            # Held (the upsert left it): a new statement, so it sees the holder's commit.
            held = await conn.fetchval(self._holder, key)
            return None if held is None else str(held)

        for _ in range(_ATTEMPTS):
            # Safe to repeat: a holder asking again is told it holds the lock.
            held = await self._run("unique lock", take)
            if held is not None:
                return str(held)
        raise BrokerError(f"unique lock {key!r}: freed and taken again {_ATTEMPTS} times in a row; try again")

    async def release(self, key: str, holder: str) -> bool:
        status = await self._run("unique unlock", lambda c: c.execute(self._release, key, holder))
        return str(status).endswith(" 1")

    async def holder(self, key: str) -> str | None:
        held = await self._run("unique lock", lambda c: c.fetchval(self._holder, key))
        return None if held is None else str(held)
