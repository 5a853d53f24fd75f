"""Fair queuing in the PostgreSQL broker: a virtual-time rank per message, ordered at claim.

The same start-time fair queuing as the SQLite broker (asyncq/brokers/_sqlite_fair.py): the
queue has a virtual clock ``V`` (the highest rank claimed so far) and each fair key ``k`` the
finish tag ``F_k`` of its last message. A message of key ``k`` with weight ``w`` is published
with rank ``S = max(F_k, V)`` and moves ``F_k`` to ``S + 1/w``; the claim takes the lowest rank
first within a priority. Plain messages have rank 0 and take the plain path: one statement,
no fair table touched.

Tables (beside the jobs table and its ``rank`` column, made by the broker's migration 2)::

    P fair_keys   (queue, key) -> finish   F_k; a row whose finish <= V is dropped
    P fair_clock  queue -> vtime           V

Publishers of one queue rank under a transaction-scoped advisory lock, so two never hand out
the same start; claims move the clock in one statement after they took fair rows. A race
between the two only shifts a turn, never loses or repeats a message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from asyncq._postgres import Names

__all__ = ["FairStatements", "assign_ranks"]

#: ``(index in the batch, queue, fair key, weight)`` of one fair message.
FairRow = tuple[int, str, str, int]


def assign_ranks(
    fair: Sequence[FairRow], clocks: Mapping[str, float], finishes: Mapping[tuple[str, str], float]
) -> tuple[dict[int, float], dict[tuple[str, str], float]]:
    """The ranks of ``fair`` rows in publish order, and the keys' finish tags after them."""
    moved: dict[tuple[str, str], float] = {}
    ranks: dict[int, float] = {}
    for index, queue, key, weight in fair:
        finish = moved.get((queue, key), finishes.get((queue, key), 0.0))
        start = max(finish, clocks.get(queue, 0.0))
        ranks[index] = start
        moved[(queue, key)] = start + 1.0 / weight
    return ranks, moved


def _lock_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class FairStatements:
    """The fair tables' statements for one schema and prefix, and the two steps that use them."""

    def __init__(self, names: Names) -> None:
        keys, clock = names.table("fair_keys"), names.table("fair_clock")
        self._lock_base = f"fair {keys} "
        self._clocks = f"SELECT queue, vtime FROM {clock} WHERE queue = ANY($1::text[])"  # noqa: S608
        self._finishes = f"""
            SELECT f.queue, f.key, f.finish FROM {keys} f
            JOIN unnest($1::text[], $2::text[]) AS t(q, k) ON f.queue = t.q AND f.key = t.k
        """  # noqa: S608 - quoted identifiers only
        self._store = f"""
            INSERT INTO {keys} (queue, key, finish)
            SELECT * FROM unnest($1::text[], $2::text[], $3::float8[])
            ON CONFLICT (queue, key) DO UPDATE SET finish = excluded.finish
        """  # noqa: S608
        # The clock row's lock orders concurrent claims of a queue; publishers never take it. Key
        # rows a publisher is writing are skipped, not waited for (that could deadlock with its
        # upsert of several keys): the next claim drops them if they are still behind.
        self._advance = f"""
            WITH moved AS (
                INSERT INTO {clock} AS c (queue, vtime)
                SELECT * FROM unnest($1::text[], $2::float8[])
                ON CONFLICT (queue) DO UPDATE SET vtime = GREATEST(c.vtime, excluded.vtime)
                RETURNING queue, vtime
            ), passed AS (
                SELECT f.queue, f.key FROM {keys} f JOIN moved ON f.queue = moved.queue
                WHERE f.finish <= moved.vtime
                FOR UPDATE OF f SKIP LOCKED
            )
            DELETE FROM {keys} f USING passed WHERE f.queue = passed.queue AND f.key = passed.key
        """  # noqa: S608
        self.active_keys = f"""
            SELECT count(*) FROM {keys} WHERE queue = $1
            AND finish > COALESCE((SELECT vtime FROM {clock} WHERE queue = $1), 0)
        """  # noqa: S608

    async def insert(
        self,
        conn: Any,
        insert_ranked: str,
        args: Sequence[Any],
        fair: Sequence[FairRow],
        timeout: float | None,
    ) -> None:
        """Rank the fair rows and insert the batch, in one transaction.

        ``args`` are those of the broker's ``insert_ranked`` statement but the ranks, its last.
        """
        queues = sorted({queue for _, queue, _, _ in fair})
        async with conn.transaction():
            for queue in queues:  # in one order: two publishers of the same queues never deadlock
                lock = _lock_id(self._lock_base + queue)
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock, timeout=timeout)
            rows = await conn.fetch(self._clocks, queues, timeout=timeout)
            clocks = {row[0]: float(row[1]) for row in rows}
            pairs = sorted({(queue, key) for _, queue, key, _ in fair})
            found = await conn.fetch(
                self._finishes, [q for q, _ in pairs], [k for _, k in pairs], timeout=timeout
            )
            ranks, finishes = assign_ranks(fair, clocks, {(r[0], r[1]): float(r[2]) for r in found})
            stored = sorted(finishes.items())
            await conn.execute(
                self._store,
                [q for (q, _), _ in stored],
                [k for (_, k), _ in stored],
                [f for _, f in stored],
                timeout=timeout,
            )
            rank_list = [ranks.get(i, 0.0) for i in range(len(args[0]))]
            await conn.fetchval(insert_ranked, *args, rank_list, timeout=timeout)

    async def advance(self, conn: Any, claimed: Sequence[tuple[str, float]]) -> None:
        """Move each queue's clock to the highest rank claimed from it; forget keys left behind."""
        highest: dict[str, float] = {}
        for queue, value in claimed:
            if value > highest.get(queue, 0.0):
                highest[queue] = value
        queues = sorted(highest)  # clock rows locked in one order by every claimer
        await conn.execute(self._advance, queues, [highest[q] for q in queues])
