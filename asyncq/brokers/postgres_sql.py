"""The SQL of the postgresql:// broker: its versioned schema and every statement it runs.

Placeholders: ``{jobs}`` is a quoted, schema-qualified table of the broker's schema and
prefix, ``{ix:name}`` an index name (see asyncq._postgres.Names).
"""

from __future__ import annotations

import hashlib
from typing import Final

from asyncq._postgres import NOW, Names, Step

__all__ = ["MIGRATIONS", "Statements"]

#: Step n takes the broker's tables to schema version n; released steps never change.
MIGRATIONS: Final[tuple[Step, ...]] = (
    """
    CREATE TABLE {jobs} (
        seq bigserial PRIMARY KEY,              -- publish order
        id text NOT NULL,
        queue text NOT NULL,
        body bytea NOT NULL,
        priority smallint NOT NULL DEFAULT 0,
        available_at double precision NOT NULL, -- epoch seconds: eta, or when a nack's delay ends
        owner text,                             -- the claiming broker instance; NULL: waiting
        locked_until double precision,          -- the claim's lease, renewed by a live owner
        deliveries integer NOT NULL DEFAULT 0
    );
    -- The claim reads the head of a queue in delivery order, waiting rows only.
    CREATE INDEX {ix:jobs_ready} ON {jobs} (queue, priority DESC, seq) WHERE owner IS NULL;
    -- When the next delayed row of a queue is due, for an idle consumer's sleep.
    CREATE INDEX {ix:jobs_due} ON {jobs} (queue, available_at) WHERE owner IS NULL;
    -- Lease renewal by owner, and the release of lapsed leases.
    CREATE INDEX {ix:jobs_owner} ON {jobs} (owner) WHERE owner IS NOT NULL;
    CREATE INDEX {ix:jobs_lapsed} ON {jobs} (locked_until) WHERE owner IS NOT NULL;
    -- Every job is inserted, updated once per claim and deleted: vacuum after a fixed number of
    -- dead rows (not a fraction of a table that is small when drained), without throttling.
    ALTER TABLE {jobs} SET (
        autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
        autovacuum_vacuum_cost_delay = 0
    );
    CREATE TABLE {dead_letters} (
        seq bigserial PRIMARY KEY,
        id text NOT NULL,
        queue text NOT NULL,
        body bytea NOT NULL,
        reason text NOT NULL,
        dead_lettered_at double precision NOT NULL
    );
    CREATE INDEX {ix:dead_letters_queue} ON {dead_letters} (queue, seq);
    CREATE INDEX {ix:dead_letters_id} ON {dead_letters} (queue, id, seq);
    """,
    # Fair queuing (asyncq/brokers/_postgres_fair.py) and unique-task locks (asyncq/unique/postgres.py).
    """
    -- A fair message's virtual start time; 0 for plain ones, so they keep publish order.
    ALTER TABLE {jobs} ADD COLUMN rank double precision NOT NULL DEFAULT 0;
    CREATE INDEX {ix:jobs_ranked} ON {jobs} (queue, priority DESC, rank, seq) WHERE owner IS NULL;
    DROP INDEX {qix:jobs_ready};  -- replaced by jobs_ranked, the claim's new order
    CREATE TABLE {fair_keys} (
        queue text NOT NULL,
        key text NOT NULL,
        finish double precision NOT NULL,       -- the key's finish tag F_k
        PRIMARY KEY (queue, key)
    );
    CREATE TABLE {fair_clock} (
        queue text PRIMARY KEY,
        vtime double precision NOT NULL         -- the queue's virtual clock V
    );
    CREATE TABLE {unique_locks} (
        key text PRIMARY KEY,
        holder text NOT NULL,
        expires double precision NOT NULL       -- epoch seconds, the server's clock
    );
    """,
)

# A lease is (seq, owner, deliveries): a settle after the lease lapsed and the row was claimed
# again, even by this same instance, matches nothing instead of settling the new claim.
_LEASE = "seq = $1 AND owner = $2 AND deliveries = $3"


class Statements:
    """The broker's statements, rendered once for its schema and prefix."""

    def __init__(self, names: Names) -> None:
        jobs, dead = names.table("jobs"), names.table("dead_letters")
        # Rows come in arrays (one round trip for any batch); the notification goes out at
        # commit, so a transactional enqueue that rolls back wakes nobody.
        self.insert = f"""
            WITH ins AS (
                INSERT INTO {jobs} (id, queue, body, priority, available_at)
                SELECT i, q, b, p, COALESCE(e, {NOW})
                FROM unnest($1::text[], $2::text[], $3::bytea[], $4::smallint[], $5::float8[])
                    WITH ORDINALITY AS t(i, q, b, p, e, n)
                ORDER BY n
                RETURNING queue
            )
            SELECT count(pg_notify($6, queue)) FROM (SELECT DISTINCT queue FROM ins) s
        """  # noqa: S608 - quoted identifiers only
        self.insert_ranked = f"""
            WITH ins AS (
                INSERT INTO {jobs} (id, queue, body, priority, available_at, rank)
                SELECT i, q, b, p, COALESCE(e, {NOW}), r
                FROM unnest(
                    $1::text[], $2::text[], $3::bytea[], $4::smallint[], $5::float8[], $7::float8[]
                ) WITH ORDINALITY AS t(i, q, b, p, e, r, n)
                ORDER BY n
                RETURNING queue
            )
            SELECT count(pg_notify($6, queue)) FROM (SELECT DISTINCT queue FROM ins) s
        """  # noqa: S608
        # Plain rows have rank 0: the same index order as before fair queuing, for them.
        self.claim = f"""
            WITH picked AS (
                SELECT seq FROM {jobs}
                WHERE queue = ANY($1::text[]) AND owner IS NULL AND available_at <= {NOW}
                ORDER BY priority DESC, rank, seq
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            )
            UPDATE {jobs} j
            SET owner = $3, locked_until = {NOW} + $4, deliveries = j.deliveries + 1
            FROM picked WHERE j.seq = picked.seq
            RETURNING j.seq, j.id, j.queue, j.body, j.priority, j.deliveries, j.rank
        """  # noqa: S608
        self.next_due = f"""
            SELECT min(available_at) - {NOW} FROM {jobs}
            WHERE queue = ANY($1::text[]) AND owner IS NULL
        """  # noqa: S608
        # Claimed but never handed to the caller: not a delivery, so the count goes back too.
        self.release = f"""
            WITH back AS (
                UPDATE {jobs} SET owner = NULL, locked_until = NULL, deliveries = deliveries - 1
                WHERE seq = ANY($1::bigint[]) AND owner = $2
                RETURNING queue
            )
            SELECT count(pg_notify($3, queue)) FROM (SELECT DISTINCT queue FROM back) s
        """  # noqa: S608
        self.ack = f"""
            DELETE FROM {jobs} j USING unnest($1::bigint[], $2::int[]) AS t(s, d)
            WHERE j.seq = t.s AND j.deliveries = t.d AND j.owner = $3
        """  # noqa: S608
        self.nack = f"""
            WITH back AS (
                UPDATE {jobs} SET owner = NULL, locked_until = NULL, available_at = {NOW} + $4
                WHERE {_LEASE}
                RETURNING queue
            )
            SELECT (SELECT count(*) FROM back),
                (SELECT count(pg_notify($5, queue)) FROM back WHERE $4 <= 0)
        """  # noqa: S608
        self.dead_letter = f"""
            WITH moved AS (DELETE FROM {jobs} WHERE {_LEASE} RETURNING id, queue, body)
            INSERT INTO {dead} (id, queue, body, reason, dead_lettered_at)
            SELECT id, queue, body, $4, {NOW} FROM moved
        """  # noqa: S608
        self.renew = f"UPDATE {jobs} SET locked_until = {NOW} + $2 WHERE owner = $1"  # noqa: S608
        # A lapsed lease means a dead (or stalled) owner: hand its rows back, in batches.
        self.release_lapsed = f"""
            WITH lapsed AS (
                SELECT seq FROM {jobs} WHERE owner IS NOT NULL AND locked_until < {NOW}
                LIMIT 1000 FOR UPDATE SKIP LOCKED
            ), back AS (
                UPDATE {jobs} j SET owner = NULL, locked_until = NULL
                FROM lapsed WHERE j.seq = lapsed.seq
                RETURNING j.queue
            )
            SELECT (SELECT count(*) FROM back),
                (SELECT count(pg_notify($1, queue)) FROM (SELECT DISTINCT queue FROM back) s)
        """  # noqa: S608
        self.release_owner = f"""
            WITH back AS (
                UPDATE {jobs} SET owner = NULL, locked_until = NULL WHERE owner = $1 RETURNING queue
            )
            SELECT (SELECT count(*) FROM back),
                (SELECT count(pg_notify($2, queue)) FROM (SELECT DISTINCT queue FROM back) s)
        """  # noqa: S608
        self.vacuum = f"VACUUM (SKIP_LOCKED) {jobs}"
        # Unique locks of keys never enqueued again would stay: the vacuum's holder drops them.
        self.expired_locks = f"DELETE FROM {names.table('unique_locks')} WHERE expires <= {NOW}"  # noqa: S608
        self.vacuum_lock = int.from_bytes(
            hashlib.sha256(f"vacuum {jobs}".encode()).digest()[:8], "big", signed=True
        )
        self.purge = f"DELETE FROM {jobs} WHERE queue = $1 AND owner IS NULL"  # noqa: S608
        self.length = f"SELECT count(*) FROM {jobs} WHERE queue = $1 AND owner IS NULL"  # noqa: S608
        self.dead_letters = f"""
            SELECT id, queue, body, reason, dead_lettered_at FROM {dead}
            WHERE queue = $1 ORDER BY seq LIMIT $2
        """  # noqa: S608
        self.get_dead_letter = f"""
            SELECT id, queue, body, reason, dead_lettered_at FROM {dead}
            WHERE queue = $1 AND id = $2 ORDER BY seq LIMIT 1
        """  # noqa: S608
        # The dead-letter table keeps no priority: requeued messages get the default, 0.
        requeue = f"""
            WITH moved AS (DELETE FROM {dead} WHERE {{where}} RETURNING seq, id, queue, body),
            ins AS (
                INSERT INTO {jobs} (id, queue, body, priority, available_at)
                SELECT id, queue, body, 0, {NOW} FROM moved ORDER BY seq
                RETURNING queue
            )
            SELECT (SELECT count(*) FROM ins),
                (SELECT count(pg_notify($2, queue)) FROM (SELECT DISTINCT queue FROM ins) s)
        """  # noqa: S608
        self.requeue_dead_letter = requeue.format(
            where=f"seq = (SELECT min(seq) FROM {dead} WHERE queue = $1 AND id = $3)"  # noqa: S608
        )
        self.requeue_dead_letters = requeue.format(where="queue = $1")
        self.purge_dead_letters = f"DELETE FROM {dead} WHERE queue = $1"  # noqa: S608
