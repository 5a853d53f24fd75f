"""Fair queuing in the SQLite broker: a virtual-time rank per message, ordered at claim.

Start-time fair queuing, per queue. The queue has a virtual clock ``V`` (the highest rank
claimed so far) and each fair key ``k`` the finish tag ``F_k`` of its last message. A message
of key ``k`` with weight ``w`` is published with rank ``S = max(F_k, V)`` and moves ``F_k`` to
``S + 1/w``; claims take the lowest rank first (within a priority). So a key flooding the
queue has ranks far in the future while a newcomer's first message ranks at ``V``, right
after what was claimed last: every active key gets its turn, ``w`` messages per unit of
virtual time.

Plain messages have rank 0: they come before the fair ones of their priority.

Tables (beside ``asyncq_messages`` and its ``rank`` column)::

    asyncq_fair_keys   (queue, key) -> finish   F_k; a row whose finish <= V is dropped
    asyncq_fair_clock  queue -> vtime           V
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = ["FAIR_SCHEMA", "active_keys", "advance", "migrate", "rank"]

FAIR_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS asyncq_fair_keys (
    queue TEXT NOT NULL,
    key TEXT NOT NULL,
    finish REAL NOT NULL,
    PRIMARY KEY (queue, key)
);
CREATE TABLE IF NOT EXISTS asyncq_fair_clock (
    queue TEXT PRIMARY KEY,
    vtime REAL NOT NULL
);
"""


def migrate(conn: sqlite3.Connection) -> None:
    """Give a file made by an older version the ``rank`` column and its claim-order index."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(asyncq_messages)")}
    if "rank" not in columns:
        conn.execute("ALTER TABLE asyncq_messages ADD COLUMN rank REAL NOT NULL DEFAULT 0")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS asyncq_messages_rank ON asyncq_messages (queue, priority DESC, rank, seq)"
    )
    conn.execute("DROP INDEX IF EXISTS asyncq_messages_order")  # replaced by asyncq_messages_rank


def rank(conn: sqlite3.Connection, fair: Iterable[tuple[int, str, str, int]]) -> dict[int, float]:
    """The ranks of fair rows ``(index, queue, key, weight)``, in publish order; F_k updated."""
    clocks: dict[str, float] = {}
    finishes: dict[tuple[str, str], float] = {}
    ranks: dict[int, float] = {}
    for index, queue, key, weight in fair:
        vtime = clocks.get(queue)
        if vtime is None:
            row = conn.execute("SELECT vtime FROM asyncq_fair_clock WHERE queue = ?", (queue,)).fetchone()
            vtime = clocks[queue] = 0.0 if row is None else float(row[0])
        finish = finishes.get((queue, key))
        if finish is None:
            row = conn.execute(
                "SELECT finish FROM asyncq_fair_keys WHERE queue = ? AND key = ?", (queue, key)
            ).fetchone()
            finish = 0.0 if row is None else float(row[0])
        start = max(finish, vtime)
        ranks[index] = start
        finishes[(queue, key)] = start + 1.0 / weight
    conn.executemany(
        "INSERT INTO asyncq_fair_keys (queue, key, finish) VALUES (?, ?, ?)"
        " ON CONFLICT (queue, key) DO UPDATE SET finish = excluded.finish",
        [(queue, key, finish) for (queue, key), finish in finishes.items()],
    )
    return ranks


def advance(conn: sqlite3.Connection, claimed: Sequence[tuple[str, float]]) -> None:
    """Move each queue's clock to the highest rank claimed from it; forget keys left behind."""
    highest: dict[str, float] = {}
    for queue, value in claimed:
        if value > highest.get(queue, 0.0):
            highest[queue] = value
    for queue, value in highest.items():
        conn.execute(
            "INSERT INTO asyncq_fair_clock (queue, vtime) VALUES (?, ?)"
            " ON CONFLICT (queue) DO UPDATE SET vtime = max(vtime, excluded.vtime)",
            (queue, value),
        )
        # A key whose finish tag the clock passed would start at V anyway: its row says nothing.
        conn.execute("DELETE FROM asyncq_fair_keys WHERE queue = ? AND finish <= ?", (queue, value))


def active_keys(conn: sqlite3.Connection, queue: str) -> int:
    """Fair keys of ``queue`` with messages ranked ahead of the clock (those still waiting their turn)."""
    row = conn.execute(
        "SELECT COUNT(*) FROM asyncq_fair_keys WHERE queue = ? AND finish >"
        " COALESCE((SELECT vtime FROM asyncq_fair_clock WHERE queue = ?), 0)",
        (queue, queue),
    ).fetchone()
    return int(row[0])
