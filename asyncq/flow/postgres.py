"""The postgresql:// limit store: two tables in the broker's (or backend's) schema, its pool.

Tables (``P`` is the driver's ``table_prefix``), created on first use (versioned as the
``flow`` component, see :class:`asyncq._postgres.Database`)::

    P flow_rates   key -> tat          GCRA theoretical arrival time (server clock)
    P flow_slots   (key, holder) -> expires

A booking is one statement; taking slots is one transaction serialised per key by an
advisory lock, so two workers never both see the last free slot. Times are the server's
(``clock_timestamp()``), so workers whose clocks differ still agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

from asyncq._postgres import Step

__all__ = ["PostgresLimitStore"]

#: Step n takes the flow tables to schema version n; released steps never change.
MIGRATIONS: Final[tuple[Step, ...]] = (
    """
    CREATE TABLE {flow_rates} (
        key text PRIMARY KEY,
        tat double precision NOT NULL
    );
    CREATE TABLE {flow_slots} (
        key text NOT NULL,
        holder text NOT NULL,
        expires double precision NOT NULL,
        PRIMARY KEY (key, holder)
    );
    """,
)

_CLOCK: Final = "extract(epoch FROM clock_timestamp())::double precision"


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


class PostgresLimitStore:
    """Limit store in tables of a ``postgresql://`` broker's (or backend's) schema."""

    def __init__(self, driver: Any) -> None:
        self._db = db = driver.database if hasattr(driver, "database") else driver._db
        rates, slots = db.names.table("flow_rates"), db.names.table("flow_slots")
        # Booking n starts with burst 1: the first at max(tat, now), the others one interval apart.
        span = "$2::double precision * $3::integer"  # n intervals
        self._reserve = f"""
            WITH clock AS (SELECT {_CLOCK} AS now)
            INSERT INTO {rates} AS r (key, tat) SELECT $1, clock.now + {span} FROM clock
            ON CONFLICT (key) DO UPDATE SET tat = GREATEST(r.tat, (SELECT now FROM clock)) + {span}
            RETURNING r.tat - {span} - (SELECT now FROM clock)
        """  # noqa: S608 - quoted identifiers only
        self._lock = "SELECT pg_advisory_xact_lock($1)"
        self._expire = f"DELETE FROM {slots} WHERE key = $1 AND expires <= {_CLOCK}"  # noqa: S608
        self._holders = f"SELECT holder FROM {slots} WHERE key = $1"  # noqa: S608
        self._take = f"""
            INSERT INTO {slots} (key, holder, expires)
            SELECT $1, unnest($2::text[]), {_CLOCK} + $3::double precision
            ON CONFLICT (key, holder) DO UPDATE SET expires = excluded.expires
        """
        self._release = f"DELETE FROM {slots} WHERE key = $1 AND holder = ANY($2::text[])"  # noqa: S608
        # Only slots still held: an expired one may have gone to someone else.
        self._renew = f"""
            UPDATE {slots} SET expires = {_CLOCK} + $3::double precision
            FROM unnest($1::text[], $2::text[]) AS held (key, holder)
            WHERE {slots}.key = held.key AND {slots}.holder = held.holder AND expires > {_CLOCK}
        """  # noqa: S608
        self._count = f"SELECT count(*) FROM {slots} WHERE key = $1 AND expires > {_CLOCK}"  # noqa: S608

    async def connect(self) -> None:
        await self._db.migrate("flow", MIGRATIONS)

    async def aclose(self) -> None:
        """Nothing of its own to release: the pool is the driver's."""

    async def reserve(self, key: str, interval: float, count: int, burst: int) -> list[float]:
        if burst != 1:
            raise ValueError("the postgresql:// limit store books starts with burst 1 only")

        async def book(conn: Any) -> float:
            return float(await conn.fetchval(self._reserve, key, float(interval), count))

        # Safe to repeat: a booking repeated after a lost reply only costs a start.
        first = max(0.0, await self._db.run("rate limit", book))
        return [first + i * interval for i in range(count)]

    async def acquire(self, key: str, limit: int, holders: Sequence[str], lease: float) -> list[str]:
        async def take(conn: Any) -> list[str]:
            async with conn.transaction():
                await conn.execute(self._lock, _lock_id(key))
                await conn.execute(self._expire, key)
                held = {str(row[0]) for row in await conn.fetch(self._holders, key)}
                given = []
                for holder in holders:
                    if holder in held or len(held) < limit:
                        held.add(holder)
                        given.append(holder)
                if given:
                    await conn.execute(self._take, key, given, float(lease))
                return given

        return await self._db.run("concurrency key", take)  # type: ignore[no-any-return]

    async def release(self, key: str, holders: Sequence[str]) -> None:
        if holders:
            await self._db.run(
                "concurrency key", lambda conn: conn.execute(self._release, key, list(holders))
            )

    async def renew(self, held: Mapping[str, Sequence[str]], lease: float) -> None:
        pairs = [(key, holder) for key, holders in held.items() for holder in holders]
        if not pairs:
            return
        keys, holders = [k for k, _ in pairs], [h for _, h in pairs]
        await self._db.run(
            "concurrency lease", lambda conn: conn.execute(self._renew, keys, holders, float(lease))
        )

    async def count(self, key: str) -> int:
        return int(await self._db.run("concurrency key", lambda conn: conn.fetchval(self._count, key)))
